"""VICReg ("feature_stats" in the authors' code): variance, invariance, covariance (docs/paper.md#vicreg).

Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022 (arXiv 2105.04906); the authors' ``FeatureStatsLoss``.
"""

import keras
from keras import ops

from keras_music_ssl.heads import Head
from keras_music_ssl.pretext.base import PretextModel
from keras_music_ssl.pretext.loss_utils import batch_standardize, view_pairs

FORMS = ("released", "original")
DEFAULT_WEIGHTS = {"released": (1.0, 1.0, 1.0), "original": (25.0, 25.0, 1.0)}  # inv, var, cov


def _view_stats(x, form, gamma):
    """Variance and covariance terms of one view (batch, dim)."""
    batch = ops.cast(ops.shape(x)[0], "float32")
    dim = x.shape[1]
    centred = x - ops.mean(x, axis=0, keepdims=True)
    var = ops.sum(ops.square(centred), axis=0) / (batch - 1.0)  # unbiased
    std = ops.sqrt(var + (1e-5 if form == "released" else 1e-4))
    variance = ops.mean(ops.relu(gamma - std))
    if form == "released":  # a correlation: the features are standardised first
        standardized = batch_standardize(x)
        matrix = ops.matmul(ops.transpose(standardized), standardized) / (batch - 1.0)
    else:
        matrix = ops.matmul(ops.transpose(centred), centred) / (batch - 1.0)
    off = ops.sum(ops.square(matrix * (1.0 - ops.eye(dim, dtype="float32"))))
    covariance = off / (dim * (dim - 1)) if form == "released" else off / dim
    return variance, covariance


def vicreg_terms(z, gamma=1.0, form="released"):
    """The unweighted (invariance, variance, covariance) terms of ``vicreg_loss``."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    pairs = view_pairs(z)
    inv, var, cov = 0.0, 0.0, 0.0
    for a, b in pairs:
        (var_a, cov_a), (var_b, cov_b) = _view_stats(a, form, gamma), _view_stats(b, form, gamma)
        inv = inv + ops.mean(ops.square(a - b))
        var = var + (var_a + var_b) / 2.0
        cov = cov + ((cov_a + cov_b) / 2.0 if form == "released" else cov_a + cov_b)
    n = len(pairs)
    return inv / n, var / n, cov / n


def vicreg_loss(z, invariance_weight=None, variance_weight=None, covariance_weight=None, gamma=1.0,
                form="released"):
    """VICReg loss of ``z`` (batch, views, dim) -> float32 scalar, over unordered view pairs (a, b):

        loss = w_inv * mean((a - b)^2) + w_var * V + w_cov * C

    with std_j = sqrt(Var_unbiased(x_j) + eps) and, per view x (then combined over a and b):

        "released" (default, the authors' code), weights 1 / 1 / 1, eps 1e-5:
            V = mean_j relu(gamma - std_j)                  (mean over both views)
            C = mean_{i != j} K_ij^2, K = BN(x)^T BN(x) / (B - 1), a correlation   (mean over views)
        "original" (the VICReg paper), weights 25 / 25 / 1, eps 1e-4:
            V = mean_j relu(gamma - std_j)                  (mean over both views)
            C = sum_{i != j} Cov_ij^2 / D, Cov = centred x^T x / (B - 1)          (sum over views)

    BN is the batch standardisation with the biased variance and eps 1e-5; gamma = 1. Terms
    are averaged over the V(V-1)/2 pairs.
    """
    inv, var, cov = vicreg_terms(z, gamma, form)
    defaults = DEFAULT_WEIGHTS[form]
    weights = [d if w is None else w for w, d in zip((invariance_weight, variance_weight, covariance_weight),
                                                      defaults)]
    return weights[0] * inv + weights[1] * var + weights[2] * cov


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class VICReg(PretextModel):
    """VICReg pre-training: encoder -> projector -> variance / invariance / covariance loss.

    Args:
        encoder: (batch, samples) -> (batch, D) Keras model.
        projector_dims: default (D, D, 2D), the paper's 1024 -> 1024 -> 1024 -> 2048.
        invariance_weight: default 1 ("released") or 25 ("original").
        variance_weight: default 1 ("released") or 25 ("original").
        covariance_weight: default 1 (both forms).
        gamma: target standard deviation (1).
        form: "released" (default) or "original", see ``vicreg_loss``.
        **kwargs: ``PretextModel``'s (``steps_per_epoch``, ``run_start``, ``run_steps``,
            ``sync_batchnorm``) and Keras ``Model``'s.

    Returns:
        Called on views ``(batch, views, samples)``, the encoder's embeddings
        ``(batch, views, D)`` (on ``(batch, samples)``: ``(batch, D)``); ``fit`` trains on views
        and logs ``loss``, ``invariance``, ``variance`` and ``covariance``.

    Examples:
        >>> from keras_music_ssl import MusicEncoder
        >>> from keras_music_ssl.pretext import VICReg
        >>> encoder = MusicEncoder(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32)  # tiny
        >>> model = VICReg(encoder)
        >>> model.projector_dims
        (32, 32, 64)
        >>> model.compile()  # AdamW with the authors' schedules
        >>> # then model.fit(views, epochs=...), views (batch, 2, 64000): docs/pretraining.md
    """

    log_names = ("loss", "invariance", "variance", "covariance")

    def __init__(self, encoder, projector_dims=None, invariance_weight=None, variance_weight=None,
                 covariance_weight=None, gamma=1.0, form="released", **kwargs):
        super().__init__(encoder, **kwargs)
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        d = self.embedding_dim
        self.projector_dims = tuple(projector_dims or (d, d, 2 * d))
        self.form, self.gamma = form, float(gamma)
        given = (invariance_weight, variance_weight, covariance_weight)
        self.invariance_weight, self.variance_weight, self.covariance_weight = (
            float(d if w is None else w) for w, d in zip(given, DEFAULT_WEIGHTS[form]))
        self.projector = Head(self.projector_dims, name="projector")
        self.projector.build((None, d))
        self.built = True

    def pretext_loss(self, views, training=False):
        z = self.project(self.encoder, self.projector, views, training)
        inv, var, cov = vicreg_terms(z, self.gamma, self.form)
        logs = {"invariance": self.invariance_weight * inv, "variance": self.variance_weight * var,
                "covariance": self.covariance_weight * cov}
        return sum(logs.values()), logs, None

    def get_config(self):
        return {**super().get_config(), "projector_dims": self.projector_dims,
                "invariance_weight": self.invariance_weight, "variance_weight": self.variance_weight,
                "covariance_weight": self.covariance_weight, "gamma": self.gamma, "form": self.form}
