"""The functions an export serves, in TensorFlow ops (one definition for every format).

``embed`` / ``tag`` take clips as they are; ``embed_track`` / ``tag_track`` follow
``keras_music_ssl/track.py``: peak-normalise the whole track, zero-pad at the end to a
multiple of the clip length, embed each chunk, average, then (tagger) apply the head to the
mean embedding. An empty track is an error in Python; a graph cannot raise on every runtime,
so the track signatures report ``num_chunks = 0`` for it (their other outputs are those of
one silent chunk, finite) and the runners in ``runtime.py`` raise the Python error.

A musicnn ``PatchTagger`` (``Musicnn``, ``Vgg``) serves ``tag`` and ``tag_track`` only, by its own
track rule (``musicnn/track.py``, :func:`track_patches`): the samples as decoded, cut into
overlapping patches, the mean of the patches' probabilities. It has no ``head``: its track's tags
are not a function of one mean feature vector.
"""

from keras_music_ssl.export.metadata import ExportError


def track_chunks(waveform, clip_samples):
    """(samples,) -> ((max(1, chunks), clip_samples), chunks): peak-normalised, zero-padded, split.

    ``chunks = ceil(samples / clip_samples)``, 0 for an empty track (which still gets one
    silent chunk to run on, so every output stays finite).
    """
    import tensorflow as tf

    waveform = tf.reshape(tf.cast(waveform, tf.float32), [-1])
    length = tf.shape(waveform)[0]
    chunks = (length + clip_samples - 1) // clip_samples
    rows = tf.maximum(1, chunks)
    padded = tf.pad(waveform, [[0, rows * clip_samples - length]])
    peak = tf.reduce_max(tf.abs(padded))  # zero padding leaves max |x| unchanged
    padded = padded / tf.where(peak > 0, peak, tf.ones_like(peak))
    return tf.reshape(padded, [rows, clip_samples]), chunks


def track_patches(waveform, frames, hop, n_fft, pad_mode):
    """(samples,) -> ((max(1, patches), patch_samples), patches): ``musicnn.track.patches`` in TF ops
    that TFLite runs as built-ins (TILE, MIRROR_PAD / PAD, GATHER) and tf2onnx converts.

    A track shorter than ``(frames - 1) * hop`` samples is repeated until it is that long; the
    track is padded by ``n_fft // 2`` at both ends (``pad_mode``) and a window of
    ``(frames - 1) * hop + n_fft`` samples is cut every ``frames * hop`` samples,
    ``(1 + samples // hop) // frames`` of them. An empty track gives ``patches = 0`` and one
    silent patch (so every output stays finite); no normalisation.
    """
    import tensorflow as tf

    waveform = tf.reshape(tf.cast(waveform, tf.float32), [-1])
    length = tf.shape(waveform)[0]
    # An empty track becomes one silent sample, which tiles to a silent patch.
    waveform = tf.pad(waveform, [[0, 1 - tf.minimum(length, 1)]])
    shortest = (frames - 1) * hop
    size = tf.shape(waveform)[0]
    waveform = tf.tile(waveform, tf.reshape(tf.maximum(1, (shortest + size - 1) // size), [1]))
    size = tf.shape(waveform)[0]
    half = n_fft // 2
    padded = tf.pad(waveform, [[half, half]], mode="REFLECT" if pad_mode == "reflect" else "CONSTANT")
    count = (1 + size // hop) // frames  # >= 1: size >= shortest
    window, step = (frames - 1) * hop + n_fft, frames * hop
    index = tf.range(count)[:, None] * step + tf.range(window)[None, :]
    return tf.gather(padded, index), tf.where(length > 0, count, 0)


def endpoints(model, meta):
    """name -> (function, input signature) for the model's kind."""
    import tensorflow as tf

    if meta.get("track_rule") == "patches":
        return patch_endpoints(model, meta)
    clip_samples, dim = meta["clip_samples"], meta["embedding_dim"]
    clips_spec = [tf.TensorSpec([None, clip_samples], tf.float32, name="waveform")]
    track_spec = [tf.TensorSpec([None], tf.float32, name="waveform")]
    tagger = meta["kind"] == "tagger"
    encoder = model.encoder if tagger else model

    def embed(waveform):
        return {"embedding": encoder(waveform, training=False)}

    def embed_track(waveform):
        chunks, count = track_chunks(waveform, clip_samples)
        embeddings = encoder(chunks, training=False)  # (chunks, D)
        return {"embedding": tf.reduce_mean(embeddings, axis=0), "num_chunks": count}

    if not tagger:
        return {"embed": (embed, clips_spec), "embed_track": (embed_track, track_spec)}

    def head(embedding):
        return {"probabilities": model.head(embedding, training=False)}

    def tag(waveform):
        embedding = encoder(waveform, training=False)
        return {"probabilities": model.head(embedding, training=False), "embedding": embedding}

    def tag_track(waveform):
        out = embed_track(waveform)
        mean = out["embedding"][None]  # (1, D): the head sees the mean embedding
        return {**out, "probabilities": model.head(mean, training=False)[0]}

    return {"tag": (tag, clips_spec), "tag_track": (tag_track, track_spec),
            "head": (head, [tf.TensorSpec([None, dim], tf.float32, name="embedding")])}


def patch_endpoints(model, meta):
    """``tag`` and ``tag_track`` of a musicnn ``PatchTagger`` (no ``head``: module docstring)."""
    import tensorflow as tf

    clips_spec = [tf.TensorSpec([None, meta["clip_samples"]], tf.float32, name="waveform")]
    track_spec = [tf.TensorSpec([None], tf.float32, name="waveform")]

    def tag(waveform):
        out = model(waveform, training=False)
        return {"probabilities": out["probabilities"], "embedding": out["penultimate"]}

    def tag_track(waveform):
        patches, count = track_patches(waveform, model.num_frames, model.frontend.hop_length, model.frontend.n_fft,
                                       model.pad_mode)
        out = model(patches, training=False)
        return {"probabilities": tf.reduce_mean(out["probabilities"], axis=0),
                "embedding": tf.reduce_mean(out["penultimate"], axis=0), "num_chunks": count}

    return {"tag": (tag, clips_spec), "tag_track": (tag_track, track_spec)}


def require_tensorflow_backend():
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"Export needs the TensorFlow backend (KERAS_BACKEND={keras.backend.backend()}). "
            "Use keras_music_ssl.export.export(), which exports through a TensorFlow "
            "subprocess, or `kmssl export`.")
