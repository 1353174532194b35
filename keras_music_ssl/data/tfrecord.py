"""The prepared-track record: one ``tf.train.Example`` per track in a TFRecord shard.

Features:

- ``audio``: the waveform as little-endian int16 bytes, ``round(x * 32767)`` of the
  peak-normalised 16 kHz mono signal (half the size of float32, 96 dB of dynamic range);
- ``num_samples``, ``sample_rate``: int64;
- ``id``: a stable id, the first 16 hex digits of sha1(path);
- ``path``: the source path as listed, as the OS's bytes (UTF-8 for a UTF-8 name; read it back
  with ``os.fsdecode``);
- ``meta``: JSON (sorted keys) of the extra manifest columns, ``{}`` if none.

Writing uses TensorFlow's record writer; parsing is plain tf ops, so it runs inside tf.data
whatever the Keras backend.
"""

import glob
import hashlib
import json
import os

import numpy as np

INT16_SCALE = 32767.0
SHARD_PATTERN = "shard-*.tfrecord"


def track_id(path):
    """A stable 16-hex-digit id for a source path (of its bytes: the UTF-8 of a UTF-8 name)."""
    return hashlib.sha1(os.fsencode(path)).hexdigest()[:16]


def to_int16(waveform):
    """float32 in [-1, 1] -> int16 (clipped, rounded). Raises ``ValueError`` for NaN or infinite
    samples, which have no int16 value (the cast would make them 0 or -32768 silently)."""
    waveform = np.asarray(waveform, np.float32)
    bad = np.size(waveform) - np.count_nonzero(np.isfinite(waveform))
    if bad:
        raise ValueError(f"{bad} NaN or infinite sample(s) cannot be stored as int16")
    return np.clip(np.round(waveform * INT16_SCALE), -INT16_SCALE, INT16_SCALE).astype("<i2")


def encode_track(path, audio_int16, sample_rate, meta=None):
    """Serialize one track to ``tf.train.Example`` bytes (deterministic field order)."""
    import tensorflow as tf

    def _bytes(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    path = os.fspath(path)
    features = {
        "audio": _bytes(np.asarray(audio_int16, "<i2").tobytes()),
        "num_samples": _int(len(audio_int16)),
        "sample_rate": _int(sample_rate),
        "id": _bytes(track_id(path).encode()),
        "path": _bytes(os.fsencode(path)),  # the name's own bytes, so a reader can reopen it (os.fsdecode)
        "meta": _bytes(json.dumps(meta or {}, sort_keys=True).encode("utf-8")),
    }
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString(deterministic=True)


def parse_track(serialized):
    """tf op: Example bytes -> dict(audio float32 (samples,), id, path, meta, sample_rate)."""
    import tensorflow as tf

    spec = {
        "audio": tf.io.FixedLenFeature([], tf.string),
        "num_samples": tf.io.FixedLenFeature([], tf.int64),
        "sample_rate": tf.io.FixedLenFeature([], tf.int64),
        "id": tf.io.FixedLenFeature([], tf.string),
        "path": tf.io.FixedLenFeature([], tf.string),
        "meta": tf.io.FixedLenFeature([], tf.string, default_value="{}"),
    }
    record = tf.io.parse_single_example(serialized, spec)
    audio = tf.io.decode_raw(record.pop("audio"), tf.int16, little_endian=True)
    record["audio"] = tf.cast(audio, tf.float32) / INT16_SCALE
    return record


def list_shards(directory):
    """Sorted shard files of a prepared folder (raises if there are none)."""
    shards = sorted(glob.glob(os.path.join(os.fspath(directory), SHARD_PATTERN)))
    if not shards:
        raise FileNotFoundError(f"no {SHARD_PATTERN} in {directory}: run `kmssl prepare` first")
    return shards
