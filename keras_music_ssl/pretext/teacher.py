"""The EMA teacher of BYOL and the clustering method (docs/paper.md#byol, docs/paper.md#clustering).

The teacher starts as an exact copy of the student and is never trained by gradients: after
each optimizer step, ``teacher <- m * teacher + (1 - m) * student``. Its variables are marked
non-trainable one by one, not through ``layer.trainable = False``: a frozen Keras
BatchNormalization runs in inference mode, whereas the authors' teacher normalises with
the statistics of the batch, like the student.
"""

import keras
from keras import ops


def frozen_copy(layer, prefix="teacher_"):
    """A copy of ``layer`` (a built layer or model) with the same weights, none trainable."""
    config = keras.saving.serialize_keras_object(layer)
    config["config"]["name"] = prefix + layer.name
    copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(layer.get_weights())
    for variable in copy.weights:
        variable.trainable = False
    return copy


def ema_update(student_weights, teacher_weights, momentum, trainable_only=False):
    """``teacher <- momentum * teacher + (1 - momentum) * student`` for each pair of variables.

    BYOL's released EMA walks the whole state dict (BatchNorm running statistics too);
    the clustering method's walks the parameters only (``trainable_only=True``).
    """
    for student, teacher in zip(student_weights, teacher_weights, strict=True):
        if trainable_only and not student.trainable:
            continue
        m = ops.cast(momentum, teacher.dtype)
        teacher.assign(m * teacher + (1.0 - m) * ops.cast(student, teacher.dtype))
