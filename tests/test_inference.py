"""The compiled inference path (keras_music_ssl.inference) against Keras' own predict."""

import keras
import numpy as np
import pytest
from conftest import BACKEND, TINY_ENCODER

from keras_music_ssl import MusicEncoder, inference
from keras_music_ssl.backbone import ModifiedResNet
from keras_music_ssl.probe.baselines import LogMelStats

NUM_SAMPLES = 16000


def keras_predict(model, x, batch_size=32):
    """Keras' own path: the Trainer's predict, which the mixin would otherwise replace."""
    return np.asarray(keras.Model.predict(model, x, batch_size=batch_size, verbose=0))


@pytest.fixture(scope="module")
def encoder():
    return MusicEncoder(**TINY_ENCODER, num_samples=NUM_SAMPLES)


def clips(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, NUM_SAMPLES)).astype("float32")


@pytest.mark.parametrize("rows,batch_size", [(5, 32), (37, 16)])  # one padded batch; 16, 16, 5 -> 8
def test_predict_on_arrays_equals_keras_predict(encoder, rows, batch_size):
    x = clips(rows)
    expected = keras_predict(encoder, x, batch_size)
    got = encoder.predict(x, batch_size=batch_size, verbose=0)
    assert got.dtype == np.float32 and got.shape == (rows, 32)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(encoder(x)), expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(encoder.predict_on_batch(x), expected, atol=1e-5, rtol=1e-5)


def test_call_on_array_returns_a_backend_tensor_and_empty_input_gives_no_rows(encoder):
    out = encoder(clips(3))
    assert keras.ops.is_tensor(out) and tuple(out.shape) == (3, 32)
    assert encoder.predict(np.zeros((0, NUM_SAMPLES), np.float32), verbose=0).shape == (0, 32)


def test_padding_rows_do_not_change_real_rows(encoder):
    x = clips(5)
    alone = [encoder.predict(x[i:i + 1], verbose=0)[0] for i in range(5)]
    np.testing.assert_allclose(encoder.predict(x, verbose=0), np.stack(alone), atol=1e-5, rtol=1e-5)


def test_training_and_symbolic_calls_keep_the_keras_path():
    x = clips(2)
    assert inference.is_array_call((x,), {})
    assert inference.is_array_call((x,), {"training": False})
    assert not inference.is_array_call((x,), {"training": True})
    assert not inference.is_array_call((keras.ops.convert_to_tensor(x),), {})
    assert not inference.is_array_call((x, x), {})
    # A functional graph built on the encoder still works: the call on a KerasTensor is symbolic.
    encoder = MusicEncoder(**TINY_ENCODER, num_samples=NUM_SAMPLES)
    symbolic = encoder(keras.Input((NUM_SAMPLES,)))
    assert tuple(symbolic.shape) == (None, 32)
    # training=True uses batch statistics: not the inference output.
    train_mode = keras.ops.convert_to_numpy(encoder(x, training=True))
    assert np.abs(train_mode - encoder.predict(x, verbose=0)).max() > 1e-4


def test_the_compiled_function_follows_new_weights(encoder):
    other = MusicEncoder(**TINY_ENCODER, num_samples=NUM_SAMPLES)
    x = clips(4, seed=3)
    model = MusicEncoder(**TINY_ENCODER, num_samples=NUM_SAMPLES)
    before = model.predict(x, verbose=0)
    model.set_weights(other.get_weights())
    after = model.predict(x, verbose=0)
    assert np.abs(after - before).max() > 1e-4
    np.testing.assert_allclose(after, keras_predict(other, x), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(BACKEND == "torch", reason="eager PyTorch runs the Python call on every batch")
def test_repeated_calls_do_not_retrace(monkeypatch):
    traces = []
    original = ModifiedResNet.call

    def counting(self, x, training=None):  # Keras reads the signature: no *args
        traces.append(1)
        return original(self, x, training=training)

    monkeypatch.setattr(ModifiedResNet, "call", counting)
    model = MusicEncoder(**TINY_ENCODER, num_samples=NUM_SAMPLES)
    model.predict(clips(5), verbose=0)  # pads to 8 rows: the first trace
    model.predict(clips(40), batch_size=16, verbose=0)  # 16, 16, 8 rows: one more shape
    warm = len(traces)
    for rows in (6, 7, 8, 40):
        model.predict(clips(rows), batch_size=16 if rows == 40 else 32, verbose=0)
    model(clips(7))
    model.predict_on_batch(clips(8))
    assert len(traces) == warm, f"{len(traces) - warm} retraces on shapes already compiled"


def test_logmel_stats_baseline_uses_the_same_path():
    model = LogMelStats(num_samples=NUM_SAMPLES)
    x = clips(3)
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_predict(model, x), atol=1e-4, rtol=1e-5)


@pytest.mark.slow  # torch.compile of even the tiny encoder takes ~40 s on 2 cores
@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile is the PyTorch backend's jit_compile")
def test_torch_jit_compile_inference_equals_eager():
    model = MusicEncoder(**TINY_ENCODER, num_samples=NUM_SAMPLES)
    x = clips(4)
    eager = model.predict(x, verbose=0)
    model.compile(jit_compile=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), eager, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(model.predict(x, verbose=0), eager, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # torch.compile of a pretext step of the tiny encoder: ~60 s on 2 cores
@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile is the PyTorch backend's jit_compile")
def test_torch_jit_compile_training_equals_eager():
    from keras_music_ssl.pretext import Contrastive

    views = 0.1 * np.random.default_rng(0).normal(size=(8, 2, NUM_SAMPLES)).astype("float32")
    runs, start = [], None
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = Contrastive(MusicEncoder(**TINY_ENCODER, num_samples=NUM_SAMPLES), steps_per_epoch=2)
        # Plain SGD: an update is proportional to its gradient (Adam moves every weight by ~lr
        # whatever the gradient's size, which hides a wrong gradient).
        model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=jit)
        if start is None:
            start = model.get_weights()
        model.set_weights(start)
        initial = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
        runs.append((model, initial, model.fit(views, batch_size=4, epochs=1, verbose=0, shuffle=False).history))
    (eager, initial, eager_logs), (compiled, _, compiled_logs) = runs
    np.testing.assert_allclose(compiled_logs["loss"], eager_logs["loss"], rtol=1e-3)
    # The two steps' update of each trainable weight: the same direction and size within 5 %
    # (BatchNorm's batch statistics of dB-scale inputs differ in the last bits between kernels).
    for before, e, c in zip(initial, eager.trainable_weights, compiled.trainable_weights):
        step_e = keras.ops.convert_to_numpy(e) - before
        step_c = keras.ops.convert_to_numpy(c) - before
        assert np.linalg.norm(step_c - step_e) <= 0.05 * np.linalg.norm(step_e) + 1e-7, e.path
