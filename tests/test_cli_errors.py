"""Every command x bad input: exit 2 and one line naming the problem (no traceback), nothing
written outside --out, nothing deleted that the command did not make (issue 24's matrix for
pretrain, embed, export, tag and the command line itself; prepare, probe and compare have their
own in test_data_prepare.py and test_probe_reliability.py)."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import soundfile as sf

from keras_music_ssl import cli


def one_line_failure(capsys, argv, expect):
    """Run ``kmssl argv``; assert exit 2 and a single stderr line containing ``expect``."""
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert expect in lines[0], lines[0]
    return lines[0]


def tree(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    import keras

    from conftest import TINY_ENCODER
    from keras_music_ssl import MusicEncoder

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("presets") / "tiny"
    MusicEncoder(**TINY_ENCODER).save_to_preset(folder, method="test")
    return folder


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "song.wav"
    sf.write(path, 0.3 * np.sin(np.arange(16000 * 5) * 0.05).astype(np.float32), 16000)
    return str(path)


def broken_copy(preset, tmp_path, name, damage):
    import shutil

    target = tmp_path / name
    shutil.copytree(preset, target)
    damage(target)
    return str(target)


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


BROKEN_PRESETS = {
    "truncated config": (lambda p: truncate(p / "config.json"), "not valid JSON"),
    "random config": (lambda p: (p / "config.json").write_text('{"class_name": "Nope", "config": {}}'),
                      "does not describe a model"),
    "truncated weights": (lambda p: truncate(p / "model.weights.h5"), "damaged or replaced"),
    "random weights": (lambda p: (p / "model.weights.h5").write_bytes(os.urandom(4096)), "damaged or replaced"),
    # a weights file the metadata records nothing about (a preset of keras-music-ssl < 0.6)
    "random unrecorded weights": (lambda p: (unrecord(p), (p / "model.weights.h5").write_bytes(os.urandom(4096))),
                                  "cannot be loaded"),
}


def unrecord(folder, record=False):
    """Drop the weights file's size and SHA-256 from the preset's metadata (``record``: write the
    current file's instead, as ``save_to_preset`` would have)."""
    import hashlib
    import json

    meta = json.loads((folder / "metadata.json").read_text())
    del meta["files"]
    if record:
        data = (folder / "model.weights.h5").read_bytes()
        meta["files"] = {"model.weights.h5": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
    (folder / "metadata.json").write_text(json.dumps(meta))


def nan_preset(preset, tmp_path):
    """A copy of ``preset`` with one NaN weight."""
    import h5py

    def poison(folder):
        with h5py.File(folder / "model.weights.h5", "r+") as f:
            datasets = []
            f.visititems(lambda name, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) and obj.size else None)
            values = datasets[0][...]
            values.flat[0] = np.nan
            datasets[0][...] = values
        unrecord(folder, record=True)  # saved so: a diverged model that save_to_preset wrote

    return broken_copy(preset, tmp_path, "nan", poison)


# --- the command line itself -----------------------------------------------------------------------

@pytest.mark.backend_independent
@pytest.mark.parametrize("backend, expect", [("bogus", "is not a Keras backend"), ("numpy", None)])
def test_an_unknown_keras_backend_is_one_line(backend, expect, tmp_path):
    env = dict(os.environ, KERAS_BACKEND=backend)
    done = subprocess.run([sys.executable, "-m", "keras_music_ssl", "pretrain", "--out", str(tmp_path / "r"),
                           "--seed", "-1"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("kmssl")]
    assert len(lines) == 1 and (expect or "--seed must be >= 0") in lines[0], done.stderr
    assert not (tmp_path / "r").exists()


# --- pretrain ----------------------------------------------------------------------------------------

@pytest.mark.backend_independent
@pytest.mark.parametrize("option, value, expect", [
    ("--min-gap", "-1", "--min-gap must be >= 0.0"),
    ("--seed", "-1", "--seed must be >= 0"),
    ("--learning-rate", "-1", "--learning-rate must be > 0.0"),
    ("--learning-rate", "inf", "--learning-rate must be a finite number"),
    ("--gain-db", "nan", "--gain-db must be a finite number"),
    ("--noise-snr-db", "nan", "--noise-snr-db must be a finite number"),
    ("--polarity", "2", "--polarity must be <= 1.0"),
    ("--weight-decay", "-0.1", "--weight-decay must be >= 0.0"),
    ("--warmup-epochs", "-1", "--warmup-epochs must be >= 0"),
    ("--batch-size", "1", "--batch-size must be >= 2"),
])
def test_pretrain_refuses_each_bad_option_before_writing_anything(option, value, expect, tmp_path, capsys):
    out = tmp_path / "run"
    one_line_failure(capsys, ["pretrain", "--out", str(out), "--encoder", "tiny", option, value], expect)
    assert not out.exists()  # the corrected command starts afresh, not "other settings"


@pytest.mark.backend_independent
def test_pretrain_refuses_a_broken_config_and_an_out_that_is_a_file(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text('{"config": {"method": "byol", "epo')
    one_line_failure(capsys, ["pretrain", "--out", str(tmp_path / "a"), "--config", str(config)], "not valid JSON")
    config.write_text('[1, 2]')
    one_line_failure(capsys, ["pretrain", "--out", str(tmp_path / "b"), "--config", str(config)], "no 'config'")
    config.write_text('{"config": {"method": "byol", "colour": "red"}}')
    one_line_failure(capsys, ["pretrain", "--out", str(tmp_path / "c"), "--config", str(config)],
                     "unknown settings colour")
    config.write_text('{"config": {"epochs": "many"}}')
    one_line_failure(capsys, ["pretrain", "--out", str(tmp_path / "d"), "--config", str(config)],
                     "--epochs must be a int")
    one_line_failure(capsys, ["pretrain", "--out", str(tmp_path / "e"), "--config", str(tmp_path / "none.json")],
                     "no such file")
    (tmp_path / "file").write_text("precious")
    one_line_failure(capsys, ["pretrain", "--out", str(tmp_path / "file"), "--encoder", "tiny"], "is a file")
    assert (tmp_path / "file").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["config.json", "file"]


# --- export ------------------------------------------------------------------------------------------

@pytest.mark.backend_independent  # refused before any model is loaded
def test_export_overwrite_never_deletes_what_export_did_not_make(preset, tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("precious")
    for fmt in ("savedmodel", "onnx"):
        one_line_failure(capsys, ["export", "--preset", str(preset), "--format", fmt, "--out", str(victim),
                                  "--overwrite"], "not an export of keras_music_ssl")
    one_line_failure(capsys, ["export", "--preset", str(preset), "--format", "tflite", "--out", str(victim),
                              "--overwrite"], "is a folder")
    (tmp_path / "model.tflite").write_bytes(b"my own model")
    one_line_failure(capsys, ["export", "--preset", str(preset), "--format", "tflite", "--out",
                              str(tmp_path / "model.tflite"), "--overwrite"], "not an export")
    assert (victim / "notes.txt").read_text() == "precious"
    assert (tmp_path / "model.tflite").read_bytes() == b"my own model"
    assert sorted(os.listdir(tmp_path)) == ["model.tflite", "victim"]


@pytest.mark.parametrize("damage", sorted(BROKEN_PRESETS))
def test_a_broken_preset_is_one_line_in_embed_and_export(damage, preset, song, tmp_path, capsys):
    broken = broken_copy(preset, tmp_path, "broken", BROKEN_PRESETS[damage][0])
    expect = BROKEN_PRESETS[damage][1]
    one_line_failure(capsys, ["embed", song, "--preset", broken, "--out", str(tmp_path / "e.npz")], expect)
    one_line_failure(capsys, ["export", "--preset", broken, "--format", "tflite", "--out",
                              str(tmp_path / "m.tflite")], expect)
    assert not (tmp_path / "e.npz").exists() and not (tmp_path / "m.tflite").exists()


def test_a_preset_with_a_nan_weight_is_refused_by_embed_and_export(preset, song, tmp_path, capsys):
    poisoned = nan_preset(preset, tmp_path)
    one_line_failure(capsys, ["embed", song, "--preset", poisoned, "--out", str(tmp_path / "e.npz")],
                     "NaN or infinite values")
    one_line_failure(capsys, ["export", "--preset", poisoned, "--format", "tflite", "--out",
                              str(tmp_path / "m.tflite")], "NaN or infinite values")
    assert sorted(os.listdir(tmp_path)) == ["nan"]


# --- embed -------------------------------------------------------------------------------------------

def test_embed_checks_its_output_before_embedding(preset, song, tmp_path, capsys):
    folder = tmp_path / "existing"
    folder.mkdir()
    cwd = set(os.listdir())
    one_line_failure(capsys, ["embed", song, "--preset", str(preset), "--out", str(folder)], "is a folder")
    assert os.listdir(folder) == [] and sorted(os.listdir(tmp_path)) == ["existing"]
    assert set(os.listdir()) == cwd  # no .partial left in the working directory

    out = tmp_path / "e.npz"
    assert cli.main(["embed", song, "--preset", str(preset), "--out", str(out)]) == 0
    before = out.read_bytes()
    one_line_failure(capsys, ["embed", song, "--preset", str(preset), "--out", str(out)], "--resume to continue")
    assert out.read_bytes() == before
    assert cli.main(["embed", song, "--preset", str(preset), "--out", str(out), "--overwrite"]) == 0

    out.write_bytes(before[:len(before) // 2])  # damaged outside kmssl
    one_line_failure(capsys, ["embed", song, "--preset", str(preset), "--out", str(out), "--resume"],
                     "not a readable embeddings file")
    for option, value in (("--batch-size", "0"), ("--save-every", "nan"), ("--max-duration", "-1")):
        one_line_failure(capsys, ["embed", song, "--preset", str(preset), "--out", str(tmp_path / "x.npz"),
                                  option, value], option)
    assert sorted(os.listdir(tmp_path)) == ["e.npz", "existing"]


def test_embed_and_tag_say_when_a_long_file_was_cut(preset, tmp_path, capsys):
    long = tmp_path / "long.wav"
    sf.write(long, 0.1 * np.ones(16000 * 9, np.float32), 16000)
    out = tmp_path / "e.npz"
    capsys.readouterr()
    assert cli.main(["embed", str(long), "--preset", str(preset), "--out", str(out), "--max-duration", "4"]) == 0
    assert "1 file(s) longer than 4 s: only their first 4 s were embedded" in capsys.readouterr().err
    assert cli.main(["embed", str(long), "--preset", str(preset), "--out", str(out), "--overwrite",
                     "--max-duration", "0"]) == 0
    assert "longer than" not in capsys.readouterr().err


# --- tag ---------------------------------------------------------------------------------------------

@pytest.mark.backend_independent
@pytest.mark.parametrize("metadata, expect", [
    (b'{"kind": "tagger", "tags": ["piano"', "not valid JSON"),
    (b'{"kind": "tagger", "tags": "piano", "sample_rate": 16000, "clip_samples": 64000}', "tags not a list"),
    (b'{"kind": "tagger", "tags": ["piano"], "sample_rate": 0, "clip_samples": 64000}', "sample_rate 0"),
    (b'["tagger"]', "not a JSON object"),
])
def test_tag_refuses_a_tampered_tflite_metadata_block_in_one_line(metadata, expect, song, tmp_path, capsys):
    model = tmp_path / "tagger.tflite"
    with open(model, "wb") as f:
        f.write(b"\x00" * 64)  # where the flatbuffer would be
        with zipfile.ZipFile(f, "w") as archive:
            archive.writestr("keras_music_ssl.json", metadata)
            archive.writestr("tags.txt", "piano\n")
    one_line_failure(capsys, ["tag", song, "--model", str(model)], expect)


@pytest.mark.backend_independent
def test_a_second_writer_on_one_output_is_refused_at_once(tmp_path):
    from keras_music_ssl import storage

    out = tmp_path / "emb.npz"
    with storage.locked(out, folder=False):
        code = ("import sys; from keras_music_ssl import storage\n"
                "try:\n    storage.locked(sys.argv[1], folder=False).__enter__()\n"
                "except storage.BusyError as e:\n    print(e); sys.exit(3)\n")
        done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 3 and f"pid {os.getpid()}" in done.stdout, done.stdout + done.stderr
    assert not os.path.exists(storage.partial_path(out)) and os.listdir(tmp_path) == []


@pytest.mark.backend_independent
def test_strict_json_refuses_nan_and_atomic_writes_leave_nothing_on_error(tmp_path):
    from keras_music_ssl import storage

    with pytest.raises(storage.StorageError, match="non-finite"):
        storage.write_json(tmp_path / "r.json", {"auc": float("nan")})
    with pytest.raises(RuntimeError):
        with storage.atomic_write(tmp_path / "a.txt") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    storage.write_json(tmp_path / "r.json", {"auc": 0.5})
    assert json.loads((tmp_path / "r.json").read_text()) == {"auc": 0.5}
