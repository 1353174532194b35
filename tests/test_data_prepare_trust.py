"""kmssl prepare with a user's files and disk (issue 24): any file name, options checked before
anything is written, strict manifests, one writer per folder, a full disk, and kills at chosen
instants that resume to an uninterrupted run's bytes."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from keras_music_ssl import storage
from keras_music_ssl.cli import main as kmssl
from keras_music_ssl.data.prepare import prepare_shards
from test_data_audio import music_like
from test_data_prepare import read_shards, same_tree

pytestmark = pytest.mark.backend_independent

CAFE = os.fsdecode(b"caf\xe9.wav")  # Latin-1 bytes: not UTF-8, as os.listdir gives them
BROKEN = os.fsdecode(b"bad\xff.wav")
FAST = ["--workers", "0", "--no-progress", "--min-duration", "1"]


def one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(word in err[0] for word in words), err
    return err[0]


def write_corpus(folder, count=6, seconds=1.5):
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        sf.write(os.path.join(folder, f"track{i}.wav"), music_like(16000, seconds, seed=i), 16000)
    return folder


# --- 1. file names that are not UTF-8 -----------------------------------------------------------

def test_file_names_that_are_not_utf8_are_prepared_or_skipped_by_name_and_resume(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    sf.write(os.fsencode(os.path.join(src, CAFE)), music_like(16000, 1.5), 16000)
    with open(os.path.join(src, BROKEN), "wb") as f:
        f.write(np.random.default_rng(0).bytes(3000))
    sf.write(src / "plain.wav", music_like(16000, 1.5, seed=1), 16000)
    out = tmp_path / "out"
    args = ["prepare", str(src), "--out", str(out), "--tracks-per-shard", "2", *FAST]

    assert kmssl(args) == 0
    assert "1 file(s) skipped (1 undecodable)" in capsys.readouterr().err
    with open(out / "index.csv", encoding="utf-8") as f:  # still UTF-8 text
        index = list(csv.DictReader(f))
    with open(out / "skipped.csv", encoding="utf-8") as f:
        skipped = list(csv.DictReader(f))
    assert [os.path.basename(r["path"]) for r in index] == ["caf\\xe9.wav", "plain.wav"]
    assert [(os.path.basename(r["path"]), r["reason"]) for r in skipped] == [("bad\\xff.wav", "undecodable")]
    # The shard keeps the name's own bytes: a reader reopens the file with them.
    cafe = read_shards(out)[0]
    assert cafe["path"] == os.fsencode(os.path.join(src, CAFE))
    assert cafe["num_samples"] == 24000 and np.abs(cafe["audio"]).max() == pytest.approx(1.0)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert kmssl(args) == 0  # the rerun matches the recorded inputs: nothing is redone
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_a_manifest_may_list_names_that_are_not_utf8(tmp_path):
    sf.write(os.fsencode(os.path.join(tmp_path, CAFE)), music_like(16000, 1.5), 16000)
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbf# a BOM, then a Latin-1 name\ncaf\xe9.wav\n")
    (tmp_path / "list.csv").write_bytes(b"\xef\xbb\xbfpath,genre\ncaf\xe9.wav,caf\xe9\n")
    report = prepare_shards([tmp_path / "list.txt", tmp_path / "list.csv"], tmp_path / "out", workers=0,
                            min_duration=1.0, progress=False)
    assert report["tracks"] == 2 and report["skipped"] == 0
    records = read_shards(tmp_path / "out")
    assert [r["path"] for r in records] == [os.fsencode(os.path.join(tmp_path, CAFE))] * 2
    assert [r["meta"] for r in records] == [b"{}", b'{"genre": "caf\\udce9"}']


# --- 2. a file that overflows becomes a skip, not a silent track -----------------------------------

def test_samples_that_overflow_in_resampling_are_skipped_as_non_finite_not_written_as_silence(tmp_path):
    huge = np.where(np.random.default_rng(0).random((44100 * 2, 2)) > 0.5, 1e38, -1e38).astype(np.float32)
    sf.write(tmp_path / "huge.wav", huge, 44100, subtype="FLOAT")  # finite in the file
    report = prepare_shards([tmp_path / "huge.wav"], tmp_path / "out", workers=0, min_duration=1.0,
                            progress=False)
    assert report["tracks"] == 0 and report["skipped_by_reason"] == {"non_finite": 1}


# --- 3. options ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,option", [
    (["--sample-rate", "0"], "--sample-rate"), (["--sample-rate", "-16000"], "--sample-rate"),
    (["--min-duration", "-1"], "--min-duration"), (["--max-duration", "-5"], "--max-duration"),
    (["--min-duration", "nan"], "--min-duration"), (["--max-duration", "inf"], "--max-duration"),
    (["--min-duration", "30", "--max-duration", "10"], "--min-duration"),
    (["--workers", "-1"], "--workers"), (["--tracks-per-shard", "0"], "--tracks-per-shard"),
])
def test_an_option_out_of_range_is_one_line_naming_it_before_anything_is_written(tmp_path, capsys, bad, option):
    src = write_corpus(tmp_path / "src", count=1)
    assert kmssl(["prepare", str(src), "--out", str(tmp_path / "out"), "--no-progress", *bad]) == 2
    one_line_error(capsys, "kmssl prepare:", option)
    assert not (tmp_path / "out").exists()


# --- 4. CSV manifests ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,where", [
    ("path,genre,genre\n{a},jazz,rock\n", ":1: column(s) ['genre'] appear more than once"),
    ("genre,path\njazz,{a}\nrock\n", ":3: no ['path'] value, 1 field(s), the header has 2"),
    ("path,genre\n{a},jazz,1959\n", ":2: 3 field(s), the header has 2"),
    ("path,lyrics\n{a}," + "la" * 70000 + "\n", ":2: field larger than field limit"),
])
def test_a_malformed_csv_manifest_is_one_line_naming_the_line_before_anything_is_written(tmp_path, capsys,
                                                                                        text, where):
    src = write_corpus(tmp_path / "src", count=2)
    (tmp_path / "list.csv").write_text(text.format(a=src / "track0.wav", b=src / "track1.wav"))
    assert kmssl(["prepare", str(tmp_path / "list.csv"), "--out", str(tmp_path / "out"), *FAST]) == 2
    one_line_error(capsys, f"list.csv{where}")
    assert not (tmp_path / "out").exists()


def test_a_csv_manifest_with_a_utf8_bom_and_rows_without_their_last_optional_field_is_read(tmp_path):
    src = write_corpus(tmp_path / "src", count=2)
    (tmp_path / "list.csv").write_text(f"\ufeffpath,genre\n{src / 'track0.wav'},jazz\n{src / 'track1.wav'}\n",
                                       encoding="utf-8")
    report = prepare_shards([tmp_path / "list.csv"], tmp_path / "out", workers=0, min_duration=1.0, progress=False)
    assert report["tracks"] == 2
    assert [r["meta"] for r in read_shards(tmp_path / "out")] == [b'{"genre": "jazz"}', b"{}"]


# --- 5. the output folder ------------------------------------------------------------------------

def test_a_second_run_on_the_same_folder_is_refused_at_once(tmp_path, capsys):
    src = write_corpus(tmp_path / "src", count=2)
    out = tmp_path / "out"
    with storage.locked(out):  # another run holds the folder (a lock is per open file, even in one process)
        started = time.monotonic()
        assert kmssl(["prepare", str(src), "--out", str(out), *FAST]) == 2
        assert time.monotonic() - started < 5
        one_line_error(capsys, "being written by another process")
        assert os.listdir(out) == [storage.LOCK]  # nothing written
    assert kmssl(["prepare", str(src), "--out", str(out), *FAST]) == 0


def test_out_that_is_a_file_or_a_folder_of_other_files_is_refused_and_left_alone(tmp_path, capsys):
    src = write_corpus(tmp_path / "src", count=1)
    (tmp_path / "notes.txt").write_text("mine")
    assert kmssl(["prepare", str(src), "--out", str(tmp_path / "notes.txt"), *FAST]) == 2
    one_line_error(capsys, "notes.txt is a file")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "song.txt").write_text("mine")
    assert kmssl(["prepare", str(src), "--out", str(mine), *FAST]) == 2
    one_line_error(capsys, "no prepare.json")
    assert (tmp_path / "notes.txt").read_text() == "mine" and os.listdir(mine) == ["song.txt"]


def test_a_rerun_removes_the_temporaries_of_a_killed_run(tmp_path):
    src = write_corpus(tmp_path / "src", count=4)
    reference, out = tmp_path / "reference", tmp_path / "out"
    prepare_shards([src], reference, tracks_per_shard=2, workers=0, min_duration=1.0, progress=False)
    out.mkdir()
    (out / "prepare.json").write_bytes((reference / "prepare.json").read_bytes())
    (out / ".shard-00000.tfrecord.123.partial").write_bytes(b"half a shard")
    (out / ".index.csv.123.partial").write_bytes(b"shard,id")
    prepare_shards([src], out, tracks_per_shard=2, workers=0, min_duration=1.0, progress=False)
    same_tree(reference, out)
    assert not list(out.glob(".*.partial"))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MB tmpfs (root only); yields (folder, grow) where grow() makes it 64 MB."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(folder)], capture_output=True)
    if mount.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode(errors='replace').strip()}")

    def grow():
        subprocess.run(["mount", "-o", "remount,size=64M", str(folder)], check=True)

    try:
        yield folder, grow
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_a_rerun_with_space_equals_a_clean_run(tmp_path, small_tmpfs, capsys):
    folder, grow = small_tmpfs
    src = write_corpus(tmp_path / "src", count=8, seconds=20.0)  # 5 MB of int16 at 16 kHz
    reference = tmp_path / "reference"
    prepare_shards([src], reference, tracks_per_shard=2, workers=0, min_duration=1.0, progress=False)
    out = folder / "out"
    args = ["prepare", str(src), "--out", str(out), "--tracks-per-shard", "2", *FAST]

    assert kmssl(args) == 2
    one_line_error(capsys, "kmssl prepare: no space left on the device", str(out))
    assert not list(out.glob(".*.partial")) and not (out / "report.json").exists()
    grow()
    assert kmssl(args) == 0
    same_tree(reference, out)


# --- 6. kills at chosen instants -----------------------------------------------------------------

def _kmssl(args, log, **env):
    """``kmssl ARGS`` in a new session, its output in ``log`` (a file: orphaned workers would hold
    a pipe open); returns its exit status."""
    code = "import sys; from keras_music_ssl.cli import main; sys.exit(main(sys.argv[1:]))"
    with open(log, "wb") as f:
        process = subprocess.Popen([sys.executable, "-c", code, *args], env={**os.environ, **env},
                                   start_new_session=True, stdout=f, stderr=f)
    try:
        return process.wait(timeout=300)
    finally:  # what is left of its session (orphaned workers): only processes this test started
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def kill_corpus(tmp_path_factory):
    """7 entries in 4 shards of 2 (one a skip), and the uninterrupted run's folder."""
    root = tmp_path_factory.mktemp("kill")
    src = write_corpus(root / "src", count=6)
    (src / "noise.wav").write_bytes(b"not audio at all")
    reference = root / "reference"
    prepare_shards([src], reference, tracks_per_shard=2, workers=0, min_duration=1.0, progress=False)
    return src, reference


@pytest.mark.slow
@pytest.mark.parametrize("point", [
    "write:prepare.json",  # the first file of the run
    "write:shard-00001.tfrecord",  # a shard complete in its temporary, not renamed
    "write:shard-00002.json",  # a shard renamed, its index (the "finished" mark) not yet
    "write:index.csv",  # every shard finished, the summary half written
    "write:report.json",  # the last file
])
def test_prepare_killed_at_a_chosen_write_resumes_to_the_same_bytes(kill_corpus, tmp_path, point):
    src, reference = kill_corpus
    out = tmp_path / "out"
    args = ["prepare", str(src), "--out", str(out), "--tracks-per-shard", "2", *FAST]
    status = _kmssl(args, tmp_path / "log", KMSSL_FAULT=point)
    assert status == -signal.SIGKILL, (tmp_path / "log").read_text(errors="replace")[-2000:]
    assert not (out / "report.json").exists()
    assert list(out.glob(".*.partial")), "the kill came after the write it was meant to interrupt"

    assert kmssl(args) == 0
    same_tree(reference, out)
    assert not list(out.glob(".*.partial"))


@pytest.mark.slow
def test_a_run_whose_main_process_is_killed_leaves_no_lock_in_its_orphaned_workers(kill_corpus, tmp_path):
    """kill -9 of prepare alone (the OOM killer's way): its decoding workers, forked while it held
    the folder's lock, must not keep it, or every rerun would be refused."""
    src, reference = kill_corpus
    out = tmp_path / "out"
    args = ["prepare", str(src), "--out", str(out), "--tracks-per-shard", "2", "--workers", "2",
            "--no-progress", "--min-duration", "1"]
    code = "import sys; from keras_music_ssl.cli import main; sys.exit(main(sys.argv[1:]))"
    with open(tmp_path / "log", "wb") as log:  # the fault kills the main process alone, not its workers
        process = subprocess.Popen([sys.executable, "-c", code, *args], start_new_session=True, stdout=log,
                                   stderr=log, env={**os.environ, "KMSSL_FAULT": "write:shard-00001.json"})
    try:
        assert process.wait(timeout=300) == -signal.SIGKILL
        assert subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True).stdout, \
            "no orphaned worker: the test tests nothing"
        assert kmssl(args) == 0  # not "being written by another process"
        same_tree(reference, out)
    finally:  # the orphaned workers, in the killed run's session (started by this test)
        os.killpg(process.pid, signal.SIGKILL)
