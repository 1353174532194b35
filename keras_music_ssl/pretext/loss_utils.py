"""Small tensor helpers the losses share (float32 ``keras.ops``)."""

from keras import ops


def l2_normalize(x, axis=-1):
    """``x / max(||x||, 1e-12)`` like ``torch.nn.functional.normalize``: a collapsed (zero)
    embedding stays zero, with a finite gradient."""
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), 1e-24))


def batch_standardize(x, epsilon=1e-5):
    """(batch, dim) -> (x - mean) / sqrt(var + eps) over the batch, with the biased variance:
    PyTorch's ``BatchNorm1d(affine=False)`` in training mode, as the authors use it."""
    mean = ops.mean(x, axis=0, keepdims=True)
    var = ops.mean(ops.square(x - mean), axis=0, keepdims=True)
    return (x - mean) * ops.rsqrt(var + epsilon)


def view_pairs(z):
    """(batch, views, dim) -> the unordered pairs (z[:, i], z[:, j]), i < j, in float32."""
    z = ops.cast(z, "float32")
    n_views = z.shape[1]
    return [(z[:, i], z[:, j]) for i in range(n_views) for j in range(i + 1, n_views)]


def mean_over_ordered_pairs(pairwise):
    """(batch, V, V) -> mean over the batch and the V(V-1) entries off the diagonal (i != j)."""
    n_views = pairwise.shape[1]
    off_diagonal = ops.cast(1.0 - ops.eye(n_views), pairwise.dtype)
    return ops.mean(ops.sum(pairwise * off_diagonal, axis=(1, 2))) / (n_views * (n_views - 1))
