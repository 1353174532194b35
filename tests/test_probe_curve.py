"""The learning-curve callback (probe/curve.py): a score per task every N epochs in history.csv,
the floors as constants, pretraining.png, and trained weights equal to a run without it."""

import csv
import json
import os
import tempfile

import numpy as np
import pytest

from keras_music_ssl.probe.curve import fast_probe
from keras_music_ssl.train import pretrain

TINY = dict(dataset_size="tiny", encoder="tiny", batch_size=4, epochs=3, steps_per_epoch=2)


@pytest.fixture(scope="module")
def data_dir():
    return os.path.join(tempfile.gettempdir(), "kmssl-tests-datasets")  # shared with test_train.py


def _weights(run):
    import keras

    return keras.saving.load_model(os.path.join(run, "model.keras")).get_weights()


@pytest.mark.slow  # two pretraining runs per backend (about 90 s on TF): the slow step
def test_the_curve_logs_every_task_every_n_epochs_and_leaves_the_weights_alone(data_dir, tmp_path):
    with_curve, without = str(tmp_path / "curve"), str(tmp_path / "plain")
    pretrain(with_curve, data_dir=data_dir, verbose=0, probe_every=2, **TINY)
    pretrain(without, data_dir=data_dir, verbose=0, **TINY)
    for a, b in zip(_weights(with_curve), _weights(without)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)

    with open(os.path.join(with_curve, "history.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    tasks = [key[len("probe_"):-len("_roc_auc")] for key in rows[0]
             if key.startswith("probe_") and key.endswith("_roc_auc")]
    assert tasks and set(tasks) <= {"instruments", "style", "tempo"}
    for row in rows:  # epochs 2 and 3 (the last) probed, epoch 1 not
        probed = int(row["epoch"]) + 1 in (2, 3)
        for task in tasks:
            value = float(row[f"probe_{task}_roc_auc"])
            assert (0.0 <= value <= 1.0) if probed else np.isnan(value), (row["epoch"], task, value)
    floors = json.load(open(os.path.join(with_curve, "probe_floors.json")))["scores"]
    assert set(floors) == {"initial", "random", "logmel-stats"}
    for floor, by_task in floors.items():  # the same constant on every row
        for task, result in by_task.items():
            values = [float(row[f"probe_{task}_floor_{floor}"]) for row in rows]
            assert values == pytest.approx([result["roc_auc"]] * len(rows), abs=1e-9)
    assert os.path.getsize(os.path.join(with_curve, "pretraining.png")) > 1000


def test_fast_probe_separates_a_separable_task_and_not_shuffled_labels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 8))
    multi = (x[:, :3] > 0).astype(np.float32)
    single = np.eye(3, dtype=np.float32)[np.argmax(x[:, 3:6], axis=1)]
    assert fast_probe(x[:80], multi[:80], x[80:], multi[80:], False)["roc_auc"] > 0.95
    learned = fast_probe(x[:80], single[:80], x[80:], single[80:], True)
    assert learned["roc_auc"] > 0.9 and learned["accuracy"] > 0.8
    shuffled = fast_probe(x[:80], rng.permutation(multi[:80]), x[80:], multi[80:], False)
    assert abs(shuffled["roc_auc"] - 0.5) < 0.15


@pytest.mark.backend_independent  # option checks: the same on every backend
def test_a_probe_dataset_mistake_is_one_line_before_the_run_folder_exists(data_dir, tmp_path, capsys):
    from keras_music_ssl.cli import main

    out = tmp_path / "run"
    tiny = ["--dataset-size", "tiny", "--encoder", "tiny", "--batch-size", "4", "--epochs", "1", "--quiet"]
    for extra, reason in ((["--probe-every", "1", "--probe-dataset", str(tmp_path / "nowhere")], "no such folder"),
                          (["--probe-every", "0"], "--probe-every must be >= 1"),
                          (["--probe-every", "1", "--data", str(tmp_path)], "say which labeled dataset")):
        assert main(["pretrain", "--out", str(out), *tiny, *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and reason in err, err
        assert not out.exists()
