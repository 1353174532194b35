"""Downstream segment datasets (docs/paper.md#downstream-data) in tf.data, for training on audio end to end.

The rules are those of ``keras_music_ssl/track.py`` (one definition; the probe harness uses it
in numpy): non-overlapping segments of ``segment_samples``, the partial last one dropped, kept if

    10 · ln(rms_segment / rms_track) > -7.5        (natural log: rms_segment > 0.472 · rms_track)

shuffled, at most ``max_segments`` (25); each inherits the track's labels. Tracks with no kept
segment (all silent, or shorter than one segment) are dropped and recorded in the ``report``.
:func:`track_segments` is the in-graph form of ``track.segment_keep_mask`` (a test holds them
equal); :func:`chunk_track` is ``track.chunk_waveform`` (test time: zero-padded chunks whose
embeddings are averaged).
"""

import os

import numpy as np
import tensorflow as tf

from keras_music_ssl.data.audio_dataset import SkipReport, decoded_audio
from keras_music_ssl.data.labeled_csv import LabeledDataset, read_labeled_dataset
from keras_music_ssl.track import MAX_SEGMENTS, RMS_THRESHOLD, SEGMENT_SAMPLES, chunk_waveform


def track_segments(waveform, seed, segment_samples=SEGMENT_SAMPLES, max_segments=MAX_SEGMENTS,
                   threshold=RMS_THRESHOLD):
    """tf op: dict(segments (k, L) float32, index (k,) int32) for one track; k <= max_segments.

    ``index`` is each kept segment's position in the track (segment i = samples i·L .. i·L+L-1),
    in the shuffled order; ``seed`` (shape (2,)) makes the shuffle deterministic.
    """
    x = tf.reshape(tf.cast(waveform, tf.float32), [-1])
    frames = tf.signal.frame(x, segment_samples, segment_samples, pad_end=False)  # (n // L, L)
    rms_track = tf.sqrt(tf.reduce_mean(tf.square(x)))
    rms = tf.sqrt(tf.reduce_mean(tf.square(frames), axis=1))
    keep = 10.0 * tf.math.log(rms / rms_track) > threshold  # NaN (silent track) -> False
    index = tf.boolean_mask(tf.range(tf.shape(frames)[0]), keep)
    order = tf.argsort(tf.random.stateless_uniform(tf.shape(index), tf.cast(seed, tf.int64)))
    index = tf.gather(index, order)[:max_segments]
    return {"segments": tf.gather(frames, index), "index": index}


def chunk_track(waveform, segment_samples=SEGMENT_SAMPLES):
    """numpy: ``(ceil(n / L), L)`` consecutive segments, the last one zero-padded (test time)."""
    return chunk_waveform(np.asarray(waveform, np.float32).reshape(-1), segment_samples)


def segment_dataset(dataset, split, batch_size=256, seed=0, shuffle_buffer=4999, repeat=True,
                    segment_samples=SEGMENT_SAMPLES, max_segments=MAX_SEGMENTS, threshold=RMS_THRESHOLD,
                    report=None, drop_remainder=False, num_parallel_calls=tf.data.AUTOTUNE):
    """Batches ``(segments (B, L) float32, labels (B, tags) float32)`` of one split of a labeled dataset.

    ``dataset``: a :class:`LabeledDataset` or the path of one (``data/labeled_csv.py``).
    Defaults follow the authors' loader (batch 256, shuffle buffer 4,999 segments, about 1.3 GB
    at 4 s; use less for small machines). ``report`` collects undecodable and segment-less tracks.
    """
    if not isinstance(dataset, LabeledDataset):
        dataset = read_labeled_dataset(dataset)
    part = dataset.split(split)
    if not len(part):
        raise ValueError(f"split {split!r} of {dataset.root} is empty")
    report = report if report is not None else SkipReport()
    records = tf.data.Dataset.from_tensor_slices({"path": part.paths, "label": part.labels})
    if shuffle_buffer:
        records = records.shuffle(len(part), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        records = records.repeat()
    paths = frozenset(part.paths)
    tracks = decoded_audio(records, report, paths, num_parallel_calls=num_parallel_calls)
    track_seed = tf.constant(seed, tf.int64)

    def no_segments(path, samples):
        path = os.fsdecode(path)
        if samples < segment_samples:
            report.add(path, "too_short", f"{samples} samples < one segment of {segment_samples}")
        else:
            report.add(path, "silent", "no segment passes the RMS rule")
        if report.covers(paths):  # a repeated stream with nothing in it would never end
            raise ValueError(f"no track of split {split!r} gives a segment: {report.counts()}")
        return False

    def cut(index, record):
        kept = track_segments(record["audio"], tf.stack([track_seed, index]), segment_samples, max_segments, threshold)
        count = tf.shape(kept["segments"])[0]
        labels = tf.tile(record["label"][None], [count, 1])
        usable = tf.cond(count > 0, lambda: True,
                         lambda: tf.numpy_function(no_segments, [record["path"], tf.size(record["audio"])], tf.bool))
        return kept["segments"], labels, usable

    def has_segments(segments, labels, usable):
        return usable

    def without_flag(segments, labels, usable):
        return segments, labels

    # Named functions, not two lambdas on one line: AutoGraph cannot tell those apart in the source.
    segments = tracks.enumerate().map(cut, num_parallel_calls=num_parallel_calls, deterministic=True)
    segments = segments.filter(has_segments).map(without_flag).unbatch()
    if shuffle_buffer:
        segments = segments.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return segments.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
