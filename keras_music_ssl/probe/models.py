"""The frozen models a probe compares, by name, and the fingerprint that keys their cache.

- a preset folder or a named preset (``deezer_contrastive``, ...): its ``MusicEncoder``; the name
  in reports is the folder's base name (or the preset name);
- a tagger preset (``musicnn_mtt``, ``vgg_msd``, ...: musicnn's supervised taggers): its
  ``penultimate`` features on the same 4 s segments (``musicnn.features.PatchFeatures``), a
  reference trained on real tags (:func:`supervised_reference` adds one to a report when it can);
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
    from keras_music_ssl.musicnn import PatchTagger
    from keras_music_ssl.musicnn.features import PatchFeatures
    from keras_music_ssl.presets import load_preset

    model = load_preset(spec, weights_dir)
    name = os.path.basename(os.path.normpath(os.fspath(spec)))
    if isinstance(model, PatchTagger):
        return probed_model(PatchFeatures(model), name)
    if not isinstance(model, MusicEncoder):
        from keras_music_ssl.presets import PresetKindError

        raise PresetKindError(f"Preset {spec!r} holds a {type(model).__name__}, which the probe cannot embed with")
    return probed_model(model, name)


REFERENCE = "musicnn_mtt"  # the supervised reference that compare and the quickstart add by default


def supervised_reference(name=REFERENCE, weights_dir=None):
    """``[ProbedModel]`` of the tagger preset ``name`` for a report, or ``[]`` (saying why on stderr) when
    it cannot be had: the first use downloads musicnn's wheel (``musicnn/release.py``), and a comparison
    must not fail for want of its reference. ``name=None`` (``--reference none``): ``[]``. A name that
    is no preset, or a preset that cannot be used, is the caller's mistake: its
    ``PresetNotFoundError`` / ``PresetError`` is raised (one line, exit 2 in ``kmssl``)."""
    import sys

    from keras_music_ssl.errors import KmsslError
    from keras_music_ssl.presets import PresetError, PresetNotFoundError

    if not name:
        return []
    try:
        return [resolve_model(name, weights_dir=weights_dir)]
    except (PresetNotFoundError, PresetError):
        raise
    except KmsslError as error:  # a download or a conversion that failed: the report goes on
        print(f"the supervised reference {name} is left out: {str(error).splitlines()[0]}", file=sys.stderr)
        return []
