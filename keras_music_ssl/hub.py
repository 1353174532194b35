"""Presets on the Hugging Face Hub and on Kaggle Models, named by ``hf://`` and ``kaggle://`` handles.

    MusicEncoder.from_preset("hf://owner/name")                   # or hf://owner/name@revision
    MusicEncoder.from_preset("kaggle://owner/model/keras/variation/2")
    kmssl upload my_preset/ hf://me/my-encoder

A hub preset is the same folder as a local one (``config.json``, ``model.weights.h5``,
``metadata.json``, ``README.md``) stored as a model repository, so sharing an encoder needs no
server of ours. Transfers go through the hubs' own clients, ``huggingface_hub`` and ``kagglehub``
(the ``[hub]`` extra, imported only when a handle is used): they authenticate, resume and cache,
so a second :func:`download_preset` of the same handle reads their cache, under their own
settings (``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_TOKEN``; ``KAGGLEHUB_CACHE``,
``KAGGLE_API_TOKEN``).

Offline: with ``HF_HUB_OFFLINE=1`` huggingface_hub serves a cached ``hf://`` handle without a
request. kagglehub has no offline switch: a handle with its version (``.../variation/2``) is read
from its cache without a request, one without asks Kaggle for the latest version every time.

A failure of either client (no such repository, nothing cached offline, no login, no network)
is a :class:`HubError` whose first line says what happened and what to do.
"""

import importlib
import os
import pathlib
from typing import NamedTuple

from keras_music_ssl.errors import KmsslError

HF = "hf://"
KAGGLE = "kaggle://"
HF_FORM = "hf://OWNER/NAME[@REVISION]"
KAGGLE_FORM = "kaggle://OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION] (e.g. kaggle://me/mert/keras/base/1)"
INSTALL = "pip install 'keras-music-ssl[hub]'"
HF_LOGIN = "log in with `hf auth login` or set HF_TOKEN"
KAGGLE_LOGIN = "set KAGGLE_API_TOKEN (or KAGGLE_USERNAME and KAGGLE_KEY), or run kagglehub.login()"
# Exceptions raised from these packages are the hub's answer (HTTP status, offline, no login,
# no network), not a bug of ours: they become one HubError line; anything else keeps its traceback.
_CLIENT_PACKAGES = {"huggingface_hub", "httpx", "httpx2", "httpcore", "kagglehub", "kagglesdk",
                    "requests", "urllib3"}


class HubError(KmsslError):
    """A hub handle that cannot be used: malformed, missing client library, or the hub's refusal."""


class Handle(NamedTuple):
    hub: str  # "hf" or "kaggle"
    repo: str  # owner/name, or owner/model/framework/variation
    version: str | None  # hf: a revision (branch, tag, commit); kaggle: a version number

    def __str__(self):
        if self.hub == "hf":
            return f"{HF}{self.repo}" + (f"@{self.version}" if self.version else "")
        return f"{KAGGLE}{self.repo}" + (f"/{self.version}" if self.version else "")


def is_hub_handle(name):
    """Whether ``name`` is meant as a hub handle (``hf://...`` or ``kaggle://...``), well formed or not."""
    return isinstance(name, str) and name.startswith((HF, KAGGLE))


def parse_handle(handle):
    """A :class:`Handle`, or a :class:`HubError` naming the expected form."""
    if not is_hub_handle(handle):
        raise HubError(f"{handle!r} is not a hub handle: expected {HF_FORM} or {KAGGLE_FORM}")
    if handle.startswith(HF):
        repo, at, revision = handle[len(HF):].partition("@")
        if _segments(repo, (2,)) and (revision or not at):
            return Handle("hf", repo, revision or None)
        raise HubError(f"{handle!r} is not a Hugging Face handle: expected {HF_FORM}")
    parts = handle[len(KAGGLE):].split("/")
    if _segments(handle[len(KAGGLE):], (4, 5)) and (len(parts) == 4 or _version_number(parts[4])):
        return Handle("kaggle", "/".join(parts[:4]), parts[4] if len(parts) == 5 else None)
    raise HubError(f"{handle!r} is not a Kaggle handle: expected {KAGGLE_FORM}")


def download_preset(handle):
    """The local folder of the preset at ``handle``: downloaded, or read from the client's cache."""
    source = parse_handle(handle)
    if source.hub == "hf":
        hf = _client("huggingface_hub", source)
        try:
            folder = hf.snapshot_download(repo_id=source.repo, revision=source.version)
        except Exception as error:
            if not _from_client(error):
                raise
            raise _hf_error(error, source, hf) from None
    else:
        kagglehub = _client("kagglehub", source)
        try:
            folder = kagglehub.model_download(source.repo + (f"/{source.version}" if source.version else ""))
        except Exception as error:
            if not _from_client(error):
                raise
            raise _kaggle_error(error, source) from None
    folder = pathlib.Path(folder)
    from keras_music_ssl.presets import CONFIG_FILE

    if not (folder / CONFIG_FILE).is_file():
        raise HubError(f"{source} is not a keras-music-ssl preset: it has no {CONFIG_FILE} ({folder})")
    return folder


def upload_preset(preset_dir, handle, message=None, license_name=None):
    """Publish the preset folder ``preset_dir`` at ``handle``; return the model's web page.

    The folder gets a model card (``README.md``) first if it has none. On the Hugging Face Hub
    the repository is created if missing (public) and the folder becomes one commit (on
    ``@REVISION`` if the handle names one); on Kaggle it becomes the next version of the
    variation (``license_name`` applies when the variation is created; Kaggle's default else).
    ``message`` is the commit message or the version notes.
    """
    target = parse_handle(handle)
    folder = _require_preset(preset_dir)
    if target.hub == "kaggle" and target.version:
        raise HubError(f"{target}: upload to {KAGGLE}{target.repo} (no /VERSION): each upload makes "
                       "the next version")
    hf = kagglehub = None
    if target.hub == "hf":
        hf = _client("huggingface_hub", target)
        if not hf.get_token():  # before writing the card or sending anything
            raise HubError(f"uploading to {target} needs a Hugging Face token: {HF_LOGIN}")
    else:
        kagglehub = _client("kagglehub", target)
        if importlib.import_module("kagglehub.config").get_kaggle_credentials() is None:
            raise HubError(f"uploading to {target} needs Kaggle credentials: {KAGGLE_LOGIN}")
    from keras_music_ssl.card import ensure_card

    ensure_card(folder)
    message = message or f"Upload keras-music-ssl preset {folder.name}"
    if hf:
        try:
            api = hf.HfApi()
            url = api.create_repo(target.repo, exist_ok=True)
            api.upload_folder(repo_id=target.repo, folder_path=folder, commit_message=message,
                              revision=target.version)
        except Exception as error:
            if not _from_client(error):
                raise
            raise _hf_error(error, target, hf, upload=True) from None
        return str(url)
    try:
        kagglehub.model_upload(target.repo, str(folder), license_name=license_name, version_notes=message)
    except Exception as error:
        if not _from_client(error):
            raise
        raise _kaggle_error(error, target, upload=True) from None
    return f"https://www.kaggle.com/models/{target.repo}"


def _segments(path, counts):
    parts = path.split("/")
    return len(parts) in counts and all(part and not any(c.isspace() for c in part) for part in parts)


def _version_number(text):
    return text.isdigit() and int(text) > 0


def _client(module, handle):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise HubError(f"{handle} needs {error.name}, which is not installed: {INSTALL}") from None


def _require_preset(preset_dir):
    from keras_music_ssl.presets import CONFIG_FILE, WEIGHTS_FILE

    folder = pathlib.Path(preset_dir).expanduser()
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if not folder.is_dir() or missing:
        what = "is not a folder" if not folder.is_dir() else f"has no {' and no '.join(missing)}"
        raise HubError(f"{folder} is not a preset folder: it {what} (write one with save_to_preset)")
    return folder


def _from_client(error):
    # huggingface_hub re-raises some HTTP errors as a plain ValueError (e.g. a model card the Hub rejects)
    return any(type(e).__module__.split(".")[0] in _CLIENT_PACKAGES for e in (error, error.__cause__) if e)


def _first_line(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _hf_error(error, handle, hf, upload=False):
    """One HubError line for a failure raised by huggingface_hub or its HTTP stack."""
    errors = hf.errors
    cache = f"HF_HUB_CACHE={hf.constants.HF_HUB_CACHE}"
    if isinstance(error, errors.GatedRepoError):
        return HubError(f"{handle} is gated: accept its conditions on {hf.constants.ENDPOINT}/{handle.repo}, "
                        f"then {HF_LOGIN}")
    if isinstance(error, errors.RevisionNotFoundError):
        return HubError(f"{handle}: the repository has no revision {handle.version!r}")
    if isinstance(error, errors.RepositoryNotFoundError):
        return HubError(f"{handle}: no such model repository on the Hugging Face Hub (if it is private, "
                        f"{HF_LOGIN})")
    if isinstance(error, errors.HFValidationError):
        return HubError(f"{handle} is not a valid repository name ({_first_line(error)}): expected {HF_FORM}")
    if hf.constants.HF_HUB_OFFLINE and isinstance(error, (errors.LocalEntryNotFoundError,
                                                          errors.OfflineModeIsEnabled)):
        if upload:
            return HubError(f"HF_HUB_OFFLINE=1: cannot upload to {handle} (unset HF_HUB_OFFLINE)")
        # IncompleteSnapshotError: recent huggingface_hub only
        if isinstance(error, getattr(errors, "IncompleteSnapshotError", ())):
            return HubError(f"HF_HUB_OFFLINE=1 and the cached copy of {handle} is incomplete ({cache}): "
                            "unset HF_HUB_OFFLINE to complete it")
        return HubError(f"HF_HUB_OFFLINE=1 and {handle} is not in the cache ({cache}): "
                        "unset HF_HUB_OFFLINE to download it")
    if isinstance(error, errors.LocalEntryNotFoundError):  # the Hub unreachable, nothing cached
        cause = _first_line(error.__cause__) if error.__cause__ else _first_line(error)
        return HubError(f"{handle}: the Hub cannot be reached ({cause}) and it is not in the cache "
                        f"({cache}): check the network (or HF_ENDPOINT)")
    if isinstance(error, ValueError) and "README.md" in str(error):  # raised from the Hub's 400
        details = " ".join(line.strip() for line in str(error).splitlines()[1:] if line.strip())
        return HubError(f"the Hub rejected the model card (README.md) for {handle}: "
                        f"{details or _first_line(error)}")
    if isinstance(error, errors.LocalTokenNotFoundError):
        return HubError(f"{handle} needs a Hugging Face token: {HF_LOGIN}")
    if isinstance(error, errors.HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status in (401, 403):
            need = " with a token that may write there" if upload else ""
            return HubError(f"the Hub refused access to {handle} ({status}): {HF_LOGIN}{need}")
        return HubError(f"{handle}: the Hub answered {status}: {_first_line(error)}")
    return HubError(f"{handle}: {type(error).__name__}: {_first_line(error)} (check the network, or HF_ENDPOINT)")


def _kaggle_error(error, handle, upload=False):
    """One HubError line for a failure raised by kagglehub or its HTTP stack."""
    from kagglehub.config import get_cache_folder

    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status == 404:
        return HubError(f"{handle}: no such model on Kaggle (if it is private, {KAGGLE_LOGIN})")
    if status in (401, 403):
        return HubError(f"Kaggle refused access to {handle} ({status}): {KAGGLE_LOGIN}")
    if status is not None:
        return HubError(f"{handle}: Kaggle answered {status}: {_first_line(error)}")
    if type(error).__module__.split(".")[0] in ("requests", "urllib3"):  # no answer at all
        if upload:
            return HubError(f"{handle}: Kaggle cannot be reached ({type(error).__name__}): check the network")
        cache = f"KAGGLEHUB_CACHE={get_cache_folder()}"
        if handle.version:
            return HubError(f"{handle}: Kaggle cannot be reached ({type(error).__name__}) and it is not in "
                            f"the kagglehub cache ({cache})")
        cached = _cached_kaggle_versions(handle, get_cache_folder())
        hint = (f"cached: {', '.join(f'{handle}/{v}' for v in cached)}" if cached else
                f"none is in {cache}")
        return HubError(f"{handle}: Kaggle cannot be reached ({type(error).__name__}) to find its latest "
                        f"version; offline, name a downloaded version ({hint})")
    return HubError(f"{handle}: {type(error).__name__}: {_first_line(error)}")


def _cached_kaggle_versions(handle, cache_folder):
    """Versions of a Kaggle variation that kagglehub finished downloading (it writes ``<version>.complete``
    beside ``<version>/`` under ``<cache>/models/<owner>/<model>/<framework>/<variation>``)."""
    folder = pathlib.Path(cache_folder, "models", *handle.repo.split("/"))
    versions = [name[:-len(".complete")] for name in (os.listdir(folder) if folder.is_dir() else ())
                if name.endswith(".complete") and (folder / name[:-len(".complete")]).is_dir()]
    return sorted((v for v in versions if v.isdigit()), key=int)
