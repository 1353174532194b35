"""Clustering: DINO-style self-distillation with centring and sharpening (docs/paper.md#clustering).

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
(arXiv 2104.14294); the authors' ``SSLClustering`` and ``ClusteringLoss``. Unlike DINO the
head is a plain MLP (no L2-normalised bottleneck, no weight-normalised prototype layer),
the teacher temperature warms up 0.02 -> 0.04 (not 0.04 -> 0.07), the centre momentum is 0.9.

One form of the loss: the released code's equals the original (DINO's cross-entropy).
"""

import keras
from keras import ops

from keras_music_ssl.heads import Head
from keras_music_ssl.pretext.base import PretextModel
from keras_music_ssl.pretext.loss_utils import mean_over_ordered_pairs
from keras_music_ssl.pretext.teacher import ema_update, frozen_copy
from keras_music_ssl.schedules import ema_momentum, teacher_temperature


def clustering_loss(student_logits, teacher_logits, center, student_temperature=0.1,
                    teacher_temperature=0.04):
    """Cross-entropy from the centred, sharpened teacher to the student, over ordered pairs
    of different views. Logits are (batch, views, K), ``center`` (1, K) -> float32 scalar:

        P_t = softmax((t - c) / tau_t)     P_s = softmax(s / tau_s)
        loss = mean_{b, i != j} sum_k -P_t[b, i, k] * max(log P_s[b, j, k], -100)

    with tau_s = 0.1 and tau_t from ``teacher_temperature`` (0.02 -> 0.04), no gradient
    through the teacher. The -100 clamp is the released code's ``log_clap``.
    """
    log_ps = ops.maximum(ops.log_softmax(ops.cast(student_logits, "float32") / student_temperature, axis=-1),
                         -100.0)
    teacher = ops.stop_gradient(ops.cast(teacher_logits, "float32") - ops.cast(center, "float32"))
    pt = ops.softmax(teacher / teacher_temperature, axis=-1)
    return mean_over_ordered_pairs(-ops.einsum("bik,bjk->bij", pt, log_ps))  # (batch, teacher, student)


def updated_center(center, teacher_logits, momentum=0.9):
    """c <- momentum * c + (1 - momentum) * mean over batch and views of the raw teacher logits."""
    batch_mean = ops.mean(ops.cast(teacher_logits, "float32"), axis=(0, 1))[None, :]
    return momentum * ops.cast(center, "float32") + (1.0 - momentum) * batch_mean


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class Clustering(PretextModel):
    """DINO-style pre-training: the student (encoder -> head of K logits) matches, on the
    other views, the centred and sharpened output of an EMA teacher (encoder + head).

    The teacher EMA covers trainable variables only (the released code walks parameters;
    the teacher's BatchNorm statistics come from its own forward passes). The centre
    (1, K) is a non-trainable variable saved with the model.

    Args:
        encoder: (batch, samples) -> (batch, D) Keras model.
        head_dims: default (D, D, D / 4, 4D), the paper's 1024 -> 1024 -> 1024 -> 256 -> 4096;
            K = head_dims[-1] "prototypes".
        student_temperature: tau_s (0.1).
        teacher_temperature: tau_t after the warm-up (0.04).
        teacher_temperature_start: tau_t at the start of the run (0.02), rising along a cosine.
        teacher_temperature_epochs: the warm-up's length in epochs (10).
        center_momentum: 0.9.
        momentum: teacher EMA momentum at the start of the run (0.996).
        momentum_end: teacher EMA momentum at its end (1).
        momentum_epochs: None (default) for the length of the run, or a length in epochs.
            The released code uses 999 epochs whatever the length of training, so the
            momentum never reaches 1 in a shorter run; the paper does not state its run length.
        **kwargs: ``PretextModel``'s (``steps_per_epoch``, ``run_start``, ``run_steps``,
            ``sync_batchnorm``) and Keras ``Model``'s.

    Returns:
        Called on views ``(batch, views, samples)``, the encoder's embeddings
        ``(batch, views, D)`` (on ``(batch, samples)``: ``(batch, D)``); ``fit`` trains on views
        and logs ``loss``, ``teacher_temperature`` and ``ema_momentum``.

    Examples:
        >>> from keras_music_ssl import MusicEncoder
        >>> from keras_music_ssl.pretext import Clustering
        >>> encoder = MusicEncoder(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32)  # tiny
        >>> model = Clustering(encoder)
        >>> model.head_dims
        (32, 32, 8, 128)
        >>> model.compile()  # AdamW with the authors' schedules
        >>> # then model.fit(views, epochs=...), views (batch, 2, 64000): docs/pretraining.md
    """

    log_names = ("loss", "teacher_temperature", "ema_momentum")

    def __init__(self, encoder, head_dims=None, student_temperature=0.1, teacher_temperature=0.04,
                 teacher_temperature_start=0.02, teacher_temperature_epochs=10, center_momentum=0.9,
                 momentum=0.996, momentum_end=1.0, momentum_epochs=None, **kwargs):
        super().__init__(encoder, **kwargs)
        d = self.embedding_dim
        self.head_dims = tuple(head_dims or (d, d, max(d // 4, 1), 4 * d))
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.teacher_temperature_start = float(teacher_temperature_start)
        self.teacher_temperature_epochs = teacher_temperature_epochs
        self.center_momentum = float(center_momentum)
        self.momentum, self.momentum_end = float(momentum), float(momentum_end)
        self.momentum_epochs = momentum_epochs
        self.head = Head(self.head_dims, name="head")
        self.head.build((None, d))
        self.teacher_encoder = frozen_copy(encoder)
        self.teacher_head = frozen_copy(self.head)
        self.center = self.add_weight(shape=(1, self.head_dims[-1]), initializer="zeros",
                                      trainable=False, name="center", dtype="float32")
        self.built = True

    def current_momentum(self):
        return ema_momentum(self.run_step(), self.schedule_steps(self.momentum_epochs),
                            self.momentum, self.momentum_end)

    def current_teacher_temperature(self):
        return teacher_temperature(self.run_step(), self.schedule_steps(1), self.teacher_temperature_start,
                                   self.teacher_temperature, self.teacher_temperature_epochs)

    def pretext_loss(self, views, training=False):
        student = self.project(self.encoder, self.head, views, training)
        teacher = ops.stop_gradient(self.project(self.teacher_encoder, self.teacher_head, views, training))
        tau_t = self.current_teacher_temperature()
        loss = clustering_loss(student, teacher, self.center, self.student_temperature, tau_t)
        return loss, {"teacher_temperature": tau_t, "ema_momentum": self.current_momentum()}, teacher

    def non_gradient_updates(self, teacher_logits):
        ema_update(self.encoder.weights + self.head.weights,
                   self.teacher_encoder.weights + self.teacher_head.weights,
                   self.current_momentum(), trainable_only=True)
        self.center.assign(updated_center(self.center, teacher_logits, self.center_momentum))

    def get_config(self):
        return {**super().get_config(), "head_dims": self.head_dims,
                "student_temperature": self.student_temperature,
                "teacher_temperature": self.teacher_temperature,
                "teacher_temperature_start": self.teacher_temperature_start,
                "teacher_temperature_epochs": self.teacher_temperature_epochs,
                "center_momentum": self.center_momentum, "momentum": self.momentum,
                "momentum_end": self.momentum_end, "momentum_epochs": self.momentum_epochs}
