"""One track, one embedding: ``embed_files`` (Python, every backend), the SavedModel, the
TFLite file and the ONNX export give the track embedding that ``keras_music_ssl/track.py``
defines, on the same WAV files: short, exactly 4 s, 4 s + 1 sample, long, silent, and empty
(an error everywhere).

The reference is written here in numpy (peak-normalise, zero-pad the end, cut into 4 s
chunks) around the encoder's own clip outputs, so what is tested is the track rule.
Tolerances: Python 1e-4 (float32 batching), SavedModel 1e-4, TFLite 1e-3, ONNX 1e-4.
"""

import keras
import numpy as np
import pytest
import soundfile as sf
from conftest import TINY_ENCODER

from keras_music_ssl import MusicEncoder
from keras_music_ssl.data import load_audio
from keras_music_ssl.embed import embed_files, embed_waveform

SR, L = 16000, 64000
LENGTHS = {"short": 23000, "4s": L, "4s+1": L + 1, "long": 9 * L + 777, "silent": 2 * L + 10}


def _tracks():
    rng = np.random.default_rng(11)
    t = np.arange(max(LENGTHS.values())) / SR
    music = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.7 * t)) + 0.05 * rng.normal(size=t.size)
    tracks = {name: (0.6 * music[:n]).astype(np.float32) for name, n in LENGTHS.items()}
    tracks["silent"][:] = 0.0
    tracks["4s+1"][-1] = 0.55  # the lone sample of the second chunk is not silence
    return tracks


def reference(encoder, waveform):
    """(mean embedding (D,), chunk count) of a track, by the rule written out in numpy."""
    peak = np.abs(waveform).max()
    x = waveform / peak if peak > 0 else waveform
    count = -(-x.size // L)
    padded = np.zeros(count * L, np.float32)
    padded[:x.size] = x
    clips = padded.reshape(count, L)
    outputs = np.stack([keras.ops.convert_to_numpy(encoder(clip[None], training=False))[0] for clip in clips])
    return outputs.mean(axis=0), count


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(5)
    model = MusicEncoder(**TINY_ENCODER)
    audio = np.random.default_rng(0).normal(size=(4, L)).astype(np.float32)
    for _ in range(3):  # non-trivial BatchNorm statistics
        model(audio, training=True)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tracks")
    paths = {}
    for name, x in {**_tracks(), "empty": np.zeros(0, np.float32)}.items():
        paths[name] = folder / f"{name}.wav"
        sf.write(paths[name], x, SR, subtype="FLOAT")  # float WAV: decoding is exact
    return paths


def test_embed_files_follows_the_track_rule_on_every_length(encoder, files):
    names = list(LENGTHS)
    result = embed_files(encoder, [files[n] for n in names] + [files["empty"]], batch_size=4, progress=False)
    assert result.paths == [str(files[n]) for n in names]
    assert [p for p, _ in result.skipped] == [str(files["empty"])]
    for name, got in zip(names, result.embeddings):
        expected, _ = reference(encoder, load_audio(files[name]))
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0, err_msg=name)
    with pytest.raises(ValueError, match="empty"):
        embed_waveform(encoder, np.zeros(0, np.float32))


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory):
    from keras_music_ssl.export import export

    root = tmp_path_factory.mktemp("exported")
    return {fmt: export(encoder, root / name, fmt)
            for fmt, name in [("savedmodel", "embedder"), ("tflite", "embedder.tflite"), ("onnx", "embedder_onnx")]}


@pytest.mark.tf_only
@pytest.mark.parametrize("fmt,tolerance", [("savedmodel", 1e-4), ("tflite", 1e-3), ("onnx", 1e-4)])
def test_exported_track_signature_equals_python_on_the_same_files(encoder, files, exported, fmt, tolerance):
    from keras_music_ssl.export import load_exported

    runner = load_exported(exported[fmt])
    for name in LENGTHS:
        waveform = load_audio(files[name])
        expected, count = reference(encoder, waveform)
        out = runner.track(waveform)
        assert int(out["num_chunks"]) == count, name
        np.testing.assert_allclose(out["embedding"], expected, atol=tolerance, rtol=0, err_msg=name)
        np.testing.assert_allclose(out["embedding"], embed_waveform(encoder, waveform), atol=tolerance, rtol=0)
    empty = np.zeros(0, np.float32)
    with pytest.raises(ValueError, match="empty"):
        runner.track(empty)
    raw = runner.run("embed_track", waveform=empty)  # the graph's form of the same rule
    assert int(raw["num_chunks"]) == 0 and np.all(np.isfinite(raw["embedding"]))
