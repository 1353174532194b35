"""Projection / prediction MLPs put on top of the encoder during pre-training (docs/paper.md#heads).

``Head([d1, ..., dk])`` is the authors' ``models.Head``: for every width but the last,
Linear (no bias) -> BatchNorm -> ReLU; the last layer is a Linear without bias, without
BN and without activation. The paper's heads on the 1024-d embedding:

- projector (contrastive, BYOL, Barlow Twins, VICReg): [1024, 1024, 2048], 4,198,400 params;
- BYOL predictor on the 2048-d projection: [256, 2048], 1,049,088 params;
- clustering head: [1024, 1024, 256, 4096] (4096 prototypes), 3,412,480 params.

Heads are discarded after pre-training: downstream tasks use the encoder embedding only.
The probe's ``TagHead`` (``tagger.py``) builds its hidden layers from the same block
(:func:`hidden_layers`, :func:`hidden_block`).
"""

import keras
from keras import layers, ops

from keras_music_ssl.backbone import TORCH_BATCHNORM


def torch_linear_initializer():
    """PyTorch's default ``nn.Linear`` init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def hidden_layers(units, batch_norm=True, name="hidden", norm_name=None, kernel_initializer=None):
    """The layers of one hidden block: ``(Dense, BatchNormalization)``, or ``(Dense, None)``.

    The Dense has no bias when a BatchNorm follows (its shift would cancel the bias).
    ``kernel_initializer`` defaults to PyTorch's ``nn.Linear`` init, as in the authors' code.
    """
    dense = layers.Dense(int(units), use_bias=not batch_norm, name=name,
                         kernel_initializer=kernel_initializer or torch_linear_initializer())
    norm = layers.BatchNormalization(**TORCH_BATCHNORM, name=norm_name or f"{name}_bn") if batch_norm else None
    return dense, norm


def hidden_block(x, dense, norm, training=None):
    """One hidden block of the authors' Head: Linear -> BatchNorm (if any) -> ReLU."""
    x = dense(x)
    if norm is not None:
        x = norm(x, training=training)
    return ops.relu(x)


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class Head(layers.Layer):
    """MLP (batch, in) -> (batch, layers_dims[-1]): [Linear(no bias) -> BN -> ReLU] * (k-1) -> Linear.

    Args:
        layers_dims: output width of each Linear layer, e.g. ``(1024, 1024, 2048)``.
    """

    def __init__(self, layers_dims, **kwargs):
        super().__init__(**kwargs)
        self.layers_dims = tuple(int(d) for d in layers_dims)
        if not self.layers_dims:
            raise ValueError("Head needs at least one layer width.")
        blocks = [hidden_layers(d, name=f"linear_{i}", norm_name=f"bn_{i}") for i, d in enumerate(self.layers_dims[:-1])]
        # Separate lists (not pairs) keep the weight paths of earlier checkpoints.
        self.dense = [dense for dense, _ in blocks] + [
            layers.Dense(self.layers_dims[-1], use_bias=False, kernel_initializer=torch_linear_initializer(),
                         name=f"linear_{len(blocks)}")]
        self.norms = [norm for _, norm in blocks]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for i, dense in enumerate(self.dense):
            dense.build(shape)
            shape = shape[:-1] + (self.layers_dims[i],)
            if i < len(self.norms):
                self.norms[i].build(shape)

    def call(self, x, training=None):
        for dense, norm in zip(self.dense, self.norms):
            x = hidden_block(x, dense, norm, training=training)
        return self.dense[-1](x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.layers_dims[-1],)

    def get_config(self):
        return {**super().get_config(), "layers_dims": self.layers_dims}
