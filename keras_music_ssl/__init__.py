"""keras-music-ssl: multi-view self-supervised music representation learning in Keras 3."""

from keras_music_ssl.backbone import AttentionPool2D, Bottleneck, ModifiedResNet, MusicEncoder
from keras_music_ssl.frontend import LogMelSpectrogram

__version__ = "0.1.0"

__all__ = [
    "AttentionPool2D",
    "Bottleneck",
    "LogMelSpectrogram",
    "ModifiedResNet",
    "MusicEncoder",
]
