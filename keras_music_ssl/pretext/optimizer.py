"""AdamW with a scheduled weight decay, the default optimizer of the pretext methods.

The authors' scheduler (docs/paper.md#schedules) moves the weight decay along a cosine 0.04 -> 0.4, the
DINO recipe, which suggests an AdamW-type optimizer (the optimizer itself is not released).
Keras' AdamW takes a constant decay only; this one also takes a schedule of the step.
As in DINO, 1-D variables (biases, BatchNorm scale and offset) are not decayed.
"""

import keras


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class ScheduledAdamW(keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` whose ``weight_decay`` may be a schedule (any serializable
    callable of the step, e.g. ``keras_music_ssl.schedules.CosineSchedule(0.04, 0.4)``).

    Decoupled decay as in PyTorch's AdamW: ``w <- w - lr * wd * w`` before the Adam update.
    """

    def _use_weight_decay(self, variable):
        return len(variable.shape) > 1 and super()._use_weight_decay(variable)

    def _apply_weight_decay(self, variables):
        schedule = self.weight_decay
        if not callable(schedule):
            return super()._apply_weight_decay(variables)
        # This step's value through the backend's own path (tf.distribute-aware on TensorFlow).
        self.weight_decay = schedule(self.iterations)
        try:
            super()._apply_weight_decay(variables)
        finally:
            self.weight_decay = schedule

    def get_config(self):
        config = super().get_config()
        if callable(self.weight_decay):
            config["weight_decay"] = keras.saving.serialize_keras_object(self.weight_decay)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        if isinstance(config.get("weight_decay"), dict):
            config["weight_decay"] = keras.saving.deserialize_keras_object(
                config["weight_decay"], custom_objects=custom_objects)
        return super().from_config(config, custom_objects=custom_objects)
