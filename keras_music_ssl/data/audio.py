"""Decode any common audio file to 16 kHz mono float32, or raise a typed error with a reason.

soundfile (libsndfile 1.2: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...) first; audioread as the
fallback for what libsndfile cannot read (it uses ffmpeg/GStreamer when installed, e.g. for
AAC/M4A/WMA, and Python's own WAV/AIFF readers otherwise). Resampling is soxr "HQ"
(docs/dependencies.md#audio-decoding). This is the paper's loader (docs/paper.md#data, `usage/sample.py`):
mono = channel mean, resample, optional peak normalisation, at most 10 minutes.

Error reasons (``AudioError.reason``), decided in this order:

- ``missing``: no such file, or a directory (e.g. a folder named ``x.wav``);
- ``empty``: 0 bytes, or a header with 0 audio frames (a header-only file);
- ``undecodable``: neither decoder recognises the data (random bytes, unknown codec);
- ``truncated``: the stream stops before the frame count its header declares (for WAV the
  RIFF ``data`` chunk size is checked, since libsndfile silently clips it to the file size),
  or the decoder fails on the stream after a valid header (lost sync, cut-off frame);
- ``non_finite``: NaN or infinite samples (float WAV/FLAC can hold them), checked after decoding
  and again after mixing, resampling and normalisation (huge float samples, e.g. 1e38, are finite
  in the file but overflow float32 there);
- ``too_short``: fewer than ``min_duration`` seconds;
- ``silent``: not raised by :func:`load_audio`; used by callers that drop all-zero tracks.
"""

import os
import struct

import numpy as np

from keras_music_ssl.track import peak_normalize

SAMPLE_RATE = 16000
MAX_DURATION = 600.0  # seconds; the authors load at most 10 minutes
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
                    ".au", ".w64", ".rf64", ".caf", ".m4a", ".aac", ".wma", ".mp4")

# Formats whose header frame count is exact. MP3/OGG counts may be estimates (VBR without a
# Xing header), so those get a small tolerance before a stream counts as truncated.
_EXACT_FRAME_COUNT = ("WAV", "WAVEX", "RF64", "W64", "FLAC", "AIFF", "AU", "CAF")
_BLOCK = 1 << 16


class AudioError(Exception):
    """A file that cannot be used. ``reason`` is one of ``AudioError.REASONS``."""

    REASONS = ("missing", "empty", "undecodable", "truncated", "non_finite", "too_short", "silent")

    def __init__(self, path, reason, detail=""):
        if reason not in self.REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        self.path, self.reason, self.detail = str(path), reason, detail
        # The message is printable even for a file name that is not UTF-8; ``path`` keeps the name.
        super().__init__(f"{shown_path(path)}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # picklable across worker processes
        return (AudioError, (self.path, self.reason, self.detail))


def is_audio_path(path):
    """True if the file name has a known audio extension (case-insensitive)."""
    return os.fspath(path).lower().endswith(AUDIO_EXTENSIONS)


def _wav_declared_frames(path):
    """Frames the RIFF ``data`` chunk declares, or None (not RIFF, or a streaming size)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"fmt ":
                fmt = f.read(size + (size & 1))
                block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
            elif name == b"data":
                if not block_align or size in (0, 0xFFFFFFFF):  # unknown / still-being-written
                    return None
                return size // block_align
            else:
                f.seek(size + (size & 1), os.SEEK_CUR)


def os_path(path):
    """``path`` as the OS takes it: a file name that is not valid UTF-8 comes from ``os.listdir``
    as a str with surrogate escapes, which libsndfile's ``str.encode()`` refuses; pass its bytes."""
    path = os.fspath(path)
    try:
        path.encode()
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def shown_path(path):
    """``path`` as printable text: bytes that are not UTF-8 shown as backslash escapes (``caf\\xe9``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _check_finite(path, data, where):
    if not np.all(np.isfinite(data)):
        raise AudioError(path, "non_finite", f"NaN or infinite samples {where}")


def _soundfile_blocks(f, path, limit):
    """(frames, channels) float32 blocks of an open ``soundfile.SoundFile``, at most ``limit`` frames.
    Read block by block so that a stream failing part-way is reported as truncated, not undecodable."""
    done = 0
    while done < limit:
        try:
            block = f.read(min(_BLOCK, limit - done), dtype="float32", always_2d=True)
        except Exception as error:  # the header was fine, the stream breaks (lost sync)
            raise AudioError(path, "truncated", f"decoder failed after {done} of {f.frames} frames: {error}") from None
        if len(block) == 0:
            break
        done += len(block)
        yield block


def _read_soundfile(path, max_frames):
    """(frames, channels) float32, sample rate, declared frames, format."""
    import soundfile as sf

    with sf.SoundFile(os_path(path)) as f:
        declared, limit = f.frames, f.frames if not max_frames else min(f.frames, max_frames)
        blocks = list(_soundfile_blocks(f, path, limit))
        data = np.concatenate(blocks) if blocks else np.zeros((0, f.channels), np.float32)
        if f.format in ("WAV", "WAVEX"):
            declared = _wav_declared_frames(path) or declared
        return data, f.samplerate, declared, f.format


def _audioread_blocks(f, max_duration):
    """(frames, channels) float32 blocks of an open audioread file (16-bit PCM buffers)."""
    channels, limit, count, rest = f.channels, int(max_duration * f.samplerate) * f.channels if max_duration else None, 0, None
    for buf in f:
        samples = np.frombuffer(buf, dtype="<i2")
        if limit is not None:
            samples = samples[:max(limit - count, 0)]
        count += len(samples)
        if rest is not None:  # a buffer may end inside a frame
            samples = np.concatenate([rest, samples])
        whole = len(samples) // channels * channels
        rest = samples[whole:]
        if whole:
            yield samples[:whole].reshape(-1, channels).astype(np.float32) / 32768.0
        if limit is not None and count >= limit:
            break


def _read_audioread(path, max_duration):
    """Fallback decoder: (frames, channels) float32 from audioread's 16-bit PCM blocks."""
    import audioread

    with audioread.audio_open(path) as f:
        blocks, channels, sr = list(_audioread_blocks(f, max_duration)), f.channels, f.samplerate
    data = np.concatenate(blocks) if blocks else np.zeros((0, channels), np.float32)
    return data, sr


def _decode(path, max_duration):
    """Decode with soundfile, falling back to audioread. Returns (data, sr, declared, format)."""
    try:
        import soundfile as sf

        sr = sf.info(os_path(path)).samplerate  # the frame cap is in source frames: read the rate first
        return _read_soundfile(path, int(max_duration * sr) if max_duration else None)
    except AudioError:
        raise
    except Exception as sf_error:
        try:
            data, sr = _read_audioread(path, max_duration)
        except Exception as fb_error:
            detail = f"soundfile: {sf_error}; audioread: {type(fb_error).__name__} {fb_error}".strip()
            raise AudioError(path, "undecodable", detail) from None
        return data, sr, None, "audioread"


def load_audio(path, sample_rate=SAMPLE_RATE, mono=True, normalize=True,
               max_duration=MAX_DURATION, min_duration=0.0):
    """Return ``(samples,)`` float32 at ``sample_rate`` (or ``(samples, channels)`` if not mono).

    Only the first ``max_duration`` seconds are decoded (None: all). ``normalize`` divides by the
    peak |x| when it is non-zero. Raises :class:`AudioError` with a reason (module docstring).

    Args:
        path: an audio file (WAV, FLAC, OGG, MP3, ... and whatever audioread can open).
        sample_rate: the output's rate, Hz (16000); soxr resamples.
        mono: mix the channels down to one (their mean).
        normalize: divide by the peak |x| (the paper's loader).
        max_duration: seconds to decode from the start (600, the paper's 10 minutes; None: all).
        min_duration: a shorter file is an ``AudioError`` (``too_short``).

    Returns:
        The samples, float32: ``(samples,)`` when ``mono``, else ``(samples, channels)``.

    Raises:
        AudioError: the file cannot be used; ``reason`` says why (``missing``, ``empty``,
            ``undecodable``, ``truncated``, ``non_finite``, ``too_short``, ...).

    Examples:
        >>> import numpy as np, soundfile
        >>> from keras_music_ssl.data import load_audio
        >>> tone = 0.25 * np.sin(np.arange(44100) / 10)  # 1 s at 44.1 kHz
        >>> soundfile.write("tone.wav", np.stack([tone, tone], axis=1), 44100)  # stereo
        >>> waveform = load_audio("tone.wav")
        >>> waveform.shape, waveform.dtype, float(np.abs(waveform).max())
        ((16000,), dtype('float32'), 1.0)
    """
    import soxr

    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(path, "missing", "no such file")
    if not os.path.isfile(path):
        raise AudioError(path, "missing", "not a regular file (a directory?)")
    size = os.path.getsize(path)
    if size == 0:
        raise AudioError(path, "empty", "0 bytes")
    data, sr, declared, fmt = _decode(path, max_duration)
    if data.shape[0] == 0:
        raise AudioError(path, "empty", f"0 audio frames in {size} bytes")
    if declared:
        expected = min(declared, int(max_duration * sr)) if max_duration else declared
        slack = 0 if fmt in _EXACT_FRAME_COUNT else max(2304, expected // 100)
        if data.shape[0] < expected - slack:
            raise AudioError(path, "truncated", f"{data.shape[0]} of {expected} frames decoded")
    _check_finite(path, data, "in the file")
    if mono:  # a matrix-vector product: 25x faster than mean(axis=1) on (frames, 2), same values for stereo
        data = data @ np.full(data.shape[1], 1.0 / data.shape[1], np.float32)
    if sr != sample_rate:
        data = soxr.resample(data, sr, sample_rate, quality="HQ")
    # Finite huge samples (float files hold up to 3.4e38) can overflow in the mix or the resampler's
    # filter; inf/NaN would then become a silent or all-NaN track downstream.
    _check_finite(path, data, "after mixing/resampling (samples too large for float32)")
    if data.shape[0] < min_duration * sample_rate:
        raise AudioError(path, "too_short", f"{data.shape[0] / sample_rate:.2f} s < {min_duration} s")
    if normalize:
        data = peak_normalize(data)
        _check_finite(path, data, "after normalisation")
    return np.ascontiguousarray(data, dtype=np.float32)


def _open_stream(path, max_duration):
    """``(sample rate, declared frames or None, format, block iterator, close)``: soundfile first,
    audioread when libsndfile cannot open the file (the order of :func:`_decode`)."""
    try:
        import soundfile as sf

        f = sf.SoundFile(os_path(path))
    except Exception as sf_error:
        try:
            import audioread

            f = audioread.audio_open(path)
        except Exception as fb_error:
            detail = f"soundfile: {sf_error}; audioread: {type(fb_error).__name__} {fb_error}".strip()
            raise AudioError(path, "undecodable", detail) from None
        return f.samplerate, None, "audioread", _audioread_blocks(f, max_duration), f.close
    limit = f.frames if not max_duration else min(f.frames, int(max_duration * f.samplerate))
    declared = (_wav_declared_frames(path) or f.frames) if f.format in ("WAV", "WAVEX") else f.frames
    return f.samplerate, declared, f.format, _soundfile_blocks(f, path, limit), f.close


def stream_audio(path, sample_rate=SAMPLE_RATE, max_duration=None):
    """Yield a file's samples as mono float32 blocks at ``sample_rate``, decoded, mixed and resampled
    block by block: memory stays O(one block, 65,536 frames) whatever the file's length.

    The blocks join into ``load_audio(path, sample_rate, normalize=False, max_duration=...)``
    (soxr's streaming resampler gives the one-shot result, to within one float32 ulp; tested). ``max_duration`` None: the
    whole file. The same errors as :func:`load_audio`, raised as soon as they can be known:
    ``missing`` / ``empty`` (0 bytes) / ``undecodable`` before the first block, ``non_finite`` at
    the block that holds it, ``empty`` (no frame) and ``truncated`` after the last block, so a
    caller keeps nothing it made from a file until the generator ends.
    """
    import soxr

    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(path, "missing", "no such file")
    if not os.path.isfile(path):
        raise AudioError(path, "missing", "not a regular file (a directory?)")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty", "0 bytes")
    sr, declared, fmt, blocks, close = _open_stream(path, max_duration)
    try:
        resampler = soxr.ResampleStream(sr, sample_rate, 1, dtype="float32", quality="HQ") if sr != sample_rate else None
        frames = 0
        for block in blocks:
            frames += len(block)
            _check_finite(path, block, "in the file")
            mono = block @ np.full(block.shape[1], 1.0 / block.shape[1], np.float32)
            out = resampler.resample_chunk(mono, last=False) if resampler is not None else mono
            _check_finite(path, out, "after mixing/resampling (samples too large for float32)")
            if len(out):
                yield np.ascontiguousarray(out, dtype=np.float32)
        if frames == 0:
            raise AudioError(path, "empty", f"0 audio frames in {os.path.getsize(path)} bytes")
        if resampler is not None:
            out = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            _check_finite(path, out, "after mixing/resampling (samples too large for float32)")
            if len(out):
                yield np.ascontiguousarray(out, dtype=np.float32)
        if declared:
            expected = min(declared, int(max_duration * sr)) if max_duration else declared
            slack = 0 if fmt in _EXACT_FRAME_COUNT else max(2304, expected // 100)
            if frames < expected - slack:
                raise AudioError(path, "truncated", f"{frames} of {expected} frames decoded")
    finally:
        close()


def duration_seconds(path):
    """The length of an audio file in seconds from its header (None when no decoder says), without
    decoding it: how callers tell that ``max_duration`` cut a file."""
    try:
        import soundfile as sf

        info = sf.info(os_path(path))
        return info.frames / info.samplerate if info.samplerate else None
    except Exception:  # not readable by libsndfile: ask audioread, which may need to probe the stream
        try:
            import audioread

            with audioread.audio_open(os.fspath(path)) as f:
                return float(f.duration) or None
        except Exception:
            return None
