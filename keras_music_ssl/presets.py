"""Presets: a folder with ``config.json`` + ``model.weights.h5`` + ``metadata.json``.

A preset is data, not code (as in keras-hub): the config rebuilds the model, the weights
fill it, and the metadata says what it is (method, source, sample rate, input contract,
licence). ``MusicEncoder.from_preset`` / ``save_to_preset`` are the public entry points.

Named presets are released checkpoints after conversion: the paper's encoders
(``deezer_contrastive``, ...) and musicnn's taggers (``musicnn_mtt``, ``vgg_msd``, ...). They
resolve to ``<weights_dir>/<name>/``, where ``weights_dir`` is an argument, else the environment
variable ``KMSSL_WEIGHTS_DIR``, else ``~/.cache/keras_music_ssl/presets``; the first use
downloads and converts them (``deezer_release.py``, ``musicnn/release.py``). ``hf://`` and ``kaggle://``
handles load presets from the Hugging Face Hub and Kaggle Models (``hub.py``). A preset's
metadata records its weights file's size and SHA-256; a file that no longer matches is refused
(a named preset is converted again).

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
HUB_SCHEMES = ("hf://", "kaggle://")
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

# name -> (model class, checkpoint folder inside the musicnn 0.1.0 wheel)
MUSICNN_PRESETS = {
    "musicnn_mtt": ("Musicnn", "MTT_musicnn"),
    "musicnn_msd": ("Musicnn", "MSD_musicnn"),
    "vgg_mtt": ("Vgg", "MTT_vgg"),
    "vgg_msd": ("Vgg", "MSD_vgg"),
}
NAMED_PRESETS = (*DEEZER_PRESETS, *MUSICNN_PRESETS)


class PresetNotFoundError(KmsslError, FileNotFoundError):
    """No preset of that name or folder."""


class PresetError(KmsslError, ValueError):
    """A preset that exists but cannot be used: a broken config or weights file, non-finite weights."""


class PresetKindError(PresetError, TypeError):
    """A preset that holds another kind of model than the one asked for (a tagger where an encoder is needed)."""


def weights_dir(path=None):
    return pathlib.Path(path or os.environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()


def resolve_preset(name_or_dir, weights_root=None, download=True):
    """Path of a preset folder, from a folder path, a hub handle (``hf://owner/name``,
    ``kaggle://owner/model/keras/variant``: ``hub.py``) or a named preset (:data:`NAMED_PRESETS`,
    downloaded and converted on first use unless ``download=False``: ``deezer_release.py``,
    ``musicnn/release.py``)."""
    path = pathlib.Path(name_or_dir).expanduser()
    if (path / CONFIG_FILE).is_file():
        return path
    name = str(name_or_dir)
    if name.startswith(HUB_SCHEMES):
        from keras_music_ssl.hub import download_preset

        return download_preset(name)
    if name in NAMED_PRESETS:
        local = weights_dir(weights_root) / name
        if not (local / CONFIG_FILE).is_file() and download:
            _fetch(name, weights_root)
        if (local / CONFIG_FILE).is_file():
            return local
        how = ("run kmssl convert-deezer --download" if name in DEEZER_PRESETS else
               "load it once with the network (pip download musicnn==0.1.0) or with KMSSL_MUSICNN_WHEEL set")
        raise PresetNotFoundError(f"Preset {name!r} is not in {local}: {how}, "
                                  f"or set {WEIGHTS_DIR_ENV} to the folder that holds your converted presets")
    if path.exists():
        raise PresetNotFoundError(f"{path} is not a preset folder: it has no {CONFIG_FILE}.")
    raise PresetNotFoundError(
        f"Unknown preset {name!r}: neither a folder, a hub handle (hf://..., kaggle://...) nor one of "
        f"{', '.join(NAMED_PRESETS)}."
    )


def make_named_presets(release, names, root, obtain, convert, overwrite=False):
    """Convert a release into the named presets ``names`` in ``root`` (a weights folder); return
    ``{name: folder}``. The one mechanism of ``deezer_release.py`` and ``musicnn/release.py``.

    Nothing happens when all of them exist (unless ``overwrite``). Otherwise, under a lock other
    processes wait on (they then find the presets made), ``obtain()`` gives ``(source file,
    downloaded here)`` and ``convert(source, downloaded, staging)`` writes one preset folder per
    name into a hidden ``staging`` folder; only when all converted are they moved into place. A
    source downloaded here is removed afterwards, and also when ``convert`` refuses it (a
    ``KmsslError``), so the next call downloads afresh; the presets' metadata keep its checksum.
    """
    root = weights_dir(root)
    folders = {name: root / name for name in names}

    def made():
        return not overwrite and all((folder / CONFIG_FILE).is_file() for folder in folders.values())

    if made():
        return folders
    storage.check_output(root, "folder", "the weights folder")
    root.mkdir(parents=True, exist_ok=True)
    with storage.locked(root / f"{release}-release", folder=False, wait=True):
        if made():  # another process made them meanwhile
            return folders
        source, downloaded = obtain()
        staging = storage.partial_path(root / f"{release}-release")
        storage.clean_partials(root, only_dead=True)  # a killed conversion's staging folder
        try:
            staging.mkdir()
            convert(source, downloaded, staging)
            for name, folder in folders.items():
                if folder.exists():
                    shutil.rmtree(folder)  # an older conversion (overwrite) or a folder without a config
                os.replace(staging / name, folder)
        except KmsslError:
            if downloaded:
                source.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if downloaded:
            source.unlink(missing_ok=True)
    return folders


def checked_zip(path):
    """The member names of the zip ``path`` once every member passes its CRC check; a ``ValueError``
    with a one-line reason otherwise."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable zip ({error})") from None
    if damaged is not None:
        raise ValueError(f"{path} is damaged (member {damaged} fails its CRC check)")
    return names


def _fetch(name, weights_root):
    """Download and convert the release that holds the named preset ``name``."""
    if name in DEEZER_PRESETS:
        from keras_music_ssl.deezer_release import fetch_presets
    else:
        from keras_music_ssl.musicnn.release import fetch_presets
    fetch_presets(weights_root)


def _recorded(model, weights):
    """What ``metadata.json`` records about the saved model besides the caller's metadata, as
    keras-hub's ``metadata.json`` does (versions, parameter count, date), plus the weights file's
    size and SHA-256 (``load_preset`` checks them) and the weights fingerprint (which row of a
    probe report is this model: ``card.py``)."""
    import datetime

    from keras_music_ssl.download import sha256_of

    return {"keras_version": keras.__version__, "backend": keras.backend.backend(),
            "parameter_count": int(model.count_params()),
            "trainable_parameter_count": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
            "weights_fingerprint": storage.weights_fingerprint(model),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "files": {WEIGHTS_FILE: {"sha256": sha256_of(weights), "size": weights.stat().st_size}}}


def save_to_preset(model, preset_dir, metadata=None):
    """Write ``model`` (config + weights), ``metadata`` and a model card to ``preset_dir``, atomically.

    The files keras-hub writes (``config.json``, ``model.weights.h5``, ``metadata.json`` with
    versions, parameter count, date and the weights' checksum) and ``README.md`` (the card,
    ``card.py``), so the folder uploads to a model hub as is. They are written to a hidden
    sibling folder first, so a failure (of the card too) leaves no partial preset: a new (or
    empty) ``preset_dir`` appears in one rename; in an existing folder each file is replaced in
    one rename and other files are left alone, a hand-written ``README.md`` included.
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
        # Recorded after the caller's metadata: facts about these files, which no caller may override.
        meta = {"keras_music_ssl_version": _version(), **(metadata or {}), **_recorded(model, staging / WEIGHTS_FILE)}
        (staging / METADATA_FILE).write_text(storage.dumps_json(meta))
        from keras_music_ssl.card import CARD_FILE, is_generated, model_card

        (staging / CARD_FILE).write_text(model_card(staging), encoding="utf-8")
        if preset_dir.is_dir() and any(preset_dir.iterdir()):
            old_card = preset_dir / CARD_FILE
            keep_card = os.path.lexists(old_card) and not is_generated(old_card)  # the user's own card
            for name in (WEIGHTS_FILE, METADATA_FILE, CARD_FILE, CONFIG_FILE):  # config last: marks a preset
                if not (name == CARD_FILE and keep_card):
                    os.replace(staging / name, preset_dir / name)
            shutil.rmtree(staging)
        else:
            os.replace(staging, preset_dir)  # POSIX renames a folder onto an empty one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return preset_dir


def load_preset(name_or_dir, weights_root=None, load_weights=True, kind=None):
    """Rebuild the model stored in a preset (folder or name) and load its weights.

    A broken config or weights file, or a weight that is NaN or infinite, raises
    :class:`PresetError` (a model with a NaN weight outputs NaN for every input); with ``kind``
    (a class: the ``from_preset`` of ``MusicEncoder``, ``Musicnn``, ...), a preset of another
    kind of model raises :class:`PresetKindError`."""
    path = resolve_preset(name_or_dir, weights_root)
    if load_weights and not (path / WEIGHTS_FILE).is_file():
        raise PresetNotFoundError(f"{path} has a {CONFIG_FILE} but no {WEIGHTS_FILE}.")
    damage = load_weights and damaged(path)
    if damage and str(name_or_dir) in NAMED_PRESETS and path == weights_dir(weights_root) / str(name_or_dir):
        import warnings

        warnings.warn(f"{damage}; converting the release again", stacklevel=2)
        shutil.rmtree(path)  # our own cache: fetched again below
        path, damage = resolve_preset(name_or_dir, weights_root), None
    if damage:
        raise PresetError(damage)
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
    if kind is not None and not isinstance(model, kind):
        raise PresetKindError(f"Preset {name_or_dir!r} holds a {type(model).__name__}, not a {kind.__name__}.")
    return model


def damaged(path):
    """Why the weights file of the preset folder ``path`` is not the one its metadata records
    (size and SHA-256, written by :func:`save_to_preset`), or None (it is, or nothing is recorded)."""
    from keras_music_ssl.download import sha256_of

    path = pathlib.Path(path)
    try:
        recorded = preset_metadata(path).get("files", {}).get(WEIGHTS_FILE)
    except (AttributeError, storage.StorageError):
        return None  # no usable record: the weights load checks what it can
    if not isinstance(recorded, dict):
        return None
    weights = path / WEIGHTS_FILE
    size = weights.stat().st_size
    if "size" in recorded and size != recorded["size"]:
        return f"{weights} has {size} bytes, not the {recorded['size']} it was saved with (damaged or replaced)"
    if "sha256" in recorded and sha256_of(weights) != recorded["sha256"]:
        return f"{weights} is not the file it was saved as (its SHA-256 differs: damaged or replaced)"
    return None


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
