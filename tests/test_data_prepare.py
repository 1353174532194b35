"""kmssl prepare: shards hold the decoded audio, every skipped file is reported with its reason, manifests,
determinism across worker counts, and a run killed half-way resumes to the same bytes."""

import csv
import filecmp
import json
import os
import signal
import multiprocessing
import time

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from keras_music_ssl import storage
from keras_music_ssl.cli import main as kmssl
from keras_music_ssl.data import prepare as prepare_module
from keras_music_ssl.data.audio import load_audio
from keras_music_ssl.data.prepare import iter_sources, prepare_shards
from keras_music_ssl.data.tfrecord import list_shards, parse_track, track_id
from test_data_audio import music_like

pytestmark = pytest.mark.backend_independent


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_shards(folder):
    records = tf.data.TFRecordDataset(list_shards(folder)).map(parse_track)
    return [{k: v.numpy() for k, v in r.items()} for r in records]


def same_tree(a, b):
    """Same files, byte for byte (the lock file, which holds its last writer's pid, aside)."""
    names = sorted(set(os.listdir(a)) - {storage.LOCK})
    assert names == sorted(set(os.listdir(b)) - {storage.LOCK})
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


@pytest.fixture(scope="module")
def prepared_broken(broken, tmp_path_factory):
    folder, expected = broken
    out = tmp_path_factory.mktemp("prepared")
    report = prepare_shards([folder], out, tracks_per_shard=3, workers=2, min_duration=1.0, progress=False)
    return folder, expected, out, report


def test_prepare_finishes_and_reports_each_broken_file_with_its_reason(prepared_broken):
    folder, expected, out, report = prepared_broken
    skipped = {os.path.basename(r["path"]): r["reason"] for r in read_csv(out / "skipped.csv")}
    wanted = {name: reason for name, reason in expected.items() if reason is not None}
    wanted["short_0.3s.wav"] = "too_short"  # loads, but is under --min-duration
    assert skipped == wanted
    kept = {os.path.basename(r["path"]) for r in read_csv(out / "index.csv")}
    assert kept == set(expected) - set(wanted)
    assert report["files"] == len(expected) and report["tracks"] == len(kept) and report["skipped"] == len(wanted)
    assert report["skipped_by_reason"]["truncated"] == 2 and report["skipped_by_reason"]["undecodable"] == 2
    with open(out / "report.json") as f:
        assert json.load(f) == report


def test_shards_hold_the_decoded_audio_as_int16_with_ids_and_paths(prepared_broken):
    _, _, out, _ = prepared_broken
    records = read_shards(out)
    assert len(records) == len(read_csv(out / "index.csv"))
    for record in records:
        path = record["path"].decode()
        reference = load_audio(path)
        assert record["sample_rate"] == 16000 and len(record["audio"]) == len(reference)
        np.testing.assert_allclose(record["audio"], reference, atol=0.5 / 32767 + 1e-7)  # int16 rounding
        assert record["id"].decode() == track_id(path) and json.loads(record["meta"]) == {}


def test_manifests_resolve_relative_paths_keep_columns_and_skip_comments(tmp_path):
    (tmp_path / "audio").mkdir()
    for name in ("a.flac", "b.wav"):
        sf.write(tmp_path / "audio" / name, music_like(22050, 1.5), 22050)
    (tmp_path / "list.txt").write_text("# my tracks\n\naudio/b.wav\n  audio/a.flac  \n")
    (tmp_path / "list.csv").write_text("path,genre,year\naudio/a.flac,jazz,1959\naudio/b.wav,,2001\n")
    entries = list(iter_sources([tmp_path / "list.txt", tmp_path / "list.csv", tmp_path / "audio"]))
    audio = str(tmp_path / "audio")
    assert entries == [
        (f"{audio}/b.wav", {}), (f"{audio}/a.flac", {}),
        (f"{audio}/a.flac", {"genre": "jazz", "year": "1959"}), (f"{audio}/b.wav", {"year": "2001"}),
        (f"{audio}/a.flac", {}), (f"{audio}/b.wav", {}),
    ]
    prepare_shards([tmp_path / "list.csv"], tmp_path / "out", workers=0, min_duration=1.0, progress=False)
    assert [json.loads(r["meta"]) for r in read_shards(tmp_path / "out")] == [entries[2][1], entries[3][1]]
    (tmp_path / "bad.csv").write_text("file,genre\na.flac,jazz\n")
    with pytest.raises(ValueError, match=r"bad.csv:1: missing column\(s\) \['path'\]"):
        list(iter_sources([tmp_path / "bad.csv"]))


def test_worker_count_does_not_change_a_single_byte(prepared_broken, tmp_path):
    folder, _, out, _ = prepared_broken
    prepare_shards([folder], tmp_path, tracks_per_shard=3, workers=0, min_duration=1.0, progress=False)
    same_tree(out, tmp_path)


def test_rerun_skips_finished_shards_without_decoding(prepared_broken, tmp_path, monkeypatch):
    folder, _, out, report = prepared_broken
    prepare_shards([folder], tmp_path, tracks_per_shard=3, workers=0, min_duration=1.0, progress=False)

    def must_not_decode(*args, **kwargs):
        raise AssertionError("a finished shard was decoded again")

    monkeypatch.setattr(prepare_module, "prepare_file", must_not_decode)
    assert prepare_shards([folder], tmp_path, tracks_per_shard=3, workers=0, min_duration=1.0,
                          progress=False) == report
    same_tree(out, tmp_path)


@pytest.mark.parametrize("runner", ["local", "beam"])
def test_other_settings_or_changed_inputs_are_refused(tmp_path, runner):
    """A rerun on a folder made from other settings or inputs is refused, by either runner."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        sf.write(src / f"{i}.wav", music_like(16000, 1.2, seed=i), 16000)
    out = tmp_path / "out"
    prepare_shards([src], out, tracks_per_shard=2, workers=0, min_duration=1.0, progress=False)
    if runner == "beam":
        beam = pytest.importorskip("keras_music_ssl.data.beam", reason="the beam extra is not installed")

        def rerun(**settings):
            return beam.prepare_shards_beam([src], out, min_duration=1.0, **settings)
    else:
        def rerun(**settings):
            return prepare_shards([src], out, workers=0, min_duration=1.0, progress=False, **settings)
    with pytest.raises(ValueError, match="other settings"):
        rerun(tracks_per_shard=3)
    sf.write(src / "0b.wav", music_like(16000, 1.2), 16000)  # shifts every later entry
    with pytest.raises(ValueError, match="other input files"):
        rerun(tracks_per_shard=2)
    assert not list(out.glob("*.tmp-*")) and not list(out.glob("*.partial"))  # nor a temporary (Beam's work list)


def test_cli_exit_status_and_summary(tmp_path, capsys):
    assert kmssl(["prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "source not found" in capsys.readouterr().err and not (tmp_path / "o").exists()
    sf.write(tmp_path / "a.wav", music_like(16000, 5.0), 16000)
    sf.write(tmp_path / "b.wav", music_like(16000, 2.0), 16000)
    assert kmssl(["prepare", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "1 track(s)" in captured.out and "1 too_short" in captured.err


def _prepare_in_new_session(*args, **kwargs):
    os.setsid()  # its own process group, so the test can kill it together with its workers
    prepare_shards(*args, **kwargs)


def test_prepare_killed_half_way_resumes_to_the_same_shards(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(16):
        noise = np.random.default_rng(i).uniform(-0.5, 0.5, (44100 * 12, 2)).astype(np.float32)
        sf.write(src / f"track{i:02d}.flac", noise, 44100)
    options = dict(tracks_per_shard=2, min_duration=1.0, workers=2, progress=False)
    reference = tmp_path / "uninterrupted"
    prepare_shards([src], reference, **options)

    out = tmp_path / "resumed"
    process = multiprocessing.get_context("fork").Process(target=_prepare_in_new_session, args=([src], out),
                                                          kwargs=options)
    process.start()
    deadline = time.time() + 120
    while not (out / "shard-00002.json").exists():
        assert process.exitcode is None and time.time() < deadline, "prepare ended before it could be killed"
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)  # prepare and its worker processes, mid-shard
    process.join()
    assert process.exitcode == -signal.SIGKILL
    finished = list(out.glob("shard-*.json"))
    assert not (out / "report.json").exists() and len(finished) < 8, "the kill came too late to test a resume"

    prepare_shards([src], out, **options)
    assert not list(out.glob(".*.partial"))
    same_tree(reference, out)
