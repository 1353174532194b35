"""Model cards: every preset (save_to_preset, kmssl pretrain, conversion) and every export carries a
generated README.md whose Hub front matter parses, and says what the model is, how it was trained,
its size, its probe results beside the floors, its licence and citation."""

import datetime
import hashlib
import json
import os

import keras
import numpy as np
import pytest
import yaml
from conftest import TINY_ENCODER

from keras_music_ssl import MusicEncoder, __version__, card, storage
from keras_music_ssl.presets import save_to_preset

PRESET_FILES = ["README.md", "config.json", "metadata.json", "model.weights.h5"]


def front_matter(text):
    """The card's YAML front matter, parsed as the Hub parses it."""
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def read_card(folder):
    text = (folder / "README.md").read_text(encoding="utf-8")
    return front_matter(text), text


def metadata(folder):
    return json.loads((folder / "metadata.json").read_text())


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(3)
    return MusicEncoder(**TINY_ENCODER)


@pytest.fixture(scope="module")
def preset(encoder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("card") / "byol-run"
    encoder.save_to_preset(folder, method="byol")
    return folder


def probe_results(names, fingerprint=None):
    """A results.json in the structure ``kmssl probe`` writes (probe/harness.py, probe/report.py)."""
    def metric(point):
        return {"point": point, "mean": point - 0.001, "std": 0.004, "ci95": [point - 0.01, point + 0.01],
                "resamples": 50}

    models = {}
    for i, name in enumerate(names):
        roc, pr = 0.91 - 0.05 * i, 0.41 - 0.05 * i
        models[name] = {"test": {"roc_auc_macro": metric(roc), "pr_auc_macro": metric(pr),
                                 "roc_auc_micro": metric(roc + 0.01), "pr_auc_micro": metric(pr + 0.01),
                                 "tags_scored": 3, "tags_excluded": []},
                        "fingerprint": fingerprint if i == 0 else f"other-{i}", "tracks": {"test": 40}}
    return {"dataset": "/data/somewhere/mtat", "protocol": "paper", "tags": ["low", "high", "noise"],
            "models": models, "settings": {"bootstrap": 50}, "data": {}}


def test_saved_preset_has_a_card_and_the_files_keras_hub_writes(encoder, preset):
    assert sorted(os.listdir(preset)) == PRESET_FILES
    fields, text = read_card(preset)
    assert fields["library_name"] == "keras" and fields["license"] == "mit"
    assert fields["pipeline_tag"] == "feature-extraction"
    assert {"audio", "music", "self-supervised-learning", "music-tagging", "byol"} <= set(fields["tags"])
    assert card.MARKER in text and "# BYOL music encoder" in text
    assert f"**Parameters**: {encoder.count_params():,}" in text
    assert "`(batch, 64000)`" in text and "16,000 Hz mono" in text and "peak-normalised" in text
    assert 'MusicEncoder.from_preset("path/to/this/folder")' in text and "kmssl embed" in text
    assert "@inproceedings{meseguer2024experimental" in text

    meta = metadata(preset)
    assert meta["parameter_count"] == encoder.count_params()
    assert meta["keras_version"] == keras.__version__ and meta["keras_music_ssl_version"] == __version__
    assert meta["backend"] == keras.backend.backend()
    saved = datetime.datetime.strptime(meta["date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert abs(datetime.datetime.now(datetime.timezone.utc) - saved) < datetime.timedelta(hours=1)
    weights = preset / "model.weights.h5"
    assert meta["files"]["model.weights.h5"] == {"sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                                                 "size": weights.stat().st_size}
    assert meta["weights_fingerprint"] == storage.weights_fingerprint(encoder)
    # What the card says about loading: Keras' own loader reads the folder (README.md included), once
    # keras_music_ssl is imported (it is, above).
    loaded = keras.saving.load_model(str(preset))
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64000)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(encoder(x)),
                               atol=1e-6)


def test_saving_again_replaces_a_generated_card_but_never_a_handwritten_one(encoder, tmp_path):
    folder = tmp_path / "p"
    encoder.save_to_preset(folder, method="byol")
    encoder.save_to_preset(folder, method="vicreg")
    assert "vicreg" in read_card(folder)[0]["tags"]
    (folder / "README.md").write_text("# My own card\n")
    encoder.save_to_preset(folder, method="clustering")
    assert (folder / "README.md").read_text() == "# My own card\n"
    assert metadata(folder)["method"] == "clustering"
    assert sorted(os.listdir(folder)) == PRESET_FILES  # no staging folder left

    assert card.ensure_card(folder).read_text() == "# My own card\n"  # kept
    (folder / "README.md").unlink()
    assert "clustering" in front_matter(card.ensure_card(folder).read_text())["tags"]


def test_a_card_that_fails_leaves_no_partial_preset(encoder, tmp_path, monkeypatch):
    def fail(folder, *args, **kwargs):
        raise RuntimeError("no card")

    monkeypatch.setattr(card, "model_card", fail)
    with pytest.raises(RuntimeError, match="no card"):
        save_to_preset(encoder, tmp_path / "new", {"method": "byol"})
    assert os.listdir(tmp_path) == []


def test_converted_release_card_cites_the_paper_under_the_authors_terms(tmp_path):
    pytest.importorskip("torch")
    from keras_music_ssl.convert import convert_checkpoint
    from released_checkpoints import reference_backbone, write_released_checkpoint

    config = {k: v for k, v in TINY_ENCODER.items() if k != "heads"}
    path = tmp_path / "feature_stats.pt"
    write_released_checkpoint(path, "feature_stats", reference_backbone(config, seed=1))
    encoder, _ = convert_checkpoint(path, tmp_path / "deezer_vicreg", heads=TINY_ENCODER["heads"])

    fields, text = read_card(tmp_path / "deezer_vicreg")
    assert fields["license"] == "other" and fields["license_name"] == "deezer-multi-view-ssl-benchmark"
    assert fields["license_link"] == "https://github.com/deezer/multi-view-ssl-benchmark"
    assert fields["library_name"] == "keras" and fields["pipeline_tag"] == "feature-extraction"
    assert {"vicreg", "deezer"} <= set(fields["tags"])
    assert "@inproceedings{meseguer2024experimental" in text and "pages={1141--1145}" in text
    assert "Deezer catalogue" in text and "4 million" in text  # the paper's training data
    assert "VICReg" in text and "feature_stats.pt" in text and "epoch 37" in text
    assert f"**Parameters**: {encoder.count_params():,}" in text
    meta = metadata(tmp_path / "deezer_vicreg")
    assert "MIT" in meta["licence"] and meta["citation"].startswith("@inproceedings")  # old keys kept


@pytest.mark.slow  # a pretraining run per backend: the slow step
@pytest.mark.filterwarnings("ignore:.*look collapsed")  # one step of a tiny encoder: expected
def test_pretrain_preset_card_describes_the_run(tmp_path):
    import soundfile as sf

    from keras_music_ssl import cli

    audio = tmp_path / "my-audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(audio / f"track{i}.flac", (0.1 * rng.standard_normal(16000 * 9)).astype(np.float32), 16000)
    out = tmp_path / "run"
    assert cli.main(["pretrain", "--out", str(out), "--data", str(audio), "--valid-data", str(audio / "track0.flac"),
                     "--method", "barlow_twins", "--encoder", "tiny", "--batch-size", "2", "--epochs", "1",
                     "--steps-per-epoch", "1", "--quiet"]) == 0

    fields, text = read_card(out / "preset")
    assert fields["license"] == "mit" and "barlow-twins" in fields["tags"]
    assert "Barlow Twins" in text and "cross-correlation" in text
    assert "**Data**: my-audio" in text
    for setting, value in (("method", "barlow_twins"), ("epochs", 1), ("steps_per_epoch", 1), ("batch_size", 2),
                           ("encoder", "tiny"), ("data", "my-audio")):
        assert f"| `{setting}` | `{value}` |" in text
    assert f"on the {keras.backend.backend()} backend" in text
    assert str(tmp_path) not in text and str(tmp_path) not in (out / "preset" / "metadata.json").read_text()
    meta = metadata(out / "preset")
    assert meta["training"]["views"] == 2 and meta["dataset"]["name"] == "my-audio"


def test_card_shows_probe_results_beside_both_floors(preset, tmp_path):
    from keras_music_ssl.probe.report import markdown_table

    fingerprint = metadata(preset)["weights_fingerprint"]
    results = probe_results(["my-encoder", "random", "logmel-stats"], fingerprint)
    assert "my-encoder" in markdown_table(results)  # the structure report.py reads
    storage.write_json(tmp_path / "results.json", results)

    text = card.write_card(preset, probe_results=tmp_path / "results.json").read_text(encoding="utf-8")
    assert front_matter(text)["library_name"] == "keras"
    assert "## Probe results" in text and "`mtat`" in text and "50 resamples" in text
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "0.910 (0.900–0.920) | 0.410 (0.400–0.420)" in rows["| **this model** (`my-encoder`)"]
    assert "0.860 (0.850–0.870) | 0.360 (0.350–0.370)" in next(v for k, v in rows.items() if "`random`" in k)
    assert "0.810 (0.800–0.820) | 0.310 (0.300–0.320)" in next(v for k, v in rows.items() if "`logmel-stats`" in k)

    # No fingerprint match: the row named after the folder, else the only model that is not a floor.
    text = card.model_card(preset, probe_results(["byol-run", "other", "logmel-stats"]))
    assert "| **this model** (`byol-run`)" in text and "| `random` floor" in text and "not in this report" in text
    with pytest.raises(card.CardError, match="which model"):
        card.model_card(preset, probe_results(["a", "b", "logmel-stats"]))


@pytest.mark.tf_only
def test_exports_carry_a_card_and_an_essentia_style_model_json(encoder, tmp_path):
    import tensorflow as tf

    from keras_music_ssl.export import export
    from keras_music_ssl.tagger import MusicTagger, TagHead

    def tagger(tags):
        head = TagHead(tags)
        head(np.zeros((1, encoder.output_dim), "float32"))
        return MusicTagger(encoder, head)

    meta = {"method": "contrastive", "dataset": {"name": "rendered-tiny"}}
    results = probe_results(["mine", "logmel-stats"], storage.weights_fingerprint(encoder))
    saved = export(tagger(["drums", "piano", "voice"]), tmp_path / "saved", metadata=meta, probe_results=results)
    fields, text = read_card(saved)
    assert fields["pipeline_tag"] == "audio-classification" and "contrastive" in fields["tags"]
    assert "`drums`, `piano`, `voice`" in text and "## Probe results" in text
    model_json = json.loads((saved / "model.json").read_text())
    assert model_json["type"] == "tagger" and model_json["classes"] == ["drums", "piano", "voice"]
    assert model_json["sample_rate"] == 16000 and model_json["framework"] == "tensorflow"
    assert model_json["metrics"]["model"]["roc_auc_macro"] == 0.91 and "logmel-stats" in model_json["metrics"]
    signatures = tf.saved_model.load(str(saved)).signatures
    for name, entry in model_json["schema"]["signatures"].items():
        inputs = signatures[name].structured_input_signature[1]
        outputs = signatures[name].structured_outputs
        for side, specs in (("inputs", inputs), ("outputs", outputs)):
            assert {t["name"]: (t["dtype"], t["shape"]) for t in entry[side]} == {
                key: (spec.dtype.name, spec.shape.as_list()) for key, spec in specs.items()}
    assert model_json["schema"]["inputs"] == [{"name": "waveform", "dtype": "float32", "shape": [None, 64000]}]

    lite = export(tagger(["a", "b"]), tmp_path / "tagger.tflite", "tflite")
    assert sorted(os.listdir(tmp_path)) == ["saved", "tagger.json", "tagger.md", "tagger.tflite"]
    sidecar = json.loads((tmp_path / "tagger.json").read_text())
    assert sidecar["classes"] == ["a", "b"] and sidecar["quantization"] == "float32"
    assert set(sidecar["schema"]["signatures"]) == {"tag", "tag_track", "head"}
    # Exported without its preset's metadata: nothing says under which terms the weights are.
    assert front_matter((tmp_path / "tagger.md").read_text())["license"] == "unknown"
    assert fields["license"] == "mit"  # the one exported with metadata: a run of ours

    # --overwrite replaces the model and its card files together.
    export(tagger(["x", "y", "z"]), lite, "tflite", overwrite=True)
    export(tagger(["x", "y", "z"]), saved, overwrite=True)
    assert json.loads((tmp_path / "tagger.json").read_text())["classes"] == ["x", "y", "z"]
    assert json.loads((saved / "model.json").read_text())["classes"] == ["x", "y", "z"]
    assert "`x`, `y`, `z`" in (tmp_path / "tagger.md").read_text()
    # A file of the card's name that is not ours stops the export before any work.
    (tmp_path / "other.json").write_text('{"mine": true}')
    with pytest.raises(storage.StorageError, match="not a model card"):
        export(tagger(["a"]), tmp_path / "other.tflite", "tflite")
    assert not (tmp_path / "other.tflite").exists() and (tmp_path / "other.json").read_text() == '{"mine": true}'
