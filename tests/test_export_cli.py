"""``kmssl export`` and ``kmssl tag``: preset + probe head in, exported tagger out, tags printed."""

import json

import keras
import numpy as np
import pytest
import soundfile as sf
from conftest import TINY_ENCODER

from keras_music_ssl.backbone import MusicEncoder
from keras_music_ssl.cli import main
from keras_music_ssl.export import load_exported, synthetic_clips
from keras_music_ssl.tagger import TagHead, save_tag_head

pytestmark = pytest.mark.tf_only

TAGS = ["ambient", "bass", "choir", "drums", "electronic", "flute", "guitar"]
SR = 16000


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A preset, a probe head, the tagger and embedder exported by the CLI, and audio files."""
    root = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(2)
    encoder = MusicEncoder(**TINY_ENCODER)
    encoder.save_to_preset(root / "preset", method="test")
    head = TagHead(TAGS)
    head(np.zeros((1, encoder.output_dim), "float32"))
    save_tag_head(head, root / "probe.keras")
    assert main(["export", "--preset", str(root / "preset"), "--head", str(root / "probe.keras"),
                 "--format", "savedmodel", "--out", str(root / "tagger")]) == 0
    assert main(["export", "--preset", str(root / "preset"), "--head", str(root / "probe.keras"),
                 "--format", "tflite", "--out", str(root / "tagger.tflite")]) == 0
    assert main(["export", "--preset", str(root / "preset"), "--head", str(root / "probe.keras"),
                 "--format", "onnx", "--out", str(root / "tagger_onnx")]) == 0
    assert main(["export", "--preset", str(root / "preset"), "--format", "savedmodel",
                 "--out", str(root / "embedder")]) == 0
    clips = synthetic_clips(3, seed=4)
    sf.write(root / "song.wav", np.concatenate([clips[1], clips[2][:20000]]) * 0.5, SR)
    sf.write(root / "stereo44k.flac", np.stack([clips[0][:40000], clips[2][:40000]], axis=1) * 0.3, 44100)
    (root / "broken.wav").write_bytes(b"RIFF....WAVEfmt not really audio")
    return root, encoder, head


def test_cli_exports_a_tagger_from_preset_and_probe_head(workspace):
    root, encoder, head = workspace
    runner = load_exported(root / "tagger")
    assert runner.metadata["kind"] == "tagger" and runner.metadata["tags"] == TAGS
    clips = synthetic_clips(2, seed=6)
    expected = keras.ops.convert_to_numpy(head(encoder.predict(clips, verbose=0), training=False))
    np.testing.assert_allclose(runner.clips(clips)["probabilities"], expected, atol=1e-4, rtol=0)


def test_cli_without_head_exports_the_embedder(workspace):
    root, encoder, _ = workspace
    runner = load_exported(root / "embedder")
    assert runner.metadata["kind"] == "embedder" and runner.metadata["tags"] == []
    assert {"embed", "embed_track", "serving_default"} <= set(runner.signatures)
    clips = synthetic_clips(2, seed=6)
    np.testing.assert_allclose(runner.clips(clips)["embedding"], encoder.predict(clips, verbose=0),
                               atol=1e-4, rtol=0)
    track = np.concatenate([clips[0], clips[1][:30000]]) * 0.3
    expected = encoder.predict(np.stack([clips[0], np.pad(clips[1][:30000], (0, 34000))]), verbose=0)
    np.testing.assert_allclose(runner.track(track)["embedding"], expected.mean(axis=0), atol=1e-4, rtol=0)


def test_cli_tag_prints_top_tags_best_first(workspace, capsys):
    from keras_music_ssl.data import load_audio

    root, encoder, head = workspace
    assert main(["tag", str(root / "song.wav"), "--model", str(root / "tagger"), "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == str(root / "song.wav") and len(lines) == 4
    scores = [float(line.split()[0]) for line in lines[1:]]
    names = [line.split()[1] for line in lines[1:]]
    # Reference: the chunk-and-mean definition on the decoded file.
    from keras_music_ssl.embed import embed_waveform

    embedding = embed_waveform(encoder, load_audio(root / "song.wav"))
    probs = keras.ops.convert_to_numpy(head(embedding[None], training=False))[0]
    best = np.argsort(-probs)[:3]
    assert names == [TAGS[i] for i in best]
    np.testing.assert_allclose(scores, probs[best], atol=1e-3)


def test_cli_tag_json_reports_results_and_skipped_files(workspace, capsys):
    root, _, _ = workspace
    files = [root / "song.wav", root / "broken.wav", root / "stereo44k.flac", root / "missing.mp3"]
    code = main(["tag", *map(str, files), "--model", str(root / "tagger"), "--json"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 1  # some files were skipped
    assert [r["path"] for r in report["results"]] == [str(root / "song.wav"), str(root / "stereo44k.flac")]
    assert [r["num_chunks"] for r in report["results"]] == [2, 1]  # 5.25 s and 0.9 s
    assert all(len(r["tags"]) == 5 for r in report["results"])
    assert {s["path"]: s["reason"] for s in report["skipped"]} == {
        str(root / "broken.wav"): "undecodable", str(root / "missing.mp3"): "missing"}
    assert "2 of 4 files skipped" in captured.err


@pytest.mark.parametrize("other,tolerance", [("tagger.tflite", 1e-3), ("tagger_onnx", 1e-4)])
def test_cli_tag_gives_the_same_tags_from_every_format(workspace, capsys, other, tolerance):
    root, _, _ = workspace
    outputs = []
    for model in (root / "tagger", root / other):
        assert main(["tag", str(root / "song.wav"), "--model", str(model), "--json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out)["results"][0]["tags"])
    assert [t["tag"] for t in outputs[0]] == [t["tag"] for t in outputs[1]]
    np.testing.assert_allclose([t["score"] for t in outputs[0]], [t["score"] for t in outputs[1]], atol=tolerance)


def test_cli_tag_errors_for_a_wrong_path_and_a_model_without_tags(workspace, capsys):
    root, _, _ = workspace
    assert main(["tag", str(root / "song.wav"), "--model", str(root / "nope.tflite")]) == 2
    assert "No exported model" in capsys.readouterr().err
    assert main(["tag", str(root / "song.wav"), "--model", str(root / "preset")]) == 2
    assert "not a SavedModel" in capsys.readouterr().err
    assert main(["tag", str(root / "song.wav"), "--model", str(root / "embedder")]) == 2
    assert "has no tags" in capsys.readouterr().err


def test_cli_export_errors_are_clear_and_write_nothing(workspace, tmp_path, capsys):
    root, _, _ = workspace
    out = tmp_path / "out"
    assert main(["export", "--preset", str(tmp_path / "no_preset"), "--out", str(out)]) == 2
    assert "Unknown preset" in capsys.readouterr().err
    assert main(["export", "--preset", "deezer_byol", "--weights-dir", str(tmp_path), "--out", str(out)]) == 2
    assert "cannot connect" in capsys.readouterr().err
    wrong = TagHead(["x"])
    wrong(np.zeros((1, 5), "float32"))
    save_tag_head(wrong, tmp_path / "wrong.keras")
    assert main(["export", "--preset", str(root / "preset"), "--head", str(tmp_path / "wrong.keras"),
                 "--out", str(out)]) == 2
    assert "expects 5-d embeddings" in capsys.readouterr().err
    assert main(["export", "--preset", str(root / "preset"), "--out", str(root / "tagger")]) == 2
    assert "exists" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow  # a calibrated full-integer conversion: ~15 s
def test_cli_full_int8_export_calibrates_on_given_audio(workspace, tmp_path, capsys):
    root, encoder, head = workspace
    out = tmp_path / "tagger-int8.tflite"
    assert main(["export", "--preset", str(root / "preset"), "--head", str(root / "probe.keras"),
                 "--format", "tflite-int8", "--calibration", str(root / "song.wav"), "--out", str(out)]) == 2
    assert "only applies to --format tflite-int8-full" in capsys.readouterr().err
    assert main(["export", "--preset", str(root / "preset"), "--head", str(root / "probe.keras"),
                 "--format", "tflite-int8-full", "--out", str(out), "--calibration",
                 str(root / "song.wav"), str(root / "stereo44k.flac"), str(root / "broken.wav")]) == 0
    assert "skipping calibration file" in capsys.readouterr().err  # broken.wav
    runner = load_exported(out)
    assert runner.metadata["quantization"] == "full_int8"
    clips = synthetic_clips(2, seed=6)
    expected = keras.ops.convert_to_numpy(head(encoder.predict(clips, verbose=0), training=False))
    np.testing.assert_allclose(runner.clips(clips)["probabilities"], expected, atol=0.05)
