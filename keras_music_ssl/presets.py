"""Presets: a folder with ``config.json`` + ``model.weights.h5`` + ``metadata.json``.

A preset is data, not code (as in keras-hub): the config rebuilds the model, the weights
fill it, and the metadata says what it is (method, source, sample rate, input contract,
licence). ``MusicEncoder.from_preset`` / ``save_to_preset`` are the public entry points.

Named presets (``deezer_contrastive``, ...) are the paper's released checkpoints after
conversion. They cannot be downloaded at run time here; they resolve to
``<weights_dir>/<name>/``, where ``weights_dir`` is an argument, else the environment
variable ``KMSSL_WEIGHTS_DIR``, else ``~/.cache/keras_music_ssl/presets``.
"""

import json
import os
import pathlib

import keras

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
WEIGHTS_DIR_ENV = "KMSSL_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = pathlib.Path("~/.cache/keras_music_ssl/presets")
DEEZER_WEIGHTS_URL = (
    "https://github.com/deezer/multi-view-ssl-benchmark/releases/download/v0.0.1/weights.zip"
)

# name -> (method, checkpoint file inside the authors' weights.zip)
DEEZER_PRESETS = {
    "deezer_contrastive": ("contrastive", "contrastive.pt"),
    "deezer_byol": ("byol", "byol.pt"),
    "deezer_clustering": ("clustering", "clustering.pt"),
    "deezer_barlow_twins": ("barlow_twins", "barlow_twins.pt"),
    "deezer_vicreg": ("vicreg", "feature_stats.pt"),
}


class PresetNotFoundError(FileNotFoundError):
    pass


def weights_dir(path=None):
    return pathlib.Path(path or os.environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()


def resolve_preset(name_or_dir, weights_root=None):
    """Path of a preset folder, from a folder path or a named preset."""
    path = pathlib.Path(name_or_dir).expanduser()
    if (path / CONFIG_FILE).is_file():
        return path
    name = str(name_or_dir)
    if name in DEEZER_PRESETS:
        local = weights_dir(weights_root) / name
        if (local / CONFIG_FILE).is_file():
            return local
        checkpoint = DEEZER_PRESETS[name][1]
        raise PresetNotFoundError(
            f"Preset {name!r} has not been converted yet (looked in {local}).\n"
            f"  1. Download the authors' weights: {DEEZER_WEIGHTS_URL}\n"
            f"  2. Unzip it, then run: kmssl convert-deezer weights/{checkpoint} --out {local}\n"
            f"  (or set {WEIGHTS_DIR_ENV} to the folder that holds your converted presets)"
        )
    if path.exists():
        raise PresetNotFoundError(f"{path} is not a preset folder: it has no {CONFIG_FILE}.")
    raise PresetNotFoundError(
        f"Unknown preset {name!r}: neither a folder nor one of {', '.join(DEEZER_PRESETS)}."
    )


def save_to_preset(model, preset_dir, metadata=None):
    """Write ``model`` (config + weights) and ``metadata`` to ``preset_dir``."""
    preset_dir = pathlib.Path(preset_dir)
    preset_dir.mkdir(parents=True, exist_ok=True)
    config = keras.saving.serialize_keras_object(model)
    (preset_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    model.save_weights(str(preset_dir / WEIGHTS_FILE))
    meta = {"keras_music_ssl_version": _version(), **(metadata or {})}
    (preset_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    return preset_dir


def load_preset(name_or_dir, weights_root=None, load_weights=True):
    """Rebuild the model stored in a preset (folder or name) and load its weights."""
    path = resolve_preset(name_or_dir, weights_root)
    config = json.loads((path / CONFIG_FILE).read_text())
    model = keras.saving.deserialize_keras_object(config)
    if load_weights:
        model.load_weights(str(path / WEIGHTS_FILE))
    return model


def preset_metadata(name_or_dir, weights_root=None):
    path = resolve_preset(name_or_dir, weights_root)
    meta = path / METADATA_FILE
    return json.loads(meta.read_text()) if meta.is_file() else {}


def _version():
    from keras_music_ssl import __version__

    return __version__
