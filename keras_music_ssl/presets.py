"""Presets: a folder with ``config.json`` + ``model.weights.h5`` + ``metadata.json``.

A preset is data, not code (as in keras-hub): the config rebuilds the model, the weights
fill it, and the metadata says what it is (method, source, sample rate, input contract,
licence). ``MusicEncoder.from_preset`` / ``save_to_preset`` are the public entry points.

Named presets (``deezer_contrastive``, ...) are the paper's released checkpoints after
conversion. They cannot be downloaded at run time here; they resolve to
``<weights_dir>/<name>/``, where ``weights_dir`` is an argument, else the environment
variable ``KMSSL_WEIGHTS_DIR``, else ``~/.cache/keras_music_ssl/presets``.

The folder layout is keras-hub's, but keras-hub itself is not used: its ``Backbone``
base class would have to become the encoder's parent (the core layers stay plain Keras),
the package pulls tensorflow-text (full TensorFlow), kagglehub, tokenizers and
sentencepiece, and its named presets resolve to Kaggle downloads, not to a local folder.
"""

import os
import pathlib
import shutil

import keras
import numpy as np

from keras_music_ssl import storage
from keras_music_ssl.errors import KmsslError

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


class PresetNotFoundError(KmsslError, FileNotFoundError):
    """No preset of that name or folder."""


class PresetError(KmsslError, ValueError):
    """A preset that exists but cannot be used: a broken config or weights file, non-finite weights."""


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
    """Write ``model`` (config + weights) and ``metadata`` to ``preset_dir``, atomically.

    The three files are written to a hidden sibling folder first, so a failure leaves no
    partial preset: a new (or empty) ``preset_dir`` appears in one rename; in an existing
    folder each file is replaced in one rename and other files are left alone.
    """
    preset_dir = pathlib.Path(preset_dir).expanduser().absolute()
    if preset_dir.exists() and not preset_dir.is_dir():
        raise NotADirectoryError(f"{preset_dir} exists and is not a folder.")
    preset_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = storage.partial_path(preset_dir)
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed process of the same pid
    staging.mkdir()
    try:
        config = keras.saving.serialize_keras_object(model)
        (staging / CONFIG_FILE).write_text(storage.dumps_json(config))
        model.save_weights(str(staging / WEIGHTS_FILE))
        meta = {"keras_music_ssl_version": _version(), **(metadata or {})}
        (staging / METADATA_FILE).write_text(storage.dumps_json(meta))
        if preset_dir.is_dir() and any(preset_dir.iterdir()):
            for name in (WEIGHTS_FILE, METADATA_FILE, CONFIG_FILE):  # config last: marks a preset
                os.replace(staging / name, preset_dir / name)
            staging.rmdir()
        else:
            os.replace(staging, preset_dir)  # POSIX renames a folder onto an empty one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return preset_dir


def load_preset(name_or_dir, weights_root=None, load_weights=True):
    """Rebuild the model stored in a preset (folder or name) and load its weights.

    A broken config or weights file, or a weight that is NaN or infinite, raises
    :class:`PresetError` (a model with a NaN weight outputs NaN for every input)."""
    path = resolve_preset(name_or_dir, weights_root)
    if load_weights and not (path / WEIGHTS_FILE).is_file():
        raise PresetNotFoundError(f"{path} has a {CONFIG_FILE} but no {WEIGHTS_FILE}.")
    config = storage.read_json(path / CONFIG_FILE, "the preset's model config")
    try:
        model = keras.saving.deserialize_keras_object(config)
    except Exception as error:  # Keras raises TypeError, ValueError, KeyError... on a foreign config
        raise PresetError(f"{path / CONFIG_FILE} does not describe a model this version can build "
                          f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(model, keras.Model):
        raise PresetError(f"{path / CONFIG_FILE} describes a {type(model).__name__}, not a model")
    if load_weights:
        try:
            model.load_weights(str(path / WEIGHTS_FILE))
        except (OSError, ValueError, KeyError) as error:  # h5py: a truncated or foreign file
            raise PresetError(f"{path / WEIGHTS_FILE} cannot be loaded into the preset's model "
                              f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
        require_finite_weights(model, path / WEIGHTS_FILE)
    return model


def require_finite_weights(model, source):
    """Raise :class:`PresetError` when a weight of ``model`` holds NaN or an infinity."""
    for weight in model.weights:
        if not np.all(np.isfinite(keras.ops.convert_to_numpy(weight))):
            raise PresetError(f"{source}: weight {weight.path} holds NaN or infinite values; "
                              "this model would output NaN (was its training diverging?)")


def preset_metadata(name_or_dir, weights_root=None):
    path = resolve_preset(name_or_dir, weights_root)
    meta = path / METADATA_FILE
    return storage.read_json(meta, "the preset's metadata") if meta.is_file() else {}


def _version():
    from keras_music_ssl import __version__

    return __version__
