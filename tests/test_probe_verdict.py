"""The verdict of a pretrained encoder against its floors: a paired bootstrap over the same test
resamples (``probe/verdict.py``), checked against numpy on hand-made resamples and on the probe's
own bootstrap; and the run folder's initial encoder that ``kmssl probe`` adds as a floor."""

import numpy as np
import pytest

from keras_music_ssl.probe.metrics import bootstrap_metrics
from keras_music_ssl.probe.verdict import difference, verdict

pytestmark = pytest.mark.backend_independent


def _test(point, resamples):
    resamples = [float(v) for v in resamples]
    return {"roc_auc_macro": {"point": point, "resamples": resamples,
                              "ci95": [float(v) for v in np.percentile(resamples, [2.5, 97.5])]}}


def test_paired_differences_decide_what_is_beyond_the_noise():
    rng = np.random.default_rng(0)
    shared = rng.normal(0.85, 0.02, 200)  # the test split's noise, common to both models
    ours, floor = _test(0.86, shared + 0.01 + rng.normal(0, 0.002, 200)), _test(0.85, shared)
    d = difference(ours, floor)
    paired = np.asarray(ours["roc_auc_macro"]["resamples"]) - np.asarray(floor["roc_auc_macro"]["resamples"])
    np.testing.assert_allclose(d["ci95"], np.percentile(paired, [2.5, 97.5]))
    # the two models' own intervals overlap widely, yet the paired difference is clear
    assert ours["roc_auc_macro"]["ci95"][0] < floor["roc_auc_macro"]["ci95"][1]
    assert d["beyond"] and d["paired"] and d["diff"] == pytest.approx(0.01)
    noisy = _test(0.851, shared + rng.normal(0, 0.01, 200))
    assert not difference(noisy, floor)["beyond"]
    assert difference(floor, ours)["beyond"] and difference(floor, ours)["diff"] < 0
    text = verdict({"m": ours, "f": floor, "g": noisy}, "m", ["f", "g"])
    assert text.startswith("m beats f by 0.010 (beyond the noise, paired 95 % interval [+0.")
    assert "; beats g by 0.009 (" in text and text.endswith(").")
    assert verdict({"f": floor, "m": ours}, "f", ["m"]).startswith("f loses to m by 0.010 (beyond the noise")


def test_resamples_that_cannot_be_paired_compare_the_intervals():
    ours, floor = _test(0.90, np.linspace(0.88, 0.92, 50)), _test(0.80, np.linspace(0.78, 0.82, 49))
    assert difference(ours, floor) == {"diff": pytest.approx(0.10), "ci95": None, "beyond": True, "paired": False}
    close = _test(0.81, np.linspace(0.79, 0.83, 48))
    assert not difference(close, floor)["beyond"]  # the intervals overlap


def test_the_probes_bootstrap_draws_the_same_resamples_for_every_model():
    """What makes the pairing valid: one seed gives the same test resamples to every model."""
    rng = np.random.default_rng(1)
    labels = (rng.random((60, 4)) < 0.4).astype(int)
    good, bad = labels + rng.normal(0, 0.6, labels.shape), rng.random(labels.shape)
    a, b = (bootstrap_metrics(labels, s, resamples=30, seed=7) for s in (good, bad))
    index_rng = np.random.default_rng(7)
    from sklearn.metrics import roc_auc_score

    for i in range(30):
        index = index_rng.integers(0, 60, 60)
        keep = labels[index].min(axis=0) != labels[index].max(axis=0)
        expected = roc_auc_score(labels[index][:, keep], good[index][:, keep], average="macro")
        assert a["roc_auc_macro"]["resamples"][i] == pytest.approx(expected)
    assert difference({"roc_auc_macro": a["roc_auc_macro"]}, {"roc_auc_macro": b["roc_auc_macro"]})["beyond"]


def test_a_run_folders_preset_brings_its_initial_encoder(tmp_path):
    from keras_music_ssl.cli.probe import with_initial_floors

    run, other = tmp_path / "run", tmp_path / "loose"
    for folder in (run / "preset", run / "initial", other / "preset"):
        folder.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    specs, pairs = with_initial_floors([str(run / "preset"), "random", str(other / "preset")])
    assert specs == [str(run / "preset"), "random", str(other / "preset"), str(run / "initial")]
    assert pairs == [(0, 3)]
    # already asked for: not twice
    assert with_initial_floors([str(run / "initial"), str(run / "preset")]) == (
        [str(run / "initial"), str(run / "preset")], [(1, 0)])


def test_the_same_scores_tie():
    test = {"roc_auc_macro": {"point": 0.8, "ci95": [0.7, 0.9], "resamples": [0.75, 0.8, 0.85]}}
    assert verdict({"a": test, "b": test}, "a", ["b"]) == "a ties with b (the same test scores)."
