"""Prepare a pretraining corpus: audio files -> sharded TFRecords of 16 kHz int16 + metadata.

Sources are folder trees (walked in sorted order), manifests (read lazily, line by line) or single
audio files. A manifest is either a text file with one path per line (``#`` comments, blank lines
ignored) or a CSV/TSV with a ``path`` column, whose other columns are kept as track metadata.
Relative paths in a manifest are relative to the manifest's folder. A CSV manifest is checked
whole before anything is written: a malformed row (a field missing or extra, a field over 128 KB)
or a duplicated column is an error naming the line (``data/csvfile.py``); a UTF-8 byte-order
mark is accepted.

Shard assignment is by input order: shard k holds entries ``k*N .. k*N+N-1`` (``N =
tracks_per_shard``) minus the skipped ones, so it depends only on the input list, never on the
worker count or timing. The per-file work is :func:`prepare_file`, a pure, picklable function of
the path (it could run on any distributed engine); this process writes the shards in order.

The output folder::

    prepare.json            the settings; a rerun with other settings is refused
    shard-00000.tfrecord    the kept tracks of entries 0..N-1 (format: ``data/tfrecord.py``)
    shard-00000.json        that shard's inputs, kept tracks and skipped files; written last,
                            it marks the shard finished
    index.csv               every kept track: shard, id, path, num_samples, seconds
    skipped.csv             every skipped file: path, reason, detail (reasons: ``data/audio.py``)
    report.json             counts (files, tracks, hours, skipped by reason)

Resuming: finished shards are skipped without decoding anything (their recorded inputs must
equal the current input list, else the run stops with an error). Every file is written to a
temporary ``.NAME.PID.partial`` and renamed (``storage.py``), so a run killed at any instant, or
stopped by a full disk, never leaves a partial shard that looks done; the rerun removes the
temporaries and its final files equal an uninterrupted run's byte for byte. One run at a time
per folder: a second one is refused at once (``storage.locked``). ``--out`` must be a new or
empty folder, or one made by ``prepare``.

File names are whatever the OS gives, UTF-8 or not: a TFRecord keeps the name's bytes, a shard's
JSON its ``os.fsdecode`` string (``\\udcXX`` escapes for bytes that are not UTF-8), and the CSVs
show those bytes as backslash escapes (``caf\\xe9.wav``) so that they stay UTF-8 text.

The steps are separate functions so that another engine runs the same ones
(``data/beam.py``): :func:`prepare_settings`, :func:`prepared_folder` (check and lock the folder, list
the entries), :func:`iter_shard_inputs` + :func:`shard_finished` (which shards are left),
:func:`prepare_shard` (decode and write one shard) and :func:`finish_prepared` (the indexes
and the report, from the shard files).
"""

import contextlib
import csv
import dataclasses
import errno
import functools
import glob
import io
import itertools
import json
import math
import numbers
import os

import numpy as np

from keras_music_ssl import storage
from keras_music_ssl.data.audio import (MAX_DURATION, SAMPLE_RATE, AudioError, is_audio_path, load_audio,
                                        shown_path)
from keras_music_ssl.data.csvfile import read_rows
from keras_music_ssl.data.parallel import default_workers, ordered_map
from keras_music_ssl.data.tfrecord import encode_track, to_int16, track_id
from keras_music_ssl.errors import KmsslError, OptionError

FORMAT_VERSION = 1
TRACKS_PER_SHARD = 64  # ~3.5-min tracks: ~430 MB of int16 per shard
MIN_DURATION = 4.0  # seconds: shorter than one 4-s view is of no use for pretraining
SAMPLE_RATES = (1000, 384000)  # Hz: the output rates accepted (soxr resamples to any of them)


@dataclasses.dataclass(frozen=True)
class PreparedTrack:
    path: str
    audio: np.ndarray  # int16 (samples,)
    sample_rate: int
    meta: dict


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str
    detail: str


def prepare_file(path, meta=None, sample_rate=SAMPLE_RATE, min_duration=MIN_DURATION,
                 max_duration=MAX_DURATION):
    """The per-file transform: a path -> :class:`PreparedTrack` or :class:`SkippedFile`.

    Pure and picklable; it never raises for a bad file. Tracks are mono, resampled, peak-normalised,
    capped at ``max_duration`` s; all-zero tracks are skipped as ``silent``.
    """
    try:
        audio = load_audio(path, sample_rate, mono=True, normalize=True,
                           max_duration=max_duration, min_duration=min_duration)
        if not np.any(audio):
            raise AudioError(path, "silent", "all samples are zero")
        samples = to_int16(audio)
    except AudioError as error:
        return SkippedFile(os.fspath(path), error.reason, error.detail)
    except Exception as error:  # a decoder bug must not stop a long run: report it
        return SkippedFile(os.fspath(path), "undecodable", f"unexpected {type(error).__name__}: {error}")
    return PreparedTrack(os.fspath(path), samples, sample_rate, dict(meta or {}))


# --- sources -------------------------------------------------------------------------------

def _walk(root):
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        # A folder named like an audio file is listed too, so that it is reported, not ignored.
        names = [n for n in files if is_audio_path(n)] + [d for d in subfolders if is_audio_path(d)]
        for name in sorted(names):
            yield os.path.join(folder, name), {}


def _resolve(manifest, path):
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(manifest)), os.path.expanduser(path)))


# Manifests are read as the OS reads file names: bytes that are not UTF-8 become surrogate
# escapes (os.fsdecode), so a listed name that is not UTF-8 still opens.

def _read_csv_manifest(manifest):
    delimiter = "\t" if manifest.lower().endswith(".tsv") else ","
    for _, row in read_rows(manifest, required=("path",), delimiter=delimiter, errors="surrogateescape"):
        meta = {k: v for k, v in row.items() if k != "path" and v != ""}
        yield _resolve(manifest, row["path"]), meta


def _read_text_manifest(manifest):
    with open(manifest, encoding="utf-8-sig", errors="surrogateescape") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                yield _resolve(manifest, line), {}


def iter_sources(sources):
    """An iterator of ``(path, metadata)`` over every entry of the sources, in a deterministic order,
    read lazily. Raises at once if a source does not exist or a CSV manifest is malformed
    (:class:`~keras_music_ssl.data.csvfile.CsvFileError`)."""
    sources = [os.fspath(s) for s in sources]
    for source in sources:
        if not os.path.exists(source):
            raise FileNotFoundError(f"source not found: {shown_path(source)}")
    for source in sources:  # one pass over the text, no decoding: a bad row stops nothing half-way
        if _is_csv_manifest(source):
            for _ in _read_csv_manifest(source):
                pass
    return _entries(sources)


def _is_csv_manifest(source):
    return not os.path.isdir(source) and source.lower().endswith((".csv", ".tsv"))


def _entries(sources):
    for source in sources:
        if os.path.isdir(source):
            yield from _walk(source)
        elif _is_csv_manifest(source):
            yield from _read_csv_manifest(source)
        elif is_audio_path(source):
            yield source, {}
        else:
            yield from _read_text_manifest(source)


# --- the prepared folder ---------------------------------------------------------------------

class PrepareError(KmsslError, ValueError):
    """An output folder that this run cannot continue (other settings, other inputs)."""


def shard_path(out, k, ext):
    return os.path.join(out, f"shard-{k:05d}.{ext}")


def csv_text(header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def json_text(obj):
    # ASCII (a name that is not UTF-8 keeps its \udcXX escapes and reads back equal); strict: no NaN.
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n"


def _tf_io(fn, path):
    """``fn()`` (a TFRecord writer call), its disk errors raised as the ``OSError`` they are: TF
    reports a full disk as a ``ResourceExhaustedError`` with no message and no file name."""
    import tensorflow as tf

    try:
        return fn()
    except tf.errors.ResourceExhaustedError:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from None
    except tf.errors.PermissionDeniedError:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), path) from None


def _check_ours(out):
    """Refuse an existing folder that holds files but no ``prepare.json``: shards are not mixed
    into a folder of the user's (only the lock and temporaries of a killed run may be there)."""
    if not os.path.isdir(out) or os.path.exists(os.path.join(out, "prepare.json")):
        return
    foreign = sorted(name for name in os.listdir(out)
                     if name != storage.LOCK and not name.endswith(storage.PARTIAL) and ".tmp-" not in name)
    if foreign:
        raise storage.StorageError(f"--out {shown_path(out)} is a folder with other files in it "
                                   f"({shown_path(foreign[0])}, ...) and no prepare.json; choose a new or "
                                   "empty folder")


def check_settings(out, settings, name="prepare.json"):
    path = os.path.join(out, name)
    if os.path.exists(path):
        previous = storage.read_json(path, "the settings of a prepared folder")
        if previous != settings:
            raise PrepareError(f"{shown_path(out)} was prepared with other settings {previous}, not {settings}: "
                               "use another --out folder or delete this one")
    else:
        storage.write_text(path, json_text(settings))


def shard_finished(out, k, inputs, ext="tfrecord"):
    """True if shard k (``shard-k.json`` and ``shard-k.<ext>``) is done; raises if it was made
    from other inputs."""
    index_path, shard = shard_path(out, k, "json"), shard_path(out, k, ext)
    if not (os.path.exists(index_path) and os.path.exists(shard)):
        return False
    recorded = storage.read_json(index_path, "a finished shard's index")["inputs"]
    if recorded != inputs:
        raise PrepareError(f"{shown_path(index_path)} was made from other input files than the current sources "
                           "list (entries changed since the first run): use another --out folder")
    return True


class _ShardWriter:
    """Writes one shard to temporary files; :meth:`commit` renames them into place, :meth:`abort`
    removes them."""

    def __init__(self, out, k, inputs):
        import tensorflow as tf

        self.out, self.k, self.inputs = out, k, inputs
        # storage's temporary (.NAME.PID.partial), renamed when the target's block ends: open
        # across add() calls, so entered here and left in commit() or abort().
        self.target = storage.atomic_target(shard_path(out, k, "tfrecord"))
        self.tmp = os.fspath(self.target.__enter__())
        self.path = shard_path(out, k, "tfrecord")  # what a disk error names
        try:
            self.writer = _tf_io(lambda: tf.io.TFRecordWriter(self.tmp), self.path)
        except BaseException as error:
            self.target.__exit__(type(error), error, error.__traceback__)
            raise
        self.tracks, self.skipped = [], []

    def add(self, result):
        if isinstance(result, SkippedFile):
            self.skipped.append(dataclasses.asdict(result))
            return
        record = encode_track(result.path, result.audio, result.sample_rate, result.meta)
        _tf_io(lambda: self.writer.write(record), self.path)
        self.tracks.append({"id": track_id(result.path), "path": result.path, "num_samples": len(result.audio)})

    def commit(self):
        try:
            _tf_io(self.writer.close, self.path)
            with open(self.tmp, "rb") as f:  # on disk before it is renamed, as storage.atomic_write does
                os.fsync(f.fileno())
        except BaseException as error:
            self.abort(error)
            raise
        target, self.target = self.target, None
        target.__exit__(None, None, None)  # the rename
        index = {"shard": self.k, "inputs": self.inputs, "tracks": self.tracks, "skipped": self.skipped}
        # Written last: its presence marks the shard finished.
        storage.write_text(shard_path(self.out, self.k, "json"), json_text(index))
        return index

    def abort(self, error):
        """Drop the temporary shard after ``error`` (a full disk, an interrupt)."""
        with contextlib.suppress(Exception):
            self.writer.close()
        if self.target is not None:
            target, self.target = self.target, None
            with contextlib.suppress(BaseException):  # removes the temporary, re-raises ``error``
                target.__exit__(type(error), error, error.__traceback__)


def prepare_shard(out, k, entries, sample_rate=SAMPLE_RATE, min_duration=MIN_DURATION, max_duration=MAX_DURATION):
    """Decode shard k's ``entries`` (``(path, meta)`` pairs) in order with :func:`prepare_file`
    and write the shard; return its index (the content of ``shard-k.json``). One track in
    memory at a time."""
    writer = _ShardWriter(out, k, [path for path, _ in entries])
    try:
        for path, meta in entries:
            writer.add(prepare_file(path, meta, sample_rate, min_duration, max_duration))
        return writer.commit()
    except BaseException as error:
        writer.abort(error)
        raise


def _work_item(item, **settings):
    k, position, path, meta = item
    return k, position, prepare_file(path, meta, **settings)


def _write_summary(out, num_shards, settings):
    tracks, skipped = [], []
    for k in range(num_shards):
        index = storage.read_json(shard_path(out, k, "json"), "a finished shard's index")
        tracks += [(k, t["id"], shown_path(t["path"]), t["num_samples"],
                    f"{t['num_samples'] / settings['sample_rate']:.3f}") for t in index["tracks"]]
        skipped += [(shown_path(s["path"]), s["reason"], shown_path(s["detail"])) for s in index["skipped"]]
    by_reason = {}
    for _, reason, _ in skipped:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    report = {
        "files": len(tracks) + len(skipped),
        "tracks": len(tracks),
        "hours": round(sum(t[3] for t in tracks) / settings["sample_rate"] / 3600, 4),
        "shards": num_shards,
        "skipped": len(skipped),
        "skipped_by_reason": dict(sorted(by_reason.items())),
        "settings": settings,
    }
    storage.write_text(os.path.join(out, "index.csv"),
                       csv_text(["shard", "id", "path", "num_samples", "seconds"], tracks))
    storage.write_text(os.path.join(out, "skipped.csv"), csv_text(["path", "reason", "detail"], skipped))
    storage.write_text(os.path.join(out, "report.json"), json_text(report))
    return report


def finish_prepared(out, num_shards, settings):
    """After every shard of the current sources (``num_shards``) is written: refuse a folder that
    holds more, write ``index.csv``, ``skipped.csv`` and ``report.json``; return the report."""
    if os.path.exists(shard_path(out, num_shards, "json")):
        raise PrepareError(f"{shown_path(out)} holds more shards than the current sources fill (from shard "
                           f"{num_shards}): the input list shrank since the first run; use another --out folder")
    return _write_summary(out, num_shards, settings)


def check_options(tracks_per_shard=TRACKS_PER_SHARD, sample_rate=SAMPLE_RATE, min_duration=MIN_DURATION,
                  max_duration=MAX_DURATION, workers=None, flags=False):
    """Refuse, before anything is read or written, a setting that could only skip every file or
    fail later: :class:`OptionError` naming it (as ``--sample-rate`` with ``flags``, the command
    line's spelling, else as ``sample_rate``). ``max_duration`` 0 or None: whole files."""
    def name(option):
        return "--" + option.replace("_", "-") if flags else option

    def integer(option, value, low, high=None):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or \
                (high is not None and value > high):
            bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise OptionError(f"{name(option)} must be a whole number {bounds}, got {value!r}")

    def seconds(option, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            whole = " (0: whole files)" if option == "max_duration" else ""
            raise OptionError(f"{name(option)} must be a finite number of seconds >= 0{whole}, got {value!r}")

    integer("tracks_per_shard", tracks_per_shard, 1)
    integer("sample_rate", sample_rate, *SAMPLE_RATES)
    seconds("min_duration", min_duration)
    if max_duration is not None:
        seconds("max_duration", max_duration)
    if max_duration and min_duration > max_duration:
        raise OptionError(f"{name('min_duration')} {min_duration:g} is longer than {name('max_duration')} "
                          f"{max_duration:g}: every file would be skipped as too_short")
    if workers is not None:
        integer("workers", workers, 0)


def prepare_settings(tracks_per_shard=TRACKS_PER_SHARD, sample_rate=SAMPLE_RATE, min_duration=MIN_DURATION,
                     max_duration=MAX_DURATION):
    """The settings a prepared folder records in ``prepare.json`` (a rerun must match them);
    raises :class:`OptionError` for a value out of range (:func:`check_options`)."""
    check_options(tracks_per_shard, sample_rate, min_duration, max_duration)
    return {"format": FORMAT_VERSION, "sample_rate": int(sample_rate), "tracks_per_shard": int(tracks_per_shard),
            "min_duration": float(min_duration), "max_duration": float(max_duration or 0)}


@contextlib.contextmanager
def prepared_folder(sources, out, settings):
    """``with prepared_folder(...) as entries``: check the sources and the folder ``out`` (made if
    missing; a file, a folder of the user's or one prepared with other settings is refused), hold
    its lock for the block (a second run on it is refused at once), remove the temporaries of a
    killed run; ``entries`` is the lazy iterator of ``(path, meta)``."""
    out = os.fspath(out)
    entries = iter_sources(sources)
    storage.check_output(out, kind="folder")
    _check_ours(out)  # before the lock file is made inside it
    with storage.locked(out):  # makes the folder
        storage.clean_partials(out)
        for stale in glob.glob(os.path.join(glob.escape(out), "*.tmp-*")):  # the scheme before .partial
            os.remove(stale)
        check_settings(out, settings)
        yield entries


def iter_shard_inputs(entries, tracks_per_shard):
    """``(k, entries of shard k)`` for k = 0, 1, ...: consecutive runs of ``tracks_per_shard``
    entries, read lazily."""
    chunks = iter(lambda: list(itertools.islice(entries, tracks_per_shard)), [])
    return enumerate(chunks)


def prepare_shards(sources, out, tracks_per_shard=TRACKS_PER_SHARD, workers=None, sample_rate=SAMPLE_RATE,
                   min_duration=MIN_DURATION, max_duration=MAX_DURATION, progress=True):
    """Decode ``sources`` into ``tracks_per_shard``-entry TFRecord shards in ``out``; return the report.

    Resumable: rerunning with the same sources and settings skips finished shards. ``workers``
    decoding processes (default: all cores; 0 or 1 decodes in this process).
    """
    from keras_music_ssl.progress import bar as progress_bar

    out = os.fspath(out)
    check_options(workers=workers)
    settings = prepare_settings(tracks_per_shard, sample_rate, min_duration, max_duration)
    with prepared_folder(sources, out, settings) as entries:
        bar = progress_bar(desc="prepare", unit="file", enabled=progress)
        num_shards, shard_inputs = 0, {}  # unfinished shard -> its input paths, as the entries are read

        def todo():  # the work items of unfinished shards; finished shards only advance the bar
            nonlocal num_shards
            for k, chunk in iter_shard_inputs(entries, tracks_per_shard):
                num_shards = k + 1
                inputs = [path for path, _ in chunk]
                if shard_finished(out, k, inputs):
                    bar.update(len(chunk))
                    continue
                shard_inputs[k] = inputs
                for position, (path, meta) in enumerate(chunk):
                    yield k, position, path, meta

        fn = functools.partial(_work_item, sample_rate=sample_rate, min_duration=min_duration,
                               max_duration=max_duration)
        writer = None
        try:
            for k, position, result in ordered_map(fn, todo(), default_workers() if workers is None else workers):
                if position == 0:
                    writer = _ShardWriter(out, k, shard_inputs[k])
                writer.add(result)
                bar.update(1)
                if isinstance(result, SkippedFile):
                    bar.set_postfix_str(f"skipped {shown_path(os.path.basename(result.path))}: {result.reason}",
                                        refresh=False)
                if position == len(shard_inputs[k]) - 1:
                    writer.commit()
                    writer = None
                    del shard_inputs[k]
        except BaseException as error:
            if writer is not None:  # a full disk, an interrupt: no temporary shard left behind
                writer.abort(error)
            raise
        finally:
            bar.close()
        return finish_prepared(out, num_shards, settings)
