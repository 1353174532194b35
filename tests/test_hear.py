"""The HEAR 2021 API (keras_music_ssl.hear): the official validator, and the numbers against the
library's track embedding and hand-cut windows."""

import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import BACKEND, TINY_ENCODER
from keras_music_ssl import MusicEncoder
from keras_music_ssl import hear
from keras_music_ssl.embed import embed_waveform

L = 64000


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    keras.utils.set_random_seed(8)
    folder = tmp_path_factory.mktemp("hear") / "tiny"
    MusicEncoder(**TINY_ENCODER).save_to_preset(folder, method="test")
    return str(folder)


@pytest.mark.slow  # the HEAR validator runs the model at several lengths: ~15 s
@pytest.mark.skipif(BACKEND == "jax", reason="the validator accepts torch.nn.Module and tf.Module models only")
def test_hear_validator_passes(preset):
    validator = shutil.which("hear-validator", path=os.path.dirname(sys.executable)) or shutil.which("hear-validator")
    assert validator, "hear-validator is not installed (pip install --no-deps hearvalidator)"
    env = dict(os.environ, KERAS_BACKEND=BACKEND, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([validator, "keras_music_ssl.hear", "-m", preset], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Received torch Module" in done.stdout if BACKEND == "torch" else "Received tensorflow Module" in done.stdout
    assert "Checking get_scene_embeddings" in done.stdout


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_scene_embedding_is_the_track_embedding(preset, rng):
    model = hear.load_model(preset)
    audio = rng.uniform(-0.5, 0.5, (2, 90000)).astype("float32")
    got = _numpy(hear.get_scene_embeddings(keras.ops.convert_to_tensor(audio), model))
    assert got.shape == (2, model.scene_embedding_size) and got.dtype == np.float32
    for sound, row in zip(audio, got):
        np.testing.assert_allclose(row, embed_waveform(model.encoder, sound), atol=1e-5)


def test_timestamp_embeddings_are_centred_4s_windows_at_the_documented_hop(preset, rng):
    model = hear.load_model(preset, hop_ms=500)
    audio = rng.uniform(-0.5, 0.5, (2, 17120)).astype("float32")  # 1.07 s
    embeddings, timestamps = (_numpy(t) for t in hear.get_timestamp_embeddings(audio, model))
    np.testing.assert_array_equal(timestamps, [[0, 500, 1000]] * 2)
    assert embeddings.shape == (2, 3, model.timestamp_embedding_size)
    sound = audio[1] / np.max(np.abs(audio[1]))
    for k, centre in enumerate((0, 8000, 16000)):  # window = sound[centre - 2 s : centre + 2 s], zero outside
        window = np.zeros(L, np.float32)
        lo, hi = centre - L // 2, centre + L // 2
        window[max(0, -lo):L - max(0, hi - len(sound))] = sound[max(0, lo):min(len(sound), hi)]
        expected = _numpy(model.encoder(window[None], training=False))[0]
        np.testing.assert_allclose(embeddings[1, k], expected, atol=1e-5)


def test_default_hop_and_timestamps_do_not_drift():
    assert hear.TIMESTAMP_HOP_MS == 250.0
    times = hear.timestamps_ms(16000 * 3600, 16000, 25.0)  # one hour at 25 ms
    assert len(times) == 144001 and times[-1] == 3600000.0
    assert np.allclose(np.diff(times), 25.0)
