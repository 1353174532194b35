"""Shared test setup: one backend per process (KERAS_BACKEND), markers, small fixtures."""

import os
import sys
import tempfile

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))  # tests/torch_reference.py and helpers
# No test reaches the internet or the user's preset cache: a deezer_* name that is not converted
# tries this address (nothing listens on port 9) unless a test serves its own weights.zip.
os.environ["KMSSL_DEEZER_WEIGHTS_URL"] = "http://127.0.0.1:9/tests-never-download/weights.zip"
# Nor does a musicnn_* name (the supervised reference of compare / quickstart): it is left out, unless a
# test gives the wheel (test_musicnn.py's fixture downloads it into its own cache, once).
os.environ.setdefault("KMSSL_MUSICNN_WHEEL", os.path.join(tempfile.gettempdir(), "kmssl-tests-no-musicnn-wheel.whl"))
os.environ.setdefault("KMSSL_WEIGHTS_DIR", os.path.join(tempfile.gettempdir(), "kmssl-tests-presets"))

BACKEND = os.environ["KERAS_BACKEND"]

pytest_plugins = ["musicnn_fixtures"]  # wheel, unpacked, presets: test_musicnn.py and test_musicnn_export.py


def pytest_collection_modifyitems(config, items):
    """tf_only and backend_independent tests run in the TensorFlow pass only (deselected elsewhere)."""
    if BACKEND == "tensorflow":
        return
    keep, drop = [], []
    for item in items:
        once = item.get_closest_marker("tf_only") or item.get_closest_marker("backend_independent")
        (drop if once else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config):
    return f"KERAS_BACKEND={BACKEND}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# A small encoder for fast tests: embed 128, 2 heads, one block per stage.
TINY_ENCODER = dict(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32)


@pytest.fixture
def tiny_encoder_config():
    return dict(TINY_ENCODER)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A folder of good and bad audio files and what each should give (``test_data_audio``'s corpus)."""
    from test_data_audio import make_broken_corpus

    folder = tmp_path_factory.mktemp("broken")
    return folder, make_broken_corpus(folder)
