"""Track embeddings for audio files, defined as in the authors' ``usage/sample.py``.

For a track decoded to mono 16 kHz and peak-normalised (x / max|x|, unless silent), as
``keras_music_ssl/track.py`` defines it:

    chunks_k = x_padded[k * S : (k + 1) * S],  k = 0 .. ceil(len(x) / S) - 1,  S = 64,000 (4 s)
    embedding = (1 / K) * sum_k encoder(chunks_k)

where ``x_padded`` is ``x`` zero-padded at the end to a multiple of S (the last, padded
chunk counts like the others). ``embed_waveform`` is that formula for one waveform;
``embed_files`` decodes files with ``keras_music_ssl.data.load_audio`` and batches chunks
across files (the encoder runs in inference mode, so batching does not change results).
A file that cannot be used is skipped with its reason, never fatal.
"""

import collections
import itertools
import pathlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from keras_music_ssl import storage
from keras_music_ssl.embedder import clip_samples, embedding_dim
from keras_music_ssl.errors import KmsslError
from keras_music_ssl.data.audio import MAX_DURATION, AudioError, is_audio_path, load_audio
from keras_music_ssl.inference import padded_size
from keras_music_ssl.track import UnusableTrack, chunk_waveform, peak_normalize  # noqa: F401


class ResumeMismatchError(KmsslError, ValueError):
    """``--resume`` onto an .npz written with other weights, or an output that cannot be continued."""


class Embeddings(NamedTuple):
    embeddings: np.ndarray  # (N, D) float32, one row per embedded file, in input order
    paths: list  # the N embedded files
    skipped: list  # (path, reason) for each file that was not embedded


def _embed_batch(encoder, chunks, batch_size):
    """Encoder outputs for <= batch_size chunks; the batch is zero-padded to a power of two so
    that compiled backends (TF, JAX) see a handful of shapes, not one per file length."""
    rows = chunks.shape[0]
    size = padded_size(rows, batch_size)
    if size > rows:
        chunks = np.concatenate([chunks, np.zeros((size - rows, chunks.shape[1]), chunks.dtype)])
    return np.asarray(encoder.predict_on_batch(chunks), dtype=np.float32)[:rows]


def embed_waveform(encoder, waveform, batch_size=32, normalize=True):
    """Track embedding (D,) float32 of a mono waveform at the encoder's sample rate (16 kHz).

    Peak-normalises (``normalize``; a no-op on ``load_audio`` output), zero-pads to a
    multiple of the encoder's input length, embeds every chunk and returns their mean.
    """
    waveform = peak_normalize(waveform) if normalize else waveform
    return embed_chunks(encoder, chunk_waveform(waveform, clip_samples(encoder)), batch_size).mean(axis=0)


def embed_chunks(encoder, chunks, batch_size=32):
    """Encoder outputs (k, D) float32 for clips (k, num_samples), ``batch_size`` at a time."""
    outputs = [_embed_batch(encoder, chunks[i:i + batch_size], batch_size)
               for i in range(0, len(chunks), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, embedding_dim(encoder)), np.float32)


class _Track:
    def __init__(self, path, mean):
        self.path, self.mean, self.n_chunks, self.outputs, self.reason = path, mean, 0, [], None

    @property
    def done(self):
        return self.reason is not None or len(self.outputs) == self.n_chunks

    def result(self):
        if self.reason is not None:
            return self.path, None, self.reason
        outputs = np.stack(self.outputs)
        embedding = outputs.mean(axis=0) if self.mean else outputs
        if not np.all(np.isfinite(embedding)):
            return self.path, None, "non_finite_embedding"
        return self.path, embedding, None


def _decode(path, chunker, max_duration):
    """(chunks, None), or (None, skip reason) for a file that cannot be used."""
    try:
        return chunker(path, load_audio(path, max_duration=max_duration)), None
    except (AudioError, UnusableTrack) as error:
        return None, error.reason + (f": {error.detail}" if error.detail else "")


def _decoded(paths, chunker, max_duration, ahead=4):
    """``(path, chunks, reason)`` in input order, decoding up to ``ahead`` files in a thread
    while the encoder runs (libsndfile and soxr release the GIL). Four, not two: a batch of 32
    chunks waits for four 30 s files, and the decoder should not idle while it runs
    (``benchmarks/embed_files_speed.py``: 0.74 s -> 0.68 s on 12 files)."""
    paths = iter(paths)
    with ThreadPoolExecutor(max_workers=1) as pool:
        def submit(path):
            return str(path), pool.submit(_decode, path, chunker, max_duration)

        jobs = collections.deque(submit(p) for p in itertools.islice(paths, ahead))
        while jobs:
            path, job = jobs.popleft()
            jobs.extend(submit(p) for p in itertools.islice(paths, 1))
            yield (path, *job.result())


def iter_track_embeddings(encoder, paths, batch_size=32, max_duration=MAX_DURATION, chunker=None,
                          mean=True):
    """Yield ``(path, embedding (D,) or None, skip reason or None)`` per path, in input order.

    ``chunker(path, waveform) -> (k, num_samples)`` cuts a decoded track into encoder inputs
    (default: ``track.chunk_waveform``, the zero-padded track chunks); it raises ``track.UnusableTrack``
    for a track to skip. With ``mean=False`` the embedding is the (k, D) array of
    chunk embeddings instead of their mean. Chunks of consecutive files share encoder batches
    of ``batch_size``; at most one batch, one file's chunks and four decoded files ahead are
    held in memory.
    """
    if chunker is None:
        num_samples = clip_samples(encoder)

        def chunker(path, waveform):
            return chunk_waveform(waveform, num_samples)

    pending = collections.deque()  # tracks not yielded yet, in input order
    queue = []  # (track, chunk) waiting for the encoder

    def run(rows):
        outputs = _embed_batch(encoder, np.stack([chunk for _, chunk in queue[:rows]]), batch_size)
        for (track, _), output in zip(queue[:rows], outputs):
            track.outputs.append(output)
        del queue[:rows]

    def finished():
        while pending and pending[0].done:
            yield pending.popleft().result()

    for path, chunks, reason in _decoded(paths, chunker, max_duration):
        track = _Track(path, mean)
        if chunks is None:
            track.reason = reason
        else:
            track.n_chunks = len(chunks)
            queue.extend((track, chunk) for chunk in chunks)
        pending.append(track)
        while len(queue) >= batch_size:
            run(batch_size)
        yield from finished()
    while queue:
        run(min(len(queue), batch_size))
    yield from finished()


def embed_files(encoder, paths, batch_size=32, progress=True, max_duration=MAX_DURATION,
                on_result=None):
    """Embed audio files; return ``Embeddings(embeddings, paths, skipped)``.

    ``embeddings`` is (N, D) float32 for the N files that were embedded, in input order;
    ``skipped`` lists ``(path, reason)`` for the others (missing, undecodable, truncated, ...).
    ``on_result(path, embedding_or_None, reason_or_None)`` is called as each file finishes.
    """
    from keras_music_ssl.progress import bar as progress_bar

    paths = [str(p) for p in paths]
    rows, kept, skipped = [], [], []
    with progress_bar(total=len(paths), unit="file", desc="embed", enabled=progress) as bar:
        for path, embedding, reason in iter_track_embeddings(encoder, paths, batch_size,
                                                             max_duration):
            if embedding is None:
                skipped.append((path, reason))
                bar.set_postfix(skipped=len(skipped))
            else:
                rows.append(embedding)
                kept.append(path)
            if on_result is not None:
                on_result(path, embedding, reason)
            bar.update()
    array = np.stack(rows) if rows else np.zeros((0, embedding_dim(encoder)), np.float32)
    return Embeddings(array.astype(np.float32), kept, skipped)


def expand_audio_paths(paths):
    """Files as given, with each folder replaced by the audio files under it (sorted)."""
    expanded = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            expanded += sorted(str(p) for p in path.rglob("*") if is_audio_path(p) and p.is_file())
        else:
            expanded.append(str(path))
    return expanded


def save_embeddings(out, embeddings, paths, **extra):
    """Write an .npz (``embeddings``, ``paths`` + string ``extra``) atomically."""
    arrays = {key: np.asarray(value) for key, value in extra.items()}
    with storage.atomic_write(out, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, embeddings=np.asarray(embeddings, np.float32),
                 paths=np.asarray(list(paths), dtype=str), **arrays)  # non-UTF-8 names round-trip


def load_embeddings(path):
    """``(embeddings (N, D), paths list, {other arrays})`` from an .npz written here.

    A file that is not such an .npz (damaged, cut short, something else) raises
    ``storage.StorageError`` in one line."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as data:
            extra = {key: data[key] for key in data.files if key not in ("embeddings", "paths")}
            embeddings, paths = data["embeddings"], [str(p) for p in data["paths"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, AttributeError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise storage.StorageError(f"{path} is not a readable embeddings file ({type(error).__name__}: "
                                   f"{str(error).splitlines()[0] if str(error) else ''}); remove it or "
                                   "choose another output") from None
    if embeddings.ndim != 2 or len(embeddings) != len(paths):
        raise storage.StorageError(f"{path}: embeddings {embeddings.shape} do not match {len(paths)} paths")
    return embeddings, paths, extra


def embed_to_file(encoder, paths, out, batch_size=32, resume=False, save_every=300.0,
                  preset="", progress=True, max_duration=MAX_DURATION, overwrite=False):
    """``embed_files`` that writes ``out`` (.npz) as it goes, so that a long run can resume.

    ``out`` is rewritten (atomically) at most every ``save_every`` seconds and at the end;
    time-based, because each write holds every row so far. With ``resume``, files already
    in ``out`` are not embedded again; the .npz records the fingerprint of the encoder's
    weights (``storage.weights_fingerprint``), and a resume with other weights is refused,
    whatever the preset is called. An existing ``out`` is replaced only with ``overwrite``.
    One process at a time writes ``out`` (a lock beside it). Rows follow the input order.
    Returns the ``Embeddings`` of all input files.
    """
    out = storage.check_output(out, "file")
    if out.exists() and not (resume or overwrite):
        raise ResumeMismatchError(f"{out} exists: --resume to continue it, --overwrite to replace it, "
                                  "or choose another --out")
    with storage.locked(out, folder=False):
        return _embed_to_file(encoder, [str(p) for p in paths], out, batch_size, resume, save_every, preset,
                              progress, max_duration)


def _embed_to_file(encoder, paths, out, batch_size, resume, save_every, preset, progress, max_duration):
    fingerprint = storage.weights_fingerprint(encoder)
    done = {}
    if resume and out.is_file():
        old, old_paths, extra = load_embeddings(out)
        stored = str(extra.get("fingerprint", ""))
        if stored != fingerprint:
            written = f"preset {str(extra['preset'])!r}" if str(extra.get("preset", "")) else "another model"
            raise ResumeMismatchError(
                f"{out} holds embeddings of other weights ({written}, "
                + (f"fingerprint {stored[:12]}" if stored else "no weights fingerprint: written before 0.5")
                + f"; these weights are {fingerprint[:12]}): refusing to mix them (choose another --out)")
        done = dict(zip(old_paths, old))
    last_save = time.monotonic()

    def save():
        kept = [p for p in paths if p in done]
        rows = np.stack([done[p] for p in kept]) if kept else None
        if kept:
            save_embeddings(out, rows, kept, preset=preset, fingerprint=fingerprint)
        return rows, kept

    def record(path, embedding, reason):
        nonlocal last_save
        if embedding is not None:
            done[path] = embedding
            if time.monotonic() - last_save >= save_every:
                save()
                last_save = time.monotonic()

    todo = [p for p in paths if p not in done]
    result = embed_files(encoder, todo, batch_size, progress, max_duration, on_result=record)
    rows, kept = save()
    if rows is None:
        rows = np.zeros((0, embedding_dim(encoder)), np.float32)
    return Embeddings(rows, kept, result.skipped)


class Timelines(NamedTuple):
    embeddings: np.ndarray  # (N, D) track embeddings
    paths: list
    skipped: list
    windows: int  # windows embedded, all files together


def embed_timelines_to_file(encoder, paths, out, hop=None, batch_size=32, preset="", max_duration=None,
                            overwrite=False, progress=True):
    """Embed every window of each file (``timeline.timeline``) and write one .npz: the usual
    ``embeddings`` / ``paths`` (track embeddings), and ``window_embeddings`` (W, D), ``window_file``
    (W,: the row in ``paths``), ``window_start`` / ``window_end`` (W,: seconds), ``hop``. Written
    once, atomically, at the end (a killed run leaves no .npz). Returns :class:`Timelines`."""
    from keras_music_ssl.progress import bar as progress_bar

    from keras_music_ssl.timeline import timeline

    out = storage.check_output(out, "file")
    if out.exists() and not overwrite:
        raise ResumeMismatchError(f"{out} exists: --overwrite to replace it, or choose another --out")
    lines, skipped = [], []
    with storage.locked(out, folder=False):
        for path in progress_bar([str(p) for p in paths], unit="file", desc="embed", enabled=progress):
            try:
                lines.append(timeline(encoder, path, hop=hop, batch_size=batch_size, embeddings=True,
                                      max_duration=max_duration))
            except (AudioError, UnusableTrack) as error:
                skipped.append((path, error.reason))
        if not lines:
            return Timelines(np.zeros((0, embedding_dim(encoder)), np.float32), [], skipped, 0)
        tracks = np.stack([line.track_embedding for line in lines])
        save_embeddings(out, tracks, [line.path for line in lines], preset=preset,
                        fingerprint=storage.weights_fingerprint(encoder), hop=lines[0].hop,
                        window_embeddings=np.concatenate([line.embeddings for line in lines]).astype(np.float32),
                        window_file=np.concatenate([np.full(len(line.start), i) for i, line in enumerate(lines)]),
                        window_start=np.concatenate([line.start for line in lines]),
                        window_end=np.concatenate([line.end for line in lines]))
    return Timelines(tracks, [line.path for line in lines], skipped, sum(len(line.start) for line in lines))
