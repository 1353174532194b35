"""A full disk: one line and a non-zero exit, and a rerun with space gives the same output as a
clean run. The outputs live on a small tmpfs (root can mount one; skipped with the reason where
it cannot)."""

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def small_disk(folder, size="2M"):
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder, leave_bytes):
    """Fill the file system of ``folder`` until ``leave_bytes`` are free; return the filler."""
    filler = folder / "filler"
    stat = os.statvfs(folder)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave_bytes))
    return filler


def kmssl(*argv, **env):
    done = subprocess.run([sys.executable, "-m", "keras_music_ssl", *map(str, argv)], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **env))
    return done.returncode, [line for line in done.stderr.splitlines() if line.startswith("kmssl")], done.stderr


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
def songs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("songs")
    rng = np.random.default_rng(0)
    for i in range(40):
        sf.write(folder / f"song{i:02d}.wav", 0.1 * rng.standard_normal(16000 * 5).astype(np.float32), 16000)
    return folder


def test_embed_on_a_full_disk_is_one_line_and_a_rerun_with_space_equals_a_clean_run(preset, songs, tmp_path):
    from keras_music_ssl.embed import load_embeddings

    clean = tmp_path / "clean.npz"
    assert kmssl("embed", songs, "--preset", preset, "--out", clean)[0] == 0
    with small_disk(tmp_path / "disk") as disk:
        filler = fill(disk, 2048)
        code, lines, err = kmssl("embed", songs, "--preset", preset, "--out", disk / "e.npz")
        assert code == 2 and "Traceback" not in err, err
        assert len(lines) == 1 and "no space left on the device" in lines[0] and "e.npz" in lines[0], err
        assert not (disk / "e.npz").exists() and sorted(os.listdir(disk)) == ["filler"]
        filler.unlink()
        assert kmssl("embed", songs, "--preset", preset, "--out", disk / "e.npz")[0] == 0
        a, b = load_embeddings(disk / "e.npz"), load_embeddings(clean)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]


@pytest.mark.tf_only  # export
def test_export_on_a_full_disk_is_one_line_and_a_rerun_with_space_equals_a_clean_run(preset, tmp_path):
    clean = tmp_path / "clean.tflite"
    assert kmssl("export", "--preset", preset, "--format", "tflite", "--out", clean)[0] == 0
    with small_disk(tmp_path / "disk") as disk:
        filler = fill(disk, 64 * 1024)
        code, lines, err = kmssl("export", "--preset", preset, "--format", "tflite", "--out", disk / "m.tflite")
        assert code == 2 and "Traceback" not in err, err
        assert len(lines) == 1 and "no space left on the device" in lines[0], err
        assert sorted(os.listdir(disk)) == ["filler"]
        filler.unlink()
        assert kmssl("export", "--preset", preset, "--format", "tflite", "--out", disk / "m.tflite")[0] == 0
        from keras_music_ssl.export import load_exported

        clip = np.sin(np.arange(64000, dtype=np.float32) * 0.01)[None]
        np.testing.assert_array_equal(load_exported(disk / "m.tflite").clips(clip)["embedding"],
                                      load_exported(clean).clips(clip)["embedding"])


@pytest.mark.tf_only  # the write paths are backend-independent files; one backend keeps the slow step short
def test_pretrain_on_a_full_disk_stops_in_one_line_and_resumes_with_space(tmp_path, songs):
    import keras

    from keras_music_ssl import MusicEncoder

    argv = ["pretrain", "--data", songs, "--encoder", "tiny", "--batch-size", "4", "--epochs", "3",
            "--steps-per-epoch", "2", "--quiet"]
    assert kmssl(*argv, "--out", tmp_path / "clean")[0] == 0
    with small_disk(tmp_path / "disk", "64M") as disk:
        filler = fill(disk, 2 * 1024 * 1024)  # room for about one epoch's checkpoint, backup and logs
        code, lines, err = kmssl(*argv, "--out", disk / "run")
        assert code == 2 and "Traceback" not in err, err
        assert len(lines) == 1 and "no space left on the device" in lines[0], err
        filler.unlink()
        code, _, err = kmssl(*argv, "--out", disk / "run")
        assert code == 0, err
        a = MusicEncoder.from_preset(disk / "run" / "preset").get_weights()
        b = MusicEncoder.from_preset(tmp_path / "clean" / "preset").get_weights()
        for wa, wb in zip(a, b):
            np.testing.assert_allclose(wa, wb, atol=1e-5)
    keras.backend.clear_session()
