"""hf:// and kaggle:// preset handles (``keras_music_ssl.hub``), without the internet.

Downloads are served from the clients' own caches, laid out as huggingface_hub 2.x and kagglehub
1.x write them, so the tests check that a preset published on a hub loads back with the same
embeddings and that a second use needs no network. The few API calls that must reach a hub
(Kaggle's "latest version" look-up, uploads) go to a local stub server: huggingface_hub through
its endpoint setting, kagglehub (whose hosts are fixed: ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` is
plain http://localhost) through ``HTTP_PROXY``, which requests honours.
"""

import base64
import contextlib
import hashlib
import http.server
import json
import os
import pathlib
import socket
import sys
import threading
import urllib.parse

import keras
import numpy as np
import pytest

from keras_music_ssl import MusicEncoder, hub
from keras_music_ssl.card import is_generated
from keras_music_ssl.cli import main

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def encoder():
    from conftest import TINY_ENCODER

    keras.utils.set_random_seed(0)
    model = MusicEncoder(**TINY_ENCODER)
    for weight in model.non_trainable_weights:  # non-trivial BN statistics
        weight.assign(np.random.default_rng(1).uniform(0.5, 1.5, weight.shape))
    return model


@pytest.fixture(scope="module")
def preset(encoder, tmp_path_factory):
    return encoder.save_to_preset(tmp_path_factory.mktemp("preset") / "tiny", method="test")


@pytest.fixture(scope="module")
def waveform():
    return np.random.default_rng(2).uniform(-1, 1, (1, 64000)).astype(np.float32)


def embed(model, waveform):
    return keras.ops.convert_to_numpy(model(waveform, training=False))


@pytest.fixture
def hf(tmp_path, monkeypatch):
    """huggingface_hub with its home, cache and token in ``tmp_path`` and a dead endpoint. It reads
    its settings into ``constants`` once, at import: the environment is set for clients imported
    later, the constants for this one."""
    import huggingface_hub
    import huggingface_hub.constants as constants

    home = tmp_path / "hf"
    settings = {"HF_HOME": home, "HF_HUB_CACHE": home / "hub", "HF_XET_CACHE": home / "xet",
                "HF_TOKEN_PATH": home / "token"}
    for name, value in settings.items():
        monkeypatch.setenv(name, str(value))
        monkeypatch.setattr(constants, name, str(value))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # a test that reaches for the Hub by mistake fails here instead of going online
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    return huggingface_hub


@pytest.fixture
def hf_offline(hf, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", True)
    return hf


def hf_cache(hf, repo_id, folder, commit=COMMIT):
    """Put ``folder``'s files in the Hugging Face cache as ``snapshot_download`` leaves them: content
    in ``blobs/`` (JSON as git blobs, named by git SHA-1; weights as LFS, named by SHA-256),
    ``snapshots/<commit>/`` of relative symlinks, ``refs/main`` holding the commit, and
    ``trees/<commit>.json``, the listing that tells a complete snapshot from a partial one."""
    repo = pathlib.Path(hf.constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for sub in (repo / "blobs", repo / "refs", repo / "trees", snapshot):
        sub.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    listing = {}
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        lfs = path.suffix == ".h5"
        blob = hashlib.sha256(data).hexdigest() if lfs else git_sha1
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(repo / "blobs" / blob, snapshot))
        listing[path.name] = {"size": len(data), "blob_id": git_sha1,
                              **({"lfs_sha256": blob, "lfs_size": len(data)} if lfs else {})}
    (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    return snapshot


@pytest.fixture
def kaggle(tmp_path, monkeypatch):
    """kagglehub with its cache in ``tmp_path`` and every request sent to a dead proxy, so a test
    that expected the cache but reached for the network fails instead of going online."""
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle"))
    dead = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, dead)
    for name in ("http_proxy", "https_proxy", "NO_PROXY", "no_proxy", "KAGGLE_API_ENVIRONMENT",
                 "KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):  # lower-case proxies would win
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "kagglehub"


def kaggle_cache(cache, handle, version, folder):
    """Put ``folder``'s files where kagglehub keeps a downloaded version: ``models/<owner>/<model>/
    <framework>/<variation>/<version>/``, complete once ``<version>.complete`` exists beside it."""
    variation = cache.joinpath("models", *handle.split("/"))
    target = variation / str(version)
    target.mkdir(parents=True)
    for path in folder.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    (variation / f"{version}.complete").touch()
    return target


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def stub_server(answer):
    """A local HTTP server: ``answer(method, path, body, host) -> (status, json)``. Yields its URL
    and the list of (method, path, body) it received."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def handle_one(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = urllib.parse.urlsplit(self.path).path  # through a proxy, the request names the whole URL
            seen.append((self.command, path, body))
            status, reply = answer(self.command, path, body, self.headers["Host"])
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = handle_one

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def copy_of(preset, tmp_path):
    """A copy of ``preset`` (shared by the module) without its model card, which the upload adds."""
    folder = tmp_path / preset.name
    folder.mkdir()
    for path in preset.iterdir():
        if path.name != "README.md":
            (folder / path.name).write_bytes(path.read_bytes())
    return folder


def one_line(error):
    assert "\n" not in str(error), str(error)
    return str(error)


# --- Hugging Face Hub ------------------------------------------------------------------------

def test_hf_handle_is_served_from_the_hub_cache_offline_with_identical_embeddings(
        hf_offline, preset, encoder, waveform):
    snapshot = hf_cache(hf_offline, "owner/tiny", preset)

    assert hub.download_preset("hf://owner/tiny").resolve() == snapshot.resolve()
    assert hub.download_preset(f"hf://owner/tiny@{COMMIT}").resolve() == snapshot.resolve()
    loaded = MusicEncoder.from_preset("hf://owner/tiny")  # through presets.resolve_preset

    np.testing.assert_allclose(embed(loaded, waveform), embed(encoder, waveform), rtol=0, atol=0)


@pytest.mark.backend_independent
def test_hf_handle_offline_and_not_cached_says_so_in_one_line(hf_offline):
    with pytest.raises(hub.HubError) as caught:
        hub.download_preset("hf://owner/absent")

    message = one_line(caught.value)
    assert "HF_HUB_OFFLINE=1" in message and "hf://owner/absent" in message
    assert str(hf_offline.constants.HF_HUB_CACHE) in message


@pytest.mark.backend_independent
def test_hf_repository_without_a_config_is_not_a_preset(hf_offline, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.safetensors").write_bytes(b"\0" * 8)
    hf_cache(hf_offline, "owner/other", tmp_path / "other")

    with pytest.raises(hub.HubError, match="not a keras-music-ssl preset: it has no config.json"):
        hub.download_preset("hf://owner/other")


def hf_hub_stub(commits):
    """The Hub API routes an upload of small files takes: create the repository, check the model
    card's metadata, ask how each file travels ("regular": inline in the commit, so no LFS or Xet
    storage), commit."""
    def answer(method, path, body, host):
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if path == "/api/repos/create":
            request = json.loads(body)
            return 200, {"url": f"http://{host}/{request['organization']}/{request['name']}"}
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in files]}
        if "/commit/" in path:
            lines = [json.loads(line) for line in body.splitlines()]
            commits.append({"message": lines[0]["value"]["summary"],
                            "files": {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                                      for line in lines if line["key"] == "file"}})
            repo = path.split("/api/models/")[1].split("/commit/")[0]
            return 200, {"commitUrl": f"http://{host}/{repo}/commit/{COMMIT}", "commitOid": COMMIT}
        return 404, {"error": "not stubbed"}
    return answer


def test_upload_to_hf_commits_the_preset_with_its_model_card(hf, preset, tmp_path, monkeypatch):
    folder = copy_of(preset, tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    commits = []
    with stub_server(hf_hub_stub(commits)) as (url, seen):
        monkeypatch.setattr(hf.constants, "ENDPOINT", url)
        page = hub.upload_preset(folder, "hf://me/tiny", message="first version")

    assert page == f"{url}/me/tiny"
    assert [c["message"] for c in commits] == ["first version"]
    files = commits[0]["files"]
    assert {"config.json", "model.weights.h5", "metadata.json", "README.md"} <= set(files)
    assert all(files[name] == (folder / name).read_bytes() for name in files)
    assert is_generated(folder / "README.md")  # written by the upload (the copy had none)
    assert ("POST", "/api/repos/create") in [(method, path) for method, path, _ in seen]


def test_upload_offline_or_without_login_is_refused_in_one_line(hf, preset, tmp_path, monkeypatch):
    folder = copy_of(preset, tmp_path)
    with pytest.raises(hub.HubError, match="needs a Hugging Face token: log in with `hf auth login`"):
        hub.upload_preset(folder, "hf://me/tiny")
    assert not (folder / "README.md").exists()  # refused before anything is written
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.HubError) as caught:
        hub.upload_preset(folder, "hf://me/tiny")
    assert one_line(caught.value).startswith("HF_HUB_OFFLINE=1: cannot upload to hf://me/tiny")


# --- Kaggle Models ---------------------------------------------------------------------------

def test_kaggle_handle_with_version_is_served_from_the_kagglehub_cache_with_identical_embeddings(
        kaggle, preset, encoder, waveform):
    cached = kaggle_cache(kaggle, "owner/tiny/keras/base", 3, preset)

    assert hub.download_preset("kaggle://owner/tiny/keras/base/3") == cached
    loaded = MusicEncoder.from_preset("kaggle://owner/tiny/keras/base/3")  # no request: the proxy is dead

    np.testing.assert_allclose(embed(loaded, waveform), embed(encoder, waveform), rtol=0, atol=0)


@pytest.mark.backend_independent
def test_kaggle_handle_without_version_asks_kaggle_only_for_the_latest_version(kaggle, tmp_path,
                                                                               monkeypatch):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "config.json").write_text("{}")
    cached = kaggle_cache(kaggle, "owner/tiny/keras/base", 2, tmp_path / "files")

    def kaggle_api(method, path, body, host):
        if path == "/api/v1/models.ModelApiService/GetModelInstance":
            return 200, {"versionNumber": 2}
        return 404, {"code": 404, "message": "not stubbed"}

    with stub_server(kaggle_api) as (url, seen):
        monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")  # kagglesdk's http://localhost
        monkeypatch.setenv("HTTP_PROXY", url)
        assert hub.download_preset("kaggle://owner/tiny/keras/base") == cached

    assert [(method, path) for method, path, _ in seen] == [
        ("POST", "/api/v1/models.ModelApiService/GetModelInstance")]
    assert json.loads(seen[0][2])["instanceSlug"] == "base"


@pytest.mark.backend_independent
def test_kaggle_unreachable_and_not_cached_says_what_is_cached_in_one_line(kaggle, tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "config.json").write_text("{}")
    kaggle_cache(kaggle, "owner/tiny/keras/base", 1, tmp_path / "files")

    with pytest.raises(hub.HubError) as caught:
        hub.download_preset("kaggle://owner/tiny/keras/base/2")
    assert "Kaggle cannot be reached" in one_line(caught.value)
    assert f"KAGGLEHUB_CACHE={kaggle}" in str(caught.value)
    with pytest.raises(hub.HubError) as caught:
        hub.download_preset("kaggle://owner/tiny/keras/base")
    assert "latest version" in one_line(caught.value)
    assert "cached: kaggle://owner/tiny/keras/base/1" in str(caught.value)


def test_upload_to_kaggle_creates_the_variation_with_the_preset_files(kaggle, preset, tmp_path,
                                                                      monkeypatch):
    folder = copy_of(preset, tmp_path)
    uploads, created = {}, []

    def kaggle_api(method, path, body, host):
        if path.endswith("/GetModel"):
            return 200, {"id": 1}  # the model exists: no CreateModel
        if path.endswith("/StartBlobUpload"):
            name = json.loads(body)["name"]
            return 200, {"token": f"token-{name}", "createUrl": f"http://localhost/blob/{name}"}
        if method == "PUT" and path.startswith("/blob/"):
            uploads[path[len("/blob/"):]] = body
            return 200, {}
        if path.endswith("/CreateModelInstance"):
            created.append(json.loads(body))
            return 200, {"id": 2}
        return 404, {"code": 404, "message": "not stubbed"}

    with stub_server(kaggle_api) as (url, _):
        monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
        monkeypatch.setenv("HTTP_PROXY", url)
        monkeypatch.setenv("KAGGLE_API_TOKEN", "kaggle-test")
        page = hub.upload_preset(folder, "kaggle://me/tiny/keras/base", license_name="Apache 2.0")

    assert page == "https://www.kaggle.com/models/me/tiny/keras/base"
    assert uploads == {path.name: path.read_bytes() for path in folder.iterdir()}
    assert "README.md" in uploads
    body = created[0]["body"]
    assert created[0]["ownerSlug"] == "me" and body["instanceSlug"] == "base"
    assert body["licenseName"] == "Apache 2.0" and body["framework"] == "MODEL_FRAMEWORK_KERAS"
    assert sorted(f["token"] for f in body["files"]) == sorted(f"token-{name}" for name in uploads)


@pytest.mark.backend_independent
def test_upload_to_kaggle_without_credentials_or_with_a_version_is_refused(kaggle, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kaggle credentials of the machine's user
    folder = tmp_path / "p"
    folder.mkdir()
    for name in ("config.json", "model.weights.h5"):
        (folder / name).write_bytes(b"{}")

    with pytest.raises(hub.HubError, match="needs Kaggle credentials: set KAGGLE_API_TOKEN"):
        hub.upload_preset(folder, "kaggle://me/tiny/keras/base")
    with pytest.raises(hub.HubError, match="no /VERSION"):
        hub.upload_preset(folder, "kaggle://me/tiny/keras/base/2")


# --- handles, missing clients, the command line ----------------------------------------------

@pytest.mark.backend_independent
@pytest.mark.parametrize("handle, form", [
    ("hf://", "hf://OWNER/NAME"), ("hf://owner", "hf://OWNER/NAME"), ("hf://a/b/c", "hf://OWNER/NAME"),
    ("hf://a//b", "hf://OWNER/NAME"), ("hf://a/b@", "hf://OWNER/NAME"), ("hf://a /b", "hf://OWNER/NAME"),
    ("kaggle://a/b", "kaggle://OWNER/MODEL"), ("kaggle://a/b/keras", "kaggle://OWNER/MODEL"),
    ("kaggle://a/b/keras/v/x", "kaggle://OWNER/MODEL"), ("kaggle://a/b/keras/v/0", "kaggle://OWNER/MODEL"),
    ("kaggle://a/b/keras/v/1/2", "kaggle://OWNER/MODEL"), ("kaggle://a/b/keras/v/", "kaggle://OWNER/MODEL"),
])
def test_malformed_handles_name_the_expected_form_in_one_line(handle, form):
    assert hub.is_hub_handle(handle)
    with pytest.raises(hub.HubError) as caught:
        hub.download_preset(handle)
    assert form in one_line(caught.value) and repr(handle) in str(caught.value)


@pytest.mark.backend_independent
def test_handles_are_told_from_names_and_folders():
    assert hub.parse_handle("hf://owner/name@v1.0") == ("hf", "owner/name", "v1.0")
    assert hub.parse_handle("kaggle://o/m/keras/v/7") == ("kaggle", "o/m/keras/v", "7")
    assert str(hub.parse_handle("kaggle://o/m/keras/v")) == "kaggle://o/m/keras/v"
    assert not any(map(hub.is_hub_handle, ["deezer_byol", "presets/hf", "https://hf.co/a/b", None]))


@pytest.mark.backend_independent
@pytest.mark.parametrize("handle, module", [("hf://a/b", "huggingface_hub"), ("kaggle://a/b/keras/c", "kagglehub")])
def test_a_missing_client_library_says_which_extra_to_install(handle, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed

    with pytest.raises(hub.HubError) as caught:
        hub.download_preset(handle)
    assert one_line(caught.value).endswith("pip install 'keras-music-ssl[hub]'")
    assert module in str(caught.value)


@pytest.mark.backend_independent
@pytest.mark.parametrize("make, handle, expected", [
    ("empty", "hf://me/tiny", "is not a preset folder"),
    ("no weights", "hf://me/tiny", "has no model.weights.h5"),
    ("no weights", "hf://me/tiny/extra", "expected hf://OWNER/NAME"),
    ("no weights", "kaggle://me/tiny", "expected kaggle://OWNER/MODEL"),
])
def test_kmssl_upload_of_a_non_preset_or_to_a_malformed_handle_is_one_line_exit_2(make, handle, expected,
                                                                                   tmp_path, capsys):
    folder = tmp_path / "p"
    folder.mkdir()
    if make == "no weights":
        (folder / "config.json").write_text("{}")

    assert main(["upload", str(folder), handle]) == 2

    err = capsys.readouterr().err
    assert err.startswith("kmssl upload: ") and err.count("\n") == 1 and expected in err, err
