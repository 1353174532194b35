"""``kmssl probe``: the report of a preset beside the floors, one-line errors, and a probe head that
``kmssl export --head`` turns into a tagger."""

import json

import keras
import numpy as np
import pytest

from conftest import TINY_ENCODER
from probe_fixtures import split_sizes, write_generic
from keras_music_ssl import MusicEncoder
from keras_music_ssl.cli import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_cli")
    spec, _ = write_generic(root / "data", seconds=8.0, sizes=split_sizes(6, 3, 4))
    keras.utils.set_random_seed(4)
    encoder = MusicEncoder(**TINY_ENCODER)
    encoder.save_to_preset(root / "my_preset", method="test")
    out = root / "report"
    code = main(["probe", spec, "--model", str(root / "my_preset"), "--out", str(out), "--bootstrap", "5",
                 "--epochs", "3", "--fractions", "0.5", "--draws", "2", "--cache-dir", str(root / "cache")])
    return root, spec, out, encoder, code


def test_cli_probe_writes_the_report_with_the_floor(workspace, capsys):
    root, spec, out, _, code = workspace
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == spec and list(results["models"]) == ["my_preset", "logmel-stats"]
    assert list(results["models"]["my_preset"]["fractions"]) == ["0.5"]
    assert results["models"]["my_preset"]["test"]["roc_auc_macro"]["ci95"][0] >= 0
    for name in ("results.csv", "results.md", "bootstrap.png", "fractions.png", "predictions/my_preset.npz",
                 "heads/my_preset.keras", "heads/logmel-stats.keras"):
        assert (out / name).is_file(), name


def test_cli_probe_without_baseline_probes_only_what_was_asked(workspace, tmp_path):
    root, spec, _, _, _ = workspace
    assert main(["probe", spec, "--model", "logmel-stats", "--no-baseline", "--out", str(tmp_path), "--bootstrap",
                 "3", "--epochs", "2", "--protocol", "marble", "--cache-dir", str(root / "cache")]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["models"]) == ["logmel-stats"] and results["protocol"] == "marble"
    assert results["settings"]["hidden_units"] == [512]


@pytest.mark.parametrize("args,message", [
    (["nowhere"], "no such folder"),
    (["{spec}", "--model", "no_such_preset"], "Unknown preset"),
    (["{spec}", "--fractions", "0", "1"], "--fractions must lie in"),
    (["mtat:{root}"], "no train_list_pub.cP"),
])
def test_cli_probe_bad_input_exits_2_with_one_line(workspace, tmp_path, capsys, args, message):
    root, spec, _, _, _ = workspace
    args = [a.format(spec=spec, root=root) for a in args]
    if "--model" not in args:
        args += ["--model", "logmel-stats"]
    assert main(["probe", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("kmssl probe: ")


@pytest.mark.tf_only
def test_probe_head_exports_as_a_tagger_with_the_same_probabilities(workspace, capsys):
    from keras_music_ssl.data import load_audio
    from keras_music_ssl.export import load_exported

    root, spec, out, _, _ = workspace
    assert main(["export", "--preset", str(root / "my_preset"), "--head", str(out / "heads" / "my_preset.keras"),
                 "--format", "savedmodel", "--out", str(root / "tagger")]) == 0
    runner = load_exported(root / "tagger")
    with np.load(out / "predictions" / "my_preset.npz") as p:
        path, expected, tags = str(p["paths"][0]), p["probabilities"][0], p["tags"].tolist()
    assert runner.metadata["tags"] == tags
    # 8 s clips: two whole segments, so the exported track signature sees what the probe saw
    got = runner.track(load_audio(path))["probabilities"]
    np.testing.assert_allclose(got, expected, atol=1e-4)
