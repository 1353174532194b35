"""keras-music-ssl: multi-view self-supervised music representation learning in Keras 3.

The public layers are imported lazily (PEP 562), so data workers and command-line parsing
that only need decoding do not pay for importing Keras and TensorFlow.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "AttentionPool2D": "backbone",
    "Bottleneck": "backbone",
    "ModifiedResNet": "backbone",
    "MusicEncoder": "backbone",
    "LogMelSpectrogram": "frontend",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"keras_music_ssl.{_LAZY[name]}"), name)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
