"""How a waveform becomes the encoder's 4 s inputs and a track embedding: one definition.

Every path that turns a track into encoder inputs uses these functions (``embed``, the probe
harness, the downstream segment datasets), so a file gets the same chunks everywhere.

For a mono 16 kHz track ``x`` (``L`` = 64,000 samples = 4 s):

- normalisation: ``x / max|x|`` (a silent track is left as it is);
- track chunks (the authors' ``usage/sample.py``; ``kmssl embed`` and the exports): ``x``
  zero-padded at the end to a multiple of ``L``, cut into ``ceil(len(x) / L)`` consecutive
  chunks; the track embedding is the mean of the chunks' embeddings. An empty track is an
  error, never a zero chunk;
- whole segments (:func:`evaluation_chunks` ``"segments"``, the probe's default for
  evaluation tracks): the ``floor(len(x) / L)`` non-overlapping segments the training rule
  starts from, with no padding, so a probe is scored on inputs like the ones it was trained
  on (a zero-padded last chunk shifts short clips' embeddings: on 5 s clips the log-mel mean
  moves by ~30 dB); a track shorter than ``L`` falls back to its one padded chunk;
- timeline windows (:func:`timeline_windows`; ``kmssl tag --timeline``, ``timeline.py``): windows of
  ``L`` starting every hop ``H`` samples, ``0, H, 2H, ...`` while the start is inside the track
  (``ceil(len(x) / H)`` windows), each zero-padded at the end like the last chunk; window ``i``
  spans ``[i H, min(i H + L, len(x))) / 16000`` seconds. At ``H = L`` they are the track chunks;
- training segments (the authors' downstream loader, docs/paper.md#downstream-data): non-overlapping segments of
  ``L``, the partial last one dropped; a segment is kept if

      10 · ln(rms_segment / rms_track) > -7.5     (natural log: rms_segment > 0.472 · rms_track)

  the kept ones are shuffled and at most 25 are used. A silent track keeps none.
"""

import numpy as np

SEGMENT_SAMPLES = 64000
MAX_SEGMENTS = 25
RMS_THRESHOLD = -7.5


class UnusableTrack(ValueError):
    """A track that gives no encoder input under a rule (``reason``: ``empty``, ``silent``,
    ``too_short``)."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def peak_normalize(waveform):
    """x / max|x|; a silent waveform is returned unchanged."""
    waveform = np.asarray(waveform, dtype=np.float32)
    peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
    return waveform / peak if peak > 0 else waveform


def _mono(waveform):
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono waveform (samples,), got shape {waveform.shape}")
    return waveform


def require_samples(waveform):
    """The empty-track rule: raise :class:`UnusableTrack` (``empty``) for a waveform of no samples."""
    if np.asarray(waveform).size == 0:
        raise UnusableTrack("empty", "a waveform of 0 samples: nothing to embed")


def chunk_waveform(waveform, num_samples=SEGMENT_SAMPLES):
    """(samples,) -> (ceil(samples / num_samples), num_samples) float32, zero-padded at the end."""
    waveform = _mono(waveform)
    require_samples(waveform)
    n_chunks = -(-waveform.size // num_samples)
    padded = np.zeros(n_chunks * num_samples, dtype=np.float32)
    padded[:waveform.size] = waveform
    return padded.reshape(n_chunks, num_samples)


def timeline_starts(length, hop_samples):
    """Sample offsets of a timeline's windows over a track of ``length`` samples: ``0, H, 2H, ... < length``."""
    hop_samples = int(hop_samples)
    if hop_samples < 1:
        raise ValueError(f"the hop must be at least one sample, got {hop_samples}")
    if length < 1:
        raise UnusableTrack("empty", "a waveform of 0 samples: nothing to embed")
    return np.arange(0, int(length), hop_samples, dtype=np.int64)


def timeline_windows(waveform, hop_samples, num_samples=SEGMENT_SAMPLES, normalize=True):
    """``(windows (k, num_samples) float32, starts (k,) samples)`` of a mono track (module docstring):
    the in-memory definition that ``timeline.py``'s streamed windows equal."""
    waveform = _mono(waveform)
    starts = timeline_starts(waveform.size, hop_samples)
    if normalize:
        waveform = peak_normalize(waveform)
    windows = np.zeros((len(starts), num_samples), np.float32)
    for row, start in enumerate(starts):
        piece = waveform[start:start + num_samples]
        windows[row, :piece.size] = piece
    return windows, starts


EVALUATION_CHUNKS = ("segments", "padded")


def evaluation_chunks(waveform, num_samples=SEGMENT_SAMPLES, mode="segments"):
    """The chunks whose mean embedding stands for a track: ``"segments"`` (whole segments) or
    ``"padded"`` (:func:`chunk_waveform`, the track embedding of ``kmssl embed``)."""
    if mode not in EVALUATION_CHUNKS:
        raise ValueError(f"mode must be one of {EVALUATION_CHUNKS}, got {mode!r}")
    waveform = _mono(waveform)
    count = waveform.size // num_samples
    if mode == "padded" or count == 0:
        return chunk_waveform(waveform, num_samples)
    return waveform[:count * num_samples].reshape(count, num_samples)


def segment_keep_mask(waveform, num_samples=SEGMENT_SAMPLES, threshold=RMS_THRESHOLD):
    """Boolean (samples // num_samples,): which whole segments pass the RMS silence rule."""
    waveform = _mono(waveform).astype(np.float64)
    count = waveform.size // num_samples
    if count == 0:
        return np.zeros(0, bool)
    frames = waveform[:count * num_samples].reshape(count, num_samples)
    rms_track = np.sqrt(np.mean(np.square(waveform)))
    if rms_track == 0:
        return np.zeros(count, bool)
    rms = np.sqrt(np.mean(np.square(frames), axis=1))
    with np.errstate(divide="ignore"):  # a silent segment: ln(0) = -inf, dropped
        return 10.0 * np.log(rms / rms_track) > threshold


def training_segments(waveform, rng, num_samples=SEGMENT_SAMPLES, max_segments=MAX_SEGMENTS,
                      threshold=RMS_THRESHOLD):
    """``(segments (k, num_samples) float32, index (k,))``: the kept segments in shuffled order.

    ``rng`` (a ``numpy.random.Generator``) draws the shuffle; ``index`` is each segment's
    position in the track. Raises :class:`UnusableTrack` when no segment is kept (``too_short``:
    shorter than one segment; ``silent``: none passes the RMS rule).
    """
    waveform = _mono(waveform)
    if waveform.size < num_samples:
        raise UnusableTrack("too_short", f"{waveform.size} samples < one segment of {num_samples}")
    index = np.flatnonzero(segment_keep_mask(waveform, num_samples, threshold))
    if not len(index):
        raise UnusableTrack("silent", "no segment passes the RMS rule")
    index = rng.permutation(index)[:max_segments]
    return np.stack([waveform[i * num_samples:(i + 1) * num_samples] for i in index]), index
