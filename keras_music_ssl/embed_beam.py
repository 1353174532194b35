"""``kmssl embed --runner beam``: a catalog's track embeddings from an Apache Beam pipeline.

The same inputs (``embed.expand_audio_paths``), the same track contract and batching
(``embed.iter_track_embeddings``: ``track.py``'s chunks, ``predict_on_batch`` on batches of
chunks across files) and so the same numbers as ``kmssl embed``, written as shards so that a
catalog of millions of files is spread over many workers and a rerun resumes:

    embed.json          the settings (preset, the fingerprint of its weights, files per shard, max
                        duration); a rerun must match, so other weights under the same preset
                        name are refused, not mixed in
    shard-00000.npz     the embedded files among inputs 0..N-1: ``embeddings`` (n, D) float32,
                        ``paths`` (n,), ``num_chunks`` (n,) int64, ``preset`` (what
                        ``embed.load_embeddings`` reads)
    shard-00000.json    that shard's inputs and skipped files; written last, it marks the shard done
    skipped.csv         every file that could not be used: path, reason, detail
    report.json         counts (files, embedded, chunks, skipped by reason)

Shard k holds inputs ``k*N .. k*N+N-1`` (``N = files_per_shard``), like ``kmssl prepare``. A
worker loads the encoder once (``DoFn.setup``) and embeds whole shards, in input order. A file that
cannot be used is a skip record, never an exception. Beam metrics, namespace ``kmssl.embed``:
``embedded`` and ``skipped_<reason>``. :func:`load_embedding_shards` reads the folder back as one
array in input order. Inputs, the preset and the output folder must be paths every worker opens.
"""

import csv
import glob
import os

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import Metrics

from keras_music_ssl import storage
from keras_music_ssl.data import prepare
from keras_music_ssl.data.audio import MAX_DURATION
from keras_music_ssl.data.beam import read_and_spread, pipeline_options, run_pipeline, work_list
from keras_music_ssl.embed import iter_track_embeddings
from keras_music_ssl.embedder import embedding_dim

NAMESPACE = "kmssl.embed"
FORMAT_VERSION = 1
FILES_PER_SHARD = 512  # 3.5-min tracks: a few minutes of a 2-core worker per shard
# One in-process worker by default: the encoder already uses every core, and
# iter_track_embeddings decodes ahead in a thread while it runs.
LOCAL_DEFAULTS = {"runner": "DirectRunner", "direct_num_workers": "1", "direct_running_mode": "in_memory"}


def _split_reason(reason):
    """``"truncated: 1000 of 2000 frames"`` -> ``("truncated", "1000 of 2000 frames")``."""
    short, _, detail = reason.partition(": ")
    return short, detail


def embed_shard(encoder, out, k, paths, batch_size=32, max_duration=MAX_DURATION, preset=""):
    """Embed shard k's ``paths`` in order and write ``shard-k.npz`` then ``shard-k.json``;
    return the shard's index (the content of the json)."""
    rows, kept, chunks, skipped = [], [], [], []
    for path, outputs, reason in iter_track_embeddings(encoder, paths, batch_size, max_duration, mean=False):
        if outputs is None:
            short, detail = _split_reason(reason)
            skipped.append({"path": path, "reason": short, "detail": detail})
            continue
        rows.append(outputs.mean(axis=0))  # what iter_track_embeddings(mean=True) yields
        kept.append(path)
        chunks.append(len(outputs))
    embeddings = np.stack(rows) if rows else np.zeros((0, embedding_dim(encoder)), np.float32)
    with storage.atomic_write(prepare.shard_path(out, k, "npz"), "wb") as f:  # np.savez would append ".npz" to a name
        np.savez(f, embeddings=embeddings.astype(np.float32), paths=np.asarray(kept, dtype=str),
                 num_chunks=np.asarray(chunks, np.int64), preset=np.asarray(preset))
    index = {"shard": k, "inputs": list(paths), "embedded": len(kept), "chunks": int(sum(chunks)),
             "skipped": skipped}
    storage.write_text(prepare.shard_path(out, k, "json"), prepare.json_text(index))
    return index


class EmbedShard(beam.DoFn):
    """One work item ``{"shard": k, "paths": [...]}`` -> shard k embedded and written."""

    def __init__(self, out, preset_dir, preset, batch_size, max_duration):
        self.out, self.preset_dir, self.preset = out, preset_dir, preset
        self.batch_size, self.max_duration = batch_size, max_duration

    def setup(self):  # once per worker: the model stays loaded (and compiled) across shards
        from keras_music_ssl.backbone import MusicEncoder

        self.encoder = MusicEncoder.from_preset(self.preset_dir)

    def process(self, work):
        index = embed_shard(self.encoder, self.out, work["shard"], work["paths"], self.batch_size,
                            self.max_duration, self.preset)
        Metrics.counter(NAMESPACE, "embedded").inc(index["embedded"])
        for skipped in index["skipped"]:
            Metrics.counter(NAMESPACE, f"skipped_{skipped['reason']}").inc()
        yield work["shard"]


def _write_summary(out, num_shards, settings):
    if os.path.exists(prepare.shard_path(out, num_shards, "json")):
        raise ValueError(f"{out} holds more shards than the current inputs fill (from shard {num_shards}): "
                         "the input list shrank since the first run; use another --out folder")
    embedded = chunks = 0
    skipped = []
    for k in range(num_shards):
        index = storage.read_json(prepare.shard_path(out, k, "json"), "a finished shard's index")
        embedded, chunks = embedded + index["embedded"], chunks + index["chunks"]
        skipped += [(s["path"], s["reason"], s["detail"]) for s in index["skipped"]]
    by_reason = {}
    for _, reason, _ in skipped:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    report = {"files": embedded + len(skipped), "embedded": embedded, "chunks": chunks, "shards": num_shards,
              "skipped": len(skipped), "skipped_by_reason": dict(sorted(by_reason.items())), "settings": settings}
    storage.write_text(os.path.join(out, "skipped.csv"), prepare.csv_text(["path", "reason", "detail"], skipped))
    storage.write_text(os.path.join(out, "report.json"), prepare.json_text(report))
    return report


def embed_shards_beam(paths, out, preset, weights_dir=None, batch_size=32, files_per_shard=FILES_PER_SHARD,
                      max_duration=MAX_DURATION, beam_options=()):
    """Embed audio files (``embed.expand_audio_paths`` output) into shards in ``out`` on Beam;
    return ``(report, counters)`` (``counters``: this run's Beam metrics, ``{}`` when every
    shard was already done).

    ``preset``: a preset folder or name, as for ``kmssl embed``; resolved here (so a missing
    preset fails before the pipeline starts) and loaded once per worker.
    """
    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.presets import resolve_preset

    if files_per_shard < 1 or batch_size < 1:
        raise ValueError("files_per_shard and batch_size must be >= 1")
    out = os.fspath(out)
    options = pipeline_options(beam_options, LOCAL_DEFAULTS)
    preset_dir = str(resolve_preset(preset, weights_dir).absolute())
    paths = [str(p) for p in paths]
    fingerprint = storage.weights_fingerprint(MusicEncoder.from_preset(preset_dir))  # refuses a broken preset
    settings = {"format": FORMAT_VERSION, "preset": str(preset), "fingerprint": fingerprint,
                "files_per_shard": int(files_per_shard), "max_duration": float(max_duration or 0)}
    storage.check_output(out, "folder")
    with storage.locked(out):
        storage.clean_partials(out)
        for stale in glob.glob(os.path.join(glob.escape(out), "*.tmp-*")):  # the temporaries of version <= 0.4.3
            os.remove(stale)
        prepare.check_settings(out, settings, "embed.json")
        shards = [paths[i:i + files_per_shard] for i in range(0, len(paths), files_per_shard)]
        todo = ({"shard": k, "paths": shard} for k, shard in enumerate(shards)
                if not prepare.shard_finished(out, k, shard, "npz"))
        counters = {}
        with work_list(out, todo) as work:
            if work is not None:
                fn = EmbedShard(out, preset_dir, str(preset), batch_size, max_duration)
                counters = run_pipeline(lambda p: read_and_spread(p, work) | "Embed shards" >> beam.ParDo(fn),
                                        options, NAMESPACE)
        return _write_summary(out, len(shards), settings), counters


def load_embedding_shards(folder):
    """``(embeddings (N, D) float32, paths, num_chunks (N,))`` of a folder written by
    :func:`embed_shards_beam`, in input order."""
    shards = sorted(glob.glob(os.path.join(os.fspath(folder), "shard-*.npz")))
    if not shards:
        raise FileNotFoundError(f"no shard-*.npz in {folder}")
    embeddings, paths, chunks = [], [], []
    for shard in shards:
        with np.load(shard, allow_pickle=False) as data:
            embeddings.append(data["embeddings"])
            paths += [str(p) for p in data["paths"]]
            chunks.append(data["num_chunks"])
    return np.concatenate(embeddings).astype(np.float32), paths, np.concatenate(chunks)


def read_skipped(folder):
    """``[(path, reason)]`` of ``skipped.csv``, the reason written as ``kmssl embed`` prints it."""
    with open(os.path.join(os.fspath(folder), "skipped.csv"), newline="", encoding="utf-8") as f:
        return [(row["path"], row["reason"] + (f": {row['detail']}" if row["detail"] else ""))
                for row in csv.DictReader(f)]
