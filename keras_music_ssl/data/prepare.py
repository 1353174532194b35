"""Prepare a pretraining corpus: audio files -> sharded TFRecords of 16 kHz int16 + metadata.

Sources are folder trees (walked in sorted order), manifests (read lazily, line by line) or single
audio files. A manifest is either a text file with one path per line (``#`` comments, blank lines
ignored) or a CSV/TSV with a ``path`` column, whose other columns are kept as track metadata.
Relative paths in a manifest are relative to the manifest's folder.

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
equal the current input list, else the run stops with an error). Shards and indexes are written
to a temporary file and renamed, so a killed run never leaves a partial shard that looks done,
and the final files equal an uninterrupted run's byte for byte.

The steps are separate functions so that another engine runs the same ones
(``data/beam.py``): :func:`prepare_settings`, :func:`open_prepared` (check the folder, list the
entries), :func:`iter_shard_inputs` + :func:`shard_finished` (which shards are left),
:func:`prepare_shard` (decode and write one shard) and :func:`finish_prepared` (the indexes
and the report, from the shard files).
"""

import csv
import dataclasses
import functools
import glob
import io
import itertools
import json
import os
import uuid

import numpy as np

from keras_music_ssl.data.audio import MAX_DURATION, SAMPLE_RATE, AudioError, is_audio_path, load_audio
from keras_music_ssl.data.parallel import default_workers, ordered_map
from keras_music_ssl.data.tfrecord import encode_track, to_int16, track_id

FORMAT_VERSION = 1
TRACKS_PER_SHARD = 64  # ~3.5-min tracks: ~430 MB of int16 per shard
MIN_DURATION = 4.0  # seconds: shorter than one 4-s view is of no use for pretraining


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
    except AudioError as error:
        return SkippedFile(os.fspath(path), error.reason, error.detail)
    except Exception as error:  # a decoder bug must not stop a long run: report it
        return SkippedFile(os.fspath(path), "undecodable", f"unexpected {type(error).__name__}: {error}")
    return PreparedTrack(os.fspath(path), to_int16(audio), sample_rate, dict(meta or {}))


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


def _read_csv_manifest(manifest):
    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t" if manifest.lower().endswith(".tsv") else ",")
        if "path" not in (reader.fieldnames or []):
            raise ValueError(f"{manifest}: a CSV manifest needs a 'path' column, found {reader.fieldnames}")
        for row in reader:
            meta = {k: v for k, v in row.items() if k != "path" and k is not None and v not in (None, "")}
            yield _resolve(manifest, row["path"]), meta


def _read_text_manifest(manifest):
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                yield _resolve(manifest, line), {}


def iter_sources(sources):
    """An iterator of ``(path, metadata)`` over every entry of the sources, in a deterministic order,
    read lazily. Raises at once if a source does not exist."""
    sources = [os.fspath(s) for s in sources]
    for source in sources:
        if not os.path.exists(source):
            raise FileNotFoundError(f"source not found: {source}")
    return _entries(sources)


def _entries(sources):
    for source in sources:
        if os.path.isdir(source):
            yield from _walk(source)
        elif source.lower().endswith((".csv", ".tsv")):
            yield from _read_csv_manifest(source)
        elif is_audio_path(source):
            yield source, {}
        else:
            yield from _read_text_manifest(source)


# --- the prepared folder ---------------------------------------------------------------------

def _shard_path(out, k, ext):
    return os.path.join(out, f"shard-{k:05d}.{ext}")


def _tmp_path(path):
    # pid and a random part: two attempts at the same shard (a distributed engine retries or
    # runs a straggler twice, maybe on two hosts with the same pid) never share a temporary file.
    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _atomic_write(path, data):
    tmp = _tmp_path(path)
    with open(tmp, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
    os.replace(tmp, path)


def _csv_text(header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _json_text(obj):
    return json.dumps(obj, indent=1, sort_keys=True) + "\n"


def _check_settings(out, settings, name="prepare.json"):
    path = os.path.join(out, name)
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        if previous != settings:
            raise ValueError(f"{out} was prepared with other settings {previous}, not {settings}: "
                             "use another --out folder or delete this one")
    else:
        _atomic_write(path, _json_text(settings))


def shard_finished(out, k, inputs, ext="tfrecord"):
    """True if shard k (``shard-k.json`` and ``shard-k.<ext>``) is done; raises if it was made
    from other inputs."""
    index_path, shard = _shard_path(out, k, "json"), _shard_path(out, k, ext)
    if not (os.path.exists(index_path) and os.path.exists(shard)):
        return False
    with open(index_path) as f:
        recorded = json.load(f)["inputs"]
    if recorded != inputs:
        raise ValueError(f"{index_path} was made from other input files than the current sources list "
                         "(entries changed since the first run): use another --out folder")
    return True


class _ShardWriter:
    """Writes one shard to temporary files; :meth:`commit` renames them into place."""

    def __init__(self, out, k, inputs):
        import tensorflow as tf

        self.out, self.k, self.inputs = out, k, inputs
        self.tmp = _tmp_path(_shard_path(out, k, "tfrecord"))
        self.writer = tf.io.TFRecordWriter(self.tmp)
        self.tracks, self.skipped = [], []

    def add(self, result):
        if isinstance(result, SkippedFile):
            self.skipped.append(dataclasses.asdict(result))
            return
        self.writer.write(encode_track(result.path, result.audio, result.sample_rate, result.meta))
        self.tracks.append({"id": track_id(result.path), "path": result.path, "num_samples": len(result.audio)})

    def commit(self):
        self.writer.close()
        os.replace(self.tmp, _shard_path(self.out, self.k, "tfrecord"))
        index = {"shard": self.k, "inputs": self.inputs, "tracks": self.tracks, "skipped": self.skipped}
        _atomic_write(_shard_path(self.out, self.k, "json"), _json_text(index))
        return index


def prepare_shard(out, k, entries, sample_rate=SAMPLE_RATE, min_duration=MIN_DURATION, max_duration=MAX_DURATION):
    """Decode shard k's ``entries`` (``(path, meta)`` pairs) in order with :func:`prepare_file`
    and write the shard; return its index (the content of ``shard-k.json``). One track in
    memory at a time."""
    writer = _ShardWriter(out, k, [path for path, _ in entries])
    for path, meta in entries:
        writer.add(prepare_file(path, meta, sample_rate, min_duration, max_duration))
    return writer.commit()


def _work_item(item, **settings):
    k, position, path, meta = item
    return k, position, prepare_file(path, meta, **settings)


def _write_summary(out, num_shards, settings):
    tracks, skipped = [], []
    for k in range(num_shards):
        with open(_shard_path(out, k, "json")) as f:
            index = json.load(f)
        tracks += [(k, t["id"], t["path"], t["num_samples"], f"{t['num_samples'] / settings['sample_rate']:.3f}")
                   for t in index["tracks"]]
        skipped += [(s["path"], s["reason"], s["detail"]) for s in index["skipped"]]
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
    _atomic_write(os.path.join(out, "index.csv"), _csv_text(["shard", "id", "path", "num_samples", "seconds"], tracks))
    _atomic_write(os.path.join(out, "skipped.csv"), _csv_text(["path", "reason", "detail"], skipped))
    _atomic_write(os.path.join(out, "report.json"), _json_text(report))
    return report


def finish_prepared(out, num_shards, settings):
    """After every shard of the current sources (``num_shards``) is written: refuse a folder that
    holds more, write ``index.csv``, ``skipped.csv`` and ``report.json``; return the report."""
    if os.path.exists(_shard_path(out, num_shards, "json")):
        raise ValueError(f"{out} holds more shards than the current sources fill (from shard {num_shards}): "
                         "the input list shrank since the first run; use another --out folder")
    return _write_summary(out, num_shards, settings)


def prepare_settings(tracks_per_shard=TRACKS_PER_SHARD, sample_rate=SAMPLE_RATE, min_duration=MIN_DURATION,
                     max_duration=MAX_DURATION):
    """The settings a prepared folder records in ``prepare.json`` (a rerun must match them)."""
    if tracks_per_shard < 1:
        raise ValueError("tracks_per_shard must be >= 1")
    return {"format": FORMAT_VERSION, "sample_rate": int(sample_rate), "tracks_per_shard": int(tracks_per_shard),
            "min_duration": float(min_duration), "max_duration": float(max_duration or 0)}


def open_prepared(sources, out, settings):
    """Check the sources and the folder ``out`` (made if missing, its settings checked, temporary
    files of a killed run removed); return the lazy iterator of ``(path, meta)`` entries."""
    entries = iter_sources(sources)
    os.makedirs(out, exist_ok=True)
    _check_settings(out, settings)
    for stale in glob.glob(os.path.join(out, "*.tmp-*")):  # left by a killed run
        os.remove(stale)
    return entries


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
    from tqdm.auto import tqdm

    out = os.fspath(out)
    settings = prepare_settings(tracks_per_shard, sample_rate, min_duration, max_duration)
    entries = open_prepared(sources, out, settings)
    bar = tqdm(desc="prepare", unit="file", disable=not progress)
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

    fn = functools.partial(_work_item, sample_rate=sample_rate, min_duration=min_duration, max_duration=max_duration)
    writer = None
    for k, position, result in ordered_map(fn, todo(), default_workers() if workers is None else workers):
        if position == 0:
            writer = _ShardWriter(out, k, shard_inputs[k])
        writer.add(result)
        bar.update(1)
        if isinstance(result, SkippedFile):
            bar.set_postfix_str(f"skipped {os.path.basename(result.path)}: {result.reason}", refresh=False)
        if position == len(shard_inputs[k]) - 1:
            writer.commit()
            del shard_inputs[k]
    bar.close()
    return finish_prepared(out, num_shards, settings)
