"""Audio decoding, view sampling, tf.data pipelines and dataset builders. Knows no pretext method.

Modules: ``audio`` (decode any file, typed errors), ``prepare`` (``kmssl prepare``: TFRecord
shards), ``tfrecord`` (the record format), ``views`` (the in-graph multi-view sampler),
``pipelines`` (pretraining datasets), ``segments`` (downstream segment datasets),
``labeled_csv`` (the labeled format the probes read), ``rendered`` (the offline labeled dataset).
Names below import their module (and TensorFlow, for the tf.data parts) on first use.
"""

import importlib

from keras_music_ssl.data.audio import AudioError, load_audio

_LAZY = {
    "prepare_shards": "prepare", "prepare_file": "prepare", "iter_sources": "prepare",
    "ViewSampler": "views",
    "pretraining_dataset": "pipelines", "track_dataset": "pipelines", "sample_views": "pipelines",
    "ViewSamplerCounts": "pipelines",
    "SkipReport": "audio_dataset",
    "segment_dataset": "segments", "track_segments": "segments", "chunk_track": "segments",
    "LabeledDataset": "labeled_csv", "read_labeled_dataset": "labeled_csv", "write_labeled_dataset": "labeled_csv",
    "build_rendered_dataset": "rendered",
}

__all__ = ["AudioError", "load_audio", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
