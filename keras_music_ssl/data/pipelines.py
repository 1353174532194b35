"""Pretraining datasets: tracks -> multi-view batches ``(batch, views, samples)`` float32 for ``fit``.

Two sources, one pipeline:

- a folder made by ``kmssl prepare`` (TFRecord shards): shard files are shuffled, read
  ``cycle_length`` at a time (interleaved) and parsed — the way to train on a large corpus;
- a folder of audio files (any format :func:`load_audio` reads), decoded in the pipeline — for small
  sets; unusable files are skipped and recorded in ``report``.

Then: repeat, draw views per track (:class:`ViewSampler`, seeded by the track's position in the
stream, so every epoch draws new views), shuffle the view sets, batch (dropping the remainder),
prefetch. Same ``seed``, same batches: every random step is seeded and every parallel step keeps
its order. (``Dataset.shuffle`` also mixes in TensorFlow's global seed, so keep that fixed too,
or unset.) The elements are a single tensor, so ``model.fit(dataset, steps_per_epoch=...)`` sees
``x = views`` and ``y = None`` on every Keras backend. Add :class:`ViewSamplerCounts` to the
callbacks to log, each epoch, how many tracks were too short for the gap rule.
"""

import os

import keras
import tensorflow as tf

from keras_music_ssl.data.audio_dataset import SkipReport, decoded_audio, list_audio_files
from keras_music_ssl.data.tfrecord import SHARD_PATTERN, list_shards, parse_track
from keras_music_ssl.data.views import ViewSampler


def is_prepared(source):
    """Whether ``source`` is a folder of prepared TFRecord shards (``kmssl prepare``'s output)."""
    return os.path.isdir(source) and bool(tf.io.gfile.glob(os.path.join(source, SHARD_PATTERN)))


def track_dataset(source, seed=0, shuffle=True, repeat=True, cycle_length=8, report=None,
                  num_parallel_calls=tf.data.AUTOTUNE, cache_dir=None):
    """Whole tracks, float32 ``(samples,)`` at 16 kHz, from a prepared folder, an audio folder or a
    list of audio files (or of shard files).

    ``report`` (a :class:`SkipReport`) collects the audio files that could not be decoded.
    ``cache_dir``: audio sources only, a folder that keeps the decoded tracks (``data/audio_cache.py``).
    """
    if isinstance(source, (list, tuple)):
        files = [os.fspath(f) for f in source]
        if not files:
            raise ValueError("track_dataset got an empty list of files")
        prepared = all(f.endswith(".tfrecord") for f in files)
    else:
        source = os.fspath(source)
        prepared = is_prepared(source)
        files = list_shards(source) if prepared else list_audio_files(source)
        if not files:
            raise FileNotFoundError(f"no shards and no audio files in {source}")
    ds = tf.data.Dataset.from_tensor_slices([os.fsencode(f) for f in files])  # any file name, UTF-8 or not
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if prepared:
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(cycle_length, len(files)),
                           num_parallel_calls=num_parallel_calls, deterministic=True)
        return ds.map(lambda record: parse_track(record)["audio"], num_parallel_calls=num_parallel_calls,
                      deterministic=True)
    records = ds.map(lambda path: {"path": path})
    report = report if report is not None else SkipReport()
    return decoded_audio(records, report, files, num_parallel_calls=num_parallel_calls, cache_dir=cache_dir).map(
        lambda record: record["audio"])


def sample_views(tracks, sampler, seed=0, views_per_track=1, num_parallel_calls=tf.data.AUTOTUNE):
    """Map a dataset of tracks to view sets ``(V, samples)``; ``views_per_track`` sets per track."""
    seed = tf.constant(seed, tf.int64)

    def draw(index, track):
        sets = [sampler(track, tf.stack([seed, index * views_per_track + j])) for j in range(views_per_track)]
        return tf.stack(sets)  # (views_per_track, V, samples)

    views = tracks.enumerate().map(draw, num_parallel_calls=num_parallel_calls, deterministic=True)
    return views.unbatch()


def pretraining_dataset(source, batch_size, sampler=None, seed=0, shuffle_buffer=256, views_per_track=1,
                        repeat=True, cycle_length=8, report=None, num_parallel_calls=tf.data.AUTOTUNE,
                        cache_dir=None):
    """Batches of views ``(batch_size, V, samples)`` float32 from a prepared folder or an audio folder.

    ``sampler``: a :class:`ViewSampler` (default: the paper's two 4-s views >= 4 s apart); read
    its ``counts()`` afterwards for the tracks that were too short for the gap rule.
    ``views_per_track`` > 1 draws several view sets per decoded track (cheaper for compressed
    audio folders; the shuffle buffer spreads them across batches). ``cache_dir`` keeps the decoded
    tracks of an audio source, so that only the first pass decodes (the same batches as without it).
    """
    sampler = sampler or ViewSampler()
    tracks = track_dataset(source, seed=seed, repeat=repeat, cycle_length=cycle_length, report=report,
                           num_parallel_calls=num_parallel_calls, cache_dir=cache_dir)
    views = sample_views(tracks, sampler, seed=seed, views_per_track=views_per_track,
                         num_parallel_calls=num_parallel_calls)
    if shuffle_buffer and shuffle_buffer > 1:
        views = views.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return views.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


class ViewSamplerCounts(keras.callbacks.Callback):
    """Adds the sampler's counts to each epoch's logs (History, progress bar), as ``views_<name>``:
    ``views_tracks``, ``views_reduced_gap``, ``views_padded``, ``views_silent_views`` (running totals)."""

    def __init__(self, sampler):
        super().__init__()
        self.sampler = sampler

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update({f"views_{name}": value for name, value in self.sampler.counts().items()})
