"""tf.data over audio files: decode with :func:`load_audio` in the pipeline, skip and report bad files.

A file that cannot be used is dropped from the stream, logged once and recorded in a
:class:`SkipReport` (path -> reason); it never stops the pipeline. If every file has failed, the
pipeline raises instead of looping forever on an empty repeated stream.
"""

import logging
import os
import threading

import numpy as np
import tensorflow as tf

from keras_music_ssl.data.audio import MAX_DURATION, SAMPLE_RATE, AudioError, is_audio_path, load_audio

log = logging.getLogger(__name__)


class SkipReport:
    """Files a pipeline dropped: ``skipped[path] = (reason, detail)``. Thread-safe."""

    def __init__(self):
        self.skipped = {}
        self._lock = threading.Lock()

    def add(self, path, reason, detail):
        with self._lock:
            if path not in self.skipped:
                log.warning("skipped %s: %s (%s)", path, reason, detail)
            self.skipped[path] = (reason, detail)

    def covers(self, paths):
        """True if every path of the set ``paths`` was skipped (a stream with nothing left)."""
        with self._lock:
            return len(self.skipped) >= len(paths) and paths <= self.skipped.keys()

    def counts(self):
        """Skipped files by reason."""
        with self._lock:
            reasons = [reason for reason, _ in self.skipped.values()]
        return {reason: reasons.count(reason) for reason in sorted(set(reasons))}


def list_audio_files(folder):
    """Sorted audio files under ``folder`` (recursive), by extension."""
    found = []
    for root, subfolders, files in os.walk(os.fspath(folder)):
        subfolders.sort()
        found += [os.path.join(root, name) for name in sorted(files) if is_audio_path(name)]
    return found


def decoded_audio(records, report, paths, sample_rate=SAMPLE_RATE, max_duration=MAX_DURATION,
                  min_duration=0.0, num_parallel_calls=tf.data.AUTOTUNE, cache_dir=None):
    """Add ``audio`` (float32 (samples,)) to a dataset of dicts with a ``path``; drop unusable files.

    ``paths``: the distinct files the stream holds, so that the pipeline stops with an error
    once all of them have failed (a repeated stream would otherwise loop forever).
    ``cache_dir``: keep the decoded tracks there (:class:`~keras_music_ssl.data.audio_cache.AudioCache`),
    so that later passes read them instead of decoding again.
    """
    paths = frozenset(os.fspath(p) for p in paths)
    if cache_dir is not None:
        from keras_music_ssl.data.audio_cache import AudioCache

        cache = AudioCache(cache_dir, sample_rate, max_duration, min_duration)
    else:
        cache = None

    def load(path):
        path = os.fsdecode(path)  # the str os.walk gave, also for a name that is not UTF-8
        try:
            if cache is not None:
                return cache.load(path)
            return load_audio(path, sample_rate, mono=True, normalize=True, max_duration=max_duration,
                              min_duration=min_duration)
        except AudioError as error:
            report.add(path, error.reason, error.detail)
            if report.covers(paths):
                raise ValueError(f"none of the {len(paths)} audio files could be used: {report.counts()}") from None
            return np.zeros(0, np.float32)

    def decode(record):
        audio = tf.numpy_function(load, [record["path"]], tf.float32, name="load_audio")
        audio.set_shape([None])
        return {**record, "audio": audio}

    return records.map(decode, num_parallel_calls=num_parallel_calls, deterministic=True).filter(
        lambda record: tf.size(record["audio"]) > 0)
