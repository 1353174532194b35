"""``kmssl probe`` with a user's work at stake: nothing scorable is an error (never a NaN in
results.json), outputs are checked and locked before any work, broken state / cache files and
broken presets are one line or a recomputation (never a traceback), and a run killed (SIGKILL)
at any point resumes to the report an uninterrupted run writes."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import TINY_ENCODER
from probe_fixtures import SR, split_sizes, synth_clip, write_generic
from keras_music_ssl import storage
from keras_music_ssl.cli import main

FAST = ["--bootstrap", "4", "--epochs", "2"]


def _one_line_error(capsys, *needles):
    """The error line: the last line of stderr (progress bars may come before it), and the only one."""
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1]
    assert line.startswith("kmssl probe: ") and err.count("kmssl probe: ") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in line, err
    return line


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_generic(tmp_path_factory.mktemp("reliability") / "data", seconds=5.0, sizes=split_sizes(6, 3, 4))[0]


def _write_dataset(root, split_tags):
    """A generic dataset with the given tags per track ({split: [tags, ...]})."""
    from keras_music_ssl.data.labeled_csv import write_labeled_dataset

    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True)
    rows = []
    for split, tracks in split_tags.items():
        for i, tags in enumerate(tracks):
            path = f"audio/{split}_{i}.flac"
            sf.write(root / path, synth_clip(tags, 5.0, rng), SR)
            rows.append({"path": path, "split": split, "tags": ";".join(tags)})
    write_labeled_dataset(root, rows, ("low", "high", "noise"))
    return str(root)


MIXED = [["low"], ["high", "noise"], ["low", "noise"], ["high"]]


@pytest.mark.backend_independent
@pytest.mark.parametrize("split", ["test", "valid"])
def test_a_split_without_a_scorable_tag_is_refused_before_any_embedding(split, tmp_path, capsys):
    # every track of `split` carries every tag: no tag has a negative, so no ROC-AUC exists
    tags = {"train": MIXED, "valid": MIXED[:3], "test": MIXED}
    tags[split] = [["low", "high", "noise"]] * 3
    spec = _write_dataset(tmp_path / "data", tags)
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert main(["probe", spec, "--model", "logmel-stats", "--out", str(out), "--cache-dir", str(cache), *FAST]) == 2
    _one_line_error(capsys, f"the {split} split (3 tracks) has no scorable tag")
    assert not cache.exists() and not (out / "results.json").exists()


def test_tracks_skipped_at_extraction_that_leave_nothing_scorable_stop_before_the_fit(tmp_path, capsys):
    spec = _write_dataset(tmp_path / "data", {"train": MIXED, "valid": MIXED[:3], "test": [["low"], ["high"]]})
    with open(tmp_path / "data" / "audio" / "test_1.flac", "wb") as f:
        f.write(b"\x00 not audio " * 100)  # the only track without "low" cannot be decoded
    out = tmp_path / "out"
    assert main(["probe", spec, "--model", "logmel-stats", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 *FAST]) == 2
    _one_line_error(capsys, "the test split (1 tracks) has no scorable tag", "undecodable")
    assert not (out / "heads").exists() and not (out / "results.json").exists()


@pytest.mark.backend_independent
def test_results_json_is_strict_and_a_nan_is_refused_not_written(tmp_path):
    from keras_music_ssl.probe.report import write_report

    metric = {"point": float("nan"), "mean": 0.5, "std": 0.0, "ci95": [0.5, 0.5], "resamples": []}
    results = {"dataset": "d", "protocol": "paper", "tags": ["a"], "settings": {"bootstrap": 1, "draws": 1},
               "models": {"m": {"test": {m: dict(metric) for m in ("roc_auc_macro", "pr_auc_macro", "roc_auc_micro",
                                                                     "pr_auc_micro")} | {"tags_scored": 1}}}}
    with pytest.raises(storage.StorageError, match="non-finite"):
        write_report(results, tmp_path)
    assert os.listdir(tmp_path) == []  # neither results.json nor a temporary file


@pytest.mark.backend_independent
@pytest.mark.parametrize("option", ["--out", "--cache-dir"])
def test_an_output_naming_a_file_is_refused_before_any_work(option, dataset, tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("mine")
    paths = {"--out": str(tmp_path / "out"), "--cache-dir": str(tmp_path / "cache"), option: str(target)}
    assert main(["probe", dataset, "--model", "logmel-stats", "--out", paths["--out"], "--cache-dir",
                 paths["--cache-dir"], *FAST]) == 2
    _one_line_error(capsys, f"{option} {target} is a file")
    assert target.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["a_file"]


@pytest.mark.backend_independent
@pytest.mark.parametrize("args,option", [(["--bootstrap", "-1"], "--bootstrap"), (["--epochs", "0"], "--epochs"),
                                         (["--draws", "0"], "--draws"), (["--batch-size", "0"], "--batch-size")])
def test_options_out_of_range_name_the_option(args, option, dataset, tmp_path, capsys):
    assert main(["probe", dataset, "--model", "logmel-stats", "--out", str(tmp_path / "out"), *args]) == 2
    _one_line_error(capsys, f"{option} must be a positive integer")
    assert not (tmp_path / "out").exists()


@pytest.mark.backend_independent
def test_a_second_process_on_the_same_out_is_refused_at_once(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom keras_music_ssl import storage\n"
        f"with storage.locked({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cache = tmp_path / "cache"
        assert main(["probe", dataset, "--model", "logmel-stats", "--out", str(out), "--cache-dir", str(cache),
                     *FAST]) == 2
        _one_line_error(capsys, "being written by another process", f"pid {holder.pid}")
        assert not cache.exists() and not (out / "results.json").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    import keras

    from keras_music_ssl import MusicEncoder

    keras.utils.set_random_seed(3)
    path = tmp_path_factory.mktemp("preset") / "tiny_preset"
    MusicEncoder(**TINY_ENCODER).save_to_preset(path, method="test")
    return path


@pytest.mark.parametrize("file,damage", [("config.json", "truncate"), ("config.json", "random"),
                                         ("model.weights.h5", "truncate"), ("model.weights.h5", "random")])
def test_a_broken_preset_is_one_line_and_exit_2(file, damage, preset, dataset, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken_preset"
    shutil.copytree(preset, broken)
    data = (broken / file).read_bytes()
    (broken / file).write_bytes(data[:len(data) // 2] if damage == "truncate"
                                else np.random.default_rng(0).bytes(len(data)))
    cache = tmp_path / "cache"
    assert main(["probe", dataset, "--model", str(broken), "--out", str(tmp_path / "out"), "--cache-dir", str(cache),
                 *FAST]) == 2
    _one_line_error(capsys, file)
    assert not cache.exists()


def _without_timings(results):
    for models in [results["models"]] + [task["models"] for task in results["tasks"].values()]:
        for result in models.values():
            result.pop("seconds", None)
    return results


def test_broken_state_and_cache_files_are_recomputed_with_a_warning(preset, dataset, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["probe", dataset, "--model", str(preset), "--out", str(out), "--cache-dir", str(cache), *FAST]
    assert main(argv) == 0
    first = _without_timings(json.loads((out / "results.json").read_text()))
    capsys.readouterr()
    state = out / "models" / "tiny_preset.json"
    state.write_text(state.read_text()[:40])  # truncated
    (out / "models" / "logmel-stats.json").write_text("[1, 2]")  # JSON, but not a state
    parts = sorted(str(p) for p in cache.rglob("part-*.npz") if "tiny_preset" in str(p))
    with open(parts[0], "r+b") as f:  # truncated block of embeddings
        f.truncate(os.path.getsize(parts[0]) // 2)
    info = next(cache.rglob("info.json"))
    info.write_bytes(b"\x00\xff garbage")

    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"warning: {state}: not valid JSON (probe state)" in err
    assert f"warning: {out / 'models' / 'logmel-stats.json'}: not a probe state file" in err
    assert f"warning: cached embeddings {parts[0]} are unreadable" in err
    assert _without_timings(json.loads((out / "results.json").read_text())) == first
    assert json.loads(state.read_text())["tasks"]["tags"]["test"] and json.loads(info.read_text())["tracks"] > 0


# --- killed with SIGKILL at a chosen point, then rerun ------------------------------------------

# Runs `kmssl ARGV...` and SIGKILLs itself at KILL_AT, leaving behind what a kill there leaves:
# extract: halfway through the second block file of embeddings; fit: at the end of the second
# epoch of the second model's probe; report: halfway through the second report's figure.
RUNNER = r"""
import os, signal, sys
from keras_music_ssl import cli, storage
from keras_music_ssl.probe import extract, probe, report

point, argv = sys.argv[1], sys.argv[2:]
calls = {"n": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def second_call():
    calls["n"] += 1
    return calls["n"] == 2

if point == "extract":
    write_part = extract._write_part
    def _write_part(path, arrays):
        if second_call():
            with storage.atomic_write(path, "wb") as f:
                f.write(b"PK\x03\x04 half a block")
                die()
        write_part(path, arrays)
    extract._write_part = _write_part
elif point == "fit":
    callback = probe._validation_callback
    def _validation_callback(*args):
        cb, dying = callback(*args), second_call()
        end = cb.on_epoch_end
        def on_epoch_end(epoch, logs=None):
            end(epoch, logs)
            if dying and epoch == 1:
                die()
        cb.on_epoch_end = on_epoch_end
        return cb
    probe._validation_callback = _validation_callback
elif point == "report":
    save = report.save_figure
    def save_figure(fig, path):
        if second_call():
            with storage.atomic_write(path, "wb") as f:
                f.write(b"\x89PNG half a figure")
                die()
        save(fig, path)
    report.save_figure = save_figure
sys.exit(cli.main(argv))
"""


def _kmssl(point, argv):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-c", RUNNER, point, *argv], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow  # 7 processes of a tiny probe: ~2-3 min
@pytest.mark.tf_only  # resuming is the harness's files, the same on every backend; pretrain's kill test runs on all
def test_probe_killed_at_any_point_resumes_to_the_uninterrupted_report(preset, dataset, tmp_path):
    def argv(name):
        return ["probe", dataset, "--model", str(preset), "--out", str(tmp_path / name / "out"), "--cache-dir",
                str(tmp_path / name / "cache"), "--bootstrap", "5", "--epochs", "3"]

    straight = _kmssl("none", argv("straight"))
    assert straight.returncode == 0, straight.stderr
    expected = _without_timings(json.loads((tmp_path / "straight" / "out" / "results.json").read_text()))
    for point in ("extract", "fit", "report"):
        killed = _kmssl(point, argv(point))
        assert killed.returncode == -signal.SIGKILL, f"{point}: not killed\n{killed.stderr}"
        out = tmp_path / point / "out"
        if point == "report":  # killed inside the second report: its temporary file is there
            assert any(name.endswith(storage.PARTIAL) for name in os.listdir(out))
        rerun = _kmssl("none", argv(point))
        assert rerun.returncode == 0, f"{point}: {rerun.stderr}"
        assert "Traceback" not in rerun.stderr
        assert _without_timings(json.loads((out / "results.json").read_text())) == expected, point
        assert not [f for f in _files(out) if f.endswith(storage.PARTIAL)], point
        assert _files(out) == _files(tmp_path / "straight" / "out"), point
