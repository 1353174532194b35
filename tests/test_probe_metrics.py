"""Tagging metrics against a hand computation, the bootstrap, and limited-data subsets."""

import numpy as np
import pytest

from keras_music_ssl.probe.fractions import fraction_key, training_subset
from keras_music_ssl.probe.metrics import bootstrap_metrics, tagging_metrics

pytestmark = pytest.mark.backend_independent

# 4 tracks x 3 tags; tag "c" is positive everywhere, so it has no ROC-AUC and is excluded.
LABELS = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1]])
SCORES = np.array([[0.9, 0.2, 0.5], [0.8, 0.6, 0.5], [0.3, 0.4, 0.5], [0.1, 0.7, 0.5]])


def test_metrics_equal_a_hand_computation():
    got = tagging_metrics(LABELS, SCORES, ["a", "b", "c"])
    # a: positives {.9, .3} vs negatives {.8, .1}: 3 of 4 pairs ordered; AP = (1/1 + 2/3) / 2
    # b: every positive above the one negative: ROC 1, AP 1
    assert got["roc_auc_macro"] == pytest.approx((0.75 + 1.0) / 2)
    assert got["pr_auc_macro"] == pytest.approx(((1 + 2 / 3) / 2 + 1.0) / 2)
    # micro pools a and b: 5 positives, 3 negatives, 11 of 15 pairs ordered;
    # ranked .9P .8N .7P .6P .4P .3P .2N .1N -> precisions 1, 2/3, 3/4, 4/5, 5/6 at the positives
    assert got["roc_auc_micro"] == pytest.approx(11 / 15)
    assert got["pr_auc_micro"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 5 + 5 / 6) / 5)
    assert got["tags_scored"] == 2 and got["tags_excluded"] == ["c"]


def test_metrics_refuse_mismatched_or_non_finite_scores():
    with pytest.raises(ValueError, match="must be equal"):
        tagging_metrics(LABELS, SCORES[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        tagging_metrics(LABELS, np.where(SCORES > 0.85, np.nan, SCORES))


def _random_case(seed=0, tracks=60, tags=6):
    rng = np.random.default_rng(seed)
    labels = (rng.random((tracks, tags)) < 0.3).astype(int)
    scores = 0.6 * labels + rng.random((tracks, tags))
    return labels, scores


def test_bootstrap_is_reproducible_with_a_seed_and_its_interval_holds_the_point():
    labels, scores = _random_case()
    a = bootstrap_metrics(labels, scores, resamples=50, seed=3)
    b = bootstrap_metrics(labels, scores, resamples=50, seed=3)
    c = bootstrap_metrics(labels, scores, resamples=50, seed=4)
    assert a == b and a["roc_auc_macro"]["resamples"] != c["roc_auc_macro"]["resamples"]
    for metric in ("roc_auc_macro", "pr_auc_macro", "roc_auc_micro", "pr_auc_micro"):
        m = a[metric]
        assert len(m["resamples"]) == 50
        assert m["point"] == pytest.approx(tagging_metrics(labels, scores)[metric])
        assert m["ci95"][0] <= m["point"] <= m["ci95"][1]
        assert m["mean"] == pytest.approx(np.mean(m["resamples"]))
        assert m["std"] == pytest.approx(np.std(m["resamples"], ddof=1)) and m["std"] > 0


def test_bootstrap_resamples_tracks_not_tags():
    labels, scores = _random_case(tracks=40)
    got = bootstrap_metrics(labels, scores, resamples=5, seed=0)
    rng = np.random.default_rng(0)
    first = rng.integers(0, 40, 40)
    assert got["roc_auc_macro"]["resamples"][0] == pytest.approx(
        tagging_metrics(labels[first], scores[first])["roc_auc_macro"])


@pytest.mark.parametrize("fraction,size", [(0.01, 1), (0.05, 5), (0.1, 10), (0.2, 20), (1.0, 100)])
def test_training_subsets_are_reproducible_sized_and_within_the_training_tracks(fraction, size):
    draws = [training_subset(100, fraction, draw, seed=0) for draw in range(4)]
    assert all(len(d) == size and len(set(d.tolist())) == size for d in draws)
    assert all(0 <= d.min() and d.max() < 100 for d in draws)
    np.testing.assert_array_equal(draws[1], training_subset(100, fraction, 1, seed=0))
    if size < 100:
        assert len({tuple(d.tolist()) for d in draws}) > 1  # the draws differ
        assert training_subset(100, fraction, 1, seed=1).tolist() != draws[1].tolist()


def test_fraction_keys_and_bad_fractions():
    assert [fraction_key(f) for f in (0.01, 0.05, 0.1, 0.2, 1)] == ["0.01", "0.05", "0.1", "0.2", "1.0"]
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        training_subset(10, 1.5, 0)


def test_no_scorable_tag_is_an_error_and_unscorable_resamples_are_dropped():
    from keras_music_ssl.errors import KmsslError

    every = np.ones((4, 2), int)  # each tag on every track: no negative, no ROC-AUC
    with pytest.raises(KmsslError, match="test split \\(4 tracks\\) has no scorable tag"):
        bootstrap_metrics(every, np.full((4, 2), 0.5), ["a", "b"], resamples=5)
    # one positive in 3 tracks: some resamples miss it (dropped), the point estimate is finite
    labels, scores = np.array([[1], [0], [0]]), np.array([[0.9], [0.2], [0.1]])
    got = bootstrap_metrics(labels, scores, ["a"], resamples=40, seed=0)
    assert got["roc_auc_macro"]["point"] == 1.0
    assert 0 < len(got["roc_auc_macro"]["resamples"]) < 40
    assert all(np.isfinite(got[m]["mean"]) and np.isfinite(got[m]["ci95"]).all() for m in
               ("roc_auc_macro", "pr_auc_macro", "roc_auc_micro", "pr_auc_micro"))
