"""The shared training plumbing of the pretext methods: the one backend-specific module.

A method is a ``PretextModel`` that states three things in ``keras.ops``:

- its extra layers (projector, predictor, EMA teacher, ...), built in ``__init__``;
- ``pretext_loss(views, training) -> (loss, logs, aux)``: the forward pass of all views and
  the loss (a float32 scalar), plus extra scalars to log and whatever its updates need;
- ``non_gradient_updates(aux)``: variable assignments done after the optimizer step
  (EMA teacher, DINO centre).

Where the authors' released code and the method's original paper differ (BYOL, Barlow
Twins, VICReg), a method's loss defaults to the released code's form, which produced the
paper's numbers; ``form="original"`` gives the original paper's.

Several devices (``distribute.py``): every loss sees the global batch, as on one device.

This module runs them in one training step per backend: a ``tf.GradientTape`` on
TensorFlow, a ``loss.backward()`` on PyTorch and, on JAX, a pure function of the state
tuple where every non-gradient variable (teacher weights, centre, BatchNorm statistics,
the step counter) flows through ``keras.StatelessScope``.

Data: ``fit(x)`` takes views shaped (batch, views, samples), V >= 2, as an array, a
``tf.data.Dataset`` or a ``keras.utils.PyDataset``; there are no labels. Each view goes
through the encoder separately, as in the authors' code: BatchNorm statistics are per view.

Runs: each ``fit(epochs=E)`` of S steps per epoch is one run of E * S steps, the "training"
of the authors' schedules. It starts at step ``step - initial_epoch * S`` of the counter at
the start of the fit, so ``fit(epochs=E, initial_epoch=k)`` (or ``BackupAndRestore``, which
restores epoch k of a run into a model sized at its start) continues a run instead of
starting one.
"""

import contextlib
import math

import keras
from keras import ops

from keras_music_ssl.embedder import embedding_dim
from keras_music_ssl.pretext import distribute
from keras_music_ssl.pretext.optimizer import ScheduledAdamW
from keras_music_ssl.schedules import CosineSchedule, WarmupCosine

BACKEND = keras.backend.backend()


def check_views_shape(shape):
    if len(shape) != 3 or shape[1] is None or shape[1] < 2:
        raise ValueError("Pretext methods train on views shaped (batch, views >= 2, samples); "
                         f"got shape {tuple(shape)}.")


def split_views(views):
    """(batch, views, samples) -> a list of V float32 tensors (batch, samples); V >= 2."""
    check_views_shape(views.shape)
    views = ops.cast(views, "float32")
    return [views[:, v] for v in range(views.shape[1])]


def _unpack_views(data):
    views, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    if labels is not None:
        raise ValueError("Pretext methods are self-supervised: give views only, no labels.")
    return views


def _steps_in(x, batch_size):
    """Steps in one pass over ``x``, or None when the data does not say."""
    if hasattr(x, "cardinality"):  # tf.data.Dataset
        n = int(x.cardinality())
        return n if n > 0 else None
    if hasattr(x, "shape") and len(x.shape) >= 1:
        batch_size = batch_size or 32
        if x.shape[0] % batch_size == 1:
            raise ValueError(
                f"{x.shape[0]} examples in batches of {batch_size} leave a last batch of one, on "
                "which batch statistics (BatchNorm, correlations) are undefined; drop an example "
                "or change batch_size.")
        return math.ceil(x.shape[0] / batch_size)
    try:
        return len(x)
    except TypeError:
        return None


class PretextModel(keras.Model):
    """Base class of the pretext methods. ``model(views)`` returns the encoder embedding of
    each view, (batch, views, dim); ``model(waveforms)`` with (batch, samples) that of each clip.

    Args:
        encoder: a Keras model (batch, samples) -> (batch, dim), e.g. ``MusicEncoder()``.
        steps_per_epoch: length of an epoch in steps, for the schedules counted in epochs
            (DINO teacher temperature, ``momentum_epochs``). Each ``fit()`` on data of known
            length (or given ``steps_per_epoch``) sets it; a fit on data of unknown length uses it.
        run_start, run_steps: the current run, set by each ``fit()``: the step counter at its
            first step and its length in steps. The EMA momentum and teacher temperature count
            from ``run_start``; give them to train without ``fit()`` (e.g. ``train_on_batch``).
        sync_batchnorm: under ``tf.distribute``, BatchNorm uses the statistics of the global
            batch (the paper's SyncBatchNorm; default); False for each replica's own. No effect
            on one device, nor on JAX, whose steps are global.
    """

    log_names = ("loss",)  # every scalar a method logs, averaged over the epoch

    def __init__(self, encoder, steps_per_epoch=None, run_start=0, run_steps=None, sync_batchnorm=True,
                 **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.sync_batchnorm = bool(sync_batchnorm)
        self.embedding_dim = embedding_dim(encoder)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.run_start = int(run_start)
        self.run_steps = None if run_steps is None else int(run_steps)
        # Global training step (0 in the first step), saved with the model: the EMA and
        # temperature schedules are functions of it.
        self.step = self.add_weight(shape=(), dtype="int32", initializer="zeros",
                                    trainable=False, name="step")
        self.trackers = [keras.metrics.Mean(name=name) for name in self.log_names]

    # ------------------------------------------------------------------ what a method states
    def pretext_loss(self, views, training=False):
        """(batch, views, samples) -> (float32 loss, {log name: scalar}, aux for the updates)."""
        raise NotImplementedError

    def non_gradient_updates(self, aux):
        """Assignments after the optimizer step (EMA teacher, centre). Default: none."""

    # ------------------------------------------------------------------ shared helpers
    def project(self, encoder, head, views, training):
        """Each view through ``encoder`` then ``head`` -> float32 (global batch, views, head dim):
        on several TensorFlow replicas, gathered from all of them (see ``distribute``)."""
        outputs = [head(encoder(v, training=training), training=training) for v in split_views(views)]
        return distribute.gather(ops.cast(ops.stack(outputs, axis=1), "float32"))

    def run_step(self):
        """Steps since the start of the current run (int32): what the model-side schedules read."""
        return ops.subtract(self.step, self.run_start)

    def schedule_steps(self, epochs=None):
        """Length in steps of a schedule of ``epochs`` epochs, or of the current run if None."""
        if epochs is None:
            if self.run_steps is None:
                raise ValueError(
                    f"{type(self).__name__} sizes a schedule to the training run, which each fit() "
                    "sets: to train without fit(), pass run_steps (and run_start) to the constructor, "
                    "or give the schedule a length in epochs and steps_per_epoch.")
            return self.run_steps
        if self.steps_per_epoch is None:
            raise ValueError(
                f"{type(self).__name__} needs steps_per_epoch for its schedules: pass it to the "
                "constructor, or call fit() on data of known length first.")
        return int(epochs * self.steps_per_epoch)

    def call(self, inputs, training=False):
        if len(inputs.shape) == 2:
            return self.encoder(inputs, training=training)
        return ops.stack([self.encoder(v, training=training) for v in split_views(inputs)], axis=1)

    @property
    def metrics(self):
        return list(self.trackers)

    def _record(self, loss, logs):
        for tracker in self.trackers:
            tracker.update_state(loss if tracker.name == "loss" else logs[tracker.name])
        return {tracker.name: tracker.result() for tracker in self.trackers}

    # ------------------------------------------------------------------ compile / fit
    def compile(self, optimizer=None, learning_rate=5e-4, weight_decay=0.04, weight_decay_end=0.4,
                warmup_steps=0, total_steps=None, loss=None, **kwargs):
        """With no ``optimizer``: ``ScheduledAdamW`` (betas 0.9, 0.999), learning rate with a
        linear warm-up of ``warmup_steps`` from 1e-7 then a cosine to 1e-7, weight decay cosine
        ``weight_decay -> weight_decay_end`` (the authors' schedules, docs/paper.md#schedules). Both last
        ``total_steps`` steps from the first; by default (None) they follow each ``fit()``'s run
        (epochs x steps per epoch, from its first step). The base learning rate is not
        published: 5e-4 is DINO's for a batch of 256.
        """
        if loss is not None:
            raise ValueError("Pretext methods compute their own loss; compile() takes no `loss`.")
        if optimizer is None:
            optimizer = ScheduledAdamW(
                learning_rate=WarmupCosine(learning_rate, total_steps, warmup_steps),
                weight_decay=CosineSchedule(weight_decay, weight_decay_end, total_steps))
        super().compile(optimizer=optimizer, **kwargs)
        # Now rather than inside the first traced step, which TensorFlow would then trace twice.
        self.optimizer.build(self.trainable_variables)

    def compile_from_config(self, config):
        # Keras skips this for an overridden compile(); the saved config holds the optimizer.
        self.compile(**keras.saving.deserialize_keras_object(config))

    def fit(self, x=None, y=None, batch_size=None, epochs=1, callbacks=None, steps_per_epoch=None,
            **kwargs):
        """Keras ``fit`` on views (batch, views, samples), as one run (see the module
        docstring): it sets ``steps_per_epoch``, the model's run and the optimizer schedules
        that follow fit (``total_steps=None`` at ``compile``), all saved with the model.
        A ``TerminateOnNaN`` callback is added, so a diverging run stops instead of going on."""
        if y is not None:
            raise ValueError("Pretext methods are self-supervised: give views only, no labels.")
        shape = getattr(x, "shape", None) or getattr(getattr(x, "element_spec", None), "shape", None)
        if shape is not None:
            check_views_shape(shape)
        steps = steps_per_epoch or _steps_in(x, batch_size) or self.steps_per_epoch
        if steps is not None:
            # Keras starts from its own _initial_epoch where BackupAndRestore has set one.
            initial_epoch = getattr(self, "_initial_epoch", None) or kwargs.get("initial_epoch", 0)
            self._start_run(int(epochs), int(steps), int(initial_epoch))
        if hasattr(x, "element_spec"):  # a tf.data.Dataset shuffles itself; Keras would warn
            kwargs.setdefault("shuffle", False)
        callbacks = list(callbacks or [])
        if not any(isinstance(c, keras.callbacks.TerminateOnNaN) for c in callbacks):
            callbacks.append(keras.callbacks.TerminateOnNaN())
        with self._compile_context():
            return super().fit(x, batch_size=batch_size, epochs=epochs, callbacks=callbacks,
                               steps_per_epoch=steps_per_epoch, **kwargs)

    def _compile_context(self):
        """PyTorch with ``jit_compile=True`` (torch.compile): shapes held static. Dynamo's
        automatic dynamic shapes retrace the step symbolically on a second call and fail in
        the convolutions ("cannot determine truth value of Relational")."""
        if BACKEND == "torch" and self.jit_compile:
            import torch._dynamo

            return torch._dynamo.config.patch(automatic_dynamic_shapes=False)
        return contextlib.nullcontext()

    def _start_run(self, epochs, steps_per_epoch, initial_epoch):
        """Size the model's run and the schedules that follow fit for ``epochs`` epochs of
        ``steps_per_epoch`` steps, ``initial_epoch`` of which were run before this fit."""
        optimizer = getattr(self, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # loss scaling
        schedules = [schedule for schedule in (getattr(optimizer, "_learning_rate", None),
                                               getattr(optimizer, "weight_decay", None))
                     if getattr(schedule, "follows_fit", False)]

        def sizing():
            return (self.steps_per_epoch, self.run_start, self.run_steps,
                    [(schedule.start_step, schedule.total_steps) for schedule in schedules])

        before = sizing()
        done = initial_epoch * steps_per_epoch
        self.steps_per_epoch, self.run_steps = steps_per_epoch, epochs * steps_per_epoch
        self.run_start = int(ops.convert_to_numpy(self.step)) - done
        for schedule in schedules:
            schedule.start_step = int(ops.convert_to_numpy(optimizer.iterations)) - done
            schedule.total_steps = self.run_steps
        if sizing() != before:
            # TensorFlow and JAX bake these numbers into the compiled steps: trace them again.
            self.train_function = self.test_function = None

    # ------------------------------------------------------------------ serialization
    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "steps_per_epoch": self.steps_per_epoch, "run_start": self.run_start,
                "run_steps": self.run_steps, "sync_batchnorm": self.sync_batchnorm}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)

    # ------------------------------------------------------------------ one step per backend
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under tf.distribute, Keras draws a batch to build the model before training; a pretext
        # model is built at construction and its optimizer at compile, and that draw would start
        # the (reshuffled) data stream anew, away from what one device trains on.
        if self.built and getattr(getattr(self, "optimizer", None), "built", False):
            return None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, *args):
        return getattr(self, f"_{BACKEND}_train_step")(*args)

    def test_step(self, *args):
        return getattr(self, f"_{BACKEND}_test_step")(*args)

    def _tensorflow_train_step(self, data):
        import tensorflow as tf

        views = _unpack_views(data)
        with tf.GradientTape() as tape, distribute.sync_batchnorm(self, self.sync_batchnorm):
            loss, logs, aux = self.pretext_loss(views, training=True)
            # Each replica holds the global loss; the optimizer sums the replicas' gradients.
            scaled_loss = self.optimizer.scale_loss(distribute.scale_loss(loss))
        weights = self.trainable_weights
        self.optimizer.apply(tape.gradient(scaled_loss, weights), weights)
        self._after_step(aux)
        return self._record(loss, logs)

    def _torch_train_step(self, data):
        import torch

        views = _unpack_views(data)
        self.zero_grad()
        loss, logs, aux = self.pretext_loss(views, training=True)
        self.optimizer.scale_loss(loss).backward()
        weights = self.trainable_weights[:]
        with torch.no_grad():
            self.optimizer.apply([w.value.grad for w in weights], weights)
            self._after_step(aux)
            return self._record(loss.detach(), {k: v.detach() for k, v in logs.items()})

    def _jax_train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_state, metrics_state = state
        views = _unpack_views(data)

        def scaled_loss_fn(trainable, non_trainable):
            (loss, logs, aux), non_trainable = self._stateless(
                trainable, non_trainable, self.pretext_loss, views, training=True)
            scope = keras.StatelessScope(state_mapping=list(zip(self.optimizer.variables, optimizer_state)))
            with scope:
                scaled = self.optimizer.scale_loss(loss)
            return scaled, (loss, logs, aux, non_trainable)

        grad_fn = jax.value_and_grad(scaled_loss_fn, has_aux=True)
        (_, (loss, logs, aux, non_trainable)), grads = grad_fn(trainable, non_trainable)
        trainable, optimizer_state = self.optimizer.stateless_apply(optimizer_state, grads, trainable)
        _, non_trainable = self._stateless(trainable, non_trainable, self._after_step, aux)
        logs, metrics_state = self._stateless_record(metrics_state, loss, logs)
        return logs, (trainable, non_trainable, optimizer_state, metrics_state)

    def _tensorflow_test_step(self, data):
        loss, logs, _ = self.pretext_loss(_unpack_views(data), training=False)
        return self._record(loss, logs)

    _torch_test_step = _tensorflow_test_step

    def _jax_test_step(self, state, data):
        trainable, non_trainable, metrics_state = state
        (loss, logs, _), non_trainable = self._stateless(
            trainable, non_trainable, self.pretext_loss, _unpack_views(data), training=False)
        logs, metrics_state = self._stateless_record(metrics_state, loss, logs)
        return logs, (trainable, non_trainable, metrics_state)

    def _after_step(self, aux):
        self.non_gradient_updates(aux)
        self.step.assign_add(1)

    def _stateless(self, trainable, non_trainable, fn, *args, **kwargs):
        """Run ``fn`` with the model variables read from, and written to, the JAX state."""
        mapping = list(zip(self.trainable_variables, trainable))
        mapping += list(zip(self.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            out = fn(*args, **kwargs)
        return out, [scope.get_current_value(v) for v in self.non_trainable_variables]

    def _stateless_record(self, metrics_state, loss, logs):
        with keras.StatelessScope(state_mapping=list(zip(self.metrics_variables, metrics_state))) as scope:
            logs = self._record(loss, logs)
        return logs, [scope.get_current_value(v) for v in self.metrics_variables]
