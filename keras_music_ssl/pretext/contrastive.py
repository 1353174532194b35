"""Contrastive learning: SimCLR's NT-Xent loss between the views of each track (docs/paper.md#contrastive).

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020 (arXiv 2002.05709); the authors' ``NT_Xent``.

One form of the loss: the released code's equals the original (SimCLR's NT-Xent).
"""

import keras
from keras import ops

from keras_music_ssl.heads import Head
from keras_music_ssl.pretext.base import PretextModel
from keras_music_ssl.pretext.loss_utils import l2_normalize


def nt_xent_loss(z, temperature=0.1):
    """NT-Xent over V views of B tracks, ``z`` (batch, views, dim) -> float32 scalar.

    With the N = V*B outputs L2-normalised and s_ik = cos(z_i, z_k) / temperature:

        loss = mean over anchors i and positives p of  -log( exp(s_ip) / sum_{k != i} exp(s_ik) )

    where the positives of i are the other V - 1 views of the same track and the
    denominator runs over all N - 1 other outputs, the positives included (2B - 1 for two
    views, as in SimCLR). For V > 2 every (anchor, positive) pair is one term. The released
    code gathers the positives with diagonals that pair them with other rows when V > 2;
    as the mean only sums the terms, its value is the same. The log is clamped at -100 as
    in the released code (inactive unless temperature < 0.02).
    """
    z = ops.cast(z, "float32")
    n_views, dim = z.shape[1], z.shape[2]
    z = l2_normalize(ops.reshape(ops.transpose(z, (1, 0, 2)), (-1, dim)))  # (V*B, dim), view-major
    logits = ops.matmul(z, ops.transpose(z)) / temperature
    n = ops.shape(logits)[0]
    index = ops.arange(n)
    track = index % (n // n_views)
    self_mask = index[:, None] == index[None, :]
    positive = ops.logical_and(track[:, None] == track[None, :], ops.logical_not(self_mask))
    log_denominator = ops.logsumexp(ops.where(self_mask, -1e9, logits), axis=1, keepdims=True)
    terms = ops.minimum(log_denominator - logits, 100.0)  # -log(softmax), clamped like log_clap
    positive = ops.cast(positive, "float32")
    return ops.sum(terms * positive) / ops.sum(positive)


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class Contrastive(PretextModel):
    """SimCLR-style contrastive pre-training: encoder -> projector -> NT-Xent (tau 0.1).

    Args:
        encoder: (batch, samples) -> (batch, D) Keras model, e.g. ``MusicEncoder()``.
        temperature: NT-Xent temperature (authors' default 0.1).
        projector_dims: widths of the projector; default (D, D, 2D), the paper's
            1024 -> 1024 -> 1024 -> 2048 for the 1024-d encoder.
        **kwargs: ``PretextModel``'s (``steps_per_epoch``, ``run_start``, ``run_steps``,
            ``sync_batchnorm``) and Keras ``Model``'s.

    Returns:
        Called on views ``(batch, views, samples)``, the encoder's embeddings
        ``(batch, views, D)`` (on ``(batch, samples)``: ``(batch, D)``); ``fit`` trains on views
        and logs ``loss``.

    Examples:
        >>> from keras_music_ssl import MusicEncoder
        >>> from keras_music_ssl.pretext import Contrastive
        >>> encoder = MusicEncoder(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32)  # tiny
        >>> model = Contrastive(encoder)
        >>> model.projector_dims
        (32, 32, 64)
        >>> model.compile()  # AdamW with the authors' schedules
        >>> # then model.fit(views, epochs=...), views (batch, 2, 64000): docs/pretraining.md
    """

    def __init__(self, encoder, temperature=0.1, projector_dims=None, **kwargs):
        super().__init__(encoder, **kwargs)
        d = self.embedding_dim
        self.temperature = float(temperature)
        self.projector_dims = tuple(projector_dims or (d, d, 2 * d))
        self.projector = Head(self.projector_dims, name="projector")
        self.projector.build((None, d))
        self.built = True

    def pretext_loss(self, views, training=False):
        z = self.project(self.encoder, self.projector, views, training)
        return nt_xent_loss(z, self.temperature), {}, None

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature,
                "projector_dims": self.projector_dims}
