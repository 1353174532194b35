"""Timelines (``timeline.py``): windows of the track contract, streamed decoding, every backend and export.

The reference is written here with numpy: a window is ``(x / max|x|)[s : s + 64000]`` zero-padded,
for ``s = 0, H, 2H, ... < len(x)``; its tags are the Keras tagger's on that window; the track's tags
are the head on the mean embedding of the 4 s chunks. Tolerances: 1e-5 against Keras on the backend
under test; exports 1e-4 (SavedModel, ONNX) and 1e-3 (TFLite), as in the export tests.
"""

import csv
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import soundfile as sf
from conftest import TINY_ENCODER

from keras_music_ssl.backbone import MusicEncoder
from keras_music_ssl.data import AudioError, load_audio
from keras_music_ssl.data.audio import stream_audio
from keras_music_ssl.export import ExportError, export, load_exported, synthetic_clips
from keras_music_ssl.tagger import MusicTagger, TagHead
from keras_music_ssl.timeline import timeline
from keras_music_ssl.track import UnusableTrack, chunk_waveform, peak_normalize, timeline_windows

SR, CLIP = 16000, 64000
TAGS = ["tone", "chord", "noise", "chirp", "beat"]
THRESHOLDS = [0.31, 0.52, 0.47, 0.66, 0.12]


def reference_windows(x, hop):
    """The contract, written out: (windows, start seconds, end seconds)."""
    peak = np.abs(x).max()
    x = x / peak if peak > 0 else x
    starts = list(range(0, len(x), hop))
    windows = np.zeros((len(starts), CLIP), np.float32)
    for i, s in enumerate(starts):
        windows[i, :len(x[s:s + CLIP])] = x[s:s + CLIP]
    return windows, np.array(starts) / SR, np.minimum(np.array(starts) + CLIP, len(x)) / SR


def reference_track(tagger, x):
    chunks = reference_windows(x, CLIP)[0]
    mean = tagger.encoder.predict(chunks, verbose=0).mean(axis=0)
    return mean, keras.ops.convert_to_numpy(tagger.head(mean[None], training=False))[0]


def audio(seconds, seed=0, level=0.6):
    clips = synthetic_clips(int(np.ceil(seconds / 4)) + 1, CLIP, SR, seed=seed).reshape(-1)
    return (clips[:int(round(seconds * SR))] * level).astype(np.float32)


HARD = {"1s": audio(1.0), "4s": audio(4.0, 1), "4s+1": audio(4.0 + 1 / SR, 2), "9.5s": audio(9.5, 3),
        "silent": np.zeros(5 * SR, np.float32)}


@pytest.fixture(scope="module")
def tagger():
    keras.utils.set_random_seed(3)
    model = MusicTagger(MusicEncoder(**TINY_ENCODER), TagHead(TAGS, hidden_units=(8,), use_bias=True,
                                                                 thresholds=THRESHOLDS))
    clips = synthetic_clips(16, CLIP, SR, seed=5)
    for step in range(4):  # BatchNorm statistics away from 0/1, as in a trained model
        model(clips[(step % 2) * 8:(step % 2) * 8 + 8], training=True)
    return model


@pytest.mark.backend_independent
@pytest.mark.parametrize("length", [1, SR, CLIP, CLIP + 1, 152_000])
@pytest.mark.parametrize("hop", [CLIP, 24_000, SR, 100_000])
def test_windows_follow_the_contract(length, hop):
    x = audio(length / SR, seed=length % 7)
    windows, starts = timeline_windows(x, hop)
    expected, start_s, _ = reference_windows(x, hop)
    assert len(windows) == -(-length // hop)
    np.testing.assert_array_equal(windows, expected)
    np.testing.assert_array_equal(starts / SR, start_s)
    if hop == CLIP:  # at a 4 s hop the windows are the track chunks
        np.testing.assert_array_equal(windows, chunk_waveform(peak_normalize(x)))


@pytest.mark.backend_independent
@pytest.mark.parametrize("name,rate,channels", [("a.wav", 16000, 1), ("b.flac", 44100, 2), ("c.ogg", 22050, 2),
                                                ("d.mp3", 44100, 2), ("e.wav", 8000, 3)])
def test_stream_audio_gives_the_samples_of_load_audio(tmp_path, name, rate, channels):
    x = np.random.default_rng(rate).standard_normal((rate * 9 + 77, channels)).astype(np.float32) * 0.2
    sf.write(tmp_path / name, x, rate)
    for limit in (None, 3.3):
        whole = load_audio(tmp_path / name, normalize=False, max_duration=limit)
        blocks = list(stream_audio(tmp_path / name, max_duration=limit))
        if limit is None:
            assert len(blocks) > 1 or rate == 16000  # really block by block
        np.testing.assert_allclose(np.concatenate(blocks), whole, atol=1e-6, rtol=0)  # soxr's stream: to 1 ulp


@pytest.mark.backend_independent
def test_stream_audio_fails_and_decodes_like_load_audio(broken):
    folder, expected = broken
    for name, reason in expected.items():
        path = os.path.join(folder, name)
        if reason is None:  # a usable file: the same samples
            np.testing.assert_array_equal(np.concatenate(list(stream_audio(path))),
                                          load_audio(path, normalize=False, max_duration=None), err_msg=name)
            continue
        with pytest.raises(AudioError) as streamed:
            for _ in stream_audio(path):
                pass
        assert streamed.value.reason == reason, name


@pytest.mark.backend_independent
def test_stream_audio_falls_back_to_audioread_block_by_block(tmp_path, monkeypatch):
    import soundfile

    x = (np.random.default_rng(3).standard_normal((22050 * 7, 2)) * 0.2).astype(np.float32)
    sf.write(tmp_path / "clip.wav", x, 22050, subtype="PCM_16")
    expected = load_audio(tmp_path / "clip.wav", normalize=False)

    def refuse(*args, **kwargs):
        raise RuntimeError("format not supported by libsndfile")

    monkeypatch.setattr(soundfile, "SoundFile", refuse)
    monkeypatch.setattr(soundfile, "info", refuse)
    np.testing.assert_allclose(np.concatenate(list(stream_audio(tmp_path / "clip.wav"))), expected, atol=1e-6)
    np.testing.assert_allclose(load_audio(tmp_path / "clip.wav", normalize=False), expected, atol=1e-6)


@pytest.mark.parametrize("hop", [4.0, 1.5, 7.0])
def test_timeline_of_a_tagger_is_the_contract(tagger, hop):
    for name, x in HARD.items():
        line = timeline(tagger, x, hop=hop, embeddings=True)
        windows, start, end = reference_windows(x, int(hop * SR))
        np.testing.assert_allclose(line.start, start, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(line.end, end, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(line.probabilities, tagger.predict(windows, verbose=0), atol=1e-5, rtol=0)
        np.testing.assert_allclose(line.embeddings, tagger.encoder.predict(windows, verbose=0), atol=1e-5, rtol=0)
        mean, probabilities = reference_track(tagger, x)
        np.testing.assert_allclose(line.track_embedding, mean, atol=1e-5, rtol=0)
        np.testing.assert_allclose(line.track_probabilities, probabilities, atol=1e-5, rtol=0)
        assert line.num_chunks == -(-len(x) // CLIP) and line.duration == len(x) / SR
        np.testing.assert_array_equal(line.decisions(), line.probabilities >= np.float32(THRESHOLDS))


def test_timeline_of_a_file_is_streamed_and_equals_the_waveform(tagger, tmp_path):
    x = audio(61.0, seed=9)
    sf.write(tmp_path / "long.wav", x, SR, subtype="FLOAT")  # 16 kHz float: the decoded samples are x
    from_file = timeline(tagger, tmp_path / "long.wav", hop=2.5, batch_size=4)  # many batches
    in_memory = timeline(tagger, x, hop=2.5)
    np.testing.assert_allclose(from_file.probabilities, in_memory.probabilities, atol=1e-6, rtol=0)
    np.testing.assert_allclose(from_file.track_probabilities, in_memory.track_probabilities, atol=1e-6, rtol=0)
    assert from_file.path == str(tmp_path / "long.wav") and len(from_file.start) == 25
    cut = timeline(tagger, tmp_path / "long.wav", max_duration=10.0)
    assert len(cut.start) == 3 and cut.duration == 10.0


def test_timeline_of_an_encoder_has_embeddings_only(tagger):
    x = HARD["9.5s"]
    line = timeline(tagger.encoder, x, hop=2.0, embeddings=True)
    assert line.probabilities is None and line.track_probabilities is None and line.tags is None
    windows = reference_windows(x, 2 * SR)[0]
    np.testing.assert_allclose(line.embeddings, tagger.encoder.predict(windows, verbose=0), atol=1e-5, rtol=0)


def test_timeline_refuses_what_it_cannot_use(tagger, tmp_path):
    with pytest.raises(UnusableTrack, match="empty"):
        timeline(tagger, np.zeros(0, np.float32))
    with pytest.raises(UnusableTrack, match="non_finite"):
        timeline(tagger, np.array([0.1, np.nan], np.float32))
    with pytest.raises(ValueError, match="hop"):
        timeline(tagger, HARD["1s"], hop=0.0)
    (tmp_path / "junk.mp3").write_bytes(os.urandom(4000))
    with pytest.raises(AudioError) as error:
        timeline(tagger, tmp_path / "junk.mp3")
    assert error.value.reason == "undecodable"
    with pytest.raises(TypeError, match="MusicTagger"):
        timeline(object(), HARD["1s"])


def test_plot_and_json_of_a_timeline(tagger, tmp_path):
    line = timeline(tagger, HARD["9.5s"], hop=2.0)
    data = json.loads(json.dumps(line.to_json()))
    assert data["tags"] == TAGS and len(data["windows"]) == 5
    np.testing.assert_allclose([w["probabilities"] for w in data["windows"]], line.probabilities, atol=1e-6)
    assert data["track"]["decisions"] == [t for t, p, th in zip(TAGS, line.track_probabilities, THRESHOLDS) if p >= th]
    line.plot(tmp_path / "taggram.png", top=3)
    assert (tmp_path / "taggram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def exported(tagger, tmp_path_factory):
    root = tmp_path_factory.mktemp("timeline_exports")
    return {fmt: export(tagger, root / (f"{fmt}.tflite" if fmt == "tflite" else fmt), fmt)
            for fmt in ("savedmodel", "tflite", "onnx")}


@pytest.mark.tf_only
@pytest.mark.parametrize("fmt,tolerance", [("savedmodel", 1e-4), ("onnx", 1e-4), ("tflite", 1e-3)])
def test_exported_timelines_equal_keras(tagger, exported, fmt, tolerance):
    runner = load_exported(exported[fmt])
    assert runner.metadata["thresholds"] == pytest.approx(THRESHOLDS)
    for name, x in HARD.items():
        for hop in (4.0, 1.5):
            ours, theirs = timeline(tagger, x, hop=hop), timeline(runner, x, hop=hop)
            np.testing.assert_array_equal(theirs.start, ours.start)
            np.testing.assert_array_equal(theirs.end, ours.end)
            np.testing.assert_allclose(theirs.probabilities, ours.probabilities, atol=tolerance, rtol=0)
            np.testing.assert_allclose(theirs.track_probabilities, ours.track_probabilities, atol=tolerance, rtol=0)
            # the export's track signature agrees with the timeline's one pass
            np.testing.assert_allclose(runner.track(x)["probabilities"], theirs.track_probabilities, atol=tolerance)
        windows = reference_windows(x, CLIP)[0]
        keras_probabilities = tagger.predict(windows, verbose=0)
        clear = np.abs(keras_probabilities - np.float32(THRESHOLDS)).min() > 10 * tolerance
        if clear:  # the same decisions, where no score sits on a threshold
            np.testing.assert_array_equal(runner.decide(runner.clips(windows)["probabilities"]),
                                          tagger.head.decide(keras_probabilities))


@pytest.mark.tf_only
def test_an_onnx_export_without_head_is_refused_for_timelines(exported, tmp_path):
    import shutil

    old = tmp_path / "old_onnx"
    shutil.copytree(exported["onnx"], old)
    (old / "head.onnx").unlink()  # as exported before 0.9
    runner = load_exported(old)
    assert "head" not in runner.signatures and runner.track(HARD["1s"])["num_chunks"] == 1  # still tags tracks
    with pytest.raises(ExportError, match="export it again"):
        timeline(runner, HARD["1s"])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("timeline_cli")
    sf.write(root / "song.wav", HARD["9.5s"], SR, subtype="FLOAT")
    sf.write(root / "other.wav", audio(13.0, seed=4), SR, subtype="FLOAT")
    (root / "sub").mkdir()
    sf.write(root / "sub" / "song.wav", HARD["4s+1"], SR, subtype="FLOAT")
    return root


@pytest.mark.tf_only
def test_cli_tag_timeline_json_csv_and_plots(tagger, exported, workspace, tmp_path, capsys):
    from keras_music_ssl.cli import main

    files = [workspace / "song.wav", workspace / "other.wav", workspace / "sub" / "song.wav"]
    code = main(["tag", *map(str, files), "--model", str(exported["onnx"]), "--hop", "2", "--json",
                 "--csv", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "plots")])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    rows = list(csv.reader(open(tmp_path / "t.csv")))
    assert rows[0] == ["path", "start", "end", *TAGS]
    total = 0
    for path, result in zip(files, report["results"]):
        x = load_audio(path)
        line = timeline(tagger, x, hop=2.0)
        windows = result["timeline"]["windows"]
        assert [w["start"] for w in windows] == pytest.approx(line.start)
        np.testing.assert_allclose([w["probabilities"] for w in windows], line.probabilities, atol=1e-4)
        np.testing.assert_allclose(sorted(t["score"] for t in result["tags"]),
                                   np.sort(line.track_probabilities), atol=1e-4)
        mine = [r for r in rows[1:] if r[0] == str(path)]
        np.testing.assert_allclose(np.array([r[3:] for r in mine], float), line.probabilities, atol=1e-4)
        total += len(mine)
        assert "decisions" in result
    assert total == len(rows) - 1
    assert sorted(os.listdir(tmp_path / "plots")) == ["other.png", "song-2.png", "song.png"]


@pytest.mark.tf_only
def test_cli_tag_text_prints_decisions_and_windows(exported, workspace, capsys):
    from keras_music_ssl.cli import main

    assert main(["tag", str(workspace / "song.wav"), "--model", str(exported["savedmodel"]), "--timeline"]) == 0
    out = capsys.readouterr().out
    assert "decisions:" in out and "timeline: 3 windows of 4 s every 4 s (9.5 s)" in out
    assert main(["tag", str(workspace / "song.wav"), "--model", str(exported["savedmodel"]), "--hop", "-1"]) == 2
    assert "--hop must be a positive" in capsys.readouterr().err


def test_cli_embed_timeline_writes_window_embeddings(tagger, workspace, tmp_path, capsys):
    from keras_music_ssl.cli import main
    from keras_music_ssl.embed import load_embeddings

    tagger.encoder.save_to_preset(tmp_path / "preset")
    files = [workspace / "song.wav", workspace / "other.wav"]
    out = tmp_path / "emb.npz"
    assert main(["embed", *map(str, files), "--preset", str(tmp_path / "preset"), "--out", str(out),
                 "--hop", "3"]) == 0
    embeddings, paths, extra = load_embeddings(out)
    assert paths == [str(f) for f in files]
    for row, path in enumerate(files):
        line = timeline(tagger.encoder, load_audio(path), hop=3.0, embeddings=True)
        mine = extra["window_file"] == row
        np.testing.assert_allclose(extra["window_embeddings"][mine], line.embeddings, atol=1e-5)
        np.testing.assert_allclose(extra["window_start"][mine], line.start)
        np.testing.assert_allclose(embeddings[row], line.track_embedding, atol=1e-5)
    assert main(["embed", str(files[0]), "--preset", str(tmp_path / "preset"), "--out", str(tmp_path / "x.npz"),
                 "--timeline", "--resume"]) == 2
    assert "no --resume" in capsys.readouterr().err


LONG_RUN = textwrap.dedent("""
    import resource, sys
    import keras
    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.tagger import MusicTagger, TagHead
    from keras_music_ssl.timeline import timeline

    keras.utils.set_random_seed(0)
    model = MusicTagger(MusicEncoder(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32), TagHead(["a", "b"]))
    line = timeline(model, sys.argv[1], hop=4.0)
    print(len(line.start), line.duration, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


@pytest.mark.slow
def test_an_hour_long_file_runs_in_bounded_memory(tmp_path):
    """Peak RSS of a whole 1-hour file minus that of a 1-minute one: under 48 MB, where the decoded
    hour alone is 230 MB of float32 (and 460 MB in float64)."""
    rng = np.random.default_rng(0)
    for name, minutes in (("minute.wav", 1), ("hour.wav", 60)):
        with sf.SoundFile(tmp_path / name, "w", SR, 1, "PCM_16") as f:
            for _ in range(minutes):
                f.write((rng.standard_normal(60 * SR) * 0.1).astype(np.float32))
    (tmp_path / "run.py").write_text(LONG_RUN)
    peaks = {}
    for name in ("minute.wav", "hour.wav"):
        done = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / name)], capture_output=True,
                              text=True, timeout=900, env={**os.environ, "TMPDIR": str(tmp_path)})
        assert done.returncode == 0, done.stderr[-2000:]
        windows, duration, peak_kb = done.stdout.split()[-3:]
        peaks[name] = int(peak_kb) / 1024
        assert float(duration) == 60.0 * (60 if name == "hour.wav" else 1) and int(windows) == float(duration) / 4
    assert peaks["hour.wav"] - peaks["minute.wav"] < 48, peaks
