"""CLIP's ModifiedResNet with attention pooling, and the encoder (waveform -> embedding).

A port of the paper's backbone (docs/paper.md#encoder), which is OpenAI CLIP's ``ModifiedResNet``:
- a 3-convolution stem and an average pool instead of 7x7 conv + max pool;
- anti-aliased downsampling: stride > 1 is an average pool after the 3x3 conv, and the
  shortcut is avgpool -> 1x1 conv -> BN;
- QKV attention pooling over the spatial tokens plus their mean, returning the mean token.

Everything is channels-last: the log-mel enters as (batch, mel, time, 1), the same H/W
as PyTorch's (batch, 1, mel, time). Sub-layer attribute names equal the PyTorch module
names, which is what the weight transfer (``keras_music_ssl.torch_weights``) walks.
"""

import keras
from keras import layers, ops

from keras_music_ssl.frontend import LogMelSpectrogram
from keras_music_ssl.inference import FastInference

# PyTorch BatchNorm defaults: eps 1e-5, running-average momentum 0.1 (Keras: 0.9). Shared by
# every BatchNorm of the package (encoder, pretext heads, tag head).
TORCH_BATCHNORM = dict(epsilon=1e-5, momentum=0.9)


def _conv(filters, kernel_size, name):
    # Stride is always 1 inside the network (downsampling is pooling); "same" is then the
    # symmetric padding of PyTorch's padding=kernel_size // 2.
    return layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=name)


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class Bottleneck(layers.Layer):
    """1x1 -> 3x3 -> [avgpool] -> 1x1 (x4 channels), with a pooled projection shortcut."""

    expansion = 4

    def __init__(self, planes, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.planes = planes
        self.stride = stride
        self.conv1 = _conv(planes, 1, "conv1")
        self.bn1 = layers.BatchNormalization(**TORCH_BATCHNORM, name="bn1")
        self.conv2 = _conv(planes, 3, "conv2")
        self.bn2 = layers.BatchNormalization(**TORCH_BATCHNORM, name="bn2")
        self.conv3 = _conv(planes * self.expansion, 1, "conv3")
        self.bn3 = layers.BatchNormalization(**TORCH_BATCHNORM, name="bn3")
        self.pool = layers.AveragePooling2D(stride, padding="valid") if stride > 1 else None
        self.downsample = None  # decided in build(), once the input width is known

    def build(self, input_shape):
        in_channels = input_shape[-1]
        out_channels = self.planes * self.expansion
        self.conv1.build(input_shape)
        self.bn1.build(input_shape[:-1] + (self.planes,))
        inner = input_shape[:-1] + (self.planes,)
        self.conv2.build(inner)
        self.bn2.build(inner)
        self.conv3.build(inner)
        self.bn3.build(input_shape[:-1] + (out_channels,))
        if self.stride > 1 or in_channels != out_channels:
            # PyTorch names this Sequential("-1": AvgPool, "0": Conv, "1": BN).
            self.downsample = [
                _conv(out_channels, 1, "downsample_0"),
                layers.BatchNormalization(**TORCH_BATCHNORM, name="downsample_1"),
            ]
            self.downsample[0].build(input_shape)
            self.downsample[1].build(input_shape[:-1] + (out_channels,))

    def call(self, x, training=None):
        out = ops.relu(self.bn1(self.conv1(x), training=training))
        out = ops.relu(self.bn2(self.conv2(out), training=training))
        if self.pool is not None:
            out = self.pool(out)
        out = self.bn3(self.conv3(out), training=training)
        identity = x
        if self.downsample is not None:
            if self.pool is not None:
                identity = self.pool(identity)
            identity = self.downsample[1](self.downsample[0](identity), training=training)
        return ops.relu(out + identity)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        if self.stride > 1:
            h = None if h is None else h // self.stride
            w = None if w is None else w // self.stride
        return (b, h, w, self.planes * self.expansion)

    def get_config(self):
        return {**super().get_config(), "planes": self.planes, "stride": self.stride}


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class AttentionPool2D(layers.Layer):
    """Multi-head attention of the mean token over [mean token; H*W tokens] -> (batch, output_dim).

    Tokens are flattened row-major (mel-major), as PyTorch flattens (C, H, W). A learned
    positional embedding of H*W + 1 slots ties the layer to one input size (4 s here).
    Only the mean token's query is computed: the output is that token alone.

    Args:
        num_heads: attention heads; the input's channels must be divisible by it.
        output_dim: width of the output projection (None: the input's channels).
        **kwargs: Keras ``Layer`` arguments.

    Returns:
        Called on a feature map ``(batch, H, W, C)`` with static H and W, the mean token's
        attention output ``(batch, output_dim)``.

    Examples:
        >>> import numpy as np
        >>> from keras_music_ssl import AttentionPool2D
        >>> pool = AttentionPool2D(num_heads=2, output_dim=8)
        >>> tuple(pool(np.zeros((1, 4, 3, 16), "float32")).shape)
        (1, 8)
    """

    def __init__(self, num_heads, output_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.output_dim = output_dim

    def build(self, input_shape):
        _, h, w, dim = input_shape
        if h is None or w is None:
            raise ValueError("AttentionPool2D needs static spatial dimensions, got "
                             f"{input_shape}: the positional embedding has H*W + 1 slots.")
        if dim % self.num_heads:
            raise ValueError(f"Embedding width {dim} is not divisible by {self.num_heads} heads.")
        self.positional_embedding = self.add_weight(
            shape=(h * w + 1, dim), name="positional_embedding",
            initializer=keras.initializers.RandomNormal(stddev=dim ** -0.5),
        )
        self.q_proj = layers.Dense(dim, name="q_proj")
        self.k_proj = layers.Dense(dim, name="k_proj")
        self.v_proj = layers.Dense(dim, name="v_proj")
        self.c_proj = layers.Dense(self.output_dim or dim, name="c_proj")
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            proj.build((None, dim))
        self.c_proj.build((None, dim))

    def call(self, x):
        _, h, w, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        x = ops.reshape(x, (-1, h * w, dim))
        x = ops.concatenate([ops.mean(x, axis=1, keepdims=True), x], axis=1)
        x = x + ops.cast(self.positional_embedding, x.dtype)  # (batch, tokens, dim)

        def split(t):  # (batch, n, dim) -> (batch, heads, n, head_dim)
            return ops.transpose(ops.reshape(t, (-1, t.shape[1], heads, head_dim)), (0, 2, 1, 3))

        q = split(self.q_proj(x[:, :1])) * (head_dim ** -0.5)
        k, v = split(self.k_proj(x)), split(self.v_proj(x))
        attn = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))), axis=-1)
        out = ops.reshape(ops.matmul(attn, v), (-1, dim))  # (batch, heads * head_dim)
        return self.c_proj(out)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim or input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "output_dim": self.output_dim}


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class ModifiedResNet(layers.Layer):
    """Log-mel (batch, mel, time, 1) -> embedding (batch, output_dim). See docs/paper.md#encoder.

    Args:
        width: channels of the stem's last convolution; the stages have 4x, 8x, 16x and 32x
            it (16: the paper's; must be even).
        layers: bottleneck blocks per stage ((3, 4, 6, 3): the paper's).
        heads: attention heads of the pooling (8).
        output_dim: embedding width (1024).
        **kwargs: Keras ``Layer`` arguments.

    Returns:
        Called on a log-mel ``(batch, mel, time, 1)``, the embedding ``(batch, output_dim)``.

    Examples:
        >>> import numpy as np
        >>> from keras_music_ssl import ModifiedResNet
        >>> resnet = ModifiedResNet(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32)
        >>> tuple(resnet(np.zeros((1, 128, 126, 1), "float32")).shape)
        (1, 32)
    """

    def __init__(self, width=16, layers=(3, 4, 6, 3), heads=8, output_dim=1024, **kwargs):
        super().__init__(**kwargs)
        if width % 2:
            raise ValueError(f"width must be even (the stem starts at width // 2), got {width}")
        self.width = int(width)
        self.layer_counts = tuple(int(n) for n in layers)
        self.heads = int(heads)
        self.output_dim = int(output_dim)
        w = self.width
        bn = keras.layers.BatchNormalization
        self.stem_pad = keras.layers.ZeroPadding2D(1)
        # The first conv has stride 2: pad explicitly, as Keras "same" pads asymmetrically.
        self.conv1 = keras.layers.Conv2D(w // 2, 3, strides=2, use_bias=False, name="conv1")
        self.bn1 = bn(**TORCH_BATCHNORM, name="bn1")
        self.conv2 = _conv(w // 2, 3, "conv2")
        self.bn2 = bn(**TORCH_BATCHNORM, name="bn2")
        self.conv3 = _conv(w, 3, "conv3")
        self.bn3 = bn(**TORCH_BATCHNORM, name="bn3")
        self.avgpool = keras.layers.AveragePooling2D(2)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            [Bottleneck(w * 2 ** i, stride=1 if (i == 0 or j) else 2, name=f"layer{i + 1}_{j}")
             for j in range(n)]
            for i, n in enumerate(self.layer_counts)
        )
        self.attnpool = AttentionPool2D(self.heads, self.output_dim, name="attnpool")

    def build(self, input_shape):
        shape = input_shape
        for conv, bnorm in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            if conv is self.conv1:
                shape = self.stem_pad.compute_output_shape(shape)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            bnorm.build(shape)
        shape = self.avgpool.compute_output_shape(shape)
        for block in self.layer1 + self.layer2 + self.layer3 + self.layer4:
            block.build(shape)
            shape = block.compute_output_shape(shape)
        self.attnpool.build(shape)

    def call(self, x, training=None):
        x = self.stem_pad(x)
        for conv, bnorm in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = ops.relu(bnorm(conv(x), training=training))
        x = self.avgpool(x)
        for block in self.layer1 + self.layer2 + self.layer3 + self.layer4:
            x = block(x, training=training)
        return self.attnpool(x)  # (batch, output_dim)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        return {**super().get_config(), "width": self.width, "layers": self.layer_counts,
                "heads": self.heads, "output_dim": self.output_dim}


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class MusicEncoder(FastInference, keras.Model):
    """Raw 16 kHz mono waveform (batch, samples) -> embedding (batch, output_dim).

    ``MusicEncoder()`` is the paper's model: 4 s input (64,000 samples), the torchaudio-
    equivalent log-mel frontend, ModifiedResNet width 16, layers (3, 4, 6, 3), 8 heads,
    1024-d output, 2,800,392 trainable parameters. Smaller settings give quick models for
    tests and CPU demos; ``frontend`` takes any ``LogMelSpectrogram`` argument.
    ``predict(array)`` and ``model(array)`` run one compiled function reused across calls
    (``keras_music_ssl.inference``).

    Args:
        width: the ResNet's width (16), see ``ModifiedResNet``.
        layers: bottleneck blocks per stage ((3, 4, 6, 3)).
        heads: attention heads of the pooling (8).
        output_dim: embedding width (1024).
        num_samples: input length in samples (64000: 4 s at 16 kHz; the attention pool's
            positional embedding fixes it).
        frontend: a dict of ``LogMelSpectrogram`` arguments (None: the paper's frontend).
        **kwargs: Keras ``Model`` arguments (``name``, ...).

    Returns:
        Called (or ``predict``) on a waveform ``(batch, num_samples)``, float32, mono,
        peak-normalised, the embedding ``(batch, output_dim)``.

    Examples:
        >>> from keras_music_ssl import MusicEncoder
        >>> MusicEncoder().output_shape  # the paper's encoder
        (None, 1024)
        >>> tiny = MusicEncoder(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32)
        >>> folder = tiny.save_to_preset("tiny_encoder")  # config, weights, metadata, card
        >>> MusicEncoder.from_preset("tiny_encoder").output_shape
        (None, 32)
    """

    def __init__(self, width=16, layers=(3, 4, 6, 3), heads=8, output_dim=1024,
                 num_samples=64000, frontend=None, **kwargs):
        frontend_config = dict(frontend or {})
        waveform = keras.Input((num_samples,), name="waveform")
        logmel = LogMelSpectrogram(**frontend_config, name="frontend")
        resnet = ModifiedResNet(width, layers, heads, output_dim, name="resnet")
        embedding = resnet(logmel(waveform))
        super().__init__(waveform, embedding, **kwargs)
        self.frontend = logmel
        self.resnet = resnet
        self.width, self.heads, self.output_dim = width, heads, output_dim
        self.layer_counts = tuple(layers)
        self.num_samples = num_samples
        self.frontend_config = frontend_config

    @property
    def sample_rate(self):
        return self.frontend.sample_rate

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "width": self.width,
                "layers": self.layer_counts, "heads": self.heads, "output_dim": self.output_dim,
                "num_samples": self.num_samples, "frontend": self.frontend_config}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def from_preset(cls, name_or_dir, weights_dir=None, load_weights=True):
        """Load a preset folder or a named preset (e.g. ``"deezer_contrastive"``)."""
        from keras_music_ssl.presets import load_preset

        return load_preset(name_or_dir, weights_dir, load_weights, kind=cls)

    def save_to_preset(self, preset_dir, **metadata):
        """Write config + weights + metadata (method, source, licence, ...) to ``preset_dir``."""
        from keras_music_ssl.presets import save_to_preset

        metadata = {"sample_rate": self.sample_rate,
                    "input": f"float32 waveform (batch, {self.num_samples}), mono, "
                             f"{self.sample_rate} Hz, peak-normalised",
                    "output": f"float32 embedding (batch, {self.output_dim})", **metadata}
        return save_to_preset(self, preset_dir, metadata)
