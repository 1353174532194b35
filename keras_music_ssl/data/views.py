"""The multi-view sampler: V crops of one track, drawn online inside tf.data (docs/paper.md#data).

The paper's views are two 4-s segments of the same track "at least 4 s apart", with no
augmentation. Here, for V >= 2 views of ``segment_samples`` samples:

- start times ``s_1..s_V`` are integers in ``[0, n - segment_samples]`` (every crop in bounds);
- every pair satisfies ``|s_i - s_j| >= min_gap`` (start to start, so the default 4-s gap makes
  4-s crops non-overlapping) and, if ``max_gap`` is set, ``|s_i - s_j| <= max_gap``.

Sampling: with ``room = n - segment_samples`` and ``span_max = min(room, max_gap)``, the sorted
starts are ``s_(k) = first + k·gap + e_k`` where ``e_1 <= .. <= e_(V-1)`` are sorted uniform
integers in ``[0, span_max - (V-1)·gap]`` (``e_0 = 0``), so consecutive starts differ by at least
the gap and the span stays within ``span_max``; ``first`` is uniform over the positions that keep
the whole set in bounds; then the order of the views is shuffled.

Tracks too short for the rule (``n < segment_samples + (V-1)·min_gap``) are never dropped
silently; they follow one documented rule and are counted (:meth:`ViewSampler.counts`):

- ``reduced_gap``: ``segment_samples <= n``: the gap becomes the largest feasible one,
  ``gap = room // (V-1)``, so the views are spread as far apart as the track allows (and overlap);
- ``padded``: ``n < segment_samples``: the track is zero-padded at the end to one segment and
  every view is that padded track.

Optional, both off by default as in the paper:

- silence-aware cropping: draw up to ``silence_attempts`` candidate start sets and take the
  first whose every view passes the paper's downstream RMS rule
  ``10·ln(rms_view / rms_track) > silence_threshold`` (-7.5, natural log, docs/paper.md#downstream-data); if none
  passes, the first candidate is used and counted as ``silent_views``;
- light augmentations per view: a random gain in ``[-gain_db, +gain_db]`` dB, a polarity flip
  with probability ``polarity``, white noise at ``noise_snr_db`` dB below the view's RMS.

All randomness is stateless from the ``seed`` argument (shape (2,) ints), so the same seed gives
the same views. Only tf ops: the sampler runs in tf.data whatever the Keras backend.
"""

import math
import numbers

import tensorflow as tf

from keras_music_ssl.errors import OptionError

SEGMENT_SAMPLES = 64000  # 4 s at 16 kHz: the backbone's fixed input length
MIN_GAP = 64000  # 4 s between start times (docs/paper.md#data)
COUNTERS = ("tracks", "reduced_gap", "padded", "silent_views")
MAX_GAIN_DB = 100.0  # 10**(gain/20) stays far inside float32; louder makes no sense as an augmentation
MIN_SNR_DB = -100.0  # noise at most 100 dB above the view


def _integer(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise OptionError(f"{name} must be an integer >= {low}, got {value!r}")


def _real(name, value, low=-math.inf, high=math.inf):
    """A finite number in [low, high]; NaN, infinities and non-numbers are refused naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not low <= value <= high:
        bounds = "" if (low, high) == (-math.inf, math.inf) else \
            f" in [{low}, {high}]" if math.isfinite(high) else f" >= {low}"
        raise OptionError(f"{name} must be a finite number{bounds}, got {value!r}")


def _seeds(seed, count):
    return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), count))


def _rms(x, axis=-1):
    return tf.sqrt(tf.reduce_mean(tf.square(x), axis=axis))


def _energy_up_to(x, block=1024):
    """A function ``pos -> sum(x[:pos]**2)`` (float64) for int64 positions of any shape.

    Exact up to float32 sums inside ``block``-sample blocks: block sums are accumulated in
    float64 (a float32 running sum over millions of samples loses the quiet crops), and the
    partial block is summed directly. Much cheaper than a float64 cumsum over the track.
    """
    n = tf.shape(x, out_type=tf.int64)[0]
    blocks = (n + block - 1) // block
    squares = tf.reshape(tf.square(tf.pad(x, [[0, blocks * block - n]])), [-1, block])  # (blocks, block)
    prefix = tf.pad(tf.cumsum(tf.reduce_sum(tf.cast(squares, tf.float64), axis=1)), [[1, 0]])  # (blocks + 1,)

    def energy(pos):
        index = tf.minimum(pos // block, blocks - 1)
        rest = pos - index * block  # samples of block `index` before pos, in [0, block]
        within = tf.where(tf.range(block, dtype=tf.int64) < rest[..., None], tf.gather(squares, index), 0.0)
        return tf.gather(prefix, index) + tf.cast(tf.reduce_sum(within, axis=-1), tf.float64)

    return energy


class ViewSampler:
    """Draws V crops of a track, ``(V, segment_samples)`` float32; see the module docstring.

    Call it as ``sampler(waveform, seed)`` inside ``Dataset.map``; ``counts()`` reports how many
    tracks it saw and how many followed each fallback rule.
    """

    def __init__(self, num_views=2, segment_samples=SEGMENT_SAMPLES, min_gap=MIN_GAP, max_gap=None,
                 silence_aware=False, silence_threshold=-7.5, silence_attempts=8,
                 gain_db=0.0, polarity=0.0, noise_snr_db=None):
        _integer("num_views", num_views, 2)
        _integer("segment_samples", segment_samples, 1)
        _integer("min_gap", min_gap, 0)
        if max_gap is not None:
            _integer("max_gap", max_gap, 0)
            if max_gap < (num_views - 1) * min_gap:
                raise OptionError(f"max_gap={max_gap} cannot hold {num_views} views {min_gap} samples apart "
                                  f"(needs >= {(num_views - 1) * min_gap})")
        _integer("silence_attempts", silence_attempts, 1)
        # NaN passes no comparison, so an unchecked NaN gain or SNR made every view all-NaN.
        _real("silence_threshold", silence_threshold)
        _real("gain_db", gain_db, 0.0, MAX_GAIN_DB)
        _real("polarity", polarity, 0.0, 1.0)
        if noise_snr_db is not None:
            _real("noise_snr_db", noise_snr_db, MIN_SNR_DB)
        self.num_views, self.segment_samples = int(num_views), int(segment_samples)
        self.min_gap, self.max_gap = int(min_gap), None if max_gap is None else int(max_gap)
        self.silence_aware, self.silence_threshold = bool(silence_aware), float(silence_threshold)
        self.silence_attempts = int(silence_attempts)
        self.gain_db, self.polarity = float(gain_db), float(polarity)
        self.noise_snr_db = None if noise_snr_db is None else float(noise_snr_db)
        self._counters = {name: tf.Variable(0, dtype=tf.int64, trainable=False, name=name) for name in COUNTERS}

    def get_config(self):
        return {"num_views": self.num_views, "segment_samples": self.segment_samples, "min_gap": self.min_gap,
                "max_gap": self.max_gap, "silence_aware": self.silence_aware,
                "silence_threshold": self.silence_threshold, "silence_attempts": self.silence_attempts,
                "gain_db": self.gain_db, "polarity": self.polarity, "noise_snr_db": self.noise_snr_db}

    def counts(self):
        """Tracks seen and how many took each fallback rule, as Python ints."""
        return {name: int(var.numpy()) for name, var in self._counters.items()}

    def reset_counts(self):
        for var in self._counters.values():
            var.assign(0)

    def _starts(self, n, seed, attempts):
        """(attempts, V) int64 candidate starts obeying the gap rule for n >= segment_samples, and the gap."""
        views = self.num_views
        room = n - self.segment_samples
        gap = tf.minimum(tf.constant(self.min_gap, tf.int64), room // (views - 1))
        span_max = room if self.max_gap is None else tf.minimum(room, self.max_gap)
        slack = span_max - (views - 1) * gap  # >= 0 by construction
        spacing_seed, first_seed, order_seed = _seeds(seed, 3)
        spacing = tf.sort(tf.random.stateless_uniform([attempts, views - 1], spacing_seed, minval=0,
                                                      maxval=slack + 1, dtype=tf.int64), axis=1)
        relative = tf.pad(spacing + gap * tf.range(1, views, dtype=tf.int64), [[0, 0], [1, 0]])  # sorted
        # The earliest start: uniform over the positions that keep the whole set in bounds.
        u = tf.random.stateless_uniform([attempts], first_seed, dtype=tf.float64)
        first = tf.cast(tf.floor(u * tf.cast(room - relative[:, -1] + 1, tf.float64)), tf.int64)
        order = tf.argsort(tf.random.stateless_uniform([attempts, views], order_seed), axis=1)
        return tf.gather(first[:, None] + relative, order, batch_dims=1), gap

    def _augment(self, views, seed):
        gain_seed, flip_seed, noise_seed = _seeds(seed, 3)
        shape = [self.num_views, 1]
        if self.gain_db:
            gain_db = tf.random.stateless_uniform(shape, gain_seed, -self.gain_db, self.gain_db)
            views = views * tf.pow(10.0, gain_db / 20.0)
        if self.polarity:
            flip = tf.random.stateless_uniform(shape, flip_seed) < self.polarity
            views = tf.where(flip, -views, views)
        if self.noise_snr_db is not None:
            noise_rms = _rms(views, axis=1)[:, None] * 10.0 ** (-float(self.noise_snr_db) / 20.0)
            views = views + noise_rms * tf.random.stateless_normal(tf.shape(views), noise_seed)
        return views

    def sample(self, waveform, seed):
        """Views plus what was done: dict(views (V, L) float32, starts (V,) int64, gap, reduced_gap,
        padded, silent)."""
        x = tf.reshape(tf.cast(waveform, tf.float32), [-1])
        n = tf.shape(x, out_type=tf.int64)[0]
        length = self.segment_samples
        padded = n < length
        x = tf.pad(x, [[0, tf.maximum(length - n, 0)]])
        start_seed, augment_seed = _seeds(seed, 2)
        attempts = self.silence_attempts if self.silence_aware else 1
        candidates, gap = self._starts(tf.maximum(n, length), start_seed, attempts)
        starts, silent = candidates[0], tf.constant(False)
        if self.silence_aware:
            energy = _energy_up_to(x)
            rms = tf.sqrt(tf.maximum(energy(candidates + length) - energy(candidates), 0.0) / length)
            track_rms = tf.sqrt(energy(n) / tf.cast(n, tf.float64))
            level = 10.0 * tf.math.log(rms / track_rms)  # natural log, as the paper
            passing = tf.reduce_all(level > self.silence_threshold, axis=1)  # (attempts,)
            silent = tf.logical_not(tf.reduce_any(passing))
            first_passing = tf.argmax(tf.cast(passing, tf.int32), output_type=tf.int64)
            pick = tf.where(silent, tf.constant(0, tf.int64), first_passing)
            starts = tf.gather(candidates, pick)
        crops = tf.gather(x, tf.cast(starts[:, None], tf.int32) + tf.range(length))  # (V, L)
        views = self._augment(crops, augment_seed)
        reduced = tf.logical_and(gap < self.min_gap, tf.logical_not(padded))
        for name, flag in (("tracks", True), ("reduced_gap", reduced), ("padded", padded), ("silent_views", silent)):
            self._counters[name].assign_add(tf.cast(flag, tf.int64))
        return {"views": views, "starts": starts, "gap": gap, "reduced_gap": reduced, "padded": padded,
                "silent": silent}

    def __call__(self, waveform, seed):
        """(V, segment_samples) float32 views of one track."""
        return self.sample(waveform, seed)["views"]
