"""The frozen models a probe compares, by name, and the fingerprint that keys their cache.

- a preset folder or a named preset (``deezer_contrastive``, ...): its ``MusicEncoder``; the name
  in reports is the folder's base name (or the preset name);
- ``random``: the paper's encoder (``MusicEncoder()``) with a seeded random init, the floor of
  the architecture;
- ``logmel-stats``: :class:`~keras_music_ssl.probe.baselines.LogMelStats`, the handcrafted floor.

A model is anything with ``num_samples``, ``output_dim`` and ``predict_on_batch`` (waveform
clips -> embeddings); ``ProbedModel`` pairs it with its name and fingerprint.
"""

import dataclasses
import os

from keras_music_ssl.storage import weights_fingerprint  # noqa: F401 (the cache key; imported from here too)

RANDOM = "random"
LOGMEL_STATS = "logmel-stats"


@dataclasses.dataclass
class ProbedModel:
    name: str
    model: object  # a keras.Model with num_samples, output_dim, predict_on_batch
    fingerprint: str

    @property
    def is_encoder(self):
        """True for a ``MusicEncoder``: its probe head can be exported as a tagger."""
        from keras_music_ssl.backbone import MusicEncoder

        return isinstance(self.model, MusicEncoder)


def probed_model(model, name=None):
    """Wrap an in-memory model (e.g. a freshly trained encoder) for the harness."""
    return ProbedModel(name or model.name, model, weights_fingerprint(model))


def resolve_model(spec, seed=0, weights_dir=None):
    """A :class:`ProbedModel` from a ``--model`` value (module docstring)."""
    import keras

    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.probe.baselines import LogMelStats

    if spec == RANDOM:
        keras.utils.set_random_seed(seed)  # the random floor is the same encoder on every run
        return probed_model(MusicEncoder(), RANDOM)
    if spec == LOGMEL_STATS:
        return probed_model(LogMelStats(), LOGMEL_STATS)
    encoder = MusicEncoder.from_preset(spec, weights_dir)
    name = os.path.basename(os.path.normpath(os.fspath(spec)))
    return probed_model(encoder, name)
