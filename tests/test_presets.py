"""Preset folders: round trip, named Deezer presets, helpful errors, atomic writes."""

import json

import keras
import numpy as np
import pytest

from keras_music_ssl import MusicEncoder
from keras_music_ssl.presets import (DEEZER_WEIGHTS_URL, PresetNotFoundError, preset_metadata,
                                     resolve_preset, save_to_preset)


@pytest.fixture(scope="module")
def encoder():
    from conftest import TINY_ENCODER

    keras.utils.set_random_seed(0)
    model = MusicEncoder(**TINY_ENCODER)
    for weight in model.non_trainable_weights:  # non-trivial BN statistics
        weight.assign(np.random.default_rng(1).uniform(0.5, 1.5, weight.shape))
    return model


@pytest.fixture(scope="module")
def waveform():
    return np.random.default_rng(2).uniform(-1, 1, (1, 64000)).astype(np.float32)


def embed(model, waveform):
    return keras.ops.convert_to_numpy(model(waveform, training=False))


def test_preset_round_trip_gives_identical_embeddings_and_metadata(encoder, waveform, tmp_path):
    encoder.save_to_preset(tmp_path / "p", method="contrastive", licence="test")

    loaded = MusicEncoder.from_preset(tmp_path / "p")

    np.testing.assert_array_equal(embed(loaded, waveform), embed(encoder, waveform))
    assert loaded.get_config() == encoder.get_config()
    meta = preset_metadata(tmp_path / "p")
    assert meta["method"] == "contrastive" and meta["sample_rate"] == 16000
    assert "64000" in meta["input"] and "32" in meta["output"]
    assert meta["keras_music_ssl_version"]


def test_named_preset_resolves_under_env_var_or_argument(encoder, tmp_path, monkeypatch):
    encoder.save_to_preset(tmp_path / "env" / "deezer_byol")
    monkeypatch.setenv("KMSSL_WEIGHTS_DIR", str(tmp_path / "env"))

    assert resolve_preset("deezer_byol") == tmp_path / "env" / "deezer_byol"
    assert isinstance(MusicEncoder.from_preset("deezer_byol"), MusicEncoder)
    with pytest.raises(PresetNotFoundError, match=str(tmp_path / "arg" / "deezer_byol")):
        resolve_preset("deezer_byol", weights_root=tmp_path / "arg", download=False)


@pytest.mark.backend_independent
def test_missing_named_preset_offline_says_where_to_put_the_zip(tmp_path, monkeypatch):
    from keras_music_ssl.deezer_release import URL_ENV, ReleaseError

    monkeypatch.setenv("KMSSL_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9/weights.zip")  # nothing listens on port 9

    with pytest.raises(ReleaseError) as error:
        resolve_preset("deezer_vicreg")

    message = str(error.value)
    assert DEEZER_WEIGHTS_URL in message and str(tmp_path / "weights.zip") in message
    assert "KMSSL_DEEZER_WEIGHTS_URL" in message and "\n" not in message


@pytest.mark.backend_independent
def test_unknown_names_and_plain_folders_are_rejected_clearly(tmp_path):
    with pytest.raises(PresetNotFoundError, match="Unknown preset 'deezer_simclr'.*deezer_byol"):
        resolve_preset("deezer_simclr", tmp_path)
    with pytest.raises(PresetNotFoundError, match="not a preset folder: it has no config.json"):
        resolve_preset(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PresetNotFoundError, match="no model.weights.h5"):
        MusicEncoder.from_preset(tmp_path)


def test_failed_save_leaves_no_partial_preset_and_keeps_the_old_one(encoder, tmp_path,
                                                                    monkeypatch):
    old = tmp_path / "old"
    encoder.save_to_preset(old, method="old")
    before = {p.name: p.read_bytes() for p in old.iterdir()}

    def fail(self, path, **kwargs):
        open(path, "wb").write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(MusicEncoder, "save_weights", fail)
    for target in (tmp_path / "new", old):
        with pytest.raises(OSError, match="disk full"):
            save_to_preset(encoder, target, {"method": "new"})

    assert not (tmp_path / "new").exists()
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no staging folder left


def test_saving_over_a_preset_replaces_its_files_and_keeps_others(encoder, waveform, tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    for name in ("config.json", "model.weights.h5", "metadata.json"):
        (folder / name).write_text("from an older version")
    (folder / "notes.txt").write_text("mine")

    encoder.save_to_preset(folder, method="second")

    assert (folder / "notes.txt").read_text() == "mine"
    assert json.loads((folder / "metadata.json").read_text())["method"] == "second"
    np.testing.assert_array_equal(embed(MusicEncoder.from_preset(folder), waveform),
                                  embed(encoder, waveform))


def test_converted_release_file_is_found_by_preset_name(tmp_path, monkeypatch, tiny_encoder_config,
                                                        waveform):
    torch = pytest.importorskip("torch")
    from keras_music_ssl.cli import main
    from released_checkpoints import reference_backbone, write_released_checkpoint

    student = reference_backbone(tiny_encoder_config, seed=6)
    write_released_checkpoint(tmp_path / "feature_stats.pt", "feature_stats", student)
    monkeypatch.setenv("KMSSL_WEIGHTS_DIR", str(tmp_path / "weights"))

    assert main(["convert-deezer", str(tmp_path / "feature_stats.pt"), "--heads", "2"]) == 0

    loaded = MusicEncoder.from_preset("deezer_vicreg")
    with torch.no_grad():
        expected = student(torch.from_numpy(waveform)[..., None]).numpy()
    np.testing.assert_allclose(embed(loaded, waveform), expected, atol=1e-4, rtol=0)
    assert preset_metadata("deezer_vicreg")["method"] == "vicreg"
