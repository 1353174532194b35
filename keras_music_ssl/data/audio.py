"""Decode any common audio file to 16 kHz mono float32, or raise a typed error with a reason.

soundfile (libsndfile: WAV, FLAC, OGG, MP3, ...) first; librosa/audioread as the fallback
for what libsndfile cannot read. Resampling is soxr ("HQ"), as recommended in
shared/spec/dependencies.md §7. This is the paper's loader (spec §1, `usage/sample.py`):
mono = channel mean, resample, optional peak normalisation, at most 10 minutes.
"""

import os

import numpy as np

SAMPLE_RATE = 16000
MAX_DURATION = 600.0  # seconds; the authors load at most 10 minutes


class AudioError(Exception):
    """A file that cannot be used. ``reason`` is one of ``AudioError.REASONS``."""

    REASONS = ("missing", "empty", "undecodable", "truncated", "non_finite", "too_short")

    def __init__(self, path, reason, detail=""):
        if reason not in self.REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def _read_soundfile(path, max_frames):
    import soundfile as sf

    with sf.SoundFile(path) as f:
        declared = f.frames
        data = f.read(frames=max_frames if max_frames else -1, dtype="float32", always_2d=True)
        return data, f.samplerate, declared


def _read_fallback(path, max_duration):
    import librosa

    data, sr = librosa.load(path, sr=None, mono=False, duration=max_duration, dtype=np.float32)
    data = data[None, :] if data.ndim == 1 else data
    return data.T, sr


def load_audio(path, sample_rate=SAMPLE_RATE, mono=True, normalize=True,
               max_duration=MAX_DURATION, min_duration=0.0):
    """Return ``(samples,)`` float32 at ``sample_rate`` (or ``(samples, channels)`` if not mono).

    ``normalize`` divides by the peak |x| when it is non-zero. Raises ``AudioError``:
    ``missing`` (no such file / a directory), ``empty`` (0 bytes or 0 frames),
    ``undecodable``, ``truncated`` (fewer frames than the header declares),
    ``non_finite`` (NaN/inf samples), ``too_short`` (under ``min_duration`` seconds).
    """
    import soxr

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(path, "missing", "not a regular file")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty", "0 bytes")
    declared = max_frames = None
    try:
        # A cap in source frames needs the rate first; read it cheaply from the header.
        import soundfile as sf

        info = sf.info(path)
        max_frames = int(max_duration * info.samplerate) if max_duration else None
        data, sr, declared = _read_soundfile(path, max_frames)
    except Exception as sf_error:  # libsndfile refused it: try the fallback decoder
        try:
            data, sr = _read_fallback(path, max_duration)
        except Exception as fb_error:
            raise AudioError(path, "undecodable", f"{sf_error}; fallback: {fb_error}") from None
    if data.size == 0:
        raise AudioError(path, "empty", "no audio frames")
    expected = min(declared, max_frames) if (declared and max_frames) else declared
    if expected and data.shape[0] < expected:
        raise AudioError(path, "truncated", f"{data.shape[0]} of {expected} frames decoded")
    if not np.all(np.isfinite(data)):
        raise AudioError(path, "non_finite", "NaN or infinite samples")
    if mono:
        data = data.mean(axis=1)
    if sr != sample_rate:
        data = soxr.resample(data, sr, sample_rate, quality="HQ").astype(np.float32)
    if data.shape[0] < min_duration * sample_rate:
        raise AudioError(path, "too_short", f"{data.shape[0] / sample_rate:.2f} s < {min_duration} s")
    if normalize:
        peak = float(np.max(np.abs(data)))
        if peak > 0:
            data = data / peak
    return np.ascontiguousarray(data, dtype=np.float32)
