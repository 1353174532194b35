"""A callback that watches for representation collapse during pre-training.

Each epoch it embeds a fixed held-out batch of views with the encoder (inference mode) and
adds two numbers to the epoch ``logs`` (so ``History``, ``CSVLogger`` and ``TensorBoard``
placed after it in the callback list record them):

- ``embedding_std``: the standard deviation over the batch of each dimension of the
  L2-normalised embeddings, averaged over dimensions. Collapse to one point gives 0;
  embeddings spread evenly on the sphere give about 1 / sqrt(D) (Jing et al., "Understanding
  dimensional collapse in contrastive self-supervised learning", ICLR 2022, SimSiam's
  monitor).
- ``effective_rank``: exp of the entropy of the normalised singular values p_k = s_k / sum s
  of the (N, D) embedding matrix (Roy and Vetterli 2007; RankMe, Garrido et al. 2023):
  between 1 (all embeddings on one line) and min(N, D).

It warns when ``embedding_std`` falls below ``threshold / sqrt(D)``: the paper notes that
the clustering method is prone to collapse.
"""

import warnings

import keras
import numpy as np


def embedding_statistics(embeddings):
    """(N, D) embeddings -> {"embedding_std": ..., "effective_rank": ...} (numpy, float64)."""
    e = np.asarray(embeddings, dtype=np.float64)
    normalized = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    singular = np.linalg.svd(e, compute_uv=False)
    total = singular.sum()
    if total <= 0:  # every embedding is zero
        rank = 0.0
    else:
        p = singular / total
        p = p[p > 0]
        rank = float(np.exp(-np.sum(p * np.log(p))))
    return {"embedding_std": float(normalized.std(axis=0).mean()), "effective_rank": rank}


class CollapseMonitor(keras.callbacks.Callback):
    """Log ``embedding_std`` and ``effective_rank`` of a fixed batch each epoch; warn on collapse.

    Args:
        views: held-out views (batch, views, samples) or clips (batch, samples), numpy.
        threshold: warn when embedding_std < threshold / sqrt(D) (healthy is about 1 / sqrt(D)).
        batch_size: for the encoder's ``predict``.
        prefix: prepended to the log names (e.g. "val_").
    """

    def __init__(self, views, threshold=0.1, batch_size=32, prefix=""):
        super().__init__()
        views = np.asarray(views, dtype=np.float32)
        self.clips = views.reshape((-1, views.shape[-1]))  # (batch * views, samples)
        if len(self.clips) < 2:
            raise ValueError("CollapseMonitor needs at least two clips to measure a spread.")
        self.threshold = threshold
        self.batch_size = batch_size
        self.prefix = prefix

    def on_epoch_end(self, epoch, logs=None):
        encoder = getattr(self.model, "encoder", self.model)
        embeddings = encoder.predict(self.clips, batch_size=self.batch_size, verbose=0)
        stats = embedding_statistics(embeddings)
        if logs is not None:
            logs.update({self.prefix + name: value for name, value in stats.items()})
        healthy = 1.0 / np.sqrt(embeddings.shape[-1])
        if not stats["embedding_std"] >= self.threshold * healthy:  # also catches NaN
            warnings.warn(
                f"Epoch {epoch + 1}: the embeddings look collapsed: std of the L2-normalised "
                f"embeddings {stats['embedding_std']:.2e} (healthy about {healthy:.2e}), effective "
                f"rank {stats['effective_rank']:.2f}.", RuntimeWarning, stacklevel=2)
