"""Per-step schedules of the authors' ``utils/scheduler.py`` (docs/paper.md#schedules), in ``keras.ops``.

The released code precomputes numpy arrays indexed by the global step; these are the same
values as functions of the step, so they run inside a compiled train step on any backend.
A cosine segment from ``start`` to ``end`` over ``n`` steps is

    value(i) = end + (start - end) * (1 + cos(pi * i / n)) / 2,    0 <= i < n,

and stays at ``end`` afterwards.

- learning rate: linear warm-up 1e-7 -> base (``np.linspace``, both ends included), then a
  cosine base -> 1e-7 over the rest of training (``WarmupCosine``);
- weight decay: cosine 0.04 -> 0.4 over training (``CosineSchedule(0.04, 0.4, ...)``);
- EMA momentum of the teacher: cosine 0.996 -> 1 (``ema_momentum``). The released code runs
  it over 999 epochs whatever the length of training (``schedule_epochs = 999``), so it never
  reaches 1 in a shorter run; the paper does not state its run length. The methods default
  to the length of the run instead (``momentum_epochs=None``), 999 epochs on request;
- DINO teacher temperature, per epoch: cosine 0.02 -> 0.04 over 10 epochs, then 0.04
  (``teacher_temperature``).

"Training" is one run: the pretext methods make each ``fit()`` a run of epochs x steps per
epoch steps, and ``i`` counts steps from the run's first step (``start_step`` of the
optimizer schedules, ``run_start`` of the model-side ones), so a second ``fit()`` with a
new budget has schedules for that budget.
"""

import math

import keras
from keras import ops


def cosine(step, total_steps, start, end):
    """Cosine from ``start`` (step 0) towards ``end`` (reached at ``total_steps``, then held)."""
    step = ops.minimum(ops.cast(step, "float32"), float(total_steps))
    return end + 0.5 * (start - end) * (1.0 + ops.cos(math.pi * step / float(max(total_steps, 1))))


def ema_momentum(step, total_steps, start=0.996, end=1.0):
    """Teacher EMA momentum m(t) = end - (end - start) * (1 + cos(pi t / T)) / 2 (BYOL, DINO)."""
    return cosine(step, total_steps, start, end)


def teacher_temperature(step, steps_per_epoch, start=0.02, end=0.04, warmup_epochs=10):
    """DINO teacher temperature: constant within an epoch, cosine ``start -> end`` over the
    first ``warmup_epochs`` epochs, then ``end``."""
    epoch = ops.floor(ops.cast(step, "float32") / float(steps_per_epoch))
    return cosine(epoch, warmup_epochs, start, end)


class _RunSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule of the optimizer step over one run: ``value(step - start_step)`` over
    ``total_steps`` steps. Created with ``total_steps=None``, it ``follows_fit``: each
    ``fit()`` of a pretext method sets both to the steps of its run; given ``total_steps``,
    it is never resized."""

    def __init__(self, total_steps=None, start_step=0, follows_fit=None):
        self.total_steps = None if total_steps is None else int(total_steps)
        self.start_step = int(start_step)
        self.follows_fit = total_steps is None if follows_fit is None else bool(follows_fit)

    def _run_step(self, step):
        return ops.cast(step, "float32") - float(self.start_step)

    def _total(self):
        if self.total_steps is None:
            raise ValueError(
                f"{type(self).__name__} has no total_steps yet: it is set by each fit() of a "
                "pretext method (epochs x steps per epoch); pass total_steps to use it elsewhere.")
        return self.total_steps

    def get_config(self):
        return {"total_steps": self.total_steps, "start_step": self.start_step,
                "follows_fit": self.follows_fit}


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class CosineSchedule(_RunSchedule):
    """Cosine from ``start`` to ``end`` over ``total_steps`` (e.g. weight decay 0.04 -> 0.4)."""

    def __init__(self, start, end, total_steps=None, start_step=0, follows_fit=None):
        super().__init__(total_steps, start_step, follows_fit)
        self.start, self.end = float(start), float(end)

    def __call__(self, step):
        return cosine(self._run_step(step), self._total(), self.start, self.end)

    def get_config(self):
        return {"start": self.start, "end": self.end, **super().get_config()}


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class WarmupCosine(_RunSchedule):
    """Learning rate: linear warm-up ``warmup_start -> learning_rate`` over ``warmup_steps``, then
    cosine ``learning_rate -> end`` over the remaining ``total_steps - warmup_steps`` steps.

    Defaults are the authors': no warm-up, ``warmup_start = end = 1e-7``.
    """

    def __init__(self, learning_rate, total_steps=None, warmup_steps=0, warmup_start=1e-7, end=1e-7,
                 start_step=0, follows_fit=None):
        super().__init__(total_steps, start_step, follows_fit)
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start, self.end = float(warmup_start), float(end)

    def __call__(self, step):
        step = self._run_step(step)
        warmup = self.warmup_steps
        decay = cosine(step - warmup, max(self._total() - warmup, 1), self.learning_rate, self.end)
        if not warmup:
            return decay
        # np.linspace(warmup_start, learning_rate, warmup): the last warm-up step is already at the peak.
        ramp = self.warmup_start + (self.learning_rate - self.warmup_start) * step / max(warmup - 1, 1)
        return ops.where(step < warmup, ramp, decay)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "warmup_start": self.warmup_start, "end": self.end, **super().get_config()}
