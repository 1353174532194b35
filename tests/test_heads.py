"""The projection / prediction MLP: the paper's sizes, numerics against numpy, saving."""

import keras
import numpy as np
import pytest

from keras_music_ssl.heads import Head


@pytest.mark.parametrize("dims,in_dim,params", [
    ((1024, 1024, 2048), 1024, 4_198_400),        # projector
    ((256, 2048), 2048, 1_049_088),               # BYOL predictor
    ((1024, 1024, 256, 4096), 1024, 3_412_480),   # clustering head
])
def test_head_trainable_parameters_match_the_paper(dims, in_dim, params):
    head = Head(dims)
    head.build((None, in_dim))
    assert sum(int(np.prod(w.shape)) for w in head.trainable_weights) == params
    assert head.compute_output_shape((None, in_dim)) == (None, dims[-1])


def _numpy_head(head, x, training):
    for i, dense in enumerate(head.dense):
        x = x @ keras.ops.convert_to_numpy(dense.kernel)
        if i == len(head.norms):
            return x
        bn = head.norms[i]
        gamma, beta, mean, var = (keras.ops.convert_to_numpy(w) for w in
                                  (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
        if training:
            mean, var = x.mean(0), x.var(0)  # batch statistics, biased variance
        x = np.maximum(gamma * (x - mean) / np.sqrt(var + 1e-5) + beta, 0)


def test_head_is_linear_bn_relu_then_a_bare_linear(rng):
    head = Head((12, 10, 6))
    head.build((None, 8))
    assert [d.use_bias for d in head.dense] == [False, False, False]
    assert len(head.norms) == 2
    # Non-trivial BN parameters and statistics, so that the reference checks them.
    for bn in head.norms:
        n = bn.gamma.shape[0]
        bn.gamma.assign(rng.uniform(0.5, 2, n)), bn.beta.assign(rng.normal(size=n))
        bn.moving_mean.assign(rng.normal(size=n)), bn.moving_variance.assign(rng.uniform(0.5, 2, n))
    x = rng.normal(size=(16, 8)).astype("float32")
    for training in (False, True):
        got = keras.ops.convert_to_numpy(head(x, training=training))
        np.testing.assert_allclose(got, _numpy_head(head, x, training), rtol=1e-4, atol=1e-4)


def test_head_initialises_like_pytorch_linear():
    head = Head((64, 32))
    head.build((None, 400))
    kernel = keras.ops.convert_to_numpy(head.dense[0].kernel)
    bound = 1 / np.sqrt(400)  # nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound


def test_head_survives_keras_save_and_load(tmp_path, rng):
    model = keras.Sequential([keras.Input((8,)), Head((12, 6), name="projector")])
    x = rng.normal(size=(5, 8)).astype("float32")
    model(x, training=True)  # move the BN statistics away from their initial values
    path = str(tmp_path / "head.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[0].get_config() == model.layers[0].get_config()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)),
                               rtol=1e-6, atol=1e-6)


def test_head_needs_a_width():
    with pytest.raises(ValueError, match="at least one"):
        Head(())
