"""Schedules as functions of the step against the authors' precomputed numpy arrays (docs/paper.md#schedules).

The references rebuild ``utils/scheduler.py``'s arrays (linspace and cosine segments joined
with ``np.concatenate``, indexed by the global step or the epoch) from the spec's description.
"""

import keras
import numpy as np
import pytest

from keras_music_ssl.schedules import (CosineSchedule, WarmupCosine, ema_momentum,
                                       teacher_temperature)

EPOCHS, STEPS = 12, 5  # a short run: 60 steps


def cosine_segment(start, end, n):
    i = np.arange(n)
    return end + 0.5 * (start - end) * (1 + np.cos(np.pi * i / n))


def at_steps(fn, n):
    steps = keras.ops.arange(n)
    return keras.ops.convert_to_numpy(fn(steps))


@pytest.mark.parametrize("warmup_epochs", [0, 2])
def test_learning_rate_matches_the_authors_array(warmup_epochs):
    lr, min_lr = 3e-4, 1e-7
    expected = np.concatenate([np.linspace(1e-7, lr, warmup_epochs * STEPS),
                               cosine_segment(lr, min_lr, (EPOCHS - warmup_epochs) * STEPS)])
    schedule = WarmupCosine(lr, total_steps=EPOCHS * STEPS, warmup_steps=warmup_epochs * STEPS)
    np.testing.assert_allclose(at_steps(schedule, EPOCHS * STEPS), expected, rtol=1e-5, atol=1e-5 * lr)
    assert float(schedule(EPOCHS * STEPS + 10)) == pytest.approx(min_lr)


def test_weight_decay_rises_on_a_cosine_from_004_to_04():
    schedule = CosineSchedule(0.04, 0.4, total_steps=EPOCHS * STEPS)
    np.testing.assert_allclose(at_steps(schedule, EPOCHS * STEPS), cosine_segment(0.04, 0.4, EPOCHS * STEPS),
                               rtol=1e-6)


def test_ema_momentum_follows_a_999_epoch_cosine_whatever_the_run_length():
    full = cosine_segment(0.996, 1.0, 999 * STEPS)  # the released get_network_momentum
    got = at_steps(lambda s: ema_momentum(s, 999 * STEPS), EPOCHS * STEPS)
    np.testing.assert_allclose(got, full[:EPOCHS * STEPS], rtol=0, atol=1e-7)
    assert got[0] == pytest.approx(0.996) and got[-1] < 0.9961  # far from 1 after 12 epochs
    assert float(ema_momentum(999 * STEPS + 3, 999 * STEPS)) == pytest.approx(1.0)


def test_teacher_temperature_warms_up_per_epoch_then_stays():
    per_epoch = np.concatenate([cosine_segment(0.02, 0.04, 10), np.full(EPOCHS - 10, 0.04)])
    expected = np.repeat(per_epoch, STEPS)  # constant within an epoch
    got = at_steps(lambda s: teacher_temperature(s, STEPS), EPOCHS * STEPS)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_schedules_serialize_and_need_a_length():
    schedule = WarmupCosine(1e-3, total_steps=100, warmup_steps=10)
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(clone, WarmupCosine) and clone.get_config() == schedule.get_config()
    np.testing.assert_allclose(at_steps(clone, 100), at_steps(schedule, 100))
    with pytest.raises(ValueError, match="total_steps"):
        CosineSchedule(0.04, 0.4)(3)
