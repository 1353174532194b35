"""`kmssl prepare / embed --runner beam` (DirectRunner): the local path's folder file for file,
`kmssl embed`'s numbers, bad files counted (report and Beam metrics) but never fatal, reruns that
skip finished shards, and the command line with and without Apache Beam installed."""

import csv
import importlib.util
import json
import math
import os
import shutil
import sys

import keras
import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from keras_music_ssl import MusicEncoder
from keras_music_ssl.cli import main as kmssl
from keras_music_ssl.data import prepare as prepare_module
from keras_music_ssl.data.audio import load_audio
from keras_music_ssl.data.prepare import prepare_shards
from keras_music_ssl.data.tfrecord import parse_track
from keras_music_ssl.embed import embed_files, expand_audio_paths
from test_data_audio import music_like
from test_data_prepare import same_tree

needs_beam = pytest.mark.skipif(importlib.util.find_spec("apache_beam") is None,
                                reason="the beam extra is not installed")
SETTINGS = dict(tracks_per_shard=3, min_duration=1.0)  # 14 entries: 5 shards, the last one of 2
BATCH = 4


def shard_records(folder, k):
    records = tf.data.TFRecordDataset(str(folder / f"shard-{k:05d}.tfrecord")).map(parse_track)
    return [{key: value.numpy() for key, value in r.items()} for r in records]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def local(broken, tmp_path_factory):
    """The local path's folder and report."""
    out = tmp_path_factory.mktemp("local")
    return out, prepare_shards([broken[0]], out, workers=0, progress=False, **SETTINGS)


@pytest.fixture(scope="module")
def on_beam(broken, tmp_path_factory):
    """The same folder prepared on Beam: (folder, report, counters)."""
    from keras_music_ssl.data.beam import prepare_shards_beam

    out = tmp_path_factory.mktemp("beam")
    return (out, *prepare_shards_beam([broken[0]], out, **SETTINGS))


@needs_beam
@pytest.mark.backend_independent
def test_beam_prepare_gives_the_local_records_per_shard_and_the_same_skip_report(local, on_beam):
    (reference, local_report), (out, report, _) = local, on_beam

    assert report == local_report and report["shards"] == 5
    for k in range(report["shards"]):
        got, expected = shard_records(out, k), shard_records(reference, k)
        assert [r["path"] for r in got] == [r["path"] for r in expected]
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a["audio"], b["audio"])  # decoded samples
            assert {key: a[key] for key in ("id", "meta", "sample_rate", "num_samples")} == \
                   {key: b[key] for key in ("id", "meta", "sample_rate", "num_samples")}
            np.testing.assert_allclose(a["audio"], load_audio(a["path"].decode()), atol=0.5 / 32767 + 1e-7)
    assert read_csv(out / "skipped.csv") == read_csv(reference / "skipped.csv")
    same_tree(reference, out)  # and every other file, byte for byte: the pipeline reads either


@needs_beam
@pytest.mark.backend_independent
def test_bad_files_are_counted_in_the_report_and_the_beam_metrics_never_fatal(broken, on_beam):
    _, expected = broken
    out, report, counters = on_beam

    wanted = {name: reason for name, reason in expected.items() if reason is not None}
    wanted["short_0.3s.wav"] = "too_short"  # decodes, but is under min_duration
    assert {os.path.basename(r["path"]): r["reason"] for r in read_csv(out / "skipped.csv")} == wanted
    assert counters == {"prepared": len(expected) - len(wanted),
                        **{f"skipped_{reason}": n for reason, n in report["skipped_by_reason"].items()}}
    assert counters["skipped_truncated"] == 2 and counters["skipped_undecodable"] == 2
    assert not list(out.glob("*.tmp-*")) and not list(out.glob(".*.partial"))  # nor the work list


@needs_beam
@pytest.mark.backend_independent
def test_beam_rerun_decodes_only_unfinished_shards_and_resumes_a_local_run(broken, local, on_beam, tmp_path,
                                                                          monkeypatch):
    from keras_music_ssl.data.beam import prepare_shards_beam

    (reference, local_report), (out, report, _) = local, on_beam
    real_prepare_file = prepare_module.prepare_file

    def must_not_decode(*args, **kwargs):
        raise AssertionError("a finished shard was decoded again")

    monkeypatch.setattr(prepare_module, "prepare_file", must_not_decode)
    assert prepare_shards_beam([broken[0]], out, **SETTINGS) == (report, {})  # no pipeline at all
    same_tree(reference, out)

    # A local run killed after shard 3: shards 0 and 2 and the summary missing, a temporary file left.
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    for name in ("shard-00000.json", "shard-00002.tfrecord", "report.json", "index.csv"):
        (resumed / name).unlink()
    (resumed / ".shard-00002.tfrecord.1.partial").write_bytes(b"partial")
    (resumed / "shard-00002.tfrecord.tmp-1").write_bytes(b"partial")  # the temporary name of older versions
    decoded = []

    def counting(path, *args, **kwargs):
        decoded.append(os.path.basename(path))
        return real_prepare_file(path, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "prepare_file", counting)
    resumed_report, counters = prepare_shards_beam([broken[0]], resumed, **SETTINGS)

    with open(reference / "shard-00000.json") as f0, open(reference / "shard-00002.json") as f2:
        redone = [json.load(f0), json.load(f2)]
    assert sorted(decoded) == sorted(os.path.basename(p) for index in redone for p in index["inputs"])
    assert counters["prepared"] == sum(len(index["tracks"]) for index in redone)
    assert resumed_report == local_report
    same_tree(reference, resumed)


@pytest.mark.backend_independent
def test_runner_beam_without_apache_beam_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # import apache_beam -> ImportError
    for module in ("keras_music_ssl.data.beam", "keras_music_ssl.embed_beam"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    sf.write(tmp_path / "a.wav", music_like(16000, 5.0), 16000)

    assert kmssl(["prepare", str(tmp_path), "--out", str(tmp_path / "o"), "--runner", "beam"]) == 2
    assert kmssl(["embed", str(tmp_path), "--preset", "p", "--out", str(tmp_path / "e"), "--runner", "beam"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kmssl {command}: --runner beam needs Apache Beam: pip install 'keras-music-ssl[beam]'"
                   for command in ("prepare", "embed")]
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists()


@needs_beam
@pytest.mark.backend_independent
def test_cli_prepare_on_beam_and_bad_beam_options(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "a.wav", music_like(16000, 5.0), 16000)
    sf.write(src / "b.wav", music_like(16000, 2.0), 16000)
    out = str(tmp_path / "o")

    assert kmssl(["prepare", str(src), "--out", out, "--runner", "beam", "--beam-option", "runner=DirectRunner",
                  "--beam-option", "direct_num_workers=1"]) == 0
    captured = capsys.readouterr()
    assert "1 track(s)" in captured.out and "1 too_short" in captured.err
    for bad, reason in [(["--beam-option", "direct_num_workers=2"], "needs --runner beam"),
                        (["--runner", "beam", "--beam-option", "=1"], "expected KEY=VALUE"),
                        (["--runner", "beam", "--beam-option", "no_such_option=1"], "unknown Beam pipeline option"),
                        (["--runner", "beam", "--beam-option", "direct_num_workers=two"], "invalid int value"),
                        (["--runner", "beam", "--workers", "2"], "--workers is for the local runner")]:
        assert kmssl(["prepare", str(src), "--out", str(tmp_path / "bad"), *bad]) == 2, bad
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and reason in err[0], (bad, err)


# --- embedding ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    from conftest import TINY_ENCODER

    keras.utils.set_random_seed(3)
    encoder = MusicEncoder(**TINY_ENCODER)
    folder = tmp_path_factory.mktemp("preset") / "tiny"
    encoder.save_to_preset(folder, method="test")
    return str(folder), encoder


@needs_beam
def test_beam_embed_gives_kmssl_embed_numbers_and_skips_and_resumes(broken, preset, tmp_path, capsys):
    from keras_music_ssl.embed_beam import embed_shards_beam, load_embedding_shards, read_skipped

    folder, _ = broken
    preset_dir, encoder = preset
    paths = expand_audio_paths([folder])  # what `kmssl embed FOLDER` embeds: 13 files
    reference = embed_files(encoder, paths, batch_size=BATCH, progress=False)
    out = tmp_path / "emb"

    report, counters = embed_shards_beam(paths, out, preset_dir, batch_size=BATCH, files_per_shard=4)

    embeddings, kept, num_chunks = load_embedding_shards(out)
    assert kept == reference.paths and len(kept) == 6
    np.testing.assert_allclose(embeddings, reference.embeddings, atol=1e-5, rtol=0)
    assert list(num_chunks) == [math.ceil(len(load_audio(p)) / 64000) for p in kept]
    assert read_skipped(out) == reference.skipped  # same files, same reasons and details
    reasons = {}
    for _, reason in reference.skipped:
        reasons[reason.split(":")[0]] = reasons.get(reason.split(":")[0], 0) + 1
    assert counters == {"embedded": 6, **{f"skipped_{r}": n for r, n in reasons.items()}}
    assert report["files"] == len(paths) and report["shards"] == 4 and report["skipped_by_reason"] == reasons

    # The command line on the same folder: every shard is done, so nothing runs; exit 1 (skips).
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = kmssl(["embed", str(folder), "--preset", preset_dir, "--out", str(out), "--runner", "beam",
                  "--files-per-shard", "4", "--batch-size", str(BATCH)])
    assert code == 1 and "6 file(s) embedded in 4 shard(s)" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # A lost shard is embedded again, and only that one.
    (out / "shard-00001.json").unlink()
    _, counters = embed_shards_beam(paths, out, preset_dir, batch_size=BATCH, files_per_shard=4)
    with open(out / "shard-00001.json") as f:
        assert counters.get("embedded", 0) == json.load(f)["embedded"]
    np.testing.assert_array_equal(load_embedding_shards(out)[0], embeddings)
