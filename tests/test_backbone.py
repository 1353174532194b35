"""MusicEncoder / ModifiedResNet: the paper's architecture, parity with the PyTorch reference, saving."""

import os

import keras
import numpy as np
import pytest
import torch

import torch_reference as tr
from conftest import BACKEND, TINY_ENCODER
from keras_music_ssl import ModifiedResNet, MusicEncoder
from keras_music_ssl.torch_weights import (StateDictMismatchError, frontend_mismatch,
                                           load_torch_state_dict)

PAPER = dict(width=16, layers=(3, 4, 6, 3), heads=8, output_dim=1024)


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def _waveforms(n, seed=0, samples=64000):
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    x = 0.3 * rng.standard_normal((n, samples))
    x[0] = 0.5 * np.sin(2 * np.pi * 440 * t)  # a tone, far from noise statistics
    return x.astype(np.float32)


def _pair(config, seed=0):
    """A PyTorch reference (random BN stats, eval mode) and a Keras encoder with its weights."""
    torch.manual_seed(seed)
    ref = tr.randomize_batchnorm(tr.Backbone(**config), seed).eval()
    enc = MusicEncoder(**config)
    buffers = load_torch_state_dict(enc, ref.state_dict())
    assert frontend_mismatch(enc, **buffers) is None
    return ref, enc


def _torch_embed(ref, x):
    with torch.no_grad():
        return ref(torch.from_numpy(x)[..., None]).numpy()


# Module-scoped: building and first-calling a model is what costs time (JAX compiles each
# initializer and op per shape), so tests share these two.
@pytest.fixture(scope="module")
def paper_pair():
    return _pair(PAPER)


@pytest.fixture(scope="module")
def tiny_pair():
    return _pair(TINY_ENCODER, seed=6)


def test_default_encoder_is_the_paper_model(paper_pair):
    enc = paper_pair[1]
    defaults = {k: v for k, v in MusicEncoder().get_config().items() if k != "name"}
    assert {k: v for k, v in enc.get_config().items() if k != "name"} == defaults
    assert _count(enc.trainable_weights) == 2_800_392
    assert enc.input_shape == (None, 64000) and enc.output_shape == (None, 1024)
    r = enc.resnet
    # Per-part parameter counts of docs/paper.md#encoder (BN gamma/beta included, running stats excluded).
    assert _count(w for l in (r.conv1, r.bn1, r.conv2, r.bn2, r.conv3, r.bn3) for w in l.trainable_weights) == 1_864
    for blocks, expected in ((r.layer1, 14_016), (r.layer2, 77_568), (r.layer3, 447_488), (r.layer4, 939_520)):
        assert _count(w for b in blocks for w in b.trainable_weights) == expected
    assert _count(r.attnpool.trainable_weights) == 1_319_936
    assert [len(s) for s in (r.layer1, r.layer2, r.layer3, r.layer4)] == [3, 4, 6, 3]
    assert r.attnpool.positional_embedding.shape == (13, 512)  # 4 x 3 tokens + the mean token


def test_feature_map_shapes_follow_pytorch_floor_semantics(paper_pair):
    r = paper_pair[1].resnet
    shape = (None, 128, 126, 1)
    shape = r.conv1.compute_output_shape(r.stem_pad.compute_output_shape(shape))
    assert shape == (None, 64, 63, 8)
    shape = r.avgpool.compute_output_shape(shape[:-1] + (16,))
    assert shape == (None, 32, 31, 16)
    seen = []
    for blocks in (r.layer1, r.layer2, r.layer3, r.layer4):
        for block in blocks:
            shape = block.compute_output_shape(shape)
        seen.append(shape[1:])
    assert seen == [(32, 31, 64), (16, 15, 128), (8, 7, 256), (4, 3, 512)]


@pytest.mark.parametrize("jit", [
    False,
    # torch.compile of the full model takes ~90 s on 2 CPU cores: run it in the slow pass.
    pytest.param(True, marks=[pytest.mark.slow] if BACKEND == "torch" else []),
])
def test_paper_encoder_matches_pytorch_reference(paper_pair, jit):
    ref, enc = paper_pair
    x = _waveforms(3)
    enc.compile(jit_compile=jit)
    ours = enc.predict(x, batch_size=3, verbose=0)
    np.testing.assert_allclose(ours, _torch_embed(ref, x), rtol=0, atol=1e-4)


def test_eager_call_matches_pytorch_reference(paper_pair):
    ref, enc = paper_pair
    x = _waveforms(2, seed=5)
    ours = keras.ops.convert_to_numpy(enc(x, training=False))
    np.testing.assert_allclose(ours, _torch_embed(ref, x), rtol=0, atol=1e-4)


def test_tiny_configuration_matches_pytorch_reference(tiny_pair):
    ref, enc = tiny_pair
    x = _waveforms(2, seed=1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(enc(x, training=False)),
                               _torch_embed(ref, x), rtol=0, atol=1e-4)


def test_another_configuration_matches_pytorch_reference():
    ref, enc = _pair(dict(width=8, layers=(2, 1, 2, 1), heads=4, output_dim=64), seed=3)
    x = _waveforms(2, seed=1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(enc(x, training=False)),
                               _torch_embed(ref, x), rtol=0, atol=1e-4)


def test_training_mode_batchnorm_matches_pytorch_train_mode():
    ref, enc = _pair(TINY_ENCODER, seed=4)
    x = _waveforms(4, seed=2)
    with torch.no_grad():
        expected = ref.train()(torch.from_numpy(x)[..., None]).numpy()
    ours = keras.ops.convert_to_numpy(enc(x, training=True))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


def test_variable_batch_sizes_give_per_example_results(tiny_pair):
    enc = tiny_pair[1]
    x = _waveforms(5, seed=7)
    whole = enc.predict(x, batch_size=5, verbose=0)
    np.testing.assert_allclose(enc.predict(x, batch_size=2, verbose=0), whole, atol=1e-5)  # 2 + 2 + 1
    np.testing.assert_allclose(keras.ops.convert_to_numpy(enc(x[:1])), whole[:1], atol=1e-5)


def test_config_round_trip():
    enc = MusicEncoder(**TINY_ENCODER, frontend=dict(top_db=80.0), name="tiny")
    config = enc.get_config()
    clone = MusicEncoder.from_config(config)
    assert clone.get_config() == config
    assert clone.frontend.top_db == 80.0 and clone.name == "tiny"
    assert _count(clone.weights) == _count(enc.weights)
    assert ModifiedResNet.from_config(enc.resnet.get_config()).get_config() == enc.resnet.get_config()


def test_keras_file_round_trip_gives_identical_outputs(tiny_pair, tmp_path):
    enc = tiny_pair[1]
    path = os.path.join(tmp_path, "encoder.keras")
    enc.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, MusicEncoder)
    x = _waveforms(2, seed=8)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)),
                                  keras.ops.convert_to_numpy(enc(x)))


def test_invalid_configurations_are_rejected():
    with pytest.raises(ValueError, match="even"):
        MusicEncoder(width=5)
    with pytest.raises(ValueError, match="divisible"):
        MusicEncoder(width=4, layers=(1, 1, 1, 1), heads=3, output_dim=8)


# --- weight transfer -------------------------------------------------------------------

@pytest.fixture
def tiny_state():
    torch.manual_seed(0)
    return dict(tr.Backbone(**TINY_ENCODER).state_dict())


def _snapshot(enc):
    return [keras.ops.convert_to_numpy(w).copy() for w in enc.weights]


@pytest.mark.parametrize("tamper, message", [
    (lambda s: s.pop("embedding.layer2.0.conv2.weight"), "missing keys.*layer2.0.conv2.weight"),
    (lambda s: s.__setitem__("embedding.extra.weight", torch.zeros(3)), "unexpected keys.*embedding.extra.weight"),
    (lambda s: s.__setitem__("embedding.attnpool.c_proj.weight", torch.zeros(7, 128)),
     r"wrong shape for embedding.attnpool.c_proj.weight: expected \(32, 128\), got \(7, 128\)"),
])
def test_mismatched_state_dict_is_reported_by_key_and_nothing_is_loaded(tiny_state, tamper, message):
    enc = MusicEncoder(**TINY_ENCODER)
    before = _snapshot(enc)
    tamper(tiny_state)
    with pytest.raises(StateDictMismatchError, match=message):
        load_torch_state_dict(enc, tiny_state)
    for a, b in zip(before, _snapshot(enc)):
        np.testing.assert_array_equal(a, b)


def test_non_strict_load_tolerates_extra_keys(tiny_state):
    enc = MusicEncoder(**TINY_ENCODER)
    tiny_state["embedding.extra.weight"] = torch.zeros(3)
    load_torch_state_dict(enc, tiny_state, strict=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(enc.resnet.conv1.kernel),
                                  tiny_state["embedding.conv1.weight"].numpy().transpose(2, 3, 1, 0))


def test_frontend_mismatch_detects_a_different_filterbank(tiny_state):
    enc = MusicEncoder(**TINY_ENCODER)
    buffers = load_torch_state_dict(enc, tiny_state)
    assert frontend_mismatch(enc, **buffers) is None
    other = tr.torchaudio_mel_fbanks(513, 0.0, 8000.0, 128).numpy()  # f_max = Nyquist instead
    assert "mel filterbank differs" in frontend_mismatch(enc, mel_filterbank=other)
    assert "window shape" in frontend_mismatch(enc, window=np.hanning(512))
