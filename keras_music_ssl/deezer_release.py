"""The authors' five trained encoders, downloaded and converted on first use.

``MusicEncoder.from_preset("deezer_byol")`` (any of the five names in ``presets.DEEZER_PRESETS``)
finds ``<weights dir>/deezer_byol/``, or calls :func:`fetch_presets`, which

1. downloads the authors' release ``weights.zip`` (``download.py``: progress bar, resumed after an
   interruption) from ``KMSSL_DEEZER_WEIGHTS_URL``, else the GitHub release; a ``weights.zip``
   already in the weights folder (put there by hand, e.g. on a machine without internet) is used
   without the network;
2. checks it (a zip whose members' CRCs match, holding the five checkpoints, at its root or in a
   folder) and converts all five with the offline converter (``convert.py``: ``weights_only``
   loading, strict key mapping) into a hidden staging folder;
3. moves the five presets into place only when all converted, and removes the zip.

A damaged zip or a member that does not convert is refused in one line, and nothing of it is
left in the weights folder (the next call downloads afresh). Each preset records the zip's URL,
SHA-256 and size, and its own weights file's (checked by ``presets.load_preset``). Later calls
never touch the network. Processes that ask at once wait for the first one's work.
"""

import os
import pathlib
import shutil
import warnings
import zipfile

from keras_music_ssl import storage
from keras_music_ssl.download import DownloadError, download, partial_download, sha256_of
from keras_music_ssl.errors import KmsslError
from keras_music_ssl.presets import (DEEZER_PRESETS, DEEZER_WEIGHTS_URL, METADATA_FILE, checked_zip,
                                     make_named_presets, weights_dir)

URL_ENV = "KMSSL_DEEZER_WEIGHTS_URL"
ZIP_NAME = "weights.zip"


class ReleaseError(KmsslError):
    """The authors' release could not be downloaded or converted (one line: what to do)."""


def release_url():
    return os.environ.get(URL_ENV) or DEEZER_WEIGHTS_URL


def fetch_presets(root=None, source=None, overwrite=False, progress=True):
    """Make the five named presets in ``root`` (the weights folder) and return ``{name: folder}``.

    ``source``: a local ``weights.zip`` to convert instead of downloading (kept as it is).
    ``overwrite``: convert again even if the presets exist (downloading again when no
    ``source`` is given). Raises :class:`ReleaseError` in one line.
    """
    root = weights_dir(root)
    if source and not pathlib.Path(source).is_file():  # before any folder is made
        raise ReleaseError(f"{source}: no such file (give the authors' weights.zip)")

    def obtain():
        return (pathlib.Path(source), False) if source else (_download(root), True)

    def convert(zip_path, downloaded, staging):
        release = {"url": release_url() if downloaded else str(zip_path), "sha256": sha256_of(zip_path),
                   "size": zip_path.stat().st_size}
        _convert_all(zip_path, staging, release)

    return make_named_presets("deezer", DEEZER_PRESETS, root, obtain, convert, overwrite)


def _download(root):
    target = root / ZIP_NAME
    if target.exists():
        return target
    url = release_url()
    try:
        return download(url, target, what=f"the authors' weights ({ZIP_NAME})")
    except DownloadError as error:
        resumable = partial_download(target).exists()
        raise ReleaseError(f"{error}. {'Run again to resume, or d' if resumable else 'D'}ownload {ZIP_NAME} "
                           f"by hand ({DEEZER_WEIGHTS_URL}) and put it at {target}, or set {URL_ENV} to a "
                           "mirror") from None


def _members(zip_path):
    """``{checkpoint file name: zip member}`` for the five checkpoints; ReleaseError otherwise."""
    try:
        names = checked_zip(zip_path)
    except ValueError as error:
        raise ReleaseError(f"{error}; it was removed if downloaded here, run again to download it anew") from None
    wanted = {filename for _, filename in DEEZER_PRESETS.values()}
    found = {}
    for member in names:
        name = member.rsplit("/", 1)[-1]
        if name in wanted and not member.startswith("__MACOSX/"):
            if name in found:
                raise ReleaseError(f"{zip_path} holds {name} twice ({found[name]}, {member}); which one is meant?")
            found[name] = member
    missing = sorted(wanted - set(found))
    if missing:
        raise ReleaseError(f"{zip_path} is not the authors' release: it lacks {', '.join(missing)}")
    return found


def _convert_all(zip_path, staging, release):
    """Convert the five checkpoints of the zip into ``staging/<preset name>/``."""
    from keras_music_ssl.convert import CheckpointError, convert_checkpoint
    from keras_music_ssl.torch_weights import StateDictMismatchError

    members = _members(zip_path)
    with zipfile.ZipFile(zip_path) as archive:
        for name, (method, filename) in DEEZER_PRESETS.items():
            checkpoint = staging / filename
            with archive.open(members[filename]) as src, open(checkpoint, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # frontend notes stay in metadata
                    convert_checkpoint(checkpoint, staging / name, method=method)
            except (CheckpointError, StateDictMismatchError) as error:
                raise ReleaseError(f"{zip_path}: {members[filename]} cannot be converted "
                                   f"({str(error).splitlines()[0]}); nothing was kept") from None
            checkpoint.unlink()
            meta = storage.read_json(staging / name / METADATA_FILE)
            storage.write_json(staging / name / METADATA_FILE,
                               {**meta, "release": {**release, "member": members[filename]}})
