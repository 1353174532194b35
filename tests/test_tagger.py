"""TagHead, MusicTagger and the probe-head file: numerics against numpy, config, saving."""

import keras
import numpy as np
import pytest

from keras_music_ssl.backbone import MusicEncoder
from keras_music_ssl.tagger import MusicTagger, TagHead, load_tag_head, save_tag_head

TAGS = ["rock", "piano", "guitar", "drums", "vocal"]


def _numpy_head(head, x):
    """sigmoid(last(relu(bn(dense(x))))) with BatchNorm in inference mode (dropout is off);
    without BatchNorm, relu(dense(x) + bias); with standardisation, x -> (x - mean) * scale first."""
    if head.standardize:
        x = (x - keras.ops.convert_to_numpy(head.feature_mean)) * keras.ops.convert_to_numpy(head.feature_scale)
    for i, units in enumerate(head.hidden_units):
        dense, bn = head.hidden[i]
        x = x @ keras.ops.convert_to_numpy(dense.kernel)
        if bn is None:
            x = np.maximum(x + keras.ops.convert_to_numpy(dense.bias), 0.0)
            continue
        mean, var, gamma, beta = (keras.ops.convert_to_numpy(v) for v in
                                  (bn.moving_mean, bn.moving_variance, bn.gamma, bn.beta))
        x = np.maximum((x - mean) / np.sqrt(var + 1e-5) * gamma + beta, 0.0)
    logits = x @ keras.ops.convert_to_numpy(head.logits.kernel)
    if head.use_bias:
        logits = logits + keras.ops.convert_to_numpy(head.logits.bias)
    return 1.0 / (1.0 + np.exp(-logits))


def _randomize(layer, rng):
    """Non-trivial weights everywhere, BatchNorm statistics included (else BN is identity)."""
    for variable in layer.weights:
        value = rng.normal(size=variable.shape).astype("float32")
        if "variance" in variable.path:
            value = np.abs(value) + 0.5
        variable.assign(value)


@pytest.mark.parametrize("hidden_units,use_bias", [((), False), ((16, 8), True)])
def test_tag_head_matches_numpy_mlp(rng, hidden_units, use_bias):
    head = TagHead(TAGS, hidden_units=hidden_units, use_bias=use_bias)
    x = rng.normal(size=(6, 12)).astype("float32")
    head(x)
    _randomize(head, rng)
    got = keras.ops.convert_to_numpy(head(x, training=False))
    np.testing.assert_allclose(got, _numpy_head(head, x), rtol=1e-5, atol=1e-6)
    assert got.shape == (6, len(TAGS))


def test_marble_style_head_with_standardisation_matches_numpy(rng, tmp_path):
    head = TagHead(TAGS, hidden_units=(9,), use_bias=True, dropout=0.2, batch_norm=False, standardize=True)
    x = rng.normal(size=(6, 12)).astype("float32") * 4 + 2
    head(x)
    _randomize(head, rng)
    head.set_standardization(x.mean(axis=0), np.where(np.arange(12) == 3, 0.0, x.std(axis=0)))
    got = keras.ops.convert_to_numpy(head(x, training=False))
    np.testing.assert_allclose(got, _numpy_head(head, x), rtol=1e-5, atol=1e-6)
    assert keras.ops.convert_to_numpy(head.feature_scale)[3] == 1.0  # a constant feature is only centred
    assert not np.allclose(keras.ops.convert_to_numpy(head(x, training=True)), got)  # dropout when training
    loaded = load_tag_head(save_tag_head(head, tmp_path / "probe.keras"))
    assert (loaded.dropout, loaded.batch_norm, loaded.standardize) == (0.2, False, True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x, training=False)), got)


def test_standardisation_needs_a_standardising_head():
    head = TagHead(TAGS)
    head(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="standardize=False"):
        head.set_standardization(np.zeros(4), np.ones(4))


def test_tag_head_without_activation_returns_logits(rng):
    head = TagHead(TAGS, activation=None)
    x = rng.normal(size=(3, 8)).astype("float32")
    logits = keras.ops.convert_to_numpy(head(x))
    np.testing.assert_allclose(logits, x @ keras.ops.convert_to_numpy(head.logits.kernel), rtol=1e-5, atol=1e-6)
    assert logits.min() < 0  # sigmoid outputs could never be negative


def test_tag_head_config_round_trip_keeps_tags():
    head = TagHead(TAGS, hidden_units=(7,), use_bias=True, name="probe")
    clone = TagHead.from_config(head.get_config())
    assert clone.tags == TAGS and clone.hidden_units == (7,) and clone.use_bias and clone.name == "probe"


@pytest.mark.parametrize("tags,message", [([], "at least one"), (["a", "b", "a"], "repeated")])
def test_tag_head_rejects_bad_tag_lists(tags, message):
    with pytest.raises(ValueError, match=message):
        TagHead(tags)


def _tiny_tagger(config, hidden_units=()):
    return MusicTagger(MusicEncoder(**config), TagHead(TAGS, hidden_units=hidden_units))


def test_tagger_is_head_of_encoder_embedding(tiny_encoder_config, rng):
    tagger = _tiny_tagger(tiny_encoder_config)
    x = rng.normal(size=(2, 64000)).astype("float32") * 0.1
    probs = keras.ops.convert_to_numpy(tagger(x, training=False))
    embedding = keras.ops.convert_to_numpy(tagger.encoder(x, training=False))
    np.testing.assert_allclose(probs, _numpy_head(tagger.head, embedding), rtol=1e-4, atol=1e-6)
    assert tagger.tags == TAGS and tagger.num_samples == 64000 and tagger.sample_rate == 16000


def test_tagger_rejects_a_non_taghead_head(tiny_encoder_config):
    with pytest.raises(TypeError, match="TagHead"):
        MusicTagger(MusicEncoder(**tiny_encoder_config), keras.layers.Dense(3))


def test_tagger_keras_file_round_trip_gives_identical_outputs(tiny_encoder_config, rng, tmp_path):
    tagger = _tiny_tagger(tiny_encoder_config, hidden_units=(8,))
    x = rng.normal(size=(2, 64000)).astype("float32") * 0.1
    tagger(x)
    _randomize(tagger.head, rng)
    path = tmp_path / "tagger.keras"
    tagger.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, MusicTagger) and loaded.tags == TAGS
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x, training=False)),
                                  keras.ops.convert_to_numpy(tagger(x, training=False)))


def test_probe_head_file_round_trip(rng, tmp_path):
    head = TagHead(TAGS, hidden_units=(4,))
    x = rng.normal(size=(3, 10)).astype("float32")
    head(x)
    _randomize(head, rng)
    path = save_tag_head(head, tmp_path / "probe.keras")
    loaded = load_tag_head(path)
    assert loaded.tags == TAGS and loaded.input_dim == 10
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x, training=False)),
                                  keras.ops.convert_to_numpy(head(x, training=False)))


def test_probe_head_is_read_from_a_saved_tagger(tiny_encoder_config, tmp_path):
    tagger = _tiny_tagger(tiny_encoder_config)
    tagger.save(tmp_path / "tagger.keras")
    assert load_tag_head(tmp_path / "tagger.keras").tags == TAGS


def test_probe_head_file_without_a_tag_head_is_refused(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(tmp_path / "dense.keras")
    with pytest.raises(ValueError, match="no TagHead"):
        load_tag_head(tmp_path / "dense.keras")


def test_unbuilt_head_needs_input_dim(tmp_path):
    with pytest.raises(ValueError, match="input_dim"):
        save_tag_head(TagHead(TAGS), tmp_path / "probe.keras")
    path = save_tag_head(TagHead(TAGS), tmp_path / "probe.keras", input_dim=6)
    assert load_tag_head(path).input_dim == 6


@pytest.mark.parametrize("training", [False, True])
def test_paper_tag_head_is_the_authors_head_plus_a_sigmoid(rng, training):
    # TagHead(hidden_units, use_bias=False) is Head(hidden_units + [n_tags]) with the same weights.
    from keras_music_ssl.heads import Head

    x = rng.standard_normal((6, 12)).astype("float32")
    tag_head, head = TagHead(["a", "b", "c"], hidden_units=(8, 5)), Head((8, 5, 3))
    tag_head.build((None, 12))
    head.build((None, 12))
    for (dense, norm), head_dense, head_norm in zip(tag_head.hidden, head.dense, head.norms):
        head_dense.set_weights(dense.get_weights())
        norm.set_weights([w + rng.uniform(0.5, 1.0, w.shape).astype("float32") for w in norm.get_weights()])
        head_norm.set_weights(norm.get_weights())
    head.dense[-1].set_weights(tag_head.logits.get_weights())
    expected = 1.0 / (1.0 + np.exp(-keras.ops.convert_to_numpy(head(x, training=training))))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tag_head(x, training=training)), expected,
                               rtol=1e-5, atol=1e-6)
