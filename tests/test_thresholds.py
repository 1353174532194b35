"""Decision thresholds: max-F1 per tag on validation, held by the head, reported, exported.

The reference for the threshold is a brute force over every candidate cut with scikit-learn's
``f1_score``; the decision metrics are counted by hand with numpy.
"""

import json

import keras
import numpy as np
import pytest
from sklearn.metrics import f1_score

from keras_music_ssl.export.metadata import ExportError, checked_metadata, decisions
from keras_music_ssl.probe.metrics import bootstrap_metrics, tagging_metrics
from keras_music_ssl.probe.probe import train_probe
from keras_music_ssl.probe.thresholds import NEVER, decide, decision_metrics, f1_thresholds
from keras_music_ssl.tagger import MusicTagger, TagHead, load_tag_head, save_tag_head


@pytest.mark.backend_independent
def test_the_threshold_is_the_score_of_maximum_f1():
    # positives 0.9, 0.8, 0.6; negatives 0.7, 0.3, 0.2: cutting at 0.6 gives F1 6/7, at 0.8 4/5, at 0.9 1/2
    labels = np.array([[1, 0], [1, 1], [1, 0], [0, 0], [0, 0], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.3], [0.7, 0.4], [0.3, 0.5], [0.2, 0.6]])
    thresholds = f1_thresholds(labels, scores)
    assert thresholds[0] == pytest.approx(0.6)
    # tag 2: one positive scored lowest but one: cutting at 0.2 keeps it with 4 false positives (F1 1/3)
    assert thresholds[1] == pytest.approx(0.2)
    none = f1_thresholds(np.zeros((4, 1)), np.array([[0.1], [0.9], [0.5], [1.0]]))
    assert none[0] == NEVER and not decide(np.array([[1.0]], np.float32), none).any()


@pytest.mark.backend_independent
def test_thresholds_match_a_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    labels = (rng.random((80, 6)) < [0.05, 0.2, 0.5, 0.7, 0.9, 0.3]).astype(int)
    scores = np.clip(labels * 0.3 + rng.random((80, 6)) * 0.8, 0, 1)
    thresholds = f1_thresholds(labels, scores)
    for j in range(6):
        best = max(f1_score(labels[:, j], scores[:, j] >= t, zero_division=0) for t in np.unique(scores[:, j]))
        assert f1_score(labels[:, j], scores[:, j] >= thresholds[j], zero_division=0) == pytest.approx(best)


@pytest.mark.backend_independent
def test_decision_metrics_counted_by_hand():
    labels = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], bool)
    decided = np.array([[1, 0, 0], [1, 1, 1], [1, 0, 0], [0, 0, 1]], bool)
    got = decision_metrics(labels, decided)
    tp, fp, fn = (labels & decided).sum(0), (~labels & decided).sum(0), (labels & ~decided).sum(0)
    p, r = tp / (tp + fp), tp / (tp + fn)
    assert got["precision_macro"] == pytest.approx(p.mean()) and got["recall_macro"] == pytest.approx(r.mean())
    assert got["f1_macro"] == pytest.approx((2 * p * r / (p + r)).mean())
    P, R = tp.sum() / (tp.sum() + fp.sum()), tp.sum() / (tp.sum() + fn.sum())
    assert got["f1_micro"] == pytest.approx(2 * P * R / (P + R)) and got["precision_micro"] == pytest.approx(P)


@pytest.mark.backend_independent
def test_metrics_add_decisions_only_with_thresholds():
    rng = np.random.default_rng(1)
    labels = (rng.random((40, 3)) < 0.4).astype(int)
    scores = np.clip(labels * 0.4 + rng.random((40, 3)) * 0.6, 0, 1)
    assert "f1_micro" not in tagging_metrics(labels, scores)
    thresholds = [0.5, 0.4, 0.6]
    metrics = tagging_metrics(labels, scores, thresholds=thresholds)
    assert metrics["f1_micro"] == pytest.approx(decision_metrics(labels, scores >= thresholds)["f1_micro"])
    boot = bootstrap_metrics(labels, scores, resamples=5, thresholds=thresholds)
    assert boot["f1_macro"]["point"] == pytest.approx(metrics["f1_macro"]) and len(boot["f1_macro"]["resamples"]) == 5


def test_head_holds_thresholds_through_config_and_keras_file(tmp_path):
    head = TagHead(["a", "b", "c"], hidden_units=(4,), thresholds=[0.2, 0.5, 0.9])
    head.build((None, 6))
    clone = TagHead.from_config(head.get_config())
    assert clone.thresholds == [0.2, 0.5, 0.9]
    save_tag_head(head, tmp_path / "head.keras")
    loaded = load_tag_head(tmp_path / "head.keras")
    assert loaded.thresholds == [0.2, 0.5, 0.9]
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    p = keras.ops.convert_to_numpy(loaded(x))
    np.testing.assert_allclose(p, keras.ops.convert_to_numpy(head(x)), atol=1e-6)
    np.testing.assert_array_equal(loaded.decide(p), p >= np.float32([0.2, 0.5, 0.9]))
    assert TagHead(["a", "b"]).decide(np.array([[0.9, 0.1]])) is None  # no thresholds: no decisions
    softmax = TagHead(["a", "b", "c"], activation="softmax")
    np.testing.assert_array_equal(softmax.decide(np.array([[0.2, 0.5, 0.3]])), [[False, True, False]])


@pytest.mark.backend_independent
def test_head_refuses_thresholds_it_cannot_use():
    with pytest.raises(ValueError, match="softmax head decides by arg-max"):
        TagHead(["a", "b"], activation="softmax", thresholds=[0.5, 0.5])
    with pytest.raises(ValueError, match="2 finite numbers"):
        TagHead(["a", "b"], thresholds=[0.5])
    with pytest.raises(ValueError, match="finite"):
        TagHead(["a", "b"], thresholds=[0.5, float("nan")])


def test_probe_sets_the_validation_f1_thresholds():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((3, 8)) * 2

    def split(n):
        labels = (rng.random((n, 3)) < [0.2, 0.5, 0.7]).astype(np.float32)
        return (labels @ centres + rng.standard_normal((n, 8))).astype(np.float32), labels

    (x_train, y_train), (x_valid, y_valid) = split(120), split(60)
    trained = train_probe(x_train, y_train, x_valid, y_valid, ["a", "b", "c"], epochs=5, patience=5)
    np.testing.assert_allclose(trained.head.thresholds, f1_thresholds(y_valid, trained.predict(x_valid)), atol=1e-6)
    single = train_probe(x_train, np.eye(3, dtype=np.float32)[y_train.argmax(1)], x_valid,
                         np.eye(3, dtype=np.float32)[y_valid.argmax(1)], ["a", "b", "c"], epochs=2, single_label=True)
    assert single.head.thresholds is None and single.head.activation == "softmax"


@pytest.mark.backend_independent
def test_export_metadata_carries_thresholds_and_refuses_bad_ones():
    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.export.metadata import model_metadata

    tagger = MusicTagger(MusicEncoder(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=8),
                         TagHead(["a", "b"], thresholds=[0.3, 0.7]))
    meta = model_metadata(tagger)
    assert checked_metadata(json.dumps(meta), "m")["thresholds"] == [0.3, 0.7]
    np.testing.assert_array_equal(decisions(meta, [[0.3, 0.69], [0.29, 0.71]]), [[True, False], [False, True]])
    assert "thresholds" not in model_metadata(MusicTagger(tagger.encoder, TagHead(["a", "b"])))
    for bad in ([0.3], [0.3, "x"], [0.3, True], 0.5):
        with pytest.raises(ExportError, match="thresholds"):
            checked_metadata(json.dumps({**meta, "thresholds": bad}), "m")
