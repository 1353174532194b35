"""Each pretext method trains on the current backend: one training scenario per method.

A tiny MusicEncoder learns, with its method, from views of four synthetic tracks (one view
pair of each track per batch). The scenario is run once per method (module fixture) and
the tests read what it recorded; compiling a train step is the costly part on TensorFlow
and JAX, so every check reuses that one compiled step.
"""

import math
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from conftest import TINY_ENCODER

from keras_music_ssl import MusicEncoder
from keras_music_ssl.pretext import BYOL, METHODS, Clustering, ScheduledAdamW

SR = 16000
ENCODER = dict(TINY_ENCODER, num_samples=4096,
               frontend=dict(n_mels=32, n_fft=256, hop_length=128, f_max=8000.0))
TRACKS, STEPS, EPOCHS = 4, 10, 3  # a batch holds each track once; 30 steps
LEARNING_RATE = 2e-3
# The default EMA (0.996 -> 1) is made for 1e5 steps: a teacher that moves within the test.
OPTIONS = {"byol": dict(momentum=0.9), "clustering": dict(momentum=0.9)}


def synthetic_tracks(n_tracks=TRACKS, seconds=2.0, seed=0):
    """Distinct 'tracks': three partials each, slow amplitude modulation, a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tracks = []
    for _ in range(n_tracks):
        partials = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in rng.uniform(100, 4000, 3))
        x = (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 4) * t)) * partials + 0.05 * rng.normal(size=t.size)
        tracks.append(x / np.abs(x).max())
    return np.stack(tracks).astype("float32")


def draw_views(tracks, n_batches, n_views=2, length=4096, seed=1):
    """(n_batches * n_tracks, n_views, length): random crops, every track once per batch."""
    rng = np.random.default_rng(seed)
    n_tracks, total = tracks.shape
    starts = rng.integers(0, total - length, size=(n_batches, n_tracks, n_views))
    crops = [[[tracks[k, s:s + length] for s in starts[b, k]] for k in range(n_tracks)] for b in range(n_batches)]
    return np.asarray(crops, dtype="float32").reshape(n_batches * n_tracks, n_views, length)


class StepLosses(keras.callbacks.Callback):
    """Per-step losses, recovered from the running epoch means that fit reports per batch."""

    def on_train_begin(self, logs=None):
        self.losses = []

    def on_epoch_begin(self, epoch, logs=None):
        self._total = 0.0

    def on_train_batch_end(self, batch, logs=None):
        total = logs["loss"] * (batch + 1)
        self.losses.append(total - self._total)
        self._total = total


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _teacher_parts(model):
    if isinstance(model, BYOL):
        return model.encoder.weights + model.projector.weights, \
            model.teacher_encoder.weights + model.teacher_projector.weights
    return model.encoder.weights + model.head.weights, model.teacher_encoder.weights + model.teacher_head.weights


def _snapshot(model):
    state = {"weights": [_numpy(w) for w in model.weights], "step": int(_numpy(model.step)),
             "iterations": int(_numpy(model.optimizer.iterations)),
             "optimizer": [_numpy(v) for v in model.optimizer.variables]}
    if isinstance(model, (BYOL, Clustering)):
        student, teacher = _teacher_parts(model)
        state["student"] = [_numpy(w) for w in student]
        state["teacher"] = [_numpy(w) for w in teacher]
        state["trainable"] = [w.trainable for w in student]
    if isinstance(model, Clustering):
        state["center"] = _numpy(model.center)
    return state


@pytest.fixture(scope="module", params=sorted(METHODS))
def run(request, tmp_path_factory):
    name = request.param
    keras.utils.set_random_seed(0)
    # run_steps: the EMA schedule's length for the loss computed before any fit sets one.
    model = METHODS[name](MusicEncoder(**ENCODER), steps_per_epoch=STEPS, run_steps=1, **OPTIONS.get(name, {}))
    model.compile(learning_rate=LEARNING_RATE, total_steps=1 + EPOCHS * STEPS)
    views = draw_views(synthetic_tracks(), STEPS)
    first = views[:TRACKS]
    with keras.StatelessScope():  # the loss of the initial weights, nothing updated
        eager_loss = float(_numpy(model.pretext_loss(first, training=True)[0]))
        teacher_logits = (_numpy(model.project(model.teacher_encoder, model.teacher_head, first, True))
                          if name == "clustering" else None)
    before = _snapshot(model)
    first_step = model.fit(first, batch_size=TRACKS, epochs=1, shuffle=False, verbose=0).history
    after = _snapshot(model)
    folder = tmp_path_factory.mktemp(name)
    steps = StepLosses()
    history = model.fit(views, batch_size=TRACKS, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[
        steps, keras.callbacks.ModelCheckpoint(str(folder / "epoch{epoch}.keras"))]).history
    final = dict(_snapshot(model), embeddings=_numpy(model(first)))  # later tests move `model` on
    return SimpleNamespace(name=name, model=model, views=views, eager_loss=eager_loss, first_step=first_step,
                           teacher_logits=teacher_logits, before=before, after=after, history=history,
                           final=final, step_losses=steps.losses, folder=folder)


def test_loss_decreases_over_30_steps_with_finite_logs(run):
    assert len(run.step_losses) == EPOCHS * STEPS
    for name, values in run.history.items():
        assert np.all(np.isfinite(values)), f"{run.name}: {name} = {values}"
    loss = run.history["loss"]
    assert loss[-1] < loss[0], f"{run.name}: epoch losses {loss}"


def test_first_step_reports_the_loss_of_the_initial_weights(run):
    np.testing.assert_allclose(run.first_step["loss"][0], run.eager_loss, rtol=1e-4)


def test_step_counter_and_optimizer_advance_once_per_batch(run):
    assert run.before["step"] == 0 and run.after["step"] == 1
    assert run.final["step"] == run.final["iterations"] == 1 + EPOCHS * STEPS
    assert isinstance(run.model.optimizer, ScheduledAdamW)
    changed = [not np.array_equal(a, b) for a, b in zip(run.before["weights"], run.after["weights"])]
    assert sum(changed) > len(changed) // 2


def _expected_momentum(model, step):
    total = model.schedule_steps(model.momentum_epochs)
    return model.momentum_end - (model.momentum_end - model.momentum) * (1 + math.cos(math.pi * step / total)) / 2


def test_teacher_is_the_ema_of_the_updated_student(run):
    if not isinstance(run.model, (BYOL, Clustering)):
        pytest.skip(f"{run.name} has no teacher")
    m = _expected_momentum(run.model, step=0)
    assert m == pytest.approx(0.9)
    before, after = run.before, run.after
    # The teacher starts as an exact copy of the student.
    for s, t in zip(before["student"], before["teacher"]):
        np.testing.assert_array_equal(s, t)
    checked = 0
    for s_after, t_before, t_after, trainable in zip(after["student"], before["teacher"], after["teacher"],
                                                    before["trainable"]):
        if trainable:  # BatchNorm statistics also move with the teacher's own forward pass
            np.testing.assert_allclose(t_after, m * t_before + (1 - m) * s_after, rtol=1e-5, atol=1e-6)
            checked += 1
    assert checked > 10
    # The EMA uses the student after the optimizer step, not before it.
    moved = max(np.abs(a - b).max() for a, b in zip(after["student"], before["student"]))
    assert moved > 1e-4


def test_center_is_the_ema_of_the_mean_teacher_logits(run):
    if run.name != "clustering":
        pytest.skip("the clustering method has the centre")
    expected = 0.9 * run.before["center"] + 0.1 * run.teacher_logits.reshape(-1, run.teacher_logits.shape[-1]).mean(0)
    assert np.abs(run.before["center"]).max() == 0.0
    np.testing.assert_allclose(run.after["center"], expected, rtol=1e-4, atol=1e-6)


def test_saved_method_reloads_with_teacher_center_step_and_optimizer(run):
    loaded = keras.saving.load_model(run.folder / f"epoch{EPOCHS}.keras")
    assert type(loaded) is type(run.model) and loaded.get_config() == run.model.get_config()
    assert [v.trainable for v in loaded.weights] == [v.trainable for v in run.model.weights]
    for a, b in zip(loaded.weights, run.final["weights"]):  # teacher, centre and step included
        np.testing.assert_array_equal(_numpy(a), b)
    assert int(_numpy(loaded.step)) == run.final["step"] == 1 + EPOCHS * STEPS
    for a, b in zip(loaded.optimizer.variables, run.final["optimizer"], strict=True):
        np.testing.assert_array_equal(_numpy(a), b)
    np.testing.assert_allclose(_numpy(loaded(run.views[:TRACKS])), run.final["embeddings"], rtol=1e-6, atol=1e-6)
    assert run.final["embeddings"].shape == (TRACKS, 2, ENCODER["output_dim"])


def test_resuming_from_a_checkpoint_equals_training_straight(run):
    if run.name != "clustering":  # the method with the most state: teacher, centre, temperature
        pytest.skip("resume is checked on the clustering method")
    resumed = keras.saving.load_model(run.folder / f"epoch{EPOCHS - 1}.keras")
    last = resumed.fit(run.views, batch_size=TRACKS, epochs=EPOCHS, initial_epoch=EPOCHS - 1, shuffle=False,
                       verbose=0).history
    tol = dict(rtol=1e-5, atol=1e-5) if keras.backend.backend() == "tensorflow" else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(last["loss"][-1], run.history["loss"][-1], **tol)
    straight = keras.saving.load_model(run.folder / f"epoch{EPOCHS}.keras")
    for a, b in zip(resumed.weights, straight.weights):
        np.testing.assert_allclose(_numpy(a), _numpy(b), **tol)


class BatchLogs(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append(dict(logs))


def test_degenerate_batches_train_to_finite_values(run):
    """Identical views, then silence (every embedding of the batch the same: zero batch
    variance everywhere), in one fit so the step is compiled once."""
    identical = run.views[:TRACKS].copy()
    identical[:, 1] = identical[:, 0]
    silence = np.zeros_like(identical)
    batches = BatchLogs()
    run.model.fit(np.concatenate([identical, silence]), batch_size=TRACKS, epochs=1, shuffle=False, verbose=0,
                  callbacks=[batches])
    assert len(batches.logs) == 2
    for case, logs in zip(["identical_views", "silence"], batches.logs):
        assert all(np.isfinite(float(v)) for v in logs.values()), (case, logs)
    assert all(np.all(np.isfinite(_numpy(w))) for w in run.model.weights)


@pytest.fixture
def mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.mark.slow  # two more encoders and one more compiled step: ~30 s on TensorFlow and JAX
def test_mixed_precision_trains_with_float32_losses_and_state(mixed_float16):
    """float16 compute (with loss scaling) on every backend; losses, teacher and centre in float32.

    The clustering method is the most sensitive: its teacher softmax divides by 0.02.
    """
    views = draw_views(synthetic_tracks(), 2)
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    reference = Clustering(MusicEncoder(**ENCODER), steps_per_epoch=2, run_steps=4)
    with keras.StatelessScope():
        reference_loss = float(_numpy(reference.pretext_loss(views[:TRACKS], training=True)[0]))
    keras.config.set_dtype_policy("mixed_float16")
    model = Clustering(MusicEncoder(**ENCODER), steps_per_epoch=2, run_steps=4)
    model.set_weights(reference.get_weights())
    assert model.head.compute_dtype == "float16"
    assert {w.dtype for w in model.weights} <= {"float32", "int32"}
    with keras.StatelessScope():
        loss = model.pretext_loss(views[:TRACKS], training=True)[0]
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    np.testing.assert_allclose(float(_numpy(loss)), reference_loss, rtol=0.05)
    model.compile(learning_rate=LEARNING_RATE)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(views, batch_size=TRACKS, epochs=2, shuffle=False, verbose=0).history
    assert all(np.all(np.isfinite(v)) for v in history.values()), history
    assert np.all(np.isfinite(_numpy(model.center))) and np.abs(_numpy(model.center)).max() > 0
