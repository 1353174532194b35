"""TensorFlow SavedModel export (TF Serving, ``tf.saved_model.load``): the signatures of
``signatures.py`` plus ``metadata`` (no input -> ``kind``, ``tags``, ``sample_rate``,
``clip_samples``, ``track_rule``, ``normalize``, and for musicnn's ``"patches"`` rule ``hop_samples``
and ``pad_mode``, and a tagger's decision ``thresholds`` when its head has them: ``metadata.model_metadata``), and ``assets.extra/`` with ``tags.txt`` and ``keras_music_ssl.json``."""

import pathlib

from keras_music_ssl.export.metadata import model_metadata, write_metadata_files
from keras_music_ssl.export.signatures import endpoints, require_tensorflow_backend


def write_saved_model(model, path, meta, with_metadata=True):
    import keras
    import tensorflow as tf

    require_tensorflow_backend()
    archive = keras.export.ExportArchive()
    archive.track(model)
    functions = endpoints(model, meta)
    for name, (fn, spec) in functions.items():  # the first one is also serving_default
        archive.add_endpoint(name, fn, input_signature=spec)
    if with_metadata:
        def metadata():
            return {"kind": tf.constant(meta["kind"]),
                    "tags": tf.constant(meta["tags"], dtype=tf.string, shape=[len(meta["tags"])]),
                    "sample_rate": tf.constant(meta["sample_rate"], tf.int32),
                    "clip_samples": tf.constant(meta["clip_samples"], tf.int32),
                    "track_rule": tf.constant(meta["track_rule"]), "normalize": tf.constant(meta["normalize"]),
                    **({"hop_samples": tf.constant(meta["hop_samples"], tf.int32),
                        "pad_mode": tf.constant(meta["pad_mode"])} if meta["track_rule"] == "patches" else {}),
                    **({"thresholds": tf.constant(meta["thresholds"], tf.float32, shape=[len(meta["tags"])])}
                       if meta.get("thresholds") else {})}

        archive.add_endpoint("metadata", metadata, input_signature=[])
    archive.write_out(str(path), verbose=False)
    return list(functions)


def export_saved_model(model, path):
    """Write a SavedModel of an encoder or tagger (TensorFlow backend). Returns ``path``.

    Besides the ``metadata`` signature, ``assets.extra/`` holds ``tags.txt`` and
    ``keras_music_ssl.json`` for clients that do not run the model to read its tags.
    """
    meta = model_metadata(model)
    write_saved_model(model, path, meta)
    write_metadata_files(pathlib.Path(path) / "assets.extra", meta)
    return pathlib.Path(path)
