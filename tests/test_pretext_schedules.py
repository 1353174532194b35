"""Every fit is a run: the schedules left open follow it, measured from its first step (docs/paper.md#schedules).

A fit of E epochs of S steps is a run of E * S steps that starts at the optimizer step
``iterations - initial_epoch * S``. The learning rate, weight decay, EMA momentum and DINO
teacher temperature of a new fit start again from their first values and end with the fit;
a resumed fit (``initial_epoch``, or ``BackupAndRestore`` after a kill) sees the values of
the uninterrupted run. The values checked are those the compiled train step computes: a
subclass logs the optimizer schedules from inside it, next to the method's own logs.
"""

import math

import keras
import numpy as np
import pytest
from test_pretext_fit import dense_encoder

from keras_music_ssl.pretext import BYOL, Clustering

STEPS = 3  # 12 examples in batches of 4
LR, MIN_LR = 5e-4, 1e-7
NAMES = ("learning_rate", "weight_decay", "ema_momentum", "teacher_temperature")


@keras.saving.register_keras_serializable(package="test_pretext_schedules")
class LoggedClustering(Clustering):
    """Also logs the learning rate and weight decay the compiled step uses (at its step)."""

    log_names = Clustering.log_names + ("learning_rate", "weight_decay")

    def pretext_loss(self, views, training=False):
        loss, logs, aux = super().pretext_loss(views, training)
        # self.step equals optimizer.iterations before the update, and unlike the optimizer's
        # counter it is in the state that the JAX step maps here.
        lr, wd = self.optimizer._learning_rate(self.step), self.optimizer.weight_decay(self.step)
        return loss, dict(logs, learning_rate=lr, weight_decay=wd), aux


class StepValues(keras.callbacks.Callback):
    """Per-step values of logged scalars, recovered from the running epoch means of fit."""

    def __init__(self, names):
        super().__init__()
        self.names, self.values = names, {name: [] for name in names}

    def on_epoch_begin(self, epoch, logs=None):
        self._totals = dict.fromkeys(self.names, 0.0)

    def on_train_batch_end(self, batch, logs=None):
        for name in self.names:
            total = float(logs[name]) * (batch + 1)
            self.values[name].append(total - self._totals[name])
            self._totals[name] = total

    def array(self, name):
        return np.asarray(self.values[name])


class Killed(Exception):
    pass


class KillAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Killed


def cosine(i, n, start, end):
    i = np.minimum(i, n)
    return end + 0.5 * (start - end) * (1 + np.cos(np.pi * i / n))


def expected_run(epochs, first=0):
    """The schedules at run steps ``first ..`` of an ``epochs``-epoch run (numpy, docs/paper.md#schedules)."""
    total = epochs * STEPS
    i = np.arange(first, total)
    return {"learning_rate": cosine(i, total, LR, MIN_LR), "weight_decay": cosine(i, total, 0.04, 0.4),
            "ema_momentum": cosine(i, total, 0.996, 1.0),
            "teacher_temperature": cosine(np.floor(i / STEPS), 10, 0.02, 0.04)}


def assert_values(recorder, expected):
    for name in NAMES:
        got = recorder.array(name)
        assert got.shape == expected[name].shape, name
        np.testing.assert_allclose(got, expected[name], rtol=2e-4, atol=2e-7, err_msg=name)


def fit(model, views, epochs, callbacks=(), **kwargs):
    recorder = StepValues(NAMES)
    model.fit(views, batch_size=4, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[*callbacks, recorder], **kwargs)
    return recorder


@pytest.fixture
def views(rng):
    return rng.normal(size=(4 * STEPS, 2, 64)).astype("float32")


def test_each_fit_sizes_its_own_run_and_resumed_runs_see_the_same_values(views, tmp_path):
    keras.utils.set_random_seed(0)
    model = LoggedClustering(dense_encoder(), head_dims=(8, 4, 32))
    model.compile(learning_rate=LR)
    first = fit(model, views, epochs=3)
    assert_values(first, expected_run(3))
    model.save(tmp_path / "after_first.keras")

    checkpoints = keras.callbacks.ModelCheckpoint(str(tmp_path / "epoch{epoch}.keras"))
    second = fit(model, views, epochs=6, callbacks=[checkpoints])  # a new budget: a new run
    assert_values(second, expected_run(6))
    lr, momentum = second.array("learning_rate"), second.array("ema_momentum")
    assert lr[0] == pytest.approx(LR, rel=1e-4) and lr[-1] < 0.01 * LR
    assert momentum[0] == pytest.approx(0.996, abs=1e-6) and momentum[-1] == pytest.approx(1.0, abs=1e-4)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(MIN_LR)
    assert (model.run_start, model.run_steps) == (3 * STEPS, 6 * STEPS)

    # fit(epochs=6, initial_epoch=2) from the checkpoint of epoch 2 continues that run.
    resumed = keras.saving.load_model(tmp_path / "epoch2.keras")
    assert (resumed.run_start, resumed.run_steps) == (3 * STEPS, 6 * STEPS)
    assert_values(fit(resumed, views, epochs=6, initial_epoch=2), expected_run(6, first=2 * STEPS))

    # BackupAndRestore: killed after epoch 2, restarted in a fresh model from the same start.
    # The restart sizes its run on a model at the run's start (iterations 9); the callback then
    # restores epoch 2's weights, optimizer and step, and the epoch to go on from.
    backup = str(tmp_path / "backup")
    killed = keras.saving.load_model(tmp_path / "after_first.keras")
    with pytest.raises(Killed):
        fit(killed, views, epochs=6, callbacks=[keras.callbacks.BackupAndRestore(backup), KillAfterEpoch(1)])
    restarted = keras.saving.load_model(tmp_path / "after_first.keras")
    values = fit(restarted, views, epochs=6, callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert_values(values, expected_run(6, first=2 * STEPS))


@pytest.mark.parametrize("momentum_epochs", [None, 999])
def test_ema_momentum_spans_the_run_by_default_or_999_epochs(views, momentum_epochs):
    model = BYOL(dense_encoder(), projector_dims=(8, 16), predictor_dims=(4, 16), momentum_epochs=momentum_epochs)
    assert BYOL(dense_encoder()).momentum_epochs is None
    model.compile()
    recorder = StepValues(("ema_momentum",))
    model.fit(views, batch_size=4, epochs=4, verbose=0, callbacks=[recorder])
    got = recorder.array("ema_momentum")
    horizon = 4 * STEPS if momentum_epochs is None else 999 * STEPS  # the released code: 999 epochs
    np.testing.assert_allclose(got, cosine(np.arange(4 * STEPS), horizon, 0.996, 1.0), rtol=0, atol=2e-7)
    if momentum_epochs is None:
        assert got[-1] == pytest.approx(1.0, abs=1e-4)
    else:
        assert got[-1] < 0.9961


def test_explicit_total_steps_are_never_resized(views):
    model = LoggedClustering(dense_encoder(), head_dims=(8, 4, 32))
    model.compile(learning_rate=LR, total_steps=100)
    fit(model, views, epochs=1)
    values = fit(model, views, epochs=2)  # steps 3 .. 8 of the one 100-step schedule
    np.testing.assert_allclose(values.array("learning_rate"), cosine(np.arange(3, 9), 100, LR, MIN_LR),
                               rtol=2e-4, atol=2e-7)
    schedule = model.optimizer._learning_rate
    assert (schedule.start_step, schedule.total_steps, schedule.follows_fit) == (0, 100, False)
    assert math.isclose(values.array("ema_momentum")[0], 0.996, abs_tol=1e-6)  # the model's run is the fit
