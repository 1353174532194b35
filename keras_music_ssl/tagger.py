"""A music tagger: encoder + probe head + tag names (the paper probes a frozen encoder).

The downstream model of the paper (docs/paper.md#downstream-model): the encoder's embedding feeds a small
classifier, ``Head(1024, hidden + [n_tags])`` in the authors' code, i.e. bias-free
linear layers with BatchNorm + ReLU between hidden layers, and a sigmoid for multi-label
tags. A whole track is tagged from the mean of its 4 s chunk embeddings (docs/paper.md#track-embeddings).

The saved probe head (what ``kmssl export --head PROBE`` reads) is a ``.keras`` file of a
one-layer model holding a ``TagHead``; the tag names are part of the layer's config, so
they travel with the weights. ``save_tag_head`` / ``load_tag_head`` write and read it.
"""

import keras
import numpy as np

from keras_music_ssl.backbone import MusicEncoder
from keras_music_ssl.heads import hidden_block, hidden_layers
from keras_music_ssl.inference import FastInference


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class TagHead(keras.layers.Layer):
    """Embedding (batch, dim) -> tag probabilities (batch, len(tags)).

    ``hidden_units=(h1, ..., hk)`` adds k hidden blocks before the last Dense(len(tags)):
    Dense(h, no bias) -> BatchNorm -> ReLU (the authors' Head, ``batch_norm=True``), or
    Dense(h) -> ReLU (``batch_norm=False``, MARBLE's MLP), each followed by ``Dropout(dropout)``.
    ``use_bias=False`` is the authors' Head (every Linear is bias-free). ``activation="sigmoid"``
    gives independent tag probabilities, ``"softmax"`` one distribution over classes (a
    single-label task); ``None`` returns logits (for a loss on logits).
    ``standardize=True`` holds a per-feature ``(x - mean) / std`` (non-trainable, set with
    :meth:`set_standardization` from training features), so a probe trained on standardised
    embeddings takes raw embeddings once saved or exported.
    ``thresholds`` (one per tag, sigmoid heads only) are the decision rule of :meth:`decide`,
    ``probability >= threshold``: the probe sets them per tag at the maximum F1 on its validation
    split (``probe/thresholds.py``). A head without them (None) decides nothing by threshold.

    Args:
        tags: the tag (or class) names, unique; one output each.
        hidden_units: widths of the hidden blocks (default none: one linear layer, the
            authors' default head).
        use_bias: biases in the Dense layers (False: the authors' Head).
        activation: "sigmoid" (default, multi-label), "softmax" (single-label) or None (logits).
        dropout: dropout rate after each hidden block, in [0, 1).
        batch_norm: BatchNorm in the hidden blocks (True: the authors' Head).
        standardize: hold a per-feature standardisation of the inputs.
        thresholds: one decision threshold per tag (sigmoid heads only), or None.
        **kwargs: Keras ``Layer`` arguments.

    Returns:
        Called on embeddings ``(batch, dim)``, the probabilities ``(batch, len(tags))``
        (logits with ``activation=None``).

    Examples:
        >>> import numpy as np
        >>> from keras_music_ssl.tagger import TagHead
        >>> head = TagHead(["piano", "drums"], thresholds=[0.3, 0.6])
        >>> tuple(head(np.zeros((4, 32), "float32")).shape)
        (4, 2)
        >>> head.decide([[0.5, 0.5]]).tolist()
        [[True, False]]
    """

    def __init__(self, tags, hidden_units=(), use_bias=False, activation="sigmoid", dropout=0.0,
                 batch_norm=True, standardize=False, thresholds=None, **kwargs):
        super().__init__(**kwargs)
        tags = [str(tag) for tag in tags]
        if not tags:
            raise ValueError("A TagHead needs at least one tag name.")
        duplicated = sorted({tag for tag in tags if tags.count(tag) > 1})
        if duplicated:
            raise ValueError(f"Tag names must be unique; repeated: {duplicated}")
        if activation not in ("sigmoid", "softmax", None):
            raise ValueError(f"activation must be 'sigmoid', 'softmax' or None, got {activation!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if thresholds is not None:
            if activation != "sigmoid":
                raise ValueError("thresholds are for independent tag probabilities (activation='sigmoid'); a "
                                 "softmax head decides by arg-max")
            thresholds = [float(t) for t in thresholds]
            if len(thresholds) != len(tags) or not all(np.isfinite(thresholds)):
                raise ValueError(f"thresholds must be {len(tags)} finite numbers, one per tag; got {len(thresholds)}")
        self.thresholds = thresholds
        self.tags = tags
        self.hidden_units = tuple(int(h) for h in hidden_units)
        self.use_bias = bool(use_bias)
        self.activation = activation
        self.dropout = float(dropout)
        self.batch_norm = bool(batch_norm)
        self.standardize = bool(standardize)
        # Glorot init (Keras' default), as the probe results in docs/probing.md were measured with.
        self.hidden = [hidden_layers(units, self.batch_norm, name=f"hidden{i}", kernel_initializer="glorot_uniform")
                       for i, units in enumerate(self.hidden_units)]
        self.drop = keras.layers.Dropout(self.dropout) if self.dropout else None
        self.logits = keras.layers.Dense(len(tags), use_bias=self.use_bias, name="logits")

    @property
    def num_tags(self):
        return len(self.tags)

    def build(self, input_shape):
        self.input_dim = int(input_shape[-1])
        if self.standardize:
            self.feature_mean = self.add_weight((self.input_dim,), "zeros", trainable=False, name="feature_mean")
            self.feature_scale = self.add_weight((self.input_dim,), "ones", trainable=False, name="feature_scale")
        shape = tuple(input_shape)
        for dense, norm in self.hidden:
            dense.build(shape)
            shape = shape[:-1] + (dense.units,)
            if norm is not None:
                norm.build(shape)
        self.logits.build(shape)

    def set_standardization(self, mean, std, eps=1e-8):
        """Hold ``(x - mean) / std`` for inputs (features with std < eps are only centred)."""
        if not self.standardize:
            raise ValueError("This TagHead was built with standardize=False.")
        std = np.asarray(std, np.float32)
        self.feature_mean.assign(np.asarray(mean, np.float32))
        self.feature_scale.assign(np.where(std > eps, 1.0 / np.maximum(std, eps), 1.0).astype(np.float32))

    def with_activation(self, activation):
        """A copy of this built head, its weights included, with another output ``activation``
        (a logits head for a loss on logits, or a probabilities head to save). Thresholds belong to
        one head's probabilities: the copy has none."""
        copy = TagHead.from_config({**self.get_config(), "activation": activation, "thresholds": None})
        copy.build((None, self.input_dim))
        copy.set_weights(self.get_weights())
        return copy

    def decide(self, probabilities):
        """Boolean (..., tags) decisions of this head's probabilities: ``p >= threshold`` per tag
        (sigmoid heads with thresholds), the arg-max class (softmax heads), else None."""
        probabilities = np.asarray(probabilities)
        if self.activation == "softmax":
            return np.arange(self.num_tags) == probabilities.argmax(axis=-1)[..., None]
        if self.thresholds is None:
            return None
        from keras_music_ssl.probe.thresholds import decide

        return decide(probabilities, self.thresholds)

    def call(self, embedding, training=None):
        x = embedding
        if self.standardize:
            x = (x - self.feature_mean) * self.feature_scale
        for dense, norm in self.hidden:
            x = hidden_block(x, dense, norm, training=training)
            if self.drop is not None:
                x = self.drop(x, training=training)
        x = self.logits(x)
        if self.activation == "softmax":
            return keras.ops.softmax(x, axis=-1)
        return keras.ops.sigmoid(x) if self.activation == "sigmoid" else x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_tags,)

    def get_config(self):
        return {**super().get_config(), "tags": list(self.tags),
                "hidden_units": self.hidden_units, "use_bias": self.use_bias,
                "activation": self.activation, "dropout": self.dropout,
                "batch_norm": self.batch_norm, "standardize": self.standardize,
                "thresholds": None if self.thresholds is None else list(self.thresholds)}


class EncoderAndHead:
    """The config of a model made of an ``encoder`` and a ``head``, both serialised whole:
    ``MusicTagger`` here and ``finetune.FineTuner``."""

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "head": keras.saving.serialize_keras_object(self.head)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        head = keras.saving.deserialize_keras_object(config.pop("head"))
        return cls(encoder, head, **config)


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class MusicTagger(EncoderAndHead, FastInference, keras.Model):
    """Waveform (batch, num_samples) -> tag probabilities (batch, n_tags): ``head(encoder(x))``.

    ``.encoder`` is a ``MusicEncoder``, ``.head`` a ``TagHead``, ``.tags`` the tag names.
    A track longer than one clip is tagged as ``head(mean of its chunk embeddings)``, not
    as the mean of per-chunk probabilities (docs/paper.md#downstream-model); the exported models do that.

    Args:
        encoder: a ``MusicEncoder``.
        head: a ``TagHead`` (e.g. a probe's, ``load_tag_head``).
        **kwargs: Keras ``Model`` arguments.

    Returns:
        Called (or ``predict``) on 4 s clips ``(batch, num_samples)``, the tag probabilities
        ``(batch, len(tags))``.

    Examples:
        >>> from keras_music_ssl import MusicEncoder
        >>> from keras_music_ssl.tagger import MusicTagger, TagHead
        >>> encoder = MusicEncoder(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32)  # tiny
        >>> tagger = MusicTagger(encoder, TagHead(["piano", "drums", "voice"]))
        >>> tagger.output_shape, tagger.tags
        ((None, 3), ['piano', 'drums', 'voice'])
    """

    def __init__(self, encoder, head, **kwargs):
        if not isinstance(encoder, MusicEncoder):
            raise TypeError(f"encoder must be a MusicEncoder, got {type(encoder).__name__}")
        if not isinstance(head, TagHead):
            raise TypeError(f"head must be a TagHead, got {type(head).__name__}")
        waveform = keras.Input((encoder.num_samples,), name="waveform")
        probabilities = head(encoder(waveform))
        super().__init__(waveform, probabilities, **kwargs)
        self.encoder = encoder
        self.head = head

    @property
    def tags(self):
        return list(self.head.tags)

    @property
    def num_samples(self):
        return self.encoder.num_samples

    @property
    def sample_rate(self):
        return self.encoder.sample_rate


def save_tag_head(head, path, input_dim=None):
    """Save a built ``TagHead`` (weights + tag names) as a ``.keras`` probe-head file."""
    if not isinstance(head, TagHead):
        raise TypeError(f"Expected a TagHead, got {type(head).__name__}")
    if input_dim is None:
        if not head.built:
            raise ValueError("The head is not built: call it once or pass input_dim.")
        input_dim = head.input_dim
    wrapper = keras.Sequential([keras.Input((int(input_dim),), name="embedding"), head],
                               name="tag_head")
    wrapper.save(str(path))
    return path


def load_tag_head(path):
    """Read a probe-head file written by ``save_tag_head`` (or a saved ``MusicTagger``).

    Returns the ``TagHead``; raises ``ValueError`` if the file holds no ``TagHead``.
    """
    model = keras.saving.load_model(str(path))
    if isinstance(model, MusicTagger):
        return model.head
    heads = [layer for layer in model.layers if isinstance(layer, TagHead)]
    if len(heads) != 1:
        raise ValueError(f"{path} holds no TagHead (tag names + classifier); "
                         f"found layers {[type(layer).__name__ for layer in model.layers]}.")
    return heads[0]
