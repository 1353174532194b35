"""The handcrafted floor every comparison shows: mean and std over time of the library's log-mel.

``LogMelStats`` maps a 4 s clip to ``[mean_t S(m, t), std_t S(m, t)]`` for each mel band ``m``
of ``LogMelSpectrogram`` (the encoder's own frontend, in dB): 2 x 128 = 256 features. It is a
Keras model with the encoder's interface (``num_samples``, ``output_dim``, ``predict_on_batch``),
so the probe harness treats it as one more frozen embedder. A self-supervised encoder is
worth its cost where a probe on it beats this.
"""

import keras
from keras import ops

from keras_music_ssl.frontend import LogMelSpectrogram
from keras_music_ssl.inference import FastInference


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class LogMelStats(FastInference, keras.Model):
    """Waveform (batch, num_samples) -> (batch, 2 * n_mels): per-band mean and std over time."""

    def __init__(self, num_samples=64000, frontend=None, **kwargs):
        frontend_config = dict(frontend or {})
        waveform = keras.Input((num_samples,), name="waveform")
        logmel = LogMelSpectrogram(**frontend_config, name="frontend")
        spec = ops.squeeze(logmel(waveform), -1)  # (batch, mel, time)
        stats = ops.concatenate([ops.mean(spec, axis=2), ops.std(spec, axis=2)], axis=-1)
        super().__init__(waveform, stats, **kwargs)
        self.frontend = logmel
        self.num_samples = int(num_samples)
        self.frontend_config = frontend_config
        self.output_dim = 2 * logmel.n_mels

    @property
    def sample_rate(self):
        return self.frontend.sample_rate

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "num_samples": self.num_samples,
                "frontend": self.frontend_config}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
