"""Audio decoding, view sampling and tf.data pipelines. Knows no pretext method."""

from keras_music_ssl.data.audio import AudioError, load_audio

__all__ = ["AudioError", "load_audio"]
