"""The authors' encoders on first use: a weights.zip served on 127.0.0.1, downloaded (resumed after
a cut), checked, converted; nothing half-made is kept; later calls never touch the network."""

import http.server
import os
import threading
import zipfile

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from keras_music_ssl import MusicEncoder, convert  # noqa: E402
from keras_music_ssl.cli import main  # noqa: E402
from keras_music_ssl.deezer_release import URL_ENV, ReleaseError  # noqa: E402
from keras_music_ssl.download import DownloadError, download, partial_download  # noqa: E402
from keras_music_ssl.presets import DEEZER_PRESETS, WEIGHTS_DIR_ENV, PresetError  # noqa: E402
from released_checkpoints import reference_backbone, write_released_checkpoint  # noqa: E402

STUDENT_SEED = {"contrastive": 1, "barlow_twins": 2, "feature_stats": 3, "byol": 4, "clustering": 5}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The five checkpoints (seeded random tiny encoders, the released layouts), and both zips."""
    from conftest import TINY_ENCODER

    folder = tmp_path_factory.mktemp("release")
    config = {**TINY_ENCODER, "heads": convert.DEFAULT_HEADS}  # the converter's head count, as released
    for method, seed in STUDENT_SEED.items():
        student = reference_backbone(config, seed)
        write_released_checkpoint(folder / f"{method}.pt", method, student, reference_backbone(config, seed + 10))
    zips = {}
    for layout, prefix in (("flat", ""), ("folder", "weights/")):
        zips[layout] = folder / f"{layout}.zip"
        with zipfile.ZipFile(zips[layout], "w") as archive:
            for method in STUDENT_SEED:
                archive.write(folder / f"{method}.pt", f"{prefix}{method}.pt")
    return folder, zips


class Server:
    """Serves one payload with HTTP ranges; ``cut_at`` closes the first response after that many bytes."""

    def __init__(self, payload, cut_at=None):
        self.payload, self.cut_at, self.requests = payload, cut_at, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                start = 0
                ranged = self.headers.get("Range")
                server.requests.append(ranged)
                if ranged:
                    start = int(ranged.split("=")[1].split("-")[0])
                body = server.payload[start:]
                self.send_response(206 if ranged else 200)
                self.send_header("Content-Length", str(len(body)))
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.end_headers()
                if server.cut_at is not None:
                    body, server.cut_at = body[:server.cut_at], None
                    self.wfile.write(body)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/weights.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(monkeypatch, tmp_path):
    servers = []

    def start(payload, cut_at=None):
        server = Server(payload, cut_at)
        servers.append(server)
        monkeypatch.setenv(URL_ENV, server.url)
        return server

    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "weights"))
    yield start
    for server in servers:
        server.stop()


def embed(encoder, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, (2, encoder.num_samples)).astype("float32")
    return keras.ops.convert_to_numpy(encoder(x, training=False))


def visible(folder):
    """What a user sees in the weights folder."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def left(folder):
    """Everything in the weights folder but the (hidden, empty) lock files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


@pytest.mark.parametrize("layout", ["flat", "folder"])
def test_first_use_downloads_and_equals_the_offline_converter_and_then_needs_no_network(
        layout, release, serve, tmp_path):
    folder, zips = release
    server = serve(zips[layout].read_bytes())

    loaded = {name: MusicEncoder.from_preset(name) for name in ("deezer_contrastive", "deezer_byol")}

    for name, method in (("deezer_contrastive", "contrastive"), ("deezer_byol", "byol")):
        offline, _ = convert.convert_checkpoint(folder / f"{method}.pt", tmp_path / f"offline-{method}")
        np.testing.assert_allclose(embed(loaded[name]), embed(offline), atol=1e-6, rtol=0)
    weights = tmp_path / "weights"
    assert left(weights) == sorted(DEEZER_PRESETS)  # all five, and no zip or staging left
    assert len(server.requests) == 1
    MusicEncoder.from_preset("deezer_byol")  # from the cache
    from keras_music_ssl.presets import preset_metadata

    recorded = preset_metadata("deezer_vicreg")["release"]
    assert recorded["size"] == zips[layout].stat().st_size and recorded["url"] == server.url
    assert recorded["member"].endswith("feature_stats.pt")
    server.stop()
    np.testing.assert_array_equal(embed(MusicEncoder.from_preset("deezer_contrastive")),
                                  embed(loaded["deezer_contrastive"]))
    assert len(server.requests) == 1


def test_a_download_cut_halfway_resumes_with_a_range_request_and_converts(release, serve, tmp_path):
    payload = release[1]["flat"].read_bytes()
    server = serve(payload, cut_at=len(payload) // 2)
    with pytest.raises(ReleaseError, match="Run again to resume"):
        MusicEncoder.from_preset("deezer_clustering")
    weights = tmp_path / "weights"
    assert partial_download(weights / "weights.zip").stat().st_size == len(payload) // 2
    assert visible(weights) == []  # the partial transfer is hidden; nothing converted

    encoder = MusicEncoder.from_preset("deezer_clustering")

    assert server.requests == [None, f"bytes={len(payload) // 2}-"]
    offline, _ = convert.convert_checkpoint(release[0] / "clustering.pt", tmp_path / "offline")
    np.testing.assert_allclose(embed(encoder), embed(offline), atol=1e-6, rtol=0)
    assert visible(weights) == sorted(DEEZER_PRESETS)


@pytest.mark.backend_independent
@pytest.mark.parametrize("damage", ["truncated", "flipped", "no_vicreg", "not_a_checkpoint"])
def test_a_damaged_zip_is_refused_in_one_line_and_leaves_nothing(damage, release, serve, tmp_path, capsys):
    payload = release[1]["folder"].read_bytes()
    if damage == "truncated":
        payload = payload[:len(payload) * 2 // 3]
    elif damage == "flipped":  # a byte inside the first member's data: its CRC fails
        payload = payload[:400] + bytes([payload[400] ^ 0xFF]) + payload[401:]
    else:  # a valid zip, without feature_stats.pt or with a byol.pt that no weights_only load reads
        path = tmp_path / "other.zip"
        with zipfile.ZipFile(release[1]["flat"]) as full, zipfile.ZipFile(path, "w") as other:
            for member in full.namelist():
                if member == "byol.pt" and damage == "not_a_checkpoint":
                    other.writestr(member, b"PK\x03\x04 this is not a checkpoint")
                elif member != "feature_stats.pt" or damage == "not_a_checkpoint":
                    other.writestr(member, full.read(member))
        payload = path.read_bytes()
    expected = {"no_vicreg": "lacks feature_stats.pt", "not_a_checkpoint": "byol.pt cannot be converted"}
    serve(payload)

    assert main(["embed", "--preset", "deezer_byol", str(tmp_path / "nothing.wav"), "--out",
                 str(tmp_path / "e.npz")]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected.get(damage, "zip") in err[0], err
    assert left(tmp_path / "weights") == []


@pytest.mark.backend_independent
def test_offline_is_one_line_saying_where_to_put_the_zip(serve, tmp_path, monkeypatch, capsys):
    server = serve(b"")
    server.stop()  # nothing listens there now

    assert main(["export", "--preset", "deezer_vicreg", "--out", str(tmp_path / "x")]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot connect" in err[0]
    assert str(tmp_path / "weights" / "weights.zip") in err[0] and URL_ENV in err[0]


def test_a_zip_put_by_hand_converts_without_the_network_and_cli_download_converts_all(
        release, serve, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9/unreachable.zip")
    by_hand = tmp_path / "weights" / "weights.zip"
    by_hand.parent.mkdir()
    by_hand.write_bytes(release[1]["flat"].read_bytes())
    assert main(["convert-deezer", "--download"]) == 0
    assert [line.split(" -> ")[0] for line in capsys.readouterr().out.splitlines()] == list(DEEZER_PRESETS)
    assert visible(tmp_path / "weights") == sorted(DEEZER_PRESETS)

    # A zip given on the command line goes into another weights folder; the source is kept.
    other = tmp_path / "other"
    assert main(["convert-deezer", str(release[1]["folder"]), "--weights-dir", str(other)]) == 0
    assert visible(other) == sorted(DEEZER_PRESETS) and release[1]["folder"].exists()
    np.testing.assert_array_equal(embed(MusicEncoder.from_preset("deezer_barlow_twins", other)),
                                  embed(MusicEncoder.from_preset("deezer_barlow_twins")))


def test_a_damaged_cached_preset_is_converted_again_and_a_damaged_folder_preset_refused(
        release, serve, tmp_path):
    server = serve(release[1]["flat"].read_bytes())
    good = embed(MusicEncoder.from_preset("deezer_byol"))
    weights = tmp_path / "weights" / "deezer_byol" / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.warns(UserWarning, match="SHA-256"):
        again = MusicEncoder.from_preset("deezer_byol")
    np.testing.assert_array_equal(embed(again), good)
    assert len(server.requests) == 2

    copy = tmp_path / "mine"
    import shutil

    shutil.copytree(tmp_path / "weights" / "deezer_byol", copy)
    with open(copy / "model.weights.h5", "ab") as f:
        f.write(b"\0")
    with pytest.raises(PresetError, match="bytes, not the"):
        MusicEncoder.from_preset(copy)


@pytest.mark.backend_independent
def test_download_refuses_a_file_of_the_wrong_checksum_and_keeps_nothing(serve, tmp_path):
    server = serve(b"x" * 5000)
    with pytest.raises(DownloadError, match="SHA-256"):
        download(server.url, tmp_path / "f.bin", sha256="0" * 64, progress=False)
    assert not (tmp_path / "f.bin").exists() and not partial_download(tmp_path / "f.bin").exists()


@pytest.mark.backend_independent
def test_a_weights_folder_that_is_a_file_or_a_missing_zip_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("precious")
    assert main(["convert-deezer", "--download", "--weights-dir", str(tmp_path / "file")]) == 2
    assert main(["convert-deezer", str(tmp_path / "missing.zip"), "--weights-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "is a file" in err[0] and "missing.zip: no such file" in err[1], err
    assert (tmp_path / "file").read_text() == "precious" and sorted(os.listdir(tmp_path)) == ["file"]
