"""``kmssl compare`` with a user's time at stake: every option and the probe dataset are checked
before the first pretraining step, and a comparison killed (SIGKILL) in pretraining, in the
probe or while writing its report resumes to the report an uninterrupted run writes."""

import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest

from probe_fixtures import split_sizes, write_generic
from keras_music_ssl import storage
from keras_music_ssl.cli import main

TINY = ["--dataset-size", "tiny", "--encoder", "tiny", "--batch-size", "4", "--epochs", "2", "--steps-per-epoch", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_generic(tmp_path_factory.mktemp("compare") / "data", seconds=5.0, sizes=split_sizes(6, 3, 4))[0]


@pytest.fixture(scope="module")
def unscorable(tmp_path_factory):
    from keras_music_ssl.data.labeled_csv import read_labeled_dataset, write_labeled_dataset

    root = tmp_path_factory.mktemp("unscorable")
    write_generic(root, seconds=5.0, sizes=split_sizes(4, 3, 3))
    rows = [{**row, "tags": "low;high;noise"} if row["split"] == "test" else row
            for row in read_labeled_dataset(root).rows]
    write_labeled_dataset(root, rows, ("low", "high", "noise"))
    return str(root)


@pytest.mark.backend_independent
@pytest.mark.parametrize("args,message", [
    (["--bootstrap", "-1"], "--bootstrap must be a positive integer, got -1"),
    (["--probe-epochs", "0"], "--probe-epochs must be a positive integer, got 0"),
    (["--probe-dataset", "{tmp}/nowhere"], "no such folder or file"),
    (["--probe-dataset", "{unscorable}"], "the test split (3 tracks) has no scorable tag"),
    (["--out", "{tmp}/a_file"], "is a file; name a folder"),
    (["--reference", "{tmp}/nowhere"], "Unknown preset"),  # a typo, refused (an unreachable download is not)
])
def test_bad_options_and_probe_datasets_are_refused_before_any_pretraining(args, message, dataset, unscorable,
                                                                          tmp_path, capsys, monkeypatch):
    from keras_music_ssl import train

    def no_pretraining(*args, **kwargs):
        raise AssertionError("pretraining started")

    monkeypatch.setattr(train, "pretrain", no_pretraining)
    (tmp_path / "a_file").write_text("mine")
    args = [a.format(tmp=tmp_path, unscorable=unscorable) for a in args]
    defaults = {"--out": str(tmp_path / "out"), "--probe-dataset": dataset}
    for option, value in defaults.items():
        if option not in args:
            args += [option, value]
    assert main(["compare", "--methods", "contrastive", *TINY, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("kmssl compare: ") and message in err, err
    assert not (tmp_path / "out").exists() and (tmp_path / "a_file").read_text() == "mine"


@pytest.mark.backend_independent
def test_quickstart_refuses_a_reference_that_is_no_preset_before_any_work(tmp_path, capsys, monkeypatch):
    from keras_music_ssl.data import embedded

    def no_dataset(*args, **kwargs):
        raise AssertionError("the dataset was built")

    monkeypatch.setattr(embedded, "embedded_dataset", no_dataset)
    assert main(["quickstart", "--out", str(tmp_path / "out"), "--reference", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("kmssl quickstart: Unknown preset"), err
    assert not (tmp_path / "out").exists()


# Runs `kmssl ARGV...` and SIGKILLs itself at KILL_AT: pretrain: once every callback (the run's
# backup included) has seen the first method's first epoch; extract: halfway through the second block file of probe embeddings;
# comparison: halfway through comparison.png.
RUNNER = r"""
import os, signal, sys
import keras
from keras_music_ssl import cli, storage
from keras_music_ssl.probe import extract, report

point, argv = sys.argv[1], sys.argv[2:]
calls = {"n": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "pretrain":  # the first fit is the first method's pretraining: die once its epoch 1 is saved
    from keras.src.callbacks.callback_list import CallbackList
    end = CallbackList.on_epoch_end
    def on_epoch_end(self, epoch, logs=None):
        end(self, epoch, logs)
        die()
    CallbackList.on_epoch_end = on_epoch_end
elif point == "extract":
    write_part = extract._write_part
    def _write_part(path, arrays):
        calls["n"] += 1
        if calls["n"] == 2:
            with storage.atomic_write(path, "wb") as f:
                f.write(b"PK\x03\x04 half a block")
                die()
        write_part(path, arrays)
    extract._write_part = _write_part
elif point == "comparison":
    save = report.save_figure
    def save_figure(fig, path):
        if os.path.basename(path) == "comparison.png":
            with storage.atomic_write(path, "wb") as f:
                f.write(b"\x89PNG half a figure")
                die()
        save(fig, path)
    report.save_figure = save_figure
sys.exit(cli.main(argv))
"""


def _kmssl(point, argv, cache):
    # each run its own embedding cache: a kill in extraction needs embeddings left to compute
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KMSSL_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, "-c", RUNNER, point, *argv], env=env, capture_output=True, text=True,
                          timeout=900)


def _rows(out):
    comparison = json.loads((out / "comparison.json").read_text())
    return [{k: v for k, v in row.items() if k != "pretrain_seconds"} for row in comparison["rows"]]


@pytest.mark.slow  # 7 tiny comparisons (one method, 2 x 2 steps, the floors): ~5 min
@pytest.mark.tf_only  # resuming is compare's and pretrain's files; pretrain's kill test runs on every backend
def test_compare_killed_at_any_point_resumes_to_the_uninterrupted_report(dataset, tmp_path):
    os.environ.setdefault("KMSSL_DATA_DIR", os.path.join(tempfile.gettempdir(), "kmssl-tests-datasets"))

    def argv(name):
        return ["compare", "--out", str(tmp_path / name), "--methods", "contrastive", *TINY, "--probe-dataset",
                dataset, "--bootstrap", "5", "--probe-epochs", "3", "--quiet"]

    straight = _kmssl("none", argv("straight"), tmp_path / "straight-cache")
    assert straight.returncode == 0, straight.stderr
    expected = _rows(tmp_path / "straight")
    for point in ("pretrain", "extract", "comparison"):
        killed = _kmssl(point, argv(point), tmp_path / f"{point}-cache")
        assert killed.returncode == -signal.SIGKILL, f"{point}: not killed\n{killed.stderr}"
        if point == "comparison":  # killed after comparison.json, inside comparison.png: its temporary is there
            assert any(name.endswith(storage.PARTIAL) for name in os.listdir(tmp_path / point))
        else:
            assert not (tmp_path / point / "comparison.json").exists()
        rerun = _kmssl("none", argv(point), tmp_path / f"{point}-cache")
        assert rerun.returncode == 0, f"{point}: {rerun.stderr}"
        assert "Traceback" not in rerun.stderr
        got = _rows(tmp_path / point)
        assert [r["model"] for r in got] == [r["model"] for r in expected] == [
            "contrastive", "random", "tiny-init", "logmel-stats"]
        for a, b in zip(got, expected):  # a resumed pretraining equals an uninterrupted one to float precision
            assert a.keys() == b.keys() and a["steps"] == b["steps"], point
            for key in ("final_loss", "effective_rank", "roc_auc", "pr_auc", "roc_auc_ci95", "pr_auc_ci95"):
                assert (a[key] is None) == (b[key] is None) and a[key] == pytest.approx(b[key], abs=1e-3), (point, key)
        partials = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / point) for f in fs
                    if f.endswith(storage.PARTIAL)]
        assert not partials, point
