"""keras_music_ssl.finetune / kmssl finetune: the two phases (the encoder frozen, then trained at its
own learning rate, BatchNorm statistics kept), the run folder (resume, refusal of other settings,
kills), the report beside the frozen probe and the floors, the exported tagger, the CLI's errors.
A tiny encoder and a tiny synthetic dataset written by the tests (``probe_fixtures``)."""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import TINY_ENCODER
from probe_fixtures import split_sizes, write_generic
from keras_music_ssl import MusicEncoder, cli
from keras_music_ssl.finetune import FineTuneAdam, FineTuner, TagLoss, best_epoch
from keras_music_ssl.tagger import MusicTagger, TagHead, load_tag_head

L = 64000
# Phase 1 capped at 5 probe epochs, phase 2 two gentle epochs of batch 4 (a tiny random encoder:
# the recipe's rates shake it), no floors (the slow test has them): ~30 s per backend.
FAST = ["--epochs-head", "5", "--epochs", "2", "--batch-size", "4", "--learning-rate", "1e-4", "--bootstrap", "10",
        "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A learnable three-tag dataset (tones and noise) of 9 s clips: 2 training segments each."""
    return write_generic(tmp_path_factory.mktemp("data"), seconds=9.0, sizes=split_sizes(16, 8, 8))[0]


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    keras.utils.set_random_seed(3)
    path = tmp_path_factory.mktemp("preset") / "tiny_preset"
    MusicEncoder(**TINY_ENCODER).save_to_preset(path, method="contrastive", encoder="tiny")
    return str(path)


@pytest.fixture(scope="module")
def run(dataset, preset, tmp_path_factory):
    """A finished run of ``kmssl finetune`` and its command line."""
    folder = tmp_path_factory.mktemp("finetune")
    out = str(folder / "run")
    argv = ["finetune", dataset, "--preset", preset, "--out", out, *FAST, "--no-floors",
            "--cache-dir", str(folder / "cache")]
    assert cli.main(argv) == 0
    return out, argv


def _encoder_weights(path):
    model = keras.saving.load_model(path, compile=False)
    return model.encoder


def test_a_run_folder_holds_both_phases_the_tagger_and_the_report(run, dataset, preset):
    out, _ = run
    for name in ("config.json", "phase1.json", "history.csv", "checkpoints/phase1.keras", "checkpoints/epoch001.keras",
                 "checkpoints/epoch002.keras", "model.keras", "head.keras", "preset/config.json", "preset/README.md",
                 "results.json", "results.md", "results.csv", "bootstrap.png", "predictions/finetuned.npz",
                 "probe/results.json", "probe/heads/frozen.keras", "summary.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert os.listdir(os.path.join(out, "logs", "train")), "no TensorBoard events"
    assert not os.path.exists(os.path.join(out, "backup"))
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["config"]["epochs"] == 2 and config["backend"] == keras.backend.backend()
    # the fine-tuned head decides like a probe's: a threshold per tag, and the report scores the decisions
    assert len(load_tag_head(os.path.join(out, "head.keras")).thresholds) == len(dataset_tags(out))
    assert "f1_micro" in json.load(open(os.path.join(out, "results.json")))["models"]["finetuned"]["test"]

    # Phase 1 leaves the encoder exactly as the preset; phase 2 trains it, BatchNorm statistics excepted.
    start = MusicEncoder.from_preset(preset)
    phase1 = _encoder_weights(os.path.join(out, "checkpoints", "phase1.keras"))
    for a, b in zip(phase1.weights, start.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    tuned = _encoder_weights(os.path.join(out, "checkpoints", "epoch001.keras"))
    changed = [not np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
               for a, b in zip(tuned.trainable_weights, start.trainable_weights, strict=True)]
    assert sum(changed) > 0.9 * len(changed)
    for a, b in zip(tuned.non_trainable_weights, start.non_trainable_weights, strict=True):  # moving mean/var
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))

    # The head learned: the phase-1 probe separates the validation tracks, and phase 2 trains well
    # below the loss of knowing nothing (ln 2 per tag: p = 0.5).
    phase1_roc = json.load(open(os.path.join(out, "phase1.json")))["val_roc_auc_macro"]
    assert phase1_roc > 0.6
    rows = [line.split(",") for line in open(os.path.join(out, "history.csv")).read().split()]
    header, rows = rows[0], rows[1:]
    losses = [float(r[header.index("loss")]) for r in rows]
    assert len(losses) == 2 and max(losses) < 0.6 < np.log(2)
    assert all(0.0 <= float(r[header.index("val_roc_auc_macro")]) <= 1.0 for r in rows)

    # The tagger: model.keras = preset/ + head.keras, the dataset's tags, probabilities in [0, 1].
    tagger = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert isinstance(tagger, MusicTagger) and tagger.tags == ["low", "high", "noise"]
    encoder, head = MusicEncoder.from_preset(os.path.join(out, "preset")), load_tag_head(os.path.join(out, "head.keras"))
    x = keras.ops.convert_to_tensor(np.random.default_rng(0).uniform(-0.5, 0.5, (2, L)).astype("float32"))
    expected = keras.ops.convert_to_numpy(head(encoder(x)))  # (eager calls: no compilation for two clips)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tagger(x)), expected, atol=1e-5)
    card = open(os.path.join(out, "preset", "README.md")).read()
    assert "fine-tuned" in card and "`kmssl finetune`" in card and "tiny_preset" in card

    # The report: the fine-tuned tagger beside the frozen probe (the floors: the slow test), paired.
    results = json.load(open(os.path.join(out, "results.json")))
    assert list(results["models"]) == ["finetuned", "frozen"]
    finetuned, frozen = results["models"]["finetuned"], results["models"]["frozen"]
    assert len(finetuned["test"]["roc_auc_macro"]["resamples"]) == len(frozen["test"]["roc_auc_macro"]["resamples"]) == 10
    assert finetuned["tracks"]["test"] == frozen["tracks"]["test"] == 8
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["verdict"].startswith("finetuned ") and " frozen " in summary["verdict"]
    assert summary["best_epoch"] in (0, 1, 2) and summary["seconds"]["phase2"] > 0
    assert "| finetuned |" in open(os.path.join(out, "results.md")).read()
    with np.load(os.path.join(out, "predictions", "finetuned.npz")) as p:
        assert p["probabilities"].shape == (8, 3)


def test_a_rerun_does_nothing_and_other_settings_are_refused(run, capsys):
    out, argv = run
    mtime = os.path.getmtime(os.path.join(out, "model.keras"))
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "finished already" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(out, "model.keras")) == mtime
    other = [a if a != "2" else "3" for a in argv]  # --epochs 3
    assert cli.main(other) == 2
    err = capsys.readouterr().err
    assert "epochs differ" in err and len(err.strip().splitlines()) == 1


def test_the_encoder_steps_at_its_own_learning_rate_and_batchnorm_keeps_its_statistics():
    """One Adam step moves each weight by about its learning rate (m / sqrt(v) = sign(g) at step 1):
    the encoder's by lr x factor, the head's by lr. Factor 0: the encoder does not move at all.
    (A small Dense + BatchNorm encoder: the rule is the optimizer's and FineTuner's, not the network's.)"""
    x = np.random.default_rng(0).standard_normal((8, 12)).astype("float32")
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]] * 2, "float32")
    for factor in (0.1, 0.0):
        keras.utils.set_random_seed(0)
        encoder = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16), keras.layers.BatchNormalization(),
                                    keras.layers.ReLU()])
        head = TagHead(["a", "b"], activation=None)
        head.build((None, 16))
        model = FineTuner(encoder, head)
        model.compile(optimizer=FineTuneAdam(1e-3, factor, epsilon=1e-12), loss=TagLoss("downstream"))
        before = [keras.ops.convert_to_numpy(w) for w in model.weights]
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        after = [keras.ops.convert_to_numpy(w) for w in model.weights]
        moved = {id(w): float(np.max(np.abs(b - a))) for w, b, a in zip(model.weights, before, after)}
        encoder_moves = [moved[id(w)] for w in encoder.trainable_weights]
        head_moves = [moved[id(w)] for w in head.trainable_weights]
        assert max(head_moves) == pytest.approx(1e-3, rel=1e-3)
        if factor:
            assert min(encoder_moves) == pytest.approx(1e-4, rel=1e-3)  # every encoder weight, BatchNorm's too
        else:
            assert max(encoder_moves) == 0.0
        assert all(moved[id(w)] == 0.0 for w in encoder.non_trainable_weights)  # moving mean and variance
        assert len(encoder.non_trainable_weights) == 2


@pytest.mark.backend_independent
def test_best_epoch_counts_phase_one_as_epoch_zero_and_keeps_the_earlier_of_ties():
    rows = [{"epoch": 0.0, "val_roc_auc_macro": 0.7}, {"epoch": 1.0, "val_roc_auc_macro": 0.9},
            {"epoch": 2.0, "val_roc_auc_macro": 0.9}, {"epoch": 3.0, "val_roc_auc_macro": float("nan")}]
    assert best_epoch(0.8, rows) == (0.9, 2)
    assert best_epoch(0.95, rows) == (0.95, 0)
    assert best_epoch(0.5, []) == (0.5, 0)


@pytest.mark.backend_independent
def test_bad_input_is_one_line_and_exit_2_before_anything_is_written(dataset, preset, tmp_path, capsys):
    out = str(tmp_path / "run")
    cases = [
        ([dataset, "--preset", str(tmp_path / "no_preset")], "no_preset"),
        ([dataset, "--preset", "no_such_preset_name"], "Unknown preset 'no_such_preset_name'"),
        ([str(tmp_path / "no_data"), "--preset", preset], "no such folder or file"),
        ([dataset, "--preset", preset, "--task", "mood"], "--task 'mood'"),
        ([dataset, "--preset", preset, "--epochs", "0"], "--epochs must be >= 1, got 0"),
        ([dataset, "--preset", preset, "--learning-rate", "0"], "--learning-rate must be > 0.0"),
        ([dataset, "--preset", preset, "--learning-rate", "nan"], "--learning-rate must be a finite number"),
        ([dataset, "--preset", preset, "--encoder-lr-factor", "-1"], "--encoder-lr-factor must be >= 0.0"),
        ([dataset, "--preset", preset, "--batch-size", "1"], "--batch-size must be >= 2"),
        ([dataset, "--preset", preset, "--protocol", "linear"], "--protocol must be one of paper, marble"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert cli.main(["finetune", *args, "--out", out, "--quiet"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("kmssl finetune: ") and message in err and len(err.splitlines()) == 1, (args, err)
        assert not os.path.exists(out), args
    open(tmp_path / "file", "w").close()
    assert cli.main(["finetune", dataset, "--preset", preset, "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.tf_only
def test_the_exported_tagger_gives_the_keras_probabilities(run, tmp_path):
    from keras_music_ssl.export import export, load_exported

    out, _ = run
    tagger = keras.saving.load_model(os.path.join(out, "model.keras"))
    export(tagger, tmp_path / "saved", "savedmodel")
    runner = load_exported(tmp_path / "saved")
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (3, L)).astype("float32")
    expected = keras.ops.convert_to_numpy(tagger(keras.ops.convert_to_tensor(x)))
    np.testing.assert_allclose(runner.clips(x)["probabilities"], expected, atol=1e-4)
    assert [t.decode() if isinstance(t, bytes) else t for t in runner.metadata["tags"]] == tagger.tags


def _finetune_process(argv, fault=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KMSSL_FAULT", None)
    if fault:
        env["KMSSL_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "keras_music_ssl", *argv], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)


# Kill points, in the order a run meets them (each counted within its process): the phase-1 probe's
# state, the phase-1 checkpoint, mid phase 2, between a backup's weights and its state, inside a
# checkpoint write, the final summary.
KILLS = ["write:frozen.json", "write:phase1.keras", "batch:3", "backup:weights", "write:epoch002.keras",
         "write:summary.json"]
# On JAX and PyTorch, the kills inside phase 2's fit (where their data order once differed on resume):
# the file-writing kills are the same code on every backend, checked on TensorFlow (the slow step's time).
KILLS_IN_FIT = ["batch:3", "backup:weights"]


@pytest.mark.slow  # 8 short fine-tuning processes on TF (~3 min), 4 on JAX and PyTorch
def test_a_run_killed_at_any_instant_resumes_and_equals_an_uninterrupted_one(dataset, preset, tmp_path):
    def argv(out):
        return ["finetune", dataset, "--preset", preset, "--out", str(out), *FAST, "--epochs", "3", "--patience", "5",
                "--cache-dir", str(tmp_path / "cache")]

    killed, straight = tmp_path / "killed", tmp_path / "straight"
    for fault in KILLS if keras.backend.backend() == "tensorflow" else KILLS_IN_FIT:  # one folder, killed again and again
        done = _finetune_process(argv(killed), fault)
        assert done.returncode == -signal.SIGKILL, f"{fault}: the run was not killed\n{done.stdout}"
        assert not (killed / "summary.json").exists(), fault
    done = _finetune_process(argv(killed))
    assert done.returncode == 0, done.stdout
    reference = _finetune_process(argv(straight))
    assert reference.returncode == 0, reference.stdout

    a = MusicEncoder.from_preset(killed / "preset").get_weights()
    b = MusicEncoder.from_preset(straight / "preset").get_weights()
    for wa, wb in zip(a, b, strict=True):
        np.testing.assert_allclose(wa, wb, atol=1e-5)
    rows = [open(folder / "history.csv").read().splitlines() for folder in (killed, straight)]
    assert [r.split(",")[0] for r in rows[0][1:]] == ["0", "1", "2"]
    column = rows[0][0].split(",").index("loss")
    np.testing.assert_allclose([float(r.split(",")[column]) for r in rows[0][1:]],
                               [float(r.split(",")[column]) for r in rows[1][1:]], rtol=1e-5)
    results = [json.load(open(folder / "results.json"))["models"] for folder in (killed, straight)]
    assert results[0]["finetuned"]["test"]["roc_auc_macro"]["point"] == pytest.approx(
        results[1]["finetuned"]["test"]["roc_auc_macro"]["point"], abs=1e-6)
    # the report: the fine-tuned tagger beside the frozen probe and every floor, each in the verdict
    assert list(results[0]) == ["finetuned", "frozen", "tiny-init", "random", "logmel-stats"]
    verdict = json.load(open(killed / "summary.json"))["verdict"]
    assert all(f" {floor} " in verdict for floor in ("frozen", "tiny-init", "random", "logmel-stats"))
    assert not (killed / "backup").exists()
    hidden = [name for _, _, files in os.walk(killed) for name in files if ".partial" in name]
    assert not hidden, hidden


def dataset_tags(out):
    return json.load(open(os.path.join(out, "results.json")))["tags"]
