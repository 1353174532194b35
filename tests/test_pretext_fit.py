"""The Keras plumbing of the pretext methods: compile defaults, fit on views, saving, errors.

A one-layer Dense "encoder" stands in for the MusicEncoder: any Keras model mapping
(batch, samples) -> (batch, D) is accepted, and it keeps these tests fast on every backend.
"""

import json

import keras
import numpy as np
import pytest

from keras_music_ssl.pretext import (BYOL, METHODS, Clustering, Contrastive, ScheduledAdamW)
from keras_music_ssl.schedules import CosineSchedule, WarmupCosine

SAMPLES, DIM = 64, 8


def dense_encoder(dim=DIM, name="dense_encoder"):
    inputs = keras.Input((SAMPLES,))
    return keras.Model(inputs, keras.layers.Dense(dim, name="embed")(inputs), name=name)


@pytest.fixture
def views(rng):
    return rng.normal(size=(12, 2, SAMPLES)).astype("float32")


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_default_compile_is_adamw_with_schedules_sized_by_each_fit(views):
    model = Contrastive(dense_encoder())
    model.compile()
    optimizer = model.optimizer
    assert isinstance(optimizer, ScheduledAdamW)
    assert isinstance(optimizer._learning_rate, WarmupCosine)
    assert isinstance(optimizer.weight_decay, CosineSchedule)
    assert (optimizer.weight_decay.start, optimizer.weight_decay.end) == (0.04, 0.4)
    model.fit(views, batch_size=4, epochs=3, verbose=0)
    assert model.steps_per_epoch == 3
    assert optimizer._learning_rate.total_steps == optimizer.weight_decay.total_steps == 9
    assert int(_numpy(optimizer.iterations)) == int(_numpy(model.step)) == 9
    assert float(_numpy(optimizer.learning_rate)) == pytest.approx(1e-7)  # the cosine has ended
    model.fit(views, batch_size=4, epochs=5, verbose=0)  # a later fit is a new run (test_pretext_schedules)
    assert optimizer._learning_rate.total_steps == optimizer.weight_decay.total_steps == 15
    assert optimizer._learning_rate.start_step == optimizer.weight_decay.start_step == 9


def test_fit_takes_a_dataset_of_views_and_reads_its_length(views):
    import tensorflow as tf  # tf.data feeds every backend

    model = Contrastive(dense_encoder())
    model.compile()
    history = model.fit(tf.data.Dataset.from_tensor_slices(views).batch(4), epochs=2, shuffle=False,
                        verbose=0).history
    assert model.steps_per_epoch == 3 and len(history["loss"]) == 2
    assert np.all(np.isfinite(history["loss"]))


def test_fit_rejects_labels_and_bad_shapes(views):
    model = Contrastive(dense_encoder())
    model.compile()
    with pytest.raises(ValueError, match="no labels"):
        model.fit(views, np.zeros(len(views)), verbose=0)
    with pytest.raises(ValueError, match="views >= 2"):
        model.fit(views[:, 0], verbose=0)
    with pytest.raises(ValueError, match="views >= 2"):
        model.fit(views[:, :1], verbose=0)
    with pytest.raises(ValueError, match="last batch of one"):
        model.fit(views[:9], batch_size=4, verbose=0)
    with pytest.raises(ValueError, match="loss"):
        model.compile(loss="mse")


def test_teacher_methods_ask_for_steps_per_epoch_when_fit_cannot_tell(views):
    model = BYOL(dense_encoder())
    model.compile(total_steps=10)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.train_on_batch(views[:4])


def test_call_returns_the_encoder_embedding_of_each_view(views):
    model = Contrastive(dense_encoder())
    per_view = _numpy(model(views))
    assert per_view.shape == (12, 2, DIM)
    np.testing.assert_allclose(per_view[:, 1], _numpy(model.encoder(views[:, 1])), rtol=1e-6, atol=1e-6)
    assert _numpy(model(views[:, 0])).shape == (12, DIM)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_heads_default_to_the_paper_ratios_of_the_embedding_size(name):
    model = METHODS[name](dense_encoder(dim=16))
    widths = {"contrastive": ("projector", (16, 16, 32)), "byol": ("predictor", (4, 32)),
              "clustering": ("head", (16, 16, 4, 64)), "barlow_twins": ("projector", (16, 16, 32)),
              "vicreg": ("projector", (16, 16, 32))}[name]
    assert getattr(model, widths[0]).layers_dims == widths[1]
    # At D = 1024 these are the paper's 1024-1024-2048, 256-2048 and 1024-1024-256-4096.


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_saves_and_reloads_with_any_keras_encoder(name, views, tmp_path):
    small = dict(projector_dims=(8, 16)) if name != "clustering" else dict(head_dims=(8, 4, 32))
    if name == "byol":
        small["predictor_dims"] = (4, 16)
    model = METHODS[name](dense_encoder(), **small)
    model.compile(learning_rate=1e-2)
    history = model.fit(views, batch_size=4, epochs=2, verbose=0, shuffle=False).history
    assert set(history) == set(model.log_names) and np.all(np.isfinite(history["loss"]))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert json.dumps(loaded.get_config(), sort_keys=True) == json.dumps(model.get_config(), sort_keys=True)
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(_numpy(a), _numpy(b))
    np.testing.assert_allclose(_numpy(loaded(views)), _numpy(model(views)), rtol=1e-6, atol=1e-6)
    # The reloaded optimizer continues where it was, on the same schedule.
    assert int(_numpy(loaded.optimizer.iterations)) == 6
    assert loaded.optimizer._learning_rate.get_config() == model.optimizer._learning_rate.get_config()


def test_evaluate_and_validation_report_the_inference_mode_loss(views):
    model = Clustering(dense_encoder(), head_dims=(8, 4, 32), steps_per_epoch=3)
    model.compile()
    history = model.fit(views, batch_size=4, epochs=1, verbose=0, validation_data=(views[:4],)).history
    assert np.isfinite(history["val_loss"][0])
    center = _numpy(model.center)
    result = model.evaluate(views[:4], batch_size=4, verbose=0, return_dict=True)
    with keras.StatelessScope():
        expected = float(_numpy(model.pretext_loss(views[:4], training=False)[0]))
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    np.testing.assert_array_equal(_numpy(model.center), center)  # evaluation updates no state


def test_a_diverging_run_stops_at_the_first_nan(views):
    model = Contrastive(dense_encoder())
    model.compile()
    model.encoder.get_layer("embed").kernel.assign(np.full((SAMPLES, DIM), np.nan, "float32"))
    history = model.fit(views, batch_size=4, epochs=3, verbose=0).history
    assert len(history["loss"]) == 1 and np.isnan(history["loss"][0])
