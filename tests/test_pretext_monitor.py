"""The collapse monitor: its two statistics on known embeddings, its logs and its warning."""

import warnings

import keras
import numpy as np
import pytest

from keras_music_ssl.pretext import CollapseMonitor, Contrastive, embedding_statistics

SAMPLES, DIM = 64, 8


def test_statistics_of_known_embeddings():
    collapsed = np.tile(np.arange(1.0, 9.0), (20, 1))
    assert embedding_statistics(collapsed) == pytest.approx({"embedding_std": 0.0, "effective_rank": 1.0})
    basis = np.eye(DIM)  # one embedding per axis: the most spread set of D points
    expected_std = np.sqrt(DIM - 1) / DIM  # a column holds one 1 and D - 1 zeros
    assert embedding_statistics(basis) == pytest.approx({"embedding_std": expected_std, "effective_rank": DIM})
    rank_two = np.concatenate([np.eye(DIM)[:2]] * 10)  # two directions, equally used
    assert embedding_statistics(rank_two)["effective_rank"] == pytest.approx(2.0)


def test_isotropic_embeddings_score_near_one_over_sqrt_d(rng):
    stats = embedding_statistics(rng.normal(size=(4000, 16)))
    assert stats["embedding_std"] == pytest.approx(1 / np.sqrt(16), rel=0.05)
    assert stats["effective_rank"] > 15


def _model(kernel=None):
    inputs = keras.Input((SAMPLES,))
    encoder = keras.Model(inputs, keras.layers.Dense(DIM, name="embed", bias_initializer="ones")(inputs))
    if kernel is not None:
        encoder.get_layer("embed").kernel.assign(kernel)
    model = Contrastive(encoder, projector_dims=(8, 16))
    model.compile(learning_rate=1e-6)
    return model


def test_monitor_logs_reach_the_history_each_epoch(rng):
    views = rng.normal(size=(8, 2, SAMPLES)).astype("float32")
    model = _model()
    history = model.fit(views, batch_size=4, epochs=2, verbose=0,
                        callbacks=[CollapseMonitor(views[:4]), keras.callbacks.History()]).history
    assert len(history["embedding_std"]) == len(history["effective_rank"]) == 2
    final = embedding_statistics(model.encoder.predict(views[:4].reshape(-1, SAMPLES), verbose=0))
    assert history["embedding_std"][-1] == pytest.approx(final["embedding_std"], rel=1e-5)
    assert history["effective_rank"][-1] == pytest.approx(final["effective_rank"], rel=1e-5)


def test_monitor_warns_on_a_collapsed_encoder_only(rng):
    views = rng.normal(size=(8, 2, SAMPLES)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _model().fit(views, batch_size=4, epochs=1, verbose=0, callbacks=[CollapseMonitor(views)])
    assert not [w for w in caught if "collapsed" in str(w.message)]
    constant = _model(kernel=np.zeros((SAMPLES, DIM), "float32"))  # every clip -> the bias
    with pytest.warns(RuntimeWarning, match="collapsed"):
        constant.fit(views, batch_size=4, epochs=1, verbose=0, callbacks=[CollapseMonitor(views)])


def test_monitor_needs_two_clips():
    with pytest.raises(ValueError, match="two clips"):
        CollapseMonitor(np.zeros((1, SAMPLES), "float32"))
