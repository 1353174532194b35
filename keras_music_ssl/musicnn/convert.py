"""musicnn's TF1 checkpoints -> Keras weights, by an explicit name map, strictly.

Each model folder of the musicnn wheel (``musicnn/MTT_musicnn/``, ...) holds a TF1 checkpoint whose
prefix is the folder itself (``.index``, ``.data-00000-of-00001``). TensorFlow's checkpoint reader
(``tf.compat.v1.train.NewCheckpointReader``, which reads a prefix that
is a folder; ``tf.train.load_checkpoint`` would look for a ``checkpoint`` file there) reads its variables; no TF1 graph is built. The variables are named
by ``tf.compat.v1.layers`` in creation order (``conv2d_3/kernel``, ``batch_normalization_7/gamma``):
:data:`MUSICNN_NAMES` and :data:`VGG_NAMES` say which Keras layer each one fills, in the order of
musicnn's ``models.py``.

Strict: every variable of the checkpoint is used exactly once and every Keras weight is filled,
each with its exact shape (the mid-end's (7, F, 1, 64) convolutions become Keras' 1-D (7, F, 64),
the only reshape); Adam's slots (``*/Adam``, ``*/Adam_1``) and ``beta1_power`` / ``beta2_power``
are the optimizer's and are skipped. Anything else raises :class:`CheckpointError` naming the
variable.
"""

import numpy as np

from keras_music_ssl.errors import KmsslError

# checkpoint layer scope -> Keras layer name (musicnn/models.py, build_musicnn, in creation order)
MUSICNN_NAMES = {
    "batch_normalization": "input_bn",
    "conv2d": "timbral_7x38", "batch_normalization_1": "timbral_7x38_bn",
    "conv2d_1": "timbral_7x67", "batch_normalization_2": "timbral_7x67_bn",
    "conv2d_2": "temporal_128x1", "batch_normalization_3": "temporal_128x1_bn",
    "conv2d_3": "temporal_64x1", "batch_normalization_4": "temporal_64x1_bn",
    "conv2d_4": "temporal_32x1", "batch_normalization_5": "temporal_32x1_bn",
    "conv2d_5": "midend_conv1", "batch_normalization_6": "midend_bn1",
    "conv2d_6": "midend_conv2", "batch_normalization_7": "midend_bn2",
    "conv2d_7": "midend_conv3", "batch_normalization_8": "midend_bn3",
    "batch_normalization_9": "backend_bn",
    "dense": "penultimate_dense", "batch_normalization_10": "penultimate_bn",
    "dense_1": "logits",
}
# musicnn/models.py, vgg: the convolutions are named 1CNN ... 5CNN there.
VGG_NAMES = {
    "batch_normalization": "input_bn",
    **{f"{i}CNN": f"conv{i}" for i in range(1, 6)},
    **{f"batch_normalization_{i}": f"conv{i}_bn" for i in range(1, 6)},
    "dense": "logits",
}
# Keras weight order per layer type, as checkpoint variable names
BATCHNORM_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")
DENSE_VARIABLES = ("kernel", "bias")
OPTIMIZER_VARIABLES = ("beta1_power", "beta2_power")


class CheckpointError(KmsslError, ValueError):
    """A checkpoint that is not the one this model expects (a missing, extra or misshapen variable)."""


def read_checkpoint(prefix):
    """``{variable name: numpy array}`` of the TF1 checkpoint at ``prefix``, optimizer slots left out."""
    import tensorflow as tf

    try:
        reader = tf.compat.v1.train.NewCheckpointReader(str(prefix))
    except (tf.errors.OpError, ValueError) as error:  # no index there, or a damaged one
        raise CheckpointError(f"{prefix}: not a readable TensorFlow checkpoint "
                              f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    names = [name for name in reader.get_variable_to_shape_map()
             if name not in OPTIMIZER_VARIABLES and not name.endswith(("/Adam", "/Adam_1"))]
    try:
        return {name: reader.get_tensor(name) for name in sorted(names)}
    except tf.errors.OpError as error:  # an index whose data file is missing or damaged
        raise CheckpointError(f"{prefix}: its variables cannot be read ({str(error).splitlines()[0]})") from None


def name_map(model):
    from keras_music_ssl.musicnn.models import Musicnn, Vgg

    if isinstance(model, Musicnn):
        return MUSICNN_NAMES
    if isinstance(model, Vgg):
        return VGG_NAMES
    raise TypeError(f"expected a Musicnn or Vgg model, got {type(model).__name__}")


def load_checkpoint_weights(model, variables, source="the checkpoint"):
    """Fill ``model`` (a :class:`Musicnn` or :class:`Vgg`) from ``variables`` (:func:`read_checkpoint`).

    Raises :class:`CheckpointError` naming the first variable that is missing, left over or of
    another shape; the model is only changed when all of them fit.
    """
    import keras

    names = name_map(model)
    unused = set(variables)
    assignments = []
    for scope, layer_name in names.items():
        layer = model.get_layer(layer_name)
        suffixes = BATCHNORM_VARIABLES if isinstance(layer, keras.layers.BatchNormalization) else DENSE_VARIABLES
        if len(layer.weights) != len(suffixes):
            raise CheckpointError(f"layer {layer_name} has {len(layer.weights)} weights, expected {len(suffixes)}")
        for weight, suffix in zip(layer.weights, suffixes):
            name = f"{scope}/{suffix}"
            if name not in variables:
                raise CheckpointError(f"{source} lacks the variable {name} (for {weight.path})")
            value = np.asarray(variables[name])
            target = tuple(weight.shape)
            if value.shape != target and not (len(target) == 3 and value.shape == target[:2] + (1,) + target[2:]):
                raise CheckpointError(f"{source}: variable {name} has shape {value.shape}, "
                                      f"but {weight.path} needs {target}")
            if value.dtype != np.float32 or not np.all(np.isfinite(value)):
                raise CheckpointError(f"{source}: variable {name} is not finite float32 ({value.dtype})")
            assignments.append((weight, value.reshape(target)))
            unused.discard(name)
    if unused:
        raise CheckpointError(f"{source} holds variables this model has no place for: {', '.join(sorted(unused))}")
    if len(assignments) != len(model.weights):
        filled = {id(weight) for weight, _ in assignments}
        missing = [w.path for w in model.weights if id(w) not in filled]
        raise CheckpointError(f"the checkpoint leaves weights of the model unset: {', '.join(missing)}")
    for weight, value in assignments:
        weight.assign(value)
    return model
