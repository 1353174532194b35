"""BYOL: an online network predicts an EMA teacher's projection of another view (docs/paper.md#byol).

Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020 (arXiv 2006.07733); the authors'
``SSLBYOL`` and ``BYOLLoss``.
"""

import keras
from keras import ops

from keras_music_ssl.heads import Head
from keras_music_ssl.pretext.base import PretextModel
from keras_music_ssl.pretext.loss_utils import l2_normalize, mean_over_ordered_pairs
from keras_music_ssl.pretext.teacher import ema_update, frozen_copy
from keras_music_ssl.schedules import ema_momentum

FORMS = ("released", "original")


def byol_loss(predictions, targets, form="released"):
    """Symmetrised BYOL loss; ``predictions`` (online, after the predictor) and ``targets``
    (teacher projections, no gradient) are (batch, views, dim) -> float32 scalar.

    With p and z L2-normalised along the features, over ordered view pairs i != j
    (teacher view i, online view j) and the batch:

        "released" (default, the authors' code):  loss = mean_{b, i != j} (2 - 2 (B / D) <p_bj, z_bi>)
        "original" (the BYOL paper):              loss = mean_{b, i != j} (2 - 2 <p_bj, z_bi>)

    The released code sums p * z over the batch axis (``dim=-0``) instead of the features:
    the same loss up to an affine rescaling by B / D, almost surely a slip (docs/paper.md#byol, docs/paper.md#caveats).
    It is the default because it is the code that produced the paper's numbers, as for
    every method here; with an Adam-type optimizer the rescaling barely matters.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    p = l2_normalize(ops.cast(predictions, "float32"))
    z = l2_normalize(ops.stop_gradient(ops.cast(targets, "float32")))
    mean_cos = mean_over_ordered_pairs(ops.einsum("bid,bjd->bij", z, p))  # (batch, teacher, online)
    if form == "released":
        mean_cos = mean_cos * ops.cast(ops.shape(p)[0], "float32") / p.shape[2]
    return 2.0 - 2.0 * mean_cos


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class BYOL(PretextModel):
    """BYOL pre-training: encoder -> projector -> predictor against an EMA teacher
    (encoder + projector), symmetrised over views.

    The teacher EMA covers every variable, BatchNorm moving statistics included, as the
    released code walks the whole state dict; its momentum follows a cosine
    ``momentum -> momentum_end`` over the run (each ``fit()``), or over ``momentum_epochs``
    epochs from the run's start. The released code uses 999 epochs whatever the length of
    training, so the momentum never reaches 1 in a shorter run; the paper does not state
    its run length.

    Args:
        encoder: (batch, samples) -> (batch, D) Keras model.
        projector_dims: default (D, D, 2D), the paper's 1024 -> 1024 -> 1024 -> 2048.
        predictor_dims: default (P / 8, P) for a P-d projection, the paper's 2048 -> 256 -> 2048.
        momentum: EMA momentum at the start of the run (0.996).
        momentum_end: EMA momentum at its end (1).
        momentum_epochs: None (default) for the length of the run, or a length in epochs
            (999: the released code's value).
        form: "released" (default, the authors' code) or "original" (the BYOL paper), see
            ``byol_loss``.
        **kwargs: ``PretextModel``'s (``steps_per_epoch``, ``run_start``, ``run_steps``,
            ``sync_batchnorm``) and Keras ``Model``'s.

    Returns:
        Called on views ``(batch, views, samples)``, the encoder's embeddings
        ``(batch, views, D)`` (on ``(batch, samples)``: ``(batch, D)``); ``fit`` trains on views
        and logs ``loss`` and ``ema_momentum``.

    Examples:
        >>> from keras_music_ssl import MusicEncoder
        >>> from keras_music_ssl.pretext import BYOL
        >>> encoder = MusicEncoder(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32)  # tiny
        >>> model = BYOL(encoder)
        >>> model.predictor_dims
        (8, 64)
        >>> model.compile()  # AdamW with the authors' schedules
        >>> # then model.fit(views, epochs=...), views (batch, 2, 64000): docs/pretraining.md
    """

    log_names = ("loss", "ema_momentum")

    def __init__(self, encoder, projector_dims=None, predictor_dims=None, momentum=0.996,
                 momentum_end=1.0, momentum_epochs=None, form="released", **kwargs):
        super().__init__(encoder, **kwargs)
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        d = self.embedding_dim
        self.projector_dims = tuple(projector_dims or (d, d, 2 * d))
        p = self.projector_dims[-1]
        self.predictor_dims = tuple(predictor_dims or (max(p // 8, 1), p))
        if self.predictor_dims[-1] != p:
            raise ValueError(f"The predictor must end at the projection size {p}, got {self.predictor_dims}.")
        self.momentum, self.momentum_end = float(momentum), float(momentum_end)
        self.momentum_epochs = momentum_epochs
        self.form = form
        self.projector = Head(self.projector_dims, name="projector")
        self.projector.build((None, d))
        self.predictor = Head(self.predictor_dims, name="predictor")
        self.predictor.build((None, p))
        self.teacher_encoder = frozen_copy(encoder)
        self.teacher_projector = frozen_copy(self.projector)
        self.built = True

    def current_momentum(self):
        return ema_momentum(self.run_step(), self.schedule_steps(self.momentum_epochs),
                            self.momentum, self.momentum_end)

    def pretext_loss(self, views, training=False):
        online = self.project(self.encoder, self.projector, views, training)
        predictions = ops.stack([self.predictor(online[:, v], training=training)
                                 for v in range(online.shape[1])], axis=1)
        targets = self.project(self.teacher_encoder, self.teacher_projector, views, training)
        loss = byol_loss(predictions, ops.stop_gradient(targets), self.form)
        return loss, {"ema_momentum": self.current_momentum()}, None

    def non_gradient_updates(self, aux):
        ema_update(self.encoder.weights + self.projector.weights,
                   self.teacher_encoder.weights + self.teacher_projector.weights,
                   self.current_momentum())

    def get_config(self):
        return {**super().get_config(), "projector_dims": self.projector_dims,
                "predictor_dims": self.predictor_dims, "momentum": self.momentum,
                "momentum_end": self.momentum_end, "momentum_epochs": self.momentum_epochs,
                "form": self.form}
