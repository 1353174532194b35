"""musicnn test fixtures, shared by ``test_musicnn.py`` and ``test_musicnn_export.py`` (loaded by
``conftest.py``): the musicnn 0.1.0 wheel, unpacked, the four presets converted from it, and a
music-like test clip.

The wheel comes from ``$KMSSL_MUSICNN_WHEEL`` (a file or its folder), else a cache in the temporary
folder, else ``pip download musicnn==0.1.0 --no-deps`` into that cache; without it the tests skip,
saying so.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest

from keras_music_ssl.download import sha256_of
from keras_music_ssl.musicnn.release import WHEEL_ENV, WHEEL_NAME, WHEEL_SHA256

SR = 16000
CACHE = pathlib.Path(tempfile.gettempdir()) / "kmssl-tests-musicnn"


def music(seconds, seed, peak=0.5):
    """A music-like clip: plucked harmonic notes on a 4 Hz grid over decaying noise bursts (drums)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SR))) / SR
    x = np.zeros_like(t)
    for start in np.arange(0, seconds, 0.25):
        f0 = 110 * 2 ** (rng.integers(0, 24) / 12)
        envelope = np.where(t >= start, np.exp(-(t - start) * 4), 0)
        x += envelope * sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
    x += rng.standard_normal(t.size) * np.exp(-((t * 4) % 1) * 30) * 0.3
    return (peak * x / np.max(np.abs(x))).astype(np.float32)



def _download_wheel():
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = CACHE / WHEEL_NAME
    if cached.is_file() and sha256_of(cached) == WHEEL_SHA256:
        return cached
    staging = pathlib.Path(tempfile.mkdtemp(dir=CACHE))
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "musicnn==0.1.0", "--no-deps",
                               "--only-binary=:all:", "--disable-pip-version-check", "-d", str(staging)],
                              capture_output=True, text=True, timeout=900)
        if done.returncode or not (staging / WHEEL_NAME).is_file():
            reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            pytest.skip(f"the musicnn wheel is not available: `pip download musicnn==0.1.0 --no-deps` failed "
                        f"({reason}); set {WHEEL_ENV} to a downloaded {WHEEL_NAME}")
        os.replace(staging / WHEEL_NAME, cached)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cached


@pytest.fixture(scope="module")
def wheel():
    given = os.environ.get(WHEEL_ENV)
    if given:
        path = pathlib.Path(given)
        path = path / WHEEL_NAME if path.is_dir() else path
        if path.is_file():
            return path
    return _download_wheel()


@pytest.fixture(scope="module")
def unpacked(wheel):
    folder = CACHE / f"wheel-{WHEEL_SHA256[:16]}"
    if not (folder / "musicnn" / "models.py").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(dir=CACHE))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(staging)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    return folder


@pytest.fixture(scope="module")
def presets(wheel, tmp_path_factory):
    """The four presets, converted once for this backend's session."""
    from keras_music_ssl.musicnn.release import fetch_presets

    return fetch_presets(tmp_path_factory.mktemp("musicnn-presets"), source=wheel)
