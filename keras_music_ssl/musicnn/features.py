"""A musicnn / VGG tagger as a frozen embedder of 4 s clips, for the probe harness.

The probe harness (``keras_music_ssl.probe``) embeds every model on the same 4 s segments
(``keras_music_ssl/track.py``), so a supervised tagger is compared with the self-supervised
encoders on the same audio. ``PatchFeatures`` maps a clip of ``num_samples`` samples to the mean,
over the 3 s patches that cover it, of the tagger's ``penultimate`` features (``features=
"probabilities"``: its tag probabilities, the taggram's rows). Patches start every 47,872 samples
(187 frames, as ``track.py`` cuts a track) and the last one ends with the clip: a 4 s clip gives
two overlapping patches, ``[0, 3.008 s)`` and ``[0.992 s, 4 s)``, so no sample is left out. The
clip is not padded: each patch is framed as musicnn frames the inside of a track.
"""

import keras
from keras import ops

from keras_music_ssl.inference import FastInference

FEATURES = ("penultimate", "probabilities")


def patch_starts(num_samples, patch_samples, step):
    """Start samples of the patches covering ``num_samples``: every ``step``, the last one flush with the end."""
    if num_samples < patch_samples:
        raise ValueError(f"clips of {num_samples} samples are shorter than one patch ({patch_samples} samples)")
    starts = list(range(0, num_samples - patch_samples + 1, step))
    if starts[-1] + patch_samples < num_samples:
        starts.append(num_samples - patch_samples)
    return starts


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class PatchFeatures(FastInference, keras.Model):
    """Waveform clips (batch, num_samples) -> (batch, output_dim): a ``PatchTagger``'s features
    averaged over the patches covering each clip (module docstring). The tagger is frozen."""

    def __init__(self, tagger, num_samples=64000, features="penultimate", **kwargs):
        if isinstance(tagger, dict):
            tagger = keras.saving.deserialize_keras_object(tagger)
        if features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
        tagger.trainable = False
        patch = tagger.num_samples
        starts = patch_starts(int(num_samples), patch, tagger.hop_samples)
        waveform = keras.Input((int(num_samples),), name="waveform")
        outputs = [tagger(waveform[:, start:start + patch])[features] for start in starts]
        mean = outputs[0] if len(outputs) == 1 else ops.mean(ops.stack(outputs, axis=1), axis=1)
        super().__init__(waveform, mean, **kwargs)
        self.tagger = tagger
        self.num_samples = int(num_samples)
        self.features = features
        self.output_dim = int(mean.shape[-1])

    @property
    def sample_rate(self):
        return self.tagger.sample_rate

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "tagger": keras.saving.serialize_keras_object(self.tagger), "num_samples": self.num_samples,
                "features": self.features}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
