"""The browser tagger (``keras_music_ssl/web/``, served by ``kmssl serve-demo``) in a real headless
Chromium, against onnxruntime in Python; and ``kmssl serve-demo``'s own checks.

The browser tests need Debian's ``chromium`` (``bootstrap.py`` installs it when it runs as root),
Playwright (the ``test`` extra; it drives the system browser, never a download of its own) and
onnxruntime-web in ``js/node_modules`` (``npm ci`` in js/, which ``bootstrap.py`` runs); without
one of them they are skipped, saying which. The page loads a WAV the test writes, through the
file input, and its numbers are compared with ``load_exported(...)`` (onnxruntime in Python)
and with the timeline contract computed here with numpy: 1e-4. ``KMSSL_WEB_SCREENSHOT=PATH``
saves a screenshot of the page after tagging.
"""

import base64
import csv
import hashlib
import io
import json
import os
import pathlib
import shutil
import socket
import tarfile
import threading
import urllib.error
import urllib.request

import keras
import numpy as np
import pytest
import soundfile as sf
from conftest import TINY_ENCODER
from test_export import CLIP, SR, TAGS, varied_clips

from keras_music_ssl.backbone import MusicEncoder
from keras_music_ssl.cli import main
from keras_music_ssl.cli import serve_demo
from keras_music_ssl.data import load_audio
from keras_music_ssl.download import DownloadError
from keras_music_ssl.export import export, load_exported, synthetic_clips
from keras_music_ssl.tagger import MusicTagger, TagHead

pytestmark = pytest.mark.tf_only  # export runs on TensorFlow; the page itself has no backend

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECONDS = 10.3  # 164,800 samples: the last 4 s window is partial
WAIT_MS = 60_000


# --- the model and the audio ----------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = MusicTagger(MusicEncoder(**TINY_ENCODER), TagHead(TAGS, hidden_units=(16,), use_bias=True))
    audio = varied_clips(16, seed=102)
    for step in range(4):  # BatchNorm statistics move from 0/1, as in a trained model
        model(audio[(step % 2) * 8:(step % 2) * 8 + 8], training=True)
    return export(model, tmp_path_factory.mktemp("web") / "tagger_onnx", "onnx")


@pytest.fixture(scope="module")
def runner(onnx_dir):
    return load_exported(onnx_dir)


def varied_track(sample_rate, seed, seconds=SECONDS):
    """Tones, chords, noise, chirps and beats at changing levels, never silent as a whole."""
    n = int(round(seconds * sample_rate))
    clip = 4 * sample_rate
    audio = synthetic_clips(-(-n // clip) + 1, clip, sample_rate, seed=seed).reshape(-1)[clip // 2:clip // 2 + n]
    levels = np.interp(np.arange(n), [0, n // 3, 2 * n // 3, n - 1], [0.3, 0.9, 0.15, 0.6])
    return (0.9 * audio * levels).astype(np.float32)


@pytest.fixture(scope="module")
def wav16k(tmp_path_factory):
    """A 16 kHz mono PCM 16-bit WAV and its samples as any reader decodes them (int / 32768)."""
    path = tmp_path_factory.mktemp("audio") / "varied_16k.wav"
    sf.write(path, varied_track(SR, seed=5), SR, subtype="PCM_16")
    samples, rate = sf.read(path, dtype="float32")
    assert rate == SR and samples.ndim == 1 and np.abs(samples).max() > 0.1
    return path, samples


@pytest.fixture(scope="module")
def wav44k_stereo(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "varied_44k_stereo.wav"
    left, right = varied_track(44100, seed=6), varied_track(44100, seed=7)
    sf.write(path, np.stack([left, 0.5 * right + 0.3 * left], axis=1), 44100, subtype="PCM_16")
    return path


def python_timeline(runner, samples, hop_seconds=None):
    """The timeline contract with numpy: windows of the peak-normalised track every H samples."""
    x = np.asarray(samples, np.float32)
    n = x.size
    hop = CLIP if hop_seconds is None else int(round(hop_seconds * SR))
    peak = np.abs(x).max()
    x = x / peak if peak > 0 else x
    starts = np.arange(0, n, hop)
    windows = np.zeros((starts.size, CLIP), np.float32)
    for i, s in enumerate(starts):
        windows[i, :min(CLIP, n - s)] = x[s:s + CLIP]
    times = np.stack([starts / SR, np.minimum(starts + CLIP, n) / SR], axis=1)
    return times, runner.clips(windows)["probabilities"]


# --- the browser ----------------------------------------------------------------------------

def chromium_path():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("needs Debian's chromium (`python3 bootstrap.py test` installs it when run as root; "
                    "else: apt-get install chromium)")
    if not serve_demo.has_ort_files(serve_demo.CHECKOUT_ORT_DIR):
        pytest.skip("needs onnxruntime-web in js/node_modules (npm ci in js/, which bootstrap.py runs)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[test]')")
    with sync_api.sync_playwright() as playwright:
        # the system browser: Playwright's own browser download is not used (nor reachable)
        chromium = playwright.chromium.launch(executable_path=path, headless=True)
        yield chromium
        chromium.close()


class Served:
    """``kmssl serve-demo``'s server for ``model_dir``, in a thread, on a free port."""

    def __init__(self, model_dir):
        self.server = serve_demo.make_server(model_dir, serve_demo.CHECKOUT_ORT_DIR, "127.0.0.1", 0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = self.server.url

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def served(onnx_dir):
    with Served(onnx_dir) as server:
        yield server


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)", timeout=WAIT_MS)
    page.kmssl_errors = errors
    return page


def wait_run(page, count):
    """Wait for the page's ``count``-th run (a file tagged, or the hop changed) to end; its state."""
    page.wait_for_function(f"window.kmsslRuns >= {count}", timeout=WAIT_MS)
    return page.evaluate("document.body.dataset.state")


def tag_file(page, path, count=1):
    page.set_input_files("#file", str(path))
    state = wait_run(page, count)
    assert state == "done", (state, page.inner_text("#error"), page.kmssl_errors)
    return page.evaluate("window.kmsslResult")


def assert_timeline(result, times, probabilities):
    got_times = np.array([[w["start"], w["end"]] for w in result["windows"]])
    assert got_times.shape == times.shape
    np.testing.assert_allclose(got_times, times, atol=1e-9, rtol=0)
    got = np.array([w["probabilities"] for w in result["windows"]])
    np.testing.assert_allclose(got, probabilities, atol=1e-4, rtol=0)


def test_page_tags_a_16khz_wav_like_onnxruntime_in_python(browser, served, runner, wav16k, tmp_path):
    path, samples = wav16k
    page = open_page(browser, served.url)
    assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#error")
    result = tag_file(page, path)
    assert result["tags"] == TAGS and result["samples"] == samples.size and result["sampleRate"] == SR
    # track tags: track.onnx in the browser == track.onnx in Python on the samples the test wrote
    np.testing.assert_allclose(result["track"], runner.track(samples)["probabilities"], atol=1e-4, rtol=0)
    assert result["decisions"] is None  # no thresholds in this export: top tags only
    times, probabilities = python_timeline(runner, samples)
    assert len(times) == 3 and times[-1, 1] == pytest.approx(SECONDS)
    assert_timeline(result, times, probabilities)
    shown = page.locator("#track-tags li .tag").all_inner_texts()
    assert shown == [TAGS[i] for i in np.argsort(-np.array(result["track"]), kind="stable")][:len(shown)]
    assert page.locator("#timeline").bounding_box()["height"] > 100
    if os.environ.get("KMSSL_WEB_SCREENSHOT"):
        page.screenshot(path=os.environ["KMSSL_WEB_SCREENSHOT"], full_page=True)

    # the CSV download is the same timeline
    with page.expect_download() as download:
        page.click("#download-csv")
    rows = list(csv.reader(io.StringIO(pathlib.Path(download.value.path()).read_text())))
    assert rows[0] == ["start_s", "end_s", *TAGS] and len(rows) == 1 + len(times)
    np.testing.assert_allclose(np.array(rows[1:], float)[:, 2:], probabilities, atol=1e-4, rtol=0)

    # another hop: the page re-runs the timeline on the decoded audio
    page.fill("#hop", "1.5")
    page.dispatch_event("#hop", "change")
    assert wait_run(page, 2) == "done", page.inner_text("#error")
    result = page.evaluate("window.kmsslResult")
    assert result["hopSamples"] == 24000
    times, probabilities = python_timeline(runner, samples, hop_seconds=1.5)
    assert len(times) == 7  # ceil(164800 / 24000)
    assert_timeline(result, times, probabilities)
    np.testing.assert_allclose(result["track"], runner.track(samples)["probabilities"], atol=1e-4, rtol=0)
    assert page.kmssl_errors == []
    page.close()


def test_page_resamples_a_44khz_stereo_file(browser, served, runner, wav44k_stereo):
    page = open_page(browser, served.url + "?hop=2")
    result = tag_file(page, wav44k_stereo)
    # the browser's resampler, not soxr: the same length (within a sample) and close numbers
    # (measured: 5e-4 on the track tags, 8e-4 on the windows; a 16 kHz file is not resampled)
    python = load_audio(wav44k_stereo, sample_rate=SR, normalize=False)
    assert result["channels"] == 2 and abs(result["samples"] - python.size) <= 1
    n = result["samples"]
    starts = np.arange(0, n, 32000)
    times = np.array([[w["start"], w["end"]] for w in result["windows"]])
    np.testing.assert_allclose(times, np.stack([starts / SR, np.minimum(starts + CLIP, n) / SR], axis=1), atol=1e-9)
    probabilities = np.array([w["probabilities"] for w in result["windows"]])
    assert np.all(np.isfinite(probabilities)) and np.all((probabilities >= 0) & (probabilities <= 1))
    np.testing.assert_allclose(result["track"], runner.track(python)["probabilities"], atol=5e-3, rtol=0)
    _, expected = python_timeline(runner, python[:n] if python.size >= n else np.pad(python, (0, 1)), 2.0)
    np.testing.assert_allclose(probabilities, expected, atol=5e-3, rtol=0)
    assert page.kmssl_errors == []
    page.close()


def test_decisions_follow_the_thresholds_in_the_metadata(browser, onnx_dir, runner, wav16k, tmp_path):
    path, samples = wav16k
    track = runner.track(samples)["probabilities"]
    # every other tag just above / just below its threshold
    thresholds = [float(p) + (-0.01 if i % 2 == 0 else 0.01) for i, p in enumerate(track)]
    tuned = shutil.copytree(onnx_dir, tmp_path / "tuned_onnx")
    meta = json.loads((tuned / "keras_music_ssl.json").read_text())
    (tuned / "keras_music_ssl.json").write_text(json.dumps({**meta, "thresholds": thresholds}, indent=2))
    with Served(tuned) as server:
        page = open_page(browser, server.url)
        result = tag_file(page, path)
    expected = [bool(p >= t) for p, t in zip(track, thresholds)]
    assert result["decisions"] == expected and result["thresholds"] == pytest.approx(thresholds)
    assert result["onTags"] == [tag for tag, on in zip(TAGS, expected) if on] == TAGS[::2]
    assert page.inner_text("#decisions").endswith(", ".join(TAGS[::2]))
    page.close()


def test_page_says_what_is_wrong_with_a_bad_file_or_model(browser, served, tmp_path, wav16k):
    bad = tmp_path / "not_audio.wav"
    bad.write_text("this is text, not audio\n" * 100)
    page = open_page(browser, served.url)
    page.set_input_files("#file", str(bad))
    assert wait_run(page, 1) == "error"
    assert page.is_visible("#error") and page.inner_text("#error").startswith("Could not decode not_audio.wav")
    assert page.evaluate("window.kmsslResult") is None
    tag_file(page, wav16k[0], count=2)  # the page recovers with the next file
    assert not page.is_visible("#error")
    page.evaluate("""text => {  // a file dropped on the drop zone takes the same path
        const files = new DataTransfer();
        files.items.add(new File([text], 'dropped.mp3'));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: files, bubbles: true}));
    }""", "not audio either")
    assert wait_run(page, 3) == "error"
    assert page.inner_text("#error").startswith("Could not decode dropped.mp3")
    page.close()

    page = open_page(browser, served.url + "?model=./nowhere/")
    assert page.evaluate("document.body.dataset.state") == "error"
    assert page.inner_text("#error").startswith("No keras_music_ssl.json at ")
    page.close()


# --- kmssl serve-demo, no browser -------------------------------------------------------------

@pytest.fixture
def fake_ort(tmp_path):
    folder = tmp_path / "ort"
    folder.mkdir()
    for name in serve_demo.ORT_WEB_FILES:
        (folder / name).write_bytes(b"\0asm" if name.endswith(".wasm") else b"export {};\n")
    return folder


def test_serve_demo_refuses_what_is_not_an_onnx_tagger(onnx_dir, tmp_path, fake_ort, capsys):
    embedder = shutil.copytree(onnx_dir, tmp_path / "embedder_onnx")
    meta = json.loads((embedder / "keras_music_ssl.json").read_text())
    (embedder / "keras_music_ssl.json").write_text(json.dumps({**meta, "kind": "embedder", "tags": []}))
    (tmp_path / "empty").mkdir()
    cases = {tmp_path / "missing": "no such folder", tmp_path / "empty": "not an ONNX export folder",
             embedder: "is an ONNX embedder, not a tagger"}
    for folder, reason in cases.items():
        assert main(["serve-demo", "--model", str(folder), "--ort-dir", str(fake_ort)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("kmssl serve-demo: error:") and reason in err, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve-demo", "--model", str(onnx_dir), "--ort-dir", str(fake_ort), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot listen on 127.0.0.1:{port}" in err, err
    assert main(["serve-demo", "--model", str(onnx_dir), "--ort-dir", str(tmp_path / "empty")]) == 2
    assert "lacks onnxruntime-web's" in capsys.readouterr().err


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as error:
        return error.code, None, b""


def test_serve_demo_serves_the_page_the_model_and_onnxruntime_web_only(onnx_dir, fake_ort):
    server = serve_demo.make_server(onnx_dir, fake_ort, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = server.url
        for path, kind in {"": "text/html", "?hop=2": "text/html", "app.js": "text/javascript",
                           "style.css": "text/css", "model/keras_music_ssl.json": "application/json",
                           "model/clips.onnx": "application/octet-stream",
                           "ort/ort.wasm.min.mjs": "text/javascript",
                           "ort/ort-wasm-simd-threaded.wasm": "application/wasm"}.items():
            status, got, _ = get(url + path)
            assert (status, got) == (200, kind), path
        assert get(url + "model/track.onnx")[2] == (onnx_dir / "track.onnx").read_bytes()
        for path in ("model/", "ort/", "model/.kmssl-output.json", "../../etc/passwd", "model/../../etc/passwd",
                     "%2e%2e/%2e%2e/etc/passwd", "nothing.html"):
            assert get(url + path)[0] == 404, path
    finally:
        server.shutdown()
        server.server_close()


def npm_tarball(folder, files):
    path = folder / "onnxruntime-web.tgz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path, "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def test_onnxruntime_web_is_fetched_once_and_checked_against_the_pinned_integrity(tmp_path, monkeypatch):
    files = {name: f"{name} body".encode() for name in serve_demo.ORT_WEB_FILES}
    tarball, integrity = npm_tarball(tmp_path, {**files, "ort.all.min.mjs": b"not needed"})
    monkeypatch.setattr(serve_demo, "CHECKOUT_ORT_DIR", tmp_path / "no_checkout")  # as after a pip install
    cache = tmp_path / "cache" / "onnxruntime-web"
    with pytest.raises(DownloadError, match="sha512"):
        serve_demo.ort_web_dir(cache_dir=cache, url=tarball.as_uri(), integrity="sha512-AAAA")
    assert not cache.exists() and not list(cache.parent.glob("*.tgz"))  # nothing unpacked, the tarball removed
    assert serve_demo.ort_web_dir(cache_dir=cache, url=tarball.as_uri(), integrity=integrity) == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)
    assert all((cache / name).read_bytes() == data for name, data in files.items())
    assert not list(cache.parent.glob("*.tgz"))  # the tarball is not kept
    tarball.unlink()  # once there, the cache is used as it is
    assert serve_demo.ort_web_dir(cache_dir=cache, url=tarball.as_uri(), integrity=integrity) == cache
    with pytest.raises(DownloadError, match="cannot connect.*--ort-dir"):
        serve_demo.ort_web_dir(cache_dir=tmp_path / "other", url=tarball.as_uri(), integrity=integrity)


def test_the_pinned_onnxruntime_web_is_the_one_js_package_lock_installs():
    lock = json.loads((ROOT / "js" / "package-lock.json").read_text())
    entry = lock["packages"]["node_modules/onnxruntime-web"]
    assert (entry["version"], entry["integrity"]) == (serve_demo.ORT_WEB_VERSION, serve_demo.ORT_WEB_INTEGRITY)
    assert json.loads((ROOT / "js" / "package.json").read_text())["dependencies"]["onnxruntime-web"] == \
        serve_demo.ORT_WEB_VERSION
    assert f"const ORT_VERSION = '{serve_demo.ORT_WEB_VERSION}'" in (serve_demo.WEB_DIR / "app.js").read_text()
