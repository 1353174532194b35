"""Decode any common audio file to 16 kHz mono float32, or raise a typed error with a reason.

soundfile (libsndfile 1.2: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...) first; audioread as the
fallback for what libsndfile cannot read (it uses ffmpeg/GStreamer when installed, e.g. for
AAC/M4A/WMA, and Python's own WAV/AIFF readers otherwise). Resampling is soxr "HQ"
(shared/spec/dependencies.md §7). This is the paper's loader (spec §1, `usage/sample.py`):
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


def _read_soundfile(path, max_frames):
    """(frames, channels) float32, sample rate, declared frames, format. Reads block by block
    so that a stream failing part-way is reported as truncated, not undecodable."""
    import soundfile as sf

    with sf.SoundFile(os_path(path)) as f:
        declared, limit = f.frames, f.frames if not max_frames else min(f.frames, max_frames)
        blocks, done = [], 0
        while done < limit:
            try:
                block = f.read(min(_BLOCK, limit - done), dtype="float32", always_2d=True)
            except Exception as error:  # the header was fine, the stream breaks (lost sync)
                raise AudioError(path, "truncated",
                                 f"decoder failed after {done} of {declared} frames: {error}") from None
            if len(block) == 0:
                break
            blocks.append(block)
            done += len(block)
        data = np.concatenate(blocks) if blocks else np.zeros((0, f.channels), np.float32)
        if f.format in ("WAV", "WAVEX"):
            declared = _wav_declared_frames(path) or declared
        return data, f.samplerate, declared, f.format


def _read_audioread(path, max_duration):
    """Fallback decoder: (frames, channels) float32 from audioread's 16-bit PCM blocks."""
    import audioread

    with audioread.audio_open(path) as f:
        channels, sr = f.channels, f.samplerate
        limit = int(max_duration * sr) * channels if max_duration else None
        chunks, count = [], 0
        for buf in f:
            chunks.append(np.frombuffer(buf, dtype="<i2"))
            count += len(chunks[-1])
            if limit and count >= limit:
                break
    data = np.concatenate(chunks)[:limit] if chunks else np.zeros(0, "<i2")
    data = data[: len(data) // channels * channels].reshape(-1, channels)
    return data.astype(np.float32) / 32768.0, sr


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
