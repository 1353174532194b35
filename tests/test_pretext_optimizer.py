"""ScheduledAdamW: decoupled weight decay on a schedule, then Adam, against numpy."""

import keras
import numpy as np
import pytest

from keras_music_ssl.pretext import ScheduledAdamW
from keras_music_ssl.schedules import CosineSchedule


def test_scheduled_weight_decay_then_adam_matches_numpy(rng):
    lr, b1, b2, eps, total = 0.01, 0.9, 0.999, 1e-7, 4
    kernel0 = rng.normal(size=(3, 4)).astype("float32")
    bias0 = rng.normal(size=(4,)).astype("float32")
    grads = [rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(4,)).astype("float32")]
    kernel, bias = keras.Variable(kernel0), keras.Variable(bias0)
    optimizer = ScheduledAdamW(learning_rate=lr, weight_decay=CosineSchedule(0.1, 0.5, total))
    for _ in range(3):
        optimizer.apply(grads, [kernel, bias])

    expected = [kernel0.astype(np.float64), bias0.astype(np.float64)]
    m = [np.zeros_like(p) for p in expected]
    v = [np.zeros_like(p) for p in expected]
    for t in range(1, 4):
        wd = 0.5 + 0.5 * (0.1 - 0.5) * (1 + np.cos(np.pi * (t - 1) / total))
        expected[0] = expected[0] - lr * wd * expected[0]  # 1-D variables are not decayed
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            expected[i] = expected[i] - alpha * m[i] / (np.sqrt(v[i]) + eps)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), expected[1], rtol=1e-5, atol=1e-6)


def test_scheduled_adamw_round_trips_through_its_config():
    optimizer = ScheduledAdamW(learning_rate=0.01, weight_decay=CosineSchedule(0.04, 0.4, 100), beta_2=0.98)
    clone = ScheduledAdamW.from_config(optimizer.get_config())
    assert isinstance(clone.weight_decay, CosineSchedule)
    assert clone.weight_decay.get_config() == optimizer.weight_decay.get_config()
    assert clone.beta_2 == pytest.approx(0.98)
    constant = ScheduledAdamW.from_config(ScheduledAdamW(weight_decay=0.05).get_config())
    assert constant.weight_decay == pytest.approx(0.05)
