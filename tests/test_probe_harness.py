"""The probe harness end to end (extraction -> probe -> metrics -> report) on tiny fixtures in
each official format, the embedding cache, resuming, the protocol's segments, and the probes."""

import json

import keras
import numpy as np
import pytest
import soundfile as sf

from conftest import TINY_ENCODER
from probe_fixtures import SR, split_sizes, write_generic, write_jamendo, write_mtat
from keras_music_ssl import MusicEncoder
from keras_music_ssl.data.audio import load_audio
from keras_music_ssl.probe import harness
from keras_music_ssl.probe.baselines import LogMelStats
from keras_music_ssl.probe.datasets import load_probe_dataset
from keras_music_ssl.probe.extract import extract_split
from keras_music_ssl.probe.metrics import tagging_metrics
from keras_music_ssl.probe.models import ProbedModel, probed_model, weights_fingerprint
from keras_music_ssl.probe.probe import downstream_loss, train_probe
from keras_music_ssl.tagger import MusicTagger, load_tag_head

L = 64000
FAST = dict(epochs=4, bootstrap=10, progress=False)
METRIC_KEYS = {"point", "mean", "std", "ci95", "resamples"}


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(5)
    return MusicEncoder(**TINY_ENCODER)


@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    return write_generic(tmp_path_factory.mktemp("generic"), seconds=9.0, sizes=split_sizes(8, 4, 5))[0]


class Counting:
    """An embedder that counts the clips it embeds (and can die after a number of calls)."""

    def __init__(self, model, die_after=None):
        self.model, self.clips, self.calls, self.die_after = model, 0, 0, die_after
        self.num_samples, self.output_dim = model.num_samples, model.output_dim

    def predict_on_batch(self, x):
        if self.die_after is not None and self.calls >= self.die_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.clips += int(np.any(x, axis=1).sum())  # not the zero rows that pad a batch
        return self.model.predict_on_batch(x)


@pytest.mark.parametrize("writer", [write_generic, write_mtat, write_jamendo], ids=["generic", "mtat", "jamendo"])
def test_probe_end_to_end_in_each_format_writes_the_report(writer, encoder, tmp_path):
    spec, _ = writer(tmp_path / "data", seconds=5.0, sizes=split_sizes(6, 3, 4))
    out = tmp_path / "report"
    results = harness.run_probe(spec, [("tiny", encoder)], out, cache_dir=tmp_path / "cache", **FAST)

    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert {"dataset", "protocol", "tags", "models"} <= set(saved) and saved["protocol"] == "paper"
    assert list(saved["models"]) == ["tiny", "logmel-stats"]  # the handcrafted floor is always there
    tags = saved["tags"]
    for name, model in saved["models"].items():
        test = model["test"]
        for metric in ("roc_auc_macro", "pr_auc_macro", "roc_auc_micro", "pr_auc_micro"):
            assert METRIC_KEYS <= set(test[metric]) and len(test[metric]["ci95"]) == 2
            assert test[metric]["ci95"][0] <= test[metric]["point"] <= test[metric]["ci95"][1]
        # anyone can recompute the metrics from the predictions file
        with np.load(out / "predictions" / f"{name}.npz") as p:
            assert p["tags"].tolist() == tags and len(p["paths"]) == 4
            # the decisions too, with the thresholds the saved head holds (max F1 on the valid split)
            thresholds = load_tag_head(out / "heads" / f"{name}.keras").thresholds
            again = tagging_metrics(p["labels"], p["probabilities"], tags, thresholds=thresholds)
        assert again["roc_auc_macro"] == pytest.approx(test["roc_auc_macro"]["point"], abs=1e-12)
        assert again["f1_micro"] == pytest.approx(test["f1_micro"]["point"], abs=1e-12)
        assert again["tags_excluded"] == test["tags_excluded"] and again["tags_scored"] == test["tags_scored"]
        assert test["tags_scored"] + len(test["tags_excluded"]) == len(tags)
        assert model["tracks"] == {"train": 6, "valid": 3, "test": 4} and model["train_segments"] == 6
    assert "| tiny |" in (out / "results.md").read_text() and "| logmel-stats |" in (out / "results.md").read_text()
    assert (out / "results.csv").read_text().count("\ntiny,") == 4 + 6  # ROC/PR-AUC, then the decisions
    assert "Decisions" in (out / "results.md").read_text()
    assert (out / "bootstrap.png").stat().st_size > 1000 and not (out / "fractions.png").exists()


def test_fractions_are_reported_and_never_train_on_validation_or_test_tracks(generic, encoder, tmp_path,
                                                                            monkeypatch):
    seen = []
    original = harness.train_probe

    def recording(x_train, *args, **kwargs):
        seen.append(np.asarray(x_train))
        return original(x_train, *args, **kwargs)

    monkeypatch.setattr(harness, "train_probe", recording)
    out = tmp_path / "report"
    results = harness.run_probe(generic, [("tiny", encoder)], out, fractions=[0.25, 1.0], draws=2,
                                baseline=False, cache_dir=tmp_path / "cache", **FAST)
    data = load_probe_dataset(generic)
    train, valid, test = (extract_split(probed_model(encoder, "tiny"), data.dataset, s, tmp_path / "cache",
                                        progress=False) for s in ("train", "valid", "test"))
    assert len(seen) == 1 + 2 * 2
    rows = {row.tobytes(): track for row, track in zip(train.features, train.track)}
    for x in seen[1:3]:  # 25 % of 8 tracks = 2 tracks, 2 segments each
        assert len(x) == 4 and len({rows[r.tobytes()] for r in x}) == 2
    others = {row.tobytes() for row in np.concatenate([valid.features, test.features])}
    assert all(r.tobytes() in rows and r.tobytes() not in others for x in seen for r in x)
    fractions = results["models"]["tiny"]["fractions"]
    assert list(fractions) == ["0.25", "1.0"] and fractions["0.25"]["tracks"] == 2
    assert len(fractions["0.25"]["roc_auc_macro"]["draws"]) == 2
    assert {"mean", "std"} <= set(fractions["1.0"]["pr_auc_macro"])
    assert (out / "fractions.png").stat().st_size > 1000
    # a rerun with the same settings reuses the finished model; new settings recompute it
    seen.clear()
    harness.run_probe(generic, [("tiny", encoder)], out, fractions=[0.25, 1.0], draws=2, baseline=False,
                      cache_dir=tmp_path / "cache", **FAST)
    assert not seen
    harness.run_probe(generic, [("tiny", encoder)], out, baseline=False, cache_dir=tmp_path / "cache", **FAST)
    assert len(seen) == 1


def test_cache_is_hit_on_a_second_run_and_missed_when_the_weights_change(generic, tmp_path):
    keras.utils.set_random_seed(1)
    model = MusicEncoder(**TINY_ENCODER)
    data = load_probe_dataset(generic).dataset
    counting, before = Counting(model), weights_fingerprint(model)
    first = extract_split(ProbedModel("m", counting, before), data, "test", tmp_path, progress=False)
    assert counting.clips == 5 * 2  # 5 test tracks of 9 s: 2 whole segments each
    again = extract_split(ProbedModel("m", counting, before), data, "test", tmp_path, progress=False)
    assert counting.clips == 10  # nothing embedded again
    np.testing.assert_array_equal(first.features, again.features)
    model.weights[0].assign(model.weights[0] + 0.5)
    changed = weights_fingerprint(model)
    assert changed != before
    extract_split(ProbedModel("m", counting, changed), data, "test", tmp_path, progress=False)
    assert counting.clips == 20


def test_fingerprint_is_equal_for_equal_weights_only(encoder):
    clone = MusicEncoder.from_config(encoder.get_config())
    clone.set_weights(encoder.get_weights())
    assert weights_fingerprint(clone) == weights_fingerprint(encoder)
    clone.weights[-1].assign(clone.weights[-1] * 2.0 + 1.0)
    assert weights_fingerprint(clone) != weights_fingerprint(encoder)


def test_extraction_resumes_at_the_first_unfinished_block_after_a_kill(generic, encoder, tmp_path):
    data = load_probe_dataset(generic).dataset
    fingerprint = weights_fingerprint(encoder)
    dying = Counting(encoder, die_after=2)  # 2 tracks x 2 segments per call at batch 4
    with pytest.raises(KeyboardInterrupt):
        extract_split(ProbedModel("m", dying, fingerprint), data, "train", tmp_path, batch_size=4, block_size=2,
                      progress=False)
    resumed = Counting(encoder)
    got = extract_split(ProbedModel("m", resumed, fingerprint), data, "train", tmp_path, batch_size=4,
                        block_size=2, progress=False)
    assert resumed.clips == 2 * (8 - 4)  # one call per block of 2 tracks: 2 blocks were kept
    whole = extract_split(ProbedModel("m", Counting(encoder), fingerprint), data, "train", tmp_path / "fresh",
                          batch_size=4, block_size=2, progress=False)
    np.testing.assert_allclose(got.features, whole.features, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got.track, whole.track)


def test_features_follow_the_papers_protocol(tmp_path, encoder):
    """Training: whole segments passing the RMS rule (<= 25); evaluation: mean over whole segments."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    (folder / "audio").mkdir(parents=True)
    loud = rng.standard_normal(3 * L + 999) * 0.3
    loud[L:2 * L] *= 0.01  # a near-silent middle segment, dropped for training only
    clips = {"train_a": loud, "train_b": rng.standard_normal(2 * L) * 0.5, "valid_a": loud, "test_a": loud}
    rows = []
    for name, x in clips.items():
        sf.write(folder / "audio" / f"{name}.wav", x.astype(np.float32), SR, subtype="FLOAT")
        rows.append({"path": f"audio/{name}.wav", "split": name.split("_")[0], "tags": "x"})
    from keras_music_ssl.data.labeled_csv import write_labeled_dataset

    dataset = write_labeled_dataset(folder, rows, ["x"])
    probed = probed_model(encoder, "tiny")
    train = extract_split(probed, dataset, "train", tmp_path / "cache", progress=False)
    test = extract_split(probed, dataset, "test", tmp_path / "cache", progress=False)
    assert train.track.tolist() == [0, 0, 1, 1]
    x = load_audio(folder / "audio" / "test_a.wav")
    segments = x[:3 * L].reshape(3, L)
    direct = keras.ops.convert_to_numpy(encoder(segments, training=False))
    np.testing.assert_allclose(test.features[0], direct.mean(axis=0), atol=1e-5)
    kept = sorted(train.features[:2], key=lambda row: -np.abs(row - direct[0]).max())
    np.testing.assert_allclose(kept, direct[[2, 0]], atol=1e-5)  # segments 0 and 2, not the quiet one


def test_unusable_files_are_skipped_and_counted_with_their_reasons(tmp_path, encoder):
    spec, _ = write_generic(tmp_path / "data", seconds=5.0, sizes=split_sizes(3, 2, 3))
    data = load_probe_dataset(spec).dataset
    train_paths, test_paths = data.split("train").paths, data.split("test").paths
    sf.write(train_paths[0], np.zeros(3 * L, np.float32), SR)  # silent
    sf.write(train_paths[1], np.ones(L // 2, np.float32) * 0.3, SR)  # shorter than a segment
    with open(test_paths[0], "wb") as f:
        f.write(b"\x00 not audio " * 100)
    train = extract_split(probed_model(encoder), data, "train", tmp_path / "cache", progress=False)
    test = extract_split(probed_model(encoder), data, "test", tmp_path / "cache", progress=False)
    assert train.skipped_counts() == {"silent": 1, "too_short": 1} and len(train.paths) == 1
    assert test.skipped_counts() == {"undecodable": 1} and len(test.paths) == 2
    assert test.labels.shape == (2, 3)


def test_the_saved_probe_head_tags_like_the_report_and_builds_a_tagger(generic, encoder, tmp_path):
    out = tmp_path / "report"
    harness.run_probe(generic, [("tiny", encoder)], out, baseline=False, cache_dir=tmp_path / "cache", **FAST)
    head = load_tag_head(out / "heads" / "tiny.keras")
    with np.load(out / "predictions" / "tiny.npz") as p:
        paths, probabilities, tags = [str(s) for s in p["paths"]], p["probabilities"], p["tags"].tolist()
    assert head.tags == tags and head.standardize
    tagger = MusicTagger(encoder, head)
    x = load_audio(paths[0])
    segments = x[:(len(x) // L) * L].reshape(-1, L)
    mean = keras.ops.convert_to_numpy(tagger.encoder(segments, training=False)).mean(axis=0, keepdims=True)
    got = keras.ops.convert_to_numpy(tagger.head(mean, training=False))[0]
    np.testing.assert_allclose(got, probabilities[0], atol=1e-5)


@pytest.mark.parametrize("protocol", ["paper", "marble"])
def test_probes_learn_a_separable_problem_and_not_shuffled_labels(protocol):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 3))

    def sample(n):
        x = rng.standard_normal((n, 16)).astype("float32") * 3 + 5  # standardisation matters
        return x, ((x - 5) @ w > 0).astype("float32")

    x_train, y_train = sample(400)
    x_valid, y_valid = sample(100)
    x_test, y_test = sample(200)
    trained = train_probe(x_train, y_train, x_valid, y_valid, ["a", "b", "c"], protocol, seed=0, epochs=20)
    assert tagging_metrics(y_test, trained.predict(x_test))["roc_auc_macro"] > 0.95
    shuffled = train_probe(x_train, rng.permutation(y_train), x_valid, y_valid, ["a", "b", "c"], protocol,
                           seed=0, epochs=20)
    assert abs(tagging_metrics(y_test, shuffled.predict(x_test))["roc_auc_macro"] - 0.5) < 0.12
    assert (trained.head.hidden_units == (512,)) == (protocol == "marble")


def test_probe_refuses_non_finite_embeddings():
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="NaN or infinite"):
        train_probe(np.where(x > 0, np.nan, x), np.ones((4, 1)), x, np.ones((4, 1)), ["a"], epochs=1)


def test_downstream_loss_is_the_authors_clamped_bce():
    logits = np.array([[-20.0, -3.0, 0.5, 12.0]], np.float32)
    y = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)
    p = 1 / (1 + np.exp(-np.maximum(logits.astype(np.float64), -10.0)))
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    got = keras.ops.convert_to_numpy(downstream_loss(keras.ops.convert_to_tensor(y), keras.ops.convert_to_tensor(logits)))
    np.testing.assert_allclose(got, [expected], rtol=1e-5)


def test_logmel_stats_is_the_mean_and_std_of_the_frontend_and_survives_saving(rng, tmp_path):
    model = LogMelStats()
    x = rng.uniform(-1, 1, (3, L)).astype("float32")
    spec = keras.ops.convert_to_numpy(model.frontend(x))[..., 0].astype(np.float64)  # (3, 128, 126)
    expected = np.concatenate([spec.mean(axis=2), spec.std(axis=2)], axis=1)
    got = np.asarray(model.predict_on_batch(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert got.shape == (3, 256) and model.output_dim == 256
    model.save(tmp_path / "stats.keras")
    loaded = keras.saving.load_model(tmp_path / "stats.keras")
    assert isinstance(loaded, LogMelStats)
    np.testing.assert_array_equal(np.asarray(loaded.predict_on_batch(x)), got)


def test_named_models_resolve_to_the_floors_and_presets(encoder, tmp_path):
    from keras_music_ssl.probe.models import resolve_model

    encoder.save_to_preset(tmp_path / "my_encoder", method="test")
    preset = resolve_model(str(tmp_path / "my_encoder"))
    assert preset.name == "my_encoder" and preset.fingerprint == weights_fingerprint(encoder) and preset.is_encoder
    assert resolve_model("logmel-stats").name == "logmel-stats" and not resolve_model("logmel-stats").is_encoder
    a, b = resolve_model("random", seed=3), resolve_model("random", seed=3)
    assert a.fingerprint == b.fingerprint != resolve_model("random", seed=4).fingerprint
    assert a.model.count_params() > 2_000_000  # the paper's encoder
