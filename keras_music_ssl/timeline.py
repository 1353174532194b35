"""Timelines: a track's tags (or embeddings) window by window, with times, in bounded memory.

The windows are ``track.timeline_windows``: 4 s windows every ``hop`` seconds of the
peak-normalised track, the last ones zero-padded. Each window gets the model's tag
probabilities (a tagger) and embedding; the track's own tags are computed in the same pass by the
track rule (``track.py``): the head on the mean embedding of the track chunks, which are the windows
at a 4 s hop (and are run once more only where a hop does not land on them).

A file is never held in memory whole. It is decoded once, block by block
(``data.audio.stream_audio``), into a temporary file of float32 samples (64 KB per second of
audio, in the temp folder; ``TMPDIR`` moves it) while its peak is measured; the windows are then
read back one batch at a time. Memory is the model, one decoded block (65,536 frames), one batch
of windows (``batch_size`` x 256 KB), and the outputs: ``windows x tags`` floats (``x D`` more with
``embeddings=True``). A 2-hour file at the default hop is 1,800 windows: 0.4 MB of scores for 50 tags.
The whole file is used unless ``max_duration`` says otherwise.

``model``: a ``MusicTagger`` or ``MusicEncoder`` (any backend), or an exported model
(``export.load_exported``: SavedModel, TFLite, ONNX). musicnn's taggers (``PatchTagger``: a
``musicnn_*`` / ``vgg_*`` preset) give their taggram instead: a window per 3 s patch
(``musicnn/track.py``, a patch every 2.992 s, its span ``[k, k + 1) x 2.992`` s), the track's tags the
mean of the patches' (musicnn's rule); that one is computed in memory (the file decoded whole, up
to ``max_duration``), as musicnn does.
"""

import dataclasses
import os
import tempfile

import numpy as np

from keras_music_ssl.track import timeline_starts


@dataclasses.dataclass
class Timeline:
    """Per-window outputs of one track; times in seconds.

    ``start`` / ``end`` (windows,); ``probabilities`` (windows, tags) or None (an embedder);
    ``embeddings`` (windows, D) when asked for; ``track_probabilities`` (tags,) / ``track_embedding``
    (D,): the track rule's; ``thresholds``: the head's decision thresholds, or None.
    """

    path: str
    hop: float
    window: float
    duration: float
    start: np.ndarray
    end: np.ndarray
    tags: list
    probabilities: np.ndarray
    embeddings: np.ndarray
    track_probabilities: np.ndarray
    track_embedding: np.ndarray
    num_chunks: int
    thresholds: list = None

    def decisions(self, probabilities=None):
        """Boolean decisions (``probability >= threshold``) of the windows (or of ``probabilities``),
        None without thresholds."""
        from keras_music_ssl.probe.thresholds import decide

        if self.thresholds is None:
            return None
        return decide(self.probabilities if probabilities is None else probabilities, self.thresholds)

    def track_tags(self):
        """The tags the track's decisions turn on, or None without thresholds."""
        decided = self.decisions(self.track_probabilities)
        return None if decided is None else [tag for tag, on in zip(self.tags, decided) if on]

    def to_json(self):
        """A JSON-ready dict: times, tag names, scores as lists aligned with ``tags``."""
        data = {"path": self.path, "hop": self.hop, "window": self.window, "duration": self.duration,
                "num_chunks": int(self.num_chunks), "tags": list(self.tags or [])}
        if self.track_probabilities is not None:
            data["track"] = {"probabilities": _floats(self.track_probabilities)}
            if self.thresholds is not None:
                data["track"]["decisions"] = self.track_tags()
                data["thresholds"] = [float(t) for t in self.thresholds]
        windows = []
        decided = self.decisions() if self.probabilities is not None else None
        for i in range(len(self.start)):
            window = {"start": float(self.start[i]), "end": float(self.end[i])}
            if self.probabilities is not None:
                window["probabilities"] = _floats(self.probabilities[i])
            if decided is not None:
                window["decisions"] = [tag for tag, on in zip(self.tags, decided[i]) if on]
            windows.append(window)
        data["windows"] = windows
        return data

    def csv_rows(self):
        """Header and rows: ``path, start, end`` then one score per tag, a row per window."""
        header = ["path", "start", "end", *self.tags]
        rows = [[self.path, f"{self.start[i]:.3f}", f"{self.end[i]:.3f}",
                 *(f"{p:.6f}" for p in self.probabilities[i])] for i in range(len(self.start))]
        return header, rows

    def plot(self, path, top=10):
        """Save the taggram (the ``top`` tags of the track x time, musicnn's picture) as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from keras_music_ssl.probe.report import save_figure

        if self.probabilities is None:
            raise ValueError("an embedder's timeline has no tags to draw")
        order = np.argsort(-self.track_probabilities, kind="stable")[:top]
        fig, ax = plt.subplots(figsize=(min(16, 4 + len(self.start) * 0.08), 1 + 0.35 * len(order)))
        image = ax.imshow(self.probabilities[:, order].T, aspect="auto", origin="upper", vmin=0, vmax=1,
                          cmap="viridis", interpolation="nearest",
                          extent=(0, float(self.start[-1] + self.hop), len(order) - 0.5, -0.5))
        ax.set_yticks(range(len(order)), [self.tags[j] for j in order])
        ax.set_xlabel(f"seconds (a {self.window:g} s window every {self.hop:g} s)")
        ax.set_title(os.path.basename(self.path) or "track", fontsize=9)
        fig.colorbar(image, ax=ax, label="probability", fraction=0.03)
        fig.tight_layout()
        save_figure(fig, path)
        return path


def _floats(values):
    return [round(float(v), 6) for v in values]


class _Samples:
    """Peak-normalised windows of a track: from an array in memory, or from a file decoded once into a
    temporary file of float32 samples (module docstring)."""

    def __init__(self, source, sample_rate, normalize, max_duration):
        self.file = None
        if isinstance(source, np.ndarray):
            self.array = np.asarray(source, np.float32)
            if self.array.ndim != 1:
                raise ValueError(f"expected a mono waveform (samples,), got shape {self.array.shape}")
            if not np.all(np.isfinite(self.array)):
                from keras_music_ssl.track import UnusableTrack

                raise UnusableTrack("non_finite", "the waveform holds NaN or infinite samples")
            self.length, peak = self.array.size, float(np.max(np.abs(self.array))) if self.array.size else 0.0
        else:
            from keras_music_ssl.data.audio import stream_audio

            self.array, self.length, peak = None, 0, 0.0
            self.file = tempfile.TemporaryFile(prefix="kmssl-timeline-")
            try:
                for block in stream_audio(source, sample_rate, max_duration):
                    block.tofile(self.file)
                    self.length += block.size
                    peak = max(peak, float(np.max(np.abs(block))))
            except BaseException:
                self.close()
                raise
        self.peak = np.float32(peak if normalize and peak > 0 else 1.0)

    def windows(self, starts, size):
        out = np.zeros((len(starts), size), np.float32)
        for row, start in enumerate(starts):
            count = min(size, self.length - int(start))
            if self.array is not None:
                piece = self.array[start:start + count]
            else:
                self.file.seek(int(start) * 4)
                piece = np.fromfile(self.file, np.float32, count)
            out[row, :count] = piece / self.peak  # track.peak_normalize's x / peak
        return out

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


class _KerasModel:
    """A ``MusicTagger`` or ``MusicEncoder`` as (windows -> embeddings, probabilities) and its head."""

    normalize = True

    def __init__(self, model, batch_size):
        from keras_music_ssl.tagger import MusicTagger

        self.tagger = isinstance(model, MusicTagger)
        self.encoder = model.encoder if self.tagger else model
        self.head = model.head if self.tagger else None
        self.tags = model.tags if self.tagger else None
        self.thresholds = self.head.thresholds if self.tagger else None
        self.clip_samples, self.sample_rate = int(self.encoder.num_samples), int(self.encoder.sample_rate)
        self.batch_size = batch_size

    def run(self, windows):
        from keras_music_ssl.inference import predict_arrays

        embeddings = predict_arrays(self.encoder, windows, self.batch_size)
        return embeddings, (self.tag(embeddings) if self.tagger else None)

    def tag(self, embeddings):
        from keras_music_ssl.inference import predict_arrays

        return predict_arrays(self.head, embeddings, self.batch_size)


class _ExportedModel:
    """An exported model (``export.runtime``) seen the same way."""

    def __init__(self, runner):
        from keras_music_ssl.export import ExportError

        meta = runner.metadata
        if meta.get("track_rule") == "patches":
            raise ValueError(f"{runner.path} is an export of musicnn's taggers: take its timeline (the taggram) "
                             "from its preset (kmssl tag --preset musicnn_mtt --timeline)")
        self.runner, self.tagger = runner, meta["kind"] == "tagger"
        self.tags = meta["tags"] if self.tagger else None
        self.thresholds = meta.get("thresholds") if self.tagger else None
        self.clip_samples, self.sample_rate = int(meta["clip_samples"]), int(meta["sample_rate"])
        self.normalize = bool(meta.get("normalize", True))
        if self.tagger and "head" not in runner.signatures:
            raise ExportError(f"{runner.path} has no 'head' ({'head.onnx' if runner.path.is_dir() else 'signature'}): "
                              "exported before 0.9; export it again for timelines")

    def run(self, windows):
        out = self.runner.clips(windows)
        return out["embedding"], (out["probabilities"] if self.tagger else None)

    def tag(self, embeddings):
        return self.runner.run("head", embedding=embeddings)["probabilities"]


def _adapter(model, batch_size):
    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.export.runtime import SavedModelRunner
    from keras_music_ssl.tagger import MusicTagger

    if isinstance(model, (MusicTagger, MusicEncoder)):
        return _KerasModel(model, batch_size)
    if isinstance(model, SavedModelRunner):  # the ONNX and TFLite runners too
        return _ExportedModel(model)
    raise TypeError(f"a timeline needs a MusicTagger, a MusicEncoder or an exported model (export.load_exported); "
                    f"got {type(model).__name__}")


def timeline(model, audio, hop=None, batch_size=32, embeddings=False, max_duration=None, progress=False):
    """The :class:`Timeline` of ``audio`` (a file path, or a mono waveform at the model's sample rate).

    Args:
        model: a ``MusicTagger`` or ``MusicEncoder`` (any backend), an exported model
            (``export.load_exported``), or one of musicnn's taggers (its own 3 s patches).
        audio: a file path, or a mono waveform at the model's sample rate.
        hop: seconds between window starts (> 0; None: the window length, 4 s, which gives the
            track chunks).
        batch_size: windows per model call.
        embeddings: keep each window's embedding.
        max_duration: seconds of a file to use (None: all).
        progress: show a progress bar.

    Returns:
        The track's ``Timeline``: window times, per-window probabilities (and embeddings), and
        the track's own tags by the track rule.

    Raises:
        AudioError: a file that cannot be decoded (``data.AudioError``), before any window is run.
        UnusableTrack: an empty waveform (``track.UnusableTrack``), before any window is run.

    Examples:
        >>> import numpy as np
        >>> from keras_music_ssl import MusicEncoder
        >>> from keras_music_ssl.timeline import timeline
        >>> encoder = MusicEncoder(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32)  # tiny
        >>> waveform = np.sin(np.arange(16000 * 10) / 10).astype("float32")  # 10 s at 16 kHz
        >>> line = timeline(encoder, waveform, hop=2.0, embeddings=True)
        >>> line.start.tolist()
        [0.0, 2.0, 4.0, 6.0, 8.0]
        >>> line.embeddings.shape, line.track_embedding.shape
        ((5, 32), (32,))
    """
    from keras_music_ssl.musicnn import PatchTagger

    if isinstance(model, PatchTagger):
        return _patch_timeline(model, audio, hop, batch_size, embeddings, max_duration)
    runner = _adapter(model, int(batch_size))
    hop = runner.clip_samples / runner.sample_rate if hop is None else hop
    if not (hop > 0 and np.isfinite(hop)):
        raise ValueError(f"hop must be a positive number of seconds, got {hop}")
    hop_samples = max(1, int(round(hop * runner.sample_rate)))
    clip = runner.clip_samples
    samples = _Samples(audio, runner.sample_rate, runner.normalize, max_duration)
    try:
        return _run(runner, samples, audio, hop_samples, clip, int(batch_size), embeddings, progress)
    finally:
        samples.close()


def _run(runner, samples, audio, hop_samples, clip, batch_size, keep_embeddings, progress):
    from keras_music_ssl.progress import bar as progress_bar

    starts = timeline_starts(samples.length, hop_samples)
    chunks = timeline_starts(samples.length, clip)
    every = np.union1d(starts, chunks)  # sorted: the file is read front to back
    is_window, is_chunk = np.isin(every, starts), np.isin(every, chunks)
    probabilities, kept, chunk_sum = [], [], None
    for first in progress_bar(range(0, len(every), batch_size), desc="timeline", unit="batch", enabled=progress):
        batch = every[first:first + batch_size]
        embedding, tagged = runner.run(samples.windows(batch, clip))
        embedding = np.asarray(embedding, np.float32)
        rows = is_window[first:first + batch_size]
        if tagged is not None:
            probabilities.append(np.asarray(tagged, np.float32)[rows])
        if keep_embeddings:
            kept.append(embedding[rows])
        part = embedding[is_chunk[first:first + batch_size]].astype(np.float64).sum(axis=0)
        chunk_sum = part if chunk_sum is None else chunk_sum + part
    track_embedding = (chunk_sum / len(chunks)).astype(np.float32)
    track_probabilities = (np.asarray(runner.tag(track_embedding[None]), np.float32)[0]
                           if runner.tagger else None)
    rate = runner.sample_rate
    return Timeline(path="" if isinstance(audio, np.ndarray) else os.fspath(audio),
                    hop=hop_samples / rate, window=clip / rate, duration=samples.length / rate,
                    start=starts / rate, end=np.minimum(starts + clip, samples.length) / rate,
                    tags=list(runner.tags) if runner.tagger else None,
                    probabilities=np.concatenate(probabilities) if probabilities else None,
                    embeddings=np.concatenate(kept) if keep_embeddings else None,
                    track_probabilities=track_probabilities, track_embedding=track_embedding,
                    num_chunks=len(chunks), thresholds=runner.thresholds)


def check_patch_hop(model, hop):
    """musicnn's patch step in seconds; ``ValueError`` for another ``hop`` (None: its own)."""
    step = model.hop_samples / model.sample_rate
    if hop is not None and abs(hop - step) > 1e-9:
        raise ValueError(f"{model.name} tags a patch every {step:.3f} s (musicnn's rule); it takes no other hop: "
                         "leave --hop out")
    return step


def _patch_timeline(model, audio, hop, batch_size, keep_embeddings, max_duration):
    """musicnn's taggram as a :class:`Timeline` (module docstring)."""
    from keras_music_ssl.data.audio import load_audio

    step = check_patch_hop(model, hop)
    if isinstance(audio, np.ndarray):
        waveform, path = audio, ""
    else:
        waveform, path = load_audio(audio, model.sample_rate, normalize=False, max_duration=max_duration), audio
    out = model.track(waveform, batch_size=batch_size)
    starts = np.arange(out["num_chunks"]) * model.hop_samples
    rate = model.sample_rate
    return Timeline(path=os.fspath(path), hop=step, window=model.num_samples / rate, duration=len(waveform) / rate,
                    start=starts / rate, end=np.minimum(starts + model.hop_samples, len(waveform)) / rate,
                    tags=list(model.tags), probabilities=out["taggram"],
                    embeddings=out["penultimate"] if keep_embeddings else None,
                    track_probabilities=out["probabilities"], track_embedding=out["penultimate"].mean(axis=0),
                    num_chunks=out["num_chunks"])
