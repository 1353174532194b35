"""Export of a model trained on the current backend (TensorFlow, JAX or PyTorch).

Under JAX and PyTorch, ``export()`` goes through a ``.keras`` file and a TensorFlow
subprocess; the exported SavedModel and TFLite file must reproduce the trained model.
"""

import keras
import numpy as np
import pytest
from conftest import TINY_ENCODER

from keras_music_ssl.backbone import MusicEncoder
from keras_music_ssl.export import export, load_exported, synthetic_clips
from keras_music_ssl.tagger import MusicTagger, TagHead


@pytest.mark.slow  # a subprocess export and a fit: 35-55 s per backend
def test_model_trained_on_this_backend_exports_with_identical_outputs(tmp_path):
    keras.utils.set_random_seed(5)
    tagger = MusicTagger(MusicEncoder(**TINY_ENCODER), TagHead(["a", "b", "c", "d"], hidden_units=(8,)))
    x = synthetic_clips(4, seed=9)
    y = (np.random.default_rng(0).random((4, 4)) > 0.5).astype("float32")
    before = tagger.predict(x, verbose=0)
    tagger.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    tagger.fit(x, y, batch_size=2, epochs=1, verbose=0)  # two steps: weights and BN statistics move
    expected = tagger.predict(x, verbose=0)
    assert np.abs(expected - before).max() > 1e-3  # the export below sees the trained state

    saved = load_exported(export(tagger, tmp_path / "saved", "savedmodel"))
    np.testing.assert_allclose(saved.clips(x)["probabilities"], expected, atol=1e-4, rtol=0)
    assert saved.metadata["tags"] == ["a", "b", "c", "d"]
    lite = load_exported(export(tagger, tmp_path / "tagger.tflite", "tflite"))
    np.testing.assert_allclose(lite.clips(x)["probabilities"], expected, atol=1e-3, rtol=0)
    np.testing.assert_allclose(lite.clips(x)["embedding"], tagger.encoder.predict(x, verbose=0),
                               atol=1e-3, rtol=0)
