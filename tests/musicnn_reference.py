"""The reference for ``test_musicnn.py``: musicnn's own code (the PyPI wheel, version 0.1.0) on clips.

    TF_USE_LEGACY_KERAS=1 python tests/musicnn_reference.py WHEEL_DIR CLIPS.npz OUT.npz

``WHEEL_DIR`` is the unpacked wheel (it holds ``musicnn/``); ``CLIPS.npz`` maps clip names to
float32 16 kHz mono waveforms. Run in its own process: the original builds a TF1 graph with
``tf.compat.v1.layers``, which TensorFlow 2.21 only offers through ``tf_keras``
(``TF_USE_LEGACY_KERAS=1``).

For each model (``MTT_musicnn``, ``MTT_vgg``, ``MSD_musicnn``, ``MSD_vgg``), padding (below) and clip, ``OUT.npz`` holds
``{model}/{padding}/{clip}/taggram`` (patches, 50) and ``.../penultimate``: musicnn's ``penultimate`` feature (the
batch-normalised 200-unit dense layer), and for VGG its ``pool5`` flattened (the input of its
output layer). The graph is the wheel's ``models.define_model`` restored from the wheel's
checkpoint with a TF1 ``Saver``, evaluated with ``is_training=False`` as ``extractor.extractor``
does. The patches are ``extractor.batch_data``'s, with two changes, both written out below:

- the clip is given as an array, not decoded from a file (``librosa.load`` of a 16 kHz float file
  returns it unchanged);
- ``log10(10000 * mel + 1)`` multiplies in float32: the original multiplies the float16 mel in
  float16, where any value above 6.55 overflows to inf (a loud clip gives inf inputs there, and
  tags far from these). The float16 rounding of the mel itself is kept.

Two paddings: the centring of the STFT is musicnn's call as it runs today (``librosa``: the installed
librosa's default, zeros since librosa 0.10; ``OUT.npz`` records it as ``librosa_pad_mode``) and as it
ran when musicnn was released and its training data computed (``reflect``: librosa < 0.10).

All patches of a clip go through the graph in one batch (the original feeds them one at a time; in
inference mode every patch is computed alone either way). This also avoids a bug of
``extractor.extractor``: from the second patch on it returns the *first* patch's ``penultimate``
(and ``cnn1``-``cnn3``) again.
"""

import argparse
import os
import sys
import warnings

import numpy as np

MODELS = ("MTT_musicnn", "MTT_vgg", "MSD_musicnn", "MSD_vgg")


def patches(audio, pad_mode=None):
    """``extractor.batch_data`` on an array: (patches, 187, 96) float32."""
    import librosa

    from musicnn import configuration as config

    n_frames = librosa.time_to_frames(3, sr=config.SR, n_fft=config.FFT_SIZE, hop_length=config.FFT_HOP) + 1
    padding = {} if pad_mode is None else {"pad_mode": pad_mode}  # None: the original call, unchanged
    audio_rep = librosa.feature.melspectrogram(y=audio, sr=config.SR, hop_length=config.FFT_HOP,
                                               n_fft=config.FFT_SIZE, n_mels=config.N_MELS, **padding).T
    audio_rep = audio_rep.astype(np.float16)
    audio_rep = np.log10(10000 * audio_rep.astype(np.float32) + 1)  # the original: 10000 * audio_rep (float16)
    starts = range(0, audio_rep.shape[0] - n_frames + 1, n_frames)  # batch_data's patches (no overlap)
    return np.stack([audio_rep[t:t + n_frames] for t in starts])


def run_model(model, wheel_dir, batches):
    import tensorflow as tf

    from musicnn import models

    tf.compat.v1.reset_default_graph()
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, 187, 96])
        is_training = tf.compat.v1.placeholder(tf.bool)
        if "vgg" in model:
            y, _, _, _, _, pool5 = models.define_model(x, is_training, model, 50)
            penultimate = tf.compat.v1.layers.flatten(pool5)
        else:
            y, *_, penultimate = models.define_model(x, is_training, model, 50)
        probabilities = tf.nn.sigmoid(y)
    out = {}
    with tf.compat.v1.Session() as sess:
        tf.compat.v1.train.Saver().restore(sess, os.path.join(wheel_dir, "musicnn", model) + "/")
        for name, batch in batches.items():
            taggram, features = sess.run([probabilities, penultimate], {x: batch, is_training: False})
            out[f"{model}/{name}/taggram"] = taggram
            out[f"{model}/{name}/penultimate"] = features
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel_dir")
    parser.add_argument("clips")
    parser.add_argument("out")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # tf.compat.v1.layers' deprecation notes, one per layer
    sys.path.insert(0, args.wheel_dir)
    import inspect

    import librosa
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()  # as musicnn.extractor does on import
    batches = {}
    with np.load(args.clips) as clips:
        for padding, mode in (("librosa", None), ("reflect", "reflect")):
            batches.update({f"{padding}/{name}": patches(clips[name], mode) for name in clips.files})
    out = {"librosa_pad_mode": np.array(inspect.signature(librosa.stft).parameters["pad_mode"].default)}
    for model in MODELS:
        out.update(run_model(model, args.wheel_dir, batches))
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
