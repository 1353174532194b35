"""The probe harness on real (rendered) music: the handcrafted floor tags instruments well, and the
same probe on shuffled training labels is at chance. Slow: builds the ``small`` rendered set."""

import os
import random
import tempfile

import pytest

from keras_music_ssl.data.labeled_csv import LabeledDataset, read_labeled_dataset
from keras_music_ssl.probe.datasets import ProbeData, validate
from keras_music_ssl.probe.harness import run_probe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rendered():
    """The rendered ``small`` set (540 clips of 10 s, 11 instrument tags), built once per machine."""
    from keras_music_ssl.data.rendered import build_rendered_dataset

    root = os.path.join(tempfile.gettempdir(), "kmssl-tests-rendered-small-seed0")
    if os.path.isfile(os.path.join(root, "build.json")):
        return read_labeled_dataset(root)
    return build_rendered_dataset(root, size="small", seed=0, progress=False)


def _probe(dataset, tmp_path, name):
    clean, report = validate(dataset)
    results = run_probe(ProbeData(name, clean, report), ["logmel-stats"], tmp_path / name, bootstrap=20,
                        cache_dir=tmp_path / "cache", progress=False)
    return results["models"]["logmel-stats"]["test"]


def test_logmel_stats_tags_rendered_instruments_and_shuffled_labels_are_at_chance(rendered, tmp_path):
    real = _probe(rendered, tmp_path, "real")
    assert real["roc_auc_macro"]["point"] >= 0.80 and real["tags_scored"] >= 10

    train = [row for row in rendered.rows if row["split"] == "train"]
    tags = [row["tags"] for row in train]
    random.Random(0).shuffle(tags)
    shuffled = [{**row, "tags": tag} for row, tag in zip(train, tags)] + \
        [row for row in rendered.rows if row["split"] != "train"]
    chance = _probe(LabeledDataset(rendered.root, rendered.tags, shuffled), tmp_path, "shuffled")
    assert abs(chance["roc_auc_macro"]["point"] - 0.5) <= 0.1
