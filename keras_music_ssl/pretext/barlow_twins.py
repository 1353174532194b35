"""Barlow Twins: the cross-correlation of two views' projections pushed to the identity (docs/paper.md#barlow-twins).

Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
ICML 2021 (arXiv 2103.03230); the authors' ``DiagonalLoss``.
"""

import keras
from keras import ops

from keras_music_ssl.heads import Head
from keras_music_ssl.pretext.base import PretextModel
from keras_music_ssl.pretext.loss_utils import batch_standardize, view_pairs

FORMS = ("released", "original")
DEFAULT_OFF_DIAGONAL_WEIGHT = {"released": 1.0, "original": 5.1e-3}


def barlow_twins_terms(z, form="released"):
    """The (on-diagonal, off-diagonal) terms of ``barlow_twins_loss``, unweighted."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    pairs = view_pairs(z)
    dim = z.shape[2]
    off_mask = 1.0 - ops.eye(dim, dtype="float32")
    batch = ops.cast(ops.shape(z)[0], "float32")
    on, off = 0.0, 0.0
    for a, b in pairs:
        c = ops.matmul(ops.transpose(batch_standardize(a)), batch_standardize(b))
        c = c / (batch - 1.0 if form == "released" else batch)  # (dim, dim)
        on_terms, off_terms = ops.square(1.0 - ops.diagonal(c)), ops.square(c * off_mask)
        if form == "released":
            on, off = on + ops.mean(on_terms), off + ops.sum(off_terms) / (dim * (dim - 1))
        else:
            on, off = on + ops.sum(on_terms), off + ops.sum(off_terms)
    return on / len(pairs), off / len(pairs)


def barlow_twins_loss(z, off_diagonal_weight=None, form="released"):
    """Barlow Twins loss of ``z`` (batch, views, dim) -> float32 scalar, over unordered view
    pairs (a, b). With BN(x) = (x - mean) / sqrt(var + 1e-5) over the batch (biased variance):

        "released" (default, the authors' code):  C = BN(a)^T BN(b) / (B - 1)
            loss = mean_i (1 - C_ii)^2 + lambda * mean_{i != j} C_ij^2,        lambda = 1
        "original" (the Barlow Twins paper):      C = BN(a)^T BN(b) / B
            loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2,          lambda = 5.1e-3

    The released means equal the paper's sums / D with lambda_eff = lambda / (D - 1), about
    4.9e-4 for D = 2048. Terms are averaged over the V(V-1)/2 pairs.
    """
    on, off = barlow_twins_terms(z, form)
    weight = DEFAULT_OFF_DIAGONAL_WEIGHT[form] if off_diagonal_weight is None else off_diagonal_weight
    return on + weight * off


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class BarlowTwins(PretextModel):
    """Barlow Twins pre-training: encoder -> projector -> cross-correlation loss.

    Args:
        encoder: (batch, samples) -> (batch, D) Keras model.
        projector_dims: default (D, D, 2D), the paper's 1024 -> 1024 -> 1024 -> 2048.
        off_diagonal_weight: lambda; default 1.0 ("released") or 5.1e-3 ("original").
        form: "released" (default) or "original", see ``barlow_twins_loss``.
        **kwargs: ``PretextModel``'s (``steps_per_epoch``, ``run_start``, ``run_steps``,
            ``sync_batchnorm``) and Keras ``Model``'s.

    Returns:
        Called on views ``(batch, views, samples)``, the encoder's embeddings
        ``(batch, views, D)`` (on ``(batch, samples)``: ``(batch, D)``); ``fit`` trains on views
        and logs ``loss``, ``on_diagonal`` and ``off_diagonal``.

    Examples:
        >>> from keras_music_ssl import MusicEncoder
        >>> from keras_music_ssl.pretext import BarlowTwins
        >>> encoder = MusicEncoder(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32)  # tiny
        >>> model = BarlowTwins(encoder)
        >>> model.projector_dims
        (32, 32, 64)
        >>> model.compile()  # AdamW with the authors' schedules
        >>> # then model.fit(views, epochs=...), views (batch, 2, 64000): docs/pretraining.md
    """

    log_names = ("loss", "on_diagonal", "off_diagonal")

    def __init__(self, encoder, projector_dims=None, off_diagonal_weight=None, form="released", **kwargs):
        super().__init__(encoder, **kwargs)
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        d = self.embedding_dim
        self.projector_dims = tuple(projector_dims or (d, d, 2 * d))
        self.form = form
        self.off_diagonal_weight = (DEFAULT_OFF_DIAGONAL_WEIGHT[form] if off_diagonal_weight is None
                                    else float(off_diagonal_weight))
        self.projector = Head(self.projector_dims, name="projector")
        self.projector.build((None, d))
        self.built = True

    def pretext_loss(self, views, training=False):
        z = self.project(self.encoder, self.projector, views, training)
        on, off = barlow_twins_terms(z, self.form)
        off = self.off_diagonal_weight * off
        return on + off, {"on_diagonal": on, "off_diagonal": off}, None

    def get_config(self):
        return {**super().get_config(), "projector_dims": self.projector_dims,
                "off_diagonal_weight": self.off_diagonal_weight, "form": self.form}
