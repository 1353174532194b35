"""Frozen embeddings of a dataset split, cached on disk and resumable after a kill.

The paper's downstream protocol (docs/paper.md#downstream-data), with the track rules of ``keras_music_ssl/track.py``:

- ``train``: each track gives its non-overlapping 4 s segments that pass the RMS silence rule,
  shuffled, at most 25 (the shuffle is seeded by ``(seed, path)``, so it does not depend on the
  order or batching of the run); one embedding per segment, labelled with the track's tags;
- ``valid`` / ``test``: each track gives the mean of the embeddings of all its whole 4 s
  segments (``track.evaluation_chunks``; ``eval_chunks="padded"`` gives ``kmssl embed``'s
  zero-padded chunks instead). Entirely silent tracks are dropped.

Cache: ``cache_dir/<model>-<fingerprint>/<split>-<key>/``, where ``key`` hashes the model's
weights fingerprint, the split's file list (path, size, mtime) and the protocol. Tracks are
embedded in blocks of ``block_size``; each finished block is written atomically
(``part-NNNNN.npz``), so a killed run resumes at the first missing block and a finished split is
read back without calling the model. A block file that cannot be read back (truncated, edited,
another block's) is embedded again, with a one-line warning. Files that cannot be used are
skipped, with their reasons.
"""

import dataclasses
import hashlib
import json
import os
import sys
import zipfile

import numpy as np

from keras_music_ssl import storage
from keras_music_ssl.data.audio import MAX_DURATION
from keras_music_ssl.embed import iter_track_embeddings
from keras_music_ssl.track import (MAX_SEGMENTS, RMS_THRESHOLD, UnusableTrack, evaluation_chunks,
                                   training_segments)

CACHE_VERSION = 1


@dataclasses.dataclass
class SplitFeatures:
    """Embeddings of one split. ``features`` has one row per track (evaluation splits) or per
    segment (``train``: ``track`` gives each row's index into ``paths``)."""

    paths: list
    labels: np.ndarray  # (tracks, tags)
    features: np.ndarray  # (rows, D)
    track: np.ndarray  # (rows,) int
    skipped: list  # (path, reason)
    rows: np.ndarray = None  # (tracks,) int: each kept track's row in the split

    def for_task(self, task, split_rows):
        """The tracks labelled in ``task`` (a ``labeled_csv.Task``; ``split_rows``: the split's
        rows this was extracted from), with that task's labels."""
        labels, labelled = task.labels(split_rows)
        labels, labelled = labels[self.rows], labelled[self.rows]
        keep = np.flatnonzero(labelled)
        renumber = np.full(len(labelled), -1, np.int64)
        renumber[keep] = np.arange(len(keep))
        segments = labelled[self.track]
        return SplitFeatures([self.paths[i] for i in keep], labels[keep], self.features[segments],
                             renumber[self.track[segments]], self.skipped, np.asarray(self.rows)[keep])

    def skipped_counts(self):
        reasons = [reason.split(":")[0] for _, reason in self.skipped]
        return {reason: reasons.count(reason) for reason in sorted(set(reasons))}

    @property
    def row_labels(self):
        return self.labels[self.track]


def protocol_config(split, seed, num_samples, max_segments=MAX_SEGMENTS, threshold=RMS_THRESHOLD,
                    eval_chunks="segments"):
    if split == "train":
        return {"mode": "segments", "num_samples": num_samples, "max_segments": max_segments,
                "threshold": threshold, "seed": seed, "version": CACHE_VERSION}
    return {"mode": f"track_mean_{eval_chunks}", "num_samples": num_samples, "version": CACHE_VERSION}


def _file_list(paths):
    listed = []
    for path in paths:
        try:
            stat = os.stat(path)
            listed.append([path, stat.st_size, stat.st_mtime_ns])
        except OSError:
            listed.append([path, -1, -1])
    return listed


def cache_folder(cache_dir, probed, split, paths, protocol):
    key = hashlib.sha256(json.dumps({"fingerprint": probed.fingerprint, "split": split,
                                     "files": _file_list(paths), "protocol": protocol}).encode())
    return os.path.join(cache_dir, f"{probed.name}-{probed.fingerprint[:12]}", f"{split}-{key.hexdigest()[:16]}")


def _track_rng(seed, path):
    return np.random.default_rng([seed, int(hashlib.md5(path.encode()).hexdigest()[:8], 16)])


def _chunker(split, seed, num_samples, max_segments, threshold, eval_chunks):
    if split == "train":
        def chunker(path, waveform):
            return training_segments(waveform, _track_rng(seed, path), num_samples, max_segments, threshold)[0]
    else:
        def chunker(path, waveform):
            if not np.any(waveform):
                raise UnusableTrack("silent", "every sample is zero")
            return evaluation_chunks(waveform, num_samples, eval_chunks)
    return chunker


def _write_part(path, arrays):
    with storage.atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def _read_part(path, block, dim):
    """The arrays of a finished block, or None when ``path`` is missing or not that block."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            part = {k: data[k] for k in ("paths", "counts", "reasons", "features")}
        consistent = (part["paths"].tolist() == list(block) and len(part["counts"]) == len(block)
                      and len(part["reasons"]) == len(block) and part["features"].ndim == 2
                      and part["features"].shape == (int(part["counts"].sum()), dim))
        if consistent:
            return part
        reason = "it does not hold this block's embeddings"
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        reason = f"{type(error).__name__}: {error}"
    print(f"warning: cached embeddings {path} are unreadable ({reason}); embedding that block again",
          file=sys.stderr, flush=True)
    return None


def _embed_block(probed, paths, split, chunker, batch_size, max_duration, bar):
    dim = int(probed.model.output_dim)
    rows, counts, reasons = [], [], []
    for path, embedding, reason in iter_track_embeddings(probed.model, paths, batch_size, max_duration,
                                                         chunker=chunker, mean=split != "train"):
        if embedding is None:
            counts.append(0)
            reasons.append(reason)
        else:
            embedding = embedding.reshape(-1, dim)
            rows.append(embedding)
            counts.append(len(embedding))
            reasons.append("")
        if bar is not None:
            bar.update()
    features = np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    return {"paths": np.asarray(paths, dtype=str), "counts": np.asarray(counts, np.int64),
            "reasons": np.asarray(reasons, dtype=str), "features": features}


def extract_split(probed, dataset, split, cache_dir, seed=0, batch_size=32, block_size=128,
                  max_segments=MAX_SEGMENTS, threshold=RMS_THRESHOLD, eval_chunks="segments",
                  max_duration=MAX_DURATION, progress=True):
    """:class:`SplitFeatures` of one split of a ``LabeledDataset`` for one ``ProbedModel``."""
    from keras_music_ssl.progress import bar as progress_bar

    part = dataset.split(split)
    paths, labels = part.paths, part.labels
    num_samples = int(probed.model.num_samples)
    protocol = protocol_config(split, seed, num_samples, max_segments, threshold, eval_chunks)
    folder = cache_folder(cache_dir, probed, split, paths, protocol)
    os.makedirs(folder, exist_ok=True)
    chunker = _chunker(split, seed, num_samples, max_segments, threshold, eval_chunks)
    blocks = [paths[i:i + block_size] for i in range(0, len(paths), block_size)]
    files = [os.path.join(folder, f"part-{b:05d}.npz") for b in range(len(blocks))]
    dim = int(probed.model.output_dim)
    storage.clean_partials(folder, only_dead=True)  # the cache is shared: only what killed writers left
    parts = [_read_part(file, block, dim) for block, file in zip(blocks, files)]
    done = sum(len(block) for block, part in zip(blocks, parts) if part is not None)
    with progress_bar(total=len(paths), initial=done, unit="track", desc=f"{probed.name} {split}",
                      enabled=progress and done < len(paths)) as bar:
        for b, (block, file) in enumerate(zip(blocks, files)):
            if parts[b] is None:
                parts[b] = _embed_block(probed, block, split, chunker, batch_size, max_duration, bar)
                _write_part(file, parts[b])
    features, counts, reasons = [], [], []
    for part in parts:
        features.append(part["features"])
        counts += part["counts"].tolist()
        reasons += [str(r) for r in part["reasons"]]
    keep_rows = [i for i, count in enumerate(counts) if count]  # the cache follows ``paths``
    kept = [paths[i] for i in keep_rows]
    track = [t for t, i in enumerate(keep_rows) for _ in range(counts[i])]
    skipped = [(paths[i], reasons[i]) for i, count in enumerate(counts) if not count]
    # For people reading the cache; never read back, so a broken one is simply rewritten.
    storage.write_json(os.path.join(folder, "info.json"), {
        "model": probed.name, "fingerprint": probed.fingerprint, "split": split, "protocol": protocol,
        "tracks": len(paths), "skipped": len(skipped)}, indent=1)
    return SplitFeatures(kept, labels[keep_rows].reshape(len(kept), labels.shape[1]),
                         np.concatenate(features) if features else np.zeros((0, dim), np.float32),
                         np.asarray(track, np.int64), skipped, np.asarray(keep_rows, np.int64))
