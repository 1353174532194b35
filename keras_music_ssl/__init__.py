"""keras-music-ssl: multi-view self-supervised music representation learning in Keras 3.

Importing the package imports Keras and every module that registers a serializable class
(frontend, backbone, heads, tagger, the pretext methods with their optimizer and schedules,
the probe's ``LogMelStats``, musicnn's taggers, the fine-tuning model), so
``keras.saving.load_model`` reads any of its ``.keras`` files
in a process that only ran ``import keras_music_ssl``. Data workers fork
(``data/parallel.py``), so they inherit these modules instead of importing them again.
"""

import importlib

__version__ = "0.8.0"

from keras_music_ssl.errors import KmsslError, backend_problem  # noqa: E402

_BACKEND_PROBLEM = backend_problem()
if _BACKEND_PROBLEM is None:  # else Keras cannot load: `kmssl` says why in one line, attributes raise
    from keras_music_ssl.backbone import AttentionPool2D, Bottleneck, ModifiedResNet, MusicEncoder
    from keras_music_ssl.frontend import LogMelSpectrogram

    # Imported for their registrations. None of them reads a name from this half-initialised
    # package (they import submodules by their full path), so no import cycle can bite.
    for _module in ("heads", "tagger", "schedules", "pretext", "probe.baselines", "musicnn", "finetune"):
        importlib.import_module(f"{__name__}.{_module}")
    del _module

    from keras_music_ssl.train import pretrain  # (numpy-free at import; Keras is loaded above)


__all__ = ["AttentionPool2D", "Bottleneck", "LogMelSpectrogram", "ModifiedResNet", "MusicEncoder", "pretrain"]


def __getattr__(name):
    if _BACKEND_PROBLEM is not None and not name.startswith("__"):
        raise KmsslError(_BACKEND_PROBLEM)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
