"""Converting the authors' checkpoints: parity with PyTorch, layouts, safety and errors."""

import hashlib
import json
import os
import sys
import zipfile

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from keras_music_ssl import MusicEncoder, convert  # noqa: E402
from keras_music_ssl.cli import main  # noqa: E402
from keras_music_ssl.torch_weights import FILTERBANK_KEY, StateDictMismatchError  # noqa: E402
from released_checkpoints import (METHODS, STUDENT_PREFIX, reference_backbone,  # noqa: E402
                                  write_released_checkpoint)

PARITY_ATOL = 1e-4  # the acceptance bound on embeddings


@pytest.fixture(scope="module")
def waveforms():
    rng = np.random.default_rng(7)
    noise = rng.standard_normal((1, 64000))
    tone = np.sin(2 * np.pi * 440 * np.arange(64000) / 16000)[None] * np.linspace(0, 1, 64000)
    x = np.concatenate([noise, tone]).astype(np.float32)
    return x / np.max(np.abs(x), axis=1, keepdims=True)


def torch_embed(model, waveforms):
    with torch.no_grad():
        return model(torch.from_numpy(waveforms)[..., None]).numpy()


def keras_embed(encoder, waveforms):
    # One clip per call: the embed tests use the same input shape (fewer JAX compilations).
    return np.concatenate([keras.ops.convert_to_numpy(encoder(w[None], training=False))
                           for w in waveforms])


def assert_nothing_written(out):
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


# barlow_twins.pt has exactly contrastive.pt's layout (module.backbone. + module.head.).
@pytest.mark.parametrize("method", [m for m in METHODS if m != "barlow_twins"])
def test_converted_encoder_matches_pytorch_in_each_released_layout(
        method, tmp_path, tiny_encoder_config, waveforms):
    student = reference_backbone(tiny_encoder_config, seed=1)
    teacher = reference_backbone(tiny_encoder_config, seed=2)
    path = tmp_path / f"{method}.pt"
    write_released_checkpoint(path, method, student, teacher)
    out = tmp_path / "preset"

    encoder, _ = convert.convert_checkpoint(path, out, heads=tiny_encoder_config["heads"])

    np.testing.assert_allclose(keras_embed(encoder, waveforms), torch_embed(student, waveforms),
                               atol=PARITY_ATOL, rtol=0)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["method"] == ("vicreg" if method == "feature_stats" else method)
    assert meta["source"]["prefix"] == STUDENT_PREFIX[method] + "backbone."
    assert meta["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["checkpoint"]["epoch"] == 37
    assert meta["checkpoint"]["gin_info"][0].startswith("import")
    assert meta["sample_rate"] == 16000 and "MIT" in meta["licence"]
    assert meta["frontend_check"] == "window and mel filterbank match the Keras frontend"


def test_full_size_contrastive_checkpoint_matches_pytorch(tmp_path, waveforms):
    student = reference_backbone({}, seed=3)  # the paper's model: width 16, (3, 4, 6, 3), 1024-d
    path = tmp_path / "contrastive.pt"
    write_released_checkpoint(path, "contrastive", student)

    encoder, meta = convert.convert_checkpoint(path, tmp_path / "preset")

    assert meta["encoder_config"] == {"width": 16, "layers": [3, 4, 6, 3], "heads": 8,
                                      "output_dim": 1024}
    assert sum(int(np.prod(w.shape)) for w in encoder.trainable_weights) == 2_800_392
    expected = torch_embed(student, waveforms)
    np.testing.assert_allclose(keras_embed(encoder, waveforms), expected, atol=PARITY_ATOL, rtol=0)


def test_teacher_branch_converts_the_ema_teacher(tmp_path, tiny_encoder_config, waveforms):
    student = reference_backbone(tiny_encoder_config, seed=4)
    teacher = reference_backbone(tiny_encoder_config, seed=5)
    path = tmp_path / "byol.pt"
    write_released_checkpoint(path, "byol", student, teacher)

    encoder, meta = convert.convert_checkpoint(path, tmp_path / "teacher", branch="teacher",
                                               heads=tiny_encoder_config["heads"])

    assert meta["source"]["prefix"] == "teacher.backbone."
    got = keras_embed(encoder, waveforms)
    np.testing.assert_allclose(got, torch_embed(teacher, waveforms), atol=PARITY_ATOL, rtol=0)
    assert np.max(np.abs(got - torch_embed(student, waveforms))) > 100 * PARITY_ATOL


@pytest.mark.backend_independent
@pytest.mark.parametrize("config", [
    dict(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32),
    dict(width=8, layers=(1, 2, 3, 1), heads=4, output_dim=48),
    dict(width=16, layers=(3, 4, 6, 3), heads=8, output_dim=1024),
])
def test_encoder_size_is_inferred_from_tensor_shapes(config):
    state = reference_backbone(config, seed=0).state_dict()
    assert convert.infer_encoder_config(state, heads=config["heads"]) == config


@pytest.mark.backend_independent
def test_student_and_teacher_prefixes_are_detected_without_a_method_table(tiny_encoder_config):
    from released_checkpoints import released_state_dict

    net = reference_backbone(tiny_encoder_config, seed=0)
    byol = released_state_dict("byol", net)
    assert convert.select_prefix(byol, "student") == "student.module.backbone."
    assert convert.select_prefix(byol, "teacher") == "teacher.backbone."
    assert convert.select_prefix(released_state_dict("contrastive", net)) == "module.backbone."
    assert convert.select_prefix(net.state_dict()) == ""  # a bare Backbone state dict
    with pytest.raises(convert.CheckpointError, match="No teacher encoder.*module.backbone."):
        convert.select_prefix(released_state_dict("contrastive", net), "teacher")


def _tamper_missing(state, prefix):
    del state[prefix + "embedding.layer1.0.bn2.running_var"]
    return "embedding.layer1.0.bn2.running_var"


def _tamper_extra(state, prefix):
    state[prefix + "embedding.layer1.0.conv4.weight"] = torch.zeros(3)
    return "embedding.layer1.0.conv4.weight"


def _tamper_shape(state, prefix):
    key = "embedding.layer2.0.conv2.weight"
    state[prefix + key] = torch.zeros(8, 8, 5, 5)
    return key


@pytest.mark.parametrize("tamper", [_tamper_missing, _tamper_extra, _tamper_shape],
                         ids=["missing_key", "extra_key", "wrong_shape"])
def test_tampered_state_dict_is_reported_by_key_and_writes_nothing(
        tamper, tmp_path, tiny_encoder_config):
    path = tmp_path / "contrastive.pt"
    checkpoint = write_released_checkpoint(path, "contrastive",
                                           reference_backbone(tiny_encoder_config, seed=0))
    key = tamper(checkpoint["model"], "module.backbone.")
    torch.save(checkpoint, path)
    out = tmp_path / "preset"

    with pytest.raises(StateDictMismatchError, match=key.replace(".", r"\.")):
        convert.convert_checkpoint(path, out, heads=tiny_encoder_config["heads"])
    assert_nothing_written(out)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.backend_independent
def test_pickle_that_would_run_code_is_refused_and_not_run(tmp_path, tiny_encoder_config):
    path, marker, out = tmp_path / "contrastive.pt", tmp_path / "ran", tmp_path / "preset"
    write_released_checkpoint(path, "contrastive", reference_backbone(tiny_encoder_config, 0),
                              loss_fn=_RunsCode(marker))

    with pytest.raises(convert.CheckpointError, match=r"refused.*posix\.system"):
        convert.convert_checkpoint(path, out)
    assert not marker.exists()
    assert_nothing_written(out)


@pytest.mark.backend_independent
@pytest.mark.parametrize("damage", ["truncated", "not_a_checkpoint"])
def test_unreadable_file_gives_a_clear_error_and_writes_nothing(damage, tmp_path,
                                                               tiny_encoder_config):
    path, out = tmp_path / "contrastive.pt", tmp_path / "preset"
    write_released_checkpoint(path, "contrastive", reference_backbone(tiny_encoder_config, 0))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"<html>404</html>")

    with pytest.raises(convert.CheckpointError, match="not a readable PyTorch checkpoint"):
        convert.convert_checkpoint(path, out)
    assert_nothing_written(out)


def _as_numpy1_pickle(path):
    """Rewrite a checkpoint's pickle as numpy 1.x wrote it (``numpy.core``, not ``numpy._core``)."""
    with zipfile.ZipFile(path) as archive:
        members = [(name, archive.read(name)) for name in archive.namelist()]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            if name.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            archive.writestr(name, data)


@pytest.mark.backend_independent
@pytest.mark.parametrize("numpy_names", ["numpy2", "numpy1"])
def test_numpy_floats_in_run_metadata_load_without_running_code(numpy_names, tmp_path,
                                                                tiny_encoder_config):
    # Plain torch.load(weights_only=True) refuses numpy scalars; the authors' schema has them.
    path = tmp_path / "contrastive.pt"
    write_released_checkpoint(path, "contrastive", reference_backbone(tiny_encoder_config, 0),
                              numpy_scalars=True)
    if numpy_names == "numpy1":
        _as_numpy1_pickle(path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)

    checkpoint = convert.load_checkpoint(path)

    assert checkpoint["val_loss"] == 4.25
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == 2.5e-4
    info = convert.inspect_checkpoint(path, heads=tiny_encoder_config["heads"])
    assert info["val_loss"] == 4.25 and info["epoch"] == 37
    assert info["encoders"]["module.backbone."]["config"]["width"] == 4


def test_differing_frontend_buffers_warn_loudly(tmp_path, tiny_encoder_config, capsys):
    path = tmp_path / "contrastive.pt"
    checkpoint = write_released_checkpoint(path, "contrastive",
                                           reference_backbone(tiny_encoder_config, 0))
    checkpoint["model"]["module.backbone." + FILTERBANK_KEY] *= 1.5
    torch.save(checkpoint, path)

    code = main(["convert-deezer", str(path), "--out", str(tmp_path / "preset"), "--heads", "2"])

    assert code == 0
    assert "WARNING" in capsys.readouterr().err
    meta = json.loads((tmp_path / "preset" / "metadata.json").read_text())
    assert meta["frontend_check"].startswith("mel filterbank differs")
    with pytest.warns(UserWarning, match="frontend buffers differ"):
        convert.convert_checkpoint(path, tmp_path / "again", heads=2)


def test_cli_reports_a_mismatch_by_name_and_exits_nonzero(tmp_path, tiny_encoder_config, capsys):
    path = tmp_path / "byol.pt"
    checkpoint = write_released_checkpoint(path, "byol", reference_backbone(tiny_encoder_config, 0))
    _tamper_missing(checkpoint["model"], "student.module.backbone.")
    torch.save(checkpoint, path)
    out = tmp_path / "preset"

    code = main(["convert-deezer", str(path), "--out", str(out), "--heads", "2"])

    err = capsys.readouterr().err
    assert code == 1
    assert "embedding.layer1.0.bn2.running_var" in err and "nothing was written" in err
    assert_nothing_written(out)


def test_existing_preset_is_kept_unless_overwrite(tmp_path, tiny_encoder_config):
    path, out = tmp_path / "contrastive.pt", tmp_path / "preset"
    out.mkdir()
    (out / "config.json").write_text("an older preset")
    write_released_checkpoint(path, "contrastive", reference_backbone(tiny_encoder_config, 0))

    with pytest.raises(FileExistsError, match="--overwrite"):
        convert.convert_checkpoint(path, out, heads=2)
    assert (out / "config.json").read_text() == "an older preset"
    convert.convert_checkpoint(path, out, heads=2, overwrite=True)

    meta = json.loads((out / "metadata.json").read_text())
    assert meta["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert MusicEncoder.from_preset(out, load_weights=False).get_config()["width"] == 4


@pytest.mark.backend_independent
def test_cli_inspect_prints_run_metadata_and_writes_nothing(tmp_path, tiny_encoder_config, capsys):
    path = tmp_path / "clustering.pt"
    write_released_checkpoint(path, "clustering", reference_backbone(tiny_encoder_config, 0))

    assert main(["convert-deezer", str(path), "--inspect", "--heads", "2"]) == 0

    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "clustering" and info["epoch"] == 37
    assert set(info["encoders"]) == {"student.module.backbone.", "teacher.backbone."}
    assert info["other_tensors"] == {"student.module.head.ops": 7, "teacher.head.ops": 7}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clustering.pt"]


@pytest.mark.backend_independent
def test_missing_torch_is_explained(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" now raises ImportError

    with pytest.raises(ImportError, match=r"pip install 'keras-music-ssl\[torch\]'"):
        convert.load_checkpoint(tmp_path / "contrastive.pt")
