"""musicnn and its VGG baseline (Pons & Serra, 2019) as Keras 3 models: waveform patch -> tags.

Both take one 3 s patch of raw 16 kHz mono audio (48,128 samples: 187 frames, ``track.py``) and
return ``{"probabilities": (batch, tags), "penultimate": (batch, features)}``; :meth:`track` tags
a whole track as musicnn's ``tagger.top_tags`` does: the mean of the patches' probabilities (the
"taggram"). Layers follow musicnn's ``models.py`` (TF1 ``tf.compat.v1.layers``): the batch norms
are TF1's (epsilon 1e-3), convolutions and dense layers have biases, "same" padding of even
kernels is TensorFlow's (one more row after than before), written out so every backend pads alike.

**musicnn** (``build_musicnn``; 50 tags: 792,079 parameters, 787,159 trainable):

- input batch norm on the (time=187, mel=96, 1) log-mel;
- front end, musically motivated filters: two *timbral* convolutions, 204 filters of 7 x 38 and
  7 x 67 (time x mel: 0.4 and 0.7 of the 96 bands), time-padded to keep 187 frames, and three
  *temporal* ones, 51 filters of 128 x 1, 64 x 1 and 32 x 1 ("same"); each ReLU -> batch norm ->
  max over the mel axis; concatenated: (time, 561);
- mid end: three 1-D convolutions over time (64 filters of width 7, ReLU, batch norm), the second
  and third with residual connections; the front-end features and the three outputs are
  concatenated (dense connections): (time, 753);
- back end: max and mean over time, interleaved per feature (TF1's ``concat`` on a trailing axis,
  then ``flatten``: 1,506 values) -> batch norm -> dropout 0.5 -> dense 200 ReLU -> batch norm
  (``penultimate``) -> dropout 0.5 -> dense (tags) -> sigmoid.

**VGG** (``vgg``; 50 tags: 607,030 parameters, 605,748 trainable): input batch norm, then five blocks of a 3 x 3
convolution (128 filters, "same", ReLU) -> batch norm -> max pooling (4 x 1 then 2 x 2 three times,
strides 2; then 4 x 4, stride 4) with dropout 0.25 between blocks; the (2, 1, 128) output is
flattened (``penultimate``: the extractor's ``pool5``) -> dropout 0.5 -> dense (tags) -> sigmoid.
"""

import keras
import numpy as np
from keras import layers, ops

from keras_music_ssl.musicnn import track
from keras_music_ssl.musicnn.frontend import MusicnnLogMel

# tf.compat.v1.layers.batch_normalization's defaults.
TF1_BATCHNORM = dict(epsilon=1e-3, momentum=0.99)


def _batch_norm(name):
    return layers.BatchNormalization(**TF1_BATCHNORM, name=name)


def _time_pad(before, after):
    return layers.ZeroPadding2D(((before, after), (0, 0)))


def _max_over_mel(x):  # (batch, time, mel, filters) -> (batch, time, filters)
    return ops.max(x, axis=2)


class PatchTagger(keras.Model):
    """What musicnn and VGG share: the patch input, the tags, and tagging a whole track."""

    @staticmethod
    def _inputs(tags, num_frames, pad_mode, frontend):
        """``(tags, frontend layer, waveform input)``, checked (called before ``Model.__init__``)."""
        tags = [str(tag) for tag in tags]
        if not tags or len(set(tags)) != len(tags):
            raise ValueError("tags must be a non-empty list of unique names")
        if pad_mode not in ("reflect", "constant"):
            raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
        layer = MusicnnLogMel(**{**dict(frontend or {}), "center": False}, name="frontend")
        samples = track.patch_samples(int(num_frames), layer.hop_length, layer.n_fft)
        return tags, layer, keras.Input((samples,), name="waveform")

    def _remember(self, tags, num_frames, pad_mode, frontend, penultimate):
        self.tags = tags
        self.feature_dim = int(penultimate.shape[-1])  # of the penultimate features
        self.num_frames = int(num_frames)
        self.pad_mode = pad_mode
        self.frontend_config = dict(frontend or {})

    @property
    def frontend(self):
        return self.get_layer("frontend")

    @property
    def sample_rate(self):
        return self.frontend.sample_rate

    @property
    def hop_samples(self):
        """Samples between the starts of consecutive patches of a track (187 frames: 47,872)."""
        return self.num_frames * self.frontend.hop_length

    @property
    def num_samples(self):
        return int(self.input_shape[-1])

    def patches(self, waveform):
        """(samples,) float32 at ``sample_rate`` -> (patches, num_samples): ``track.patches``."""
        return track.patches(waveform, self.num_frames, self.frontend.hop_length, self.frontend.n_fft, self.pad_mode)

    def track(self, waveform, batch_size=16):
        """Tag a whole track (mono, ``sample_rate``, not normalised: musicnn uses the samples as
        decoded) -> ``{"probabilities": (tags,) mean of the taggram, "taggram": (patches, tags),
        "penultimate": (patches, features), "num_chunks": patches}``, float32 numpy."""
        from keras_music_ssl.inference import compiled_function, padded_size

        clips = self.patches(waveform)
        fn = compiled_function(self)
        outputs = {"probabilities": [], "penultimate": []}
        for start in range(0, len(clips), batch_size):
            batch = clips[start:start + batch_size]
            rows, size = len(batch), padded_size(len(batch), batch_size)
            if size > rows:  # a handful of batch shapes, so the compiled function is not retraced
                batch = np.concatenate([batch, np.zeros((size - rows, batch.shape[1]), np.float32)])
            out = fn(batch)
            for key in outputs:
                outputs[key].append(np.asarray(keras.ops.convert_to_numpy(out[key]), np.float32)[:rows])
        taggram = np.concatenate(outputs["probabilities"])
        return {"probabilities": taggram.mean(axis=0), "taggram": taggram,
                "penultimate": np.concatenate(outputs["penultimate"]), "num_chunks": len(clips)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def from_preset(cls, name_or_dir, weights_dir=None, load_weights=True):
        """Load a preset folder or a named preset (``"musicnn_mtt"``, ``"vgg_msd"``, ...)."""
        from keras_music_ssl.presets import load_preset

        return load_preset(name_or_dir, weights_dir, load_weights, kind=cls)

    def save_to_preset(self, preset_dir, **metadata):
        """Write config + weights + metadata (source, licence, dataset, ...) and a card to ``preset_dir``."""
        from keras_music_ssl.presets import save_to_preset

        metadata = {"sample_rate": self.sample_rate,
                    "input": f"float32 waveform (batch, {self.num_samples}), mono, {self.sample_rate} Hz, "
                             "as decoded (not normalised)",
                    "output": f"probabilities (batch, {len(self.tags)}), penultimate features "
                              f"(batch, {self.feature_dim})", **metadata}
        return save_to_preset(self, preset_dir, metadata)


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class Musicnn(PatchTagger):
    """musicnn: waveform patch (batch, 48128) -> ``{"probabilities", "penultimate"}`` (module docstring).

    ``num_frames``: frames per patch (187: 3 s, as trained; musicnn takes other lengths too).
    ``pad_mode``: how :meth:`track` pads a track before cutting it (``"reflect"``: librosa < 0.10,
    musicnn's; ``"constant"``: librosa >= 0.10). ``frontend``: ``MusicnnLogMel`` arguments.
    """

    def __init__(self, tags, timbral_filters=204, temporal_filters=51, midend_filters=64, backend_units=200,
                 num_frames=track.PATCH_FRAMES, pad_mode="reflect", frontend=None, **kwargs):
        tags, frontend_layer, waveform = self._inputs(tags, num_frames, pad_mode, frontend)
        logmel = frontend_layer(waveform)  # (batch, time, mel)
        n_mels = frontend_layer.n_mels
        x = _batch_norm("input_bn")(ops.expand_dims(logmel, -1))  # (batch, time, mel, 1)
        front = []
        for height in (int(0.4 * n_mels), int(0.7 * n_mels)):  # 38 and 67 of 96 bands
            name = f"timbral_7x{height}"
            conv = layers.Conv2D(timbral_filters, (7, height), activation="relu", name=name)
            front.append(_max_over_mel(_batch_norm(f"{name}_bn")(conv(_time_pad(3, 3)(x)))))
        for width in (128, 64, 32):
            name = f"temporal_{width}x1"
            conv = layers.Conv2D(temporal_filters, (width, 1), activation="relu", name=name)
            front.append(_max_over_mel(_batch_norm(f"{name}_bn")(conv(_time_pad((width - 1) // 2, width // 2)(x)))))
        features = [ops.concatenate(front, axis=-1)]  # (batch, time, 561)
        for i in (1, 2, 3):
            conv = layers.Conv1D(midend_filters, 7, activation="relu", name=f"midend_conv{i}")
            out = _batch_norm(f"midend_bn{i}")(conv(layers.ZeroPadding1D(3)(features[-1])))
            features.append(out if i == 1 else out + features[-1])  # residual from the second on
        midend = ops.concatenate(features, axis=-1)  # (batch, time, 753)
        pooled = ops.stack([ops.max(midend, axis=1), ops.mean(midend, axis=1)], axis=-1)
        pooled = ops.reshape(pooled, (-1, 2 * midend.shape[-1]))  # max_0, mean_0, max_1, ...
        x = layers.Dropout(0.5)(_batch_norm("backend_bn")(pooled))
        penultimate = _batch_norm("penultimate_bn")(layers.Dense(backend_units, activation="relu",
                                                                 name="penultimate_dense")(x))
        logits = layers.Dense(len(tags), name="logits")(layers.Dropout(0.5)(penultimate))
        outputs = {"probabilities": ops.sigmoid(logits), "penultimate": penultimate}
        super().__init__(waveform, outputs, **kwargs)
        self._remember(tags, num_frames, pad_mode, frontend, penultimate)
        self.timbral_filters, self.temporal_filters = int(timbral_filters), int(temporal_filters)
        self.midend_filters, self.backend_units = int(midend_filters), int(backend_units)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "tags": list(self.tags),
                "timbral_filters": self.timbral_filters, "temporal_filters": self.temporal_filters,
                "midend_filters": self.midend_filters, "backend_units": self.backend_units,
                "num_frames": self.num_frames, "pad_mode": self.pad_mode, "frontend": self.frontend_config}


@keras.saving.register_keras_serializable(package="keras_music_ssl")
class Vgg(PatchTagger):
    """musicnn's VGG baseline: waveform patch (batch, 48128) -> ``{"probabilities", "penultimate"}``.

    ``num_frames``, ``pad_mode``, ``frontend``: as :class:`Musicnn`. The flattened ``pool5`` size
    depends on ``num_frames``: the released weights take 187 (its original refuses any other).
    """

    POOLS = (((4, 1), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((4, 4), (4, 4)))

    def __init__(self, tags, filters=128, num_frames=track.PATCH_FRAMES, pad_mode="reflect", frontend=None,
                 **kwargs):
        tags, frontend_layer, waveform = self._inputs(tags, num_frames, pad_mode, frontend)
        x = _batch_norm("input_bn")(ops.expand_dims(frontend_layer(waveform), -1))  # (batch, time, mel, 1)
        for i, (pool, strides) in enumerate(self.POOLS, start=1):
            if i > 1:
                x = layers.Dropout(0.25)(x)
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
            x = layers.MaxPooling2D(pool, strides)(_batch_norm(f"conv{i}_bn")(x))
        penultimate = layers.Flatten()(x)  # (batch, 2 * 1 * 128) for 187 frames
        logits = layers.Dense(len(tags), name="logits")(layers.Dropout(0.5)(penultimate))
        super().__init__(waveform, {"probabilities": ops.sigmoid(logits), "penultimate": penultimate}, **kwargs)
        self._remember(tags, num_frames, pad_mode, frontend, penultimate)
        self.filters = int(filters)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "tags": list(self.tags), "filters": self.filters,
                "num_frames": self.num_frames, "pad_mode": self.pad_mode, "frontend": self.frontend_config}
