"""Several tasks per dataset: embedded once, probed per task, single-label tasks with accuracy
and macro-F1 (checked against numpy on the saved predictions), ``--task`` to keep some."""

import json
import os

import numpy as np
import pytest

from keras_music_ssl.cli import main
from keras_music_ssl.data.labeled_csv import read_labeled_dataset, write_labeled_dataset
from keras_music_ssl.probe import harness
from probe_fixtures import SOURCE_TAGS, split_sizes, write_generic

FAST = dict(epochs=3, bootstrap=8, progress=False)
TASKS = {"sources": {"column": "tags", "type": "multi-label"},
         "count": {"column": "count", "type": "single-label", "classes": ["one", "two", "three"]},
         "constant": {"column": "constant", "type": "single-label"}}


@pytest.fixture(scope="module")
def tasks_dataset(tmp_path_factory):
    """The generic folder with a single-label ``count`` (how many sources sound; empty on every
    fourth row: unlabelled there) and ``constant`` (one class everywhere: never scorable)."""
    root = tmp_path_factory.mktemp("tasks")
    write_generic(root, seconds=5.0, sizes=split_sizes(12, 6, 8))
    rows = []
    for i, row in enumerate(read_labeled_dataset(root).rows):
        count = ("one", "two", "three")[len(row["tags"].split(";")) - 1]
        rows.append({**row, "count": "" if i % 4 == 3 else count, "constant": "same"})
    write_labeled_dataset(root, rows, SOURCE_TAGS, TASKS)
    return str(root)


def _f1_macro(truth, predicted):
    scores = []
    for c in sorted(set(truth) | set(predicted)):
        tp = np.sum((truth == c) & (predicted == c))
        precision = tp / max(np.sum(predicted == c), 1)
        recall = tp / max(np.sum(truth == c), 1)
        scores.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(scores))


def test_each_task_gets_its_probe_and_single_label_metrics_from_one_embedding(tasks_dataset, tmp_path, capsys):
    out = tmp_path / "report"
    results = harness.run_probe(tasks_dataset, ["logmel-stats"], out, cache_dir=tmp_path / "cache", **FAST)
    assert "task 'constant' left out" in capsys.readouterr().err  # asked for by no one: left out, said
    assert list(results["tasks"]) == ["sources", "count"] and results["task"] == "sources"
    assert results["models"] == results["tasks"]["sources"]["models"]  # where one-task readers look
    assert sorted(p.name for p in (tmp_path / "cache").rglob("part-*.npz")) == ["part-00000.npz"] * 3  # once

    count = results["tasks"]["count"]["models"]["logmel-stats"]
    data = read_labeled_dataset(tasks_dataset)
    labelled_test = [r for r in data.split("test").rows if r["count"]]
    assert count["tracks"]["test"] == len(labelled_test) < len(data.split("test"))
    saved = np.load(out / "predictions" / "count" / "logmel-stats.npz")
    assert saved["tags"].tolist() == ["one", "two", "three"]
    np.testing.assert_allclose(saved["probabilities"].sum(axis=1), 1.0, atol=1e-5)  # softmax, not sigmoid
    truth, predicted = saved["labels"].argmax(axis=1), saved["probabilities"].argmax(axis=1)
    assert truth.tolist() == [["one", "two", "three"].index(r["count"]) for r in labelled_test]
    assert count["test"]["accuracy"]["point"] == pytest.approx(np.mean(truth == predicted), abs=1e-12)
    assert count["test"]["f1_macro"]["point"] == pytest.approx(_f1_macro(truth, predicted), abs=1e-12)
    assert "accuracy" not in results["models"]["logmel-stats"]["test"]  # multi-label: the AUCs only

    from keras_music_ssl.tagger import load_tag_head

    assert load_tag_head(str(out / "heads" / "logmel-stats.keras")).tags == list(SOURCE_TAGS)
    assert load_tag_head(str(out / "heads" / "count" / "logmel-stats.keras")).activation == "softmax"
    report = (out / "results.md").read_text()
    assert "## Task `count` (single-label)" in report and "F1 macro" in report
    assert (out / "bootstrap.png").is_file() and (out / "bootstrap-count.png").is_file()
    tasks_in_csv = {line.split(",")[-1] for line in (out / "results.csv").read_text().splitlines()[1:]}
    assert tasks_in_csv == {"sources", "count"}


def test_task_option_keeps_the_tasks_named_and_refuses_one_that_cannot_be(tasks_dataset, tmp_path, capsys):
    out = tmp_path / "count-only"
    argv = ["probe", tasks_dataset, "--model", "logmel-stats", "--out", str(out), "--epochs", "2",
            "--bootstrap", "5", "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--task", "count"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "count" and list(results["tasks"]) == ["count"]
    assert os.path.isfile(out / "heads" / "logmel-stats.keras")  # the main task's paths: count's now
    capsys.readouterr()
    for task, reason in (("mood", "--task 'mood': the dataset has the task(s) ['sources', 'count', 'constant']"),
                         ("constant", "task 'constant': the valid split")):
        assert main([*argv, "--task", task]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and reason in err, err
