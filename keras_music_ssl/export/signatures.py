"""The functions an export serves, in TensorFlow ops (one definition for every format).

``embed`` / ``tag`` take clips as they are; ``embed_track`` / ``tag_track`` follow
``keras_music_ssl/track.py``: peak-normalise the whole track, zero-pad at the end to a
multiple of the clip length, embed each chunk, average, then (tagger) apply the head to the
mean embedding. An empty track is an error in Python; a graph cannot raise on every runtime,
so the track signatures report ``num_chunks = 0`` for it (their other outputs are those of
one silent chunk, finite) and the runners in ``runtime.py`` raise the Python error.
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


def endpoints(model, meta):
    """name -> (function, input signature) for the model's kind."""
    import tensorflow as tf

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


def require_tensorflow_backend():
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"Export needs the TensorFlow backend (KERAS_BACKEND={keras.backend.backend()}). "
            "Use keras_music_ssl.export.export(), which exports through a TensorFlow "
            "subprocess, or `kmssl export`.")
