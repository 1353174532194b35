"""Learning curves while pretraining: a fast probe of the encoder every N epochs, per task.

``LearningCurve`` is a Keras callback for a pretext model's ``fit`` (``kmssl pretrain
--probe-every N --probe-dataset D``). Every ``every`` epochs, and after the last one, it embeds a
seeded subset of D's train and valid tracks with the encoder being trained (inference mode; a
track is the mean of at most :data:`CHUNKS_PER_TRACK` whole 4 s segments, evenly spaced), fits one
logistic regression per task on the train tracks (scikit-learn, standardised features; one per
tag for a multi-label task, multinomial for a single-label one) and scores the valid tracks:

- ``probe_<task>_roc_auc`` (macro ROC-AUC, as the probe harness computes it) and, for a
  single-label task, ``probe_<task>_accuracy``;
- ``probe_<task>_floor_<floor>``: the same probe on the floors (``initial``: the run's own initial
  weights, ``random``: the paper-size encoder at random init, ``logmel-stats``), computed once
  and cached in ``<run>/probe_floors.json``: constants, so a curve is read against them;
- ``probe_seconds``: what the probe cost this epoch.

They go into the epoch's logs (so ``history.csv`` and TensorBoard keep them; other epochs log
NaN, so the CSV keeps its columns), and ``pretraining.png`` plots each task's score against the
pretraining minutes (the sum of ``epoch_seconds``: the probe's own time is not counted), the
floors as horizontal lines.

A fast linear probe on a subset is not the paper's protocol (``kmssl probe`` is): it is a cheap,
consistent reading of the trend. The callback draws from its own seeded generator and runs
the encoder in inference mode, so it leaves the trained weights as they would be without it.
Cost: one embedding of at most ``max_train + max_valid`` tracks x 4 segments per probe; memory:
one encoder batch and four decoded files at a time.
"""

import hashlib
import json
import math
import os
import time

import keras
import numpy as np

from keras_music_ssl import storage

CHUNKS_PER_TRACK = 4
FLOORS = ("initial", "random", "logmel-stats")
FLOORS_FILE = "probe_floors.json"
FIGURE = "pretraining.png"


def _chunker(num_samples):
    from keras_music_ssl.track import UnusableTrack, evaluation_chunks

    def chunker(path, waveform):
        if not np.any(waveform):
            raise UnusableTrack("silent", "every sample is zero")
        chunks = evaluation_chunks(waveform, num_samples)
        keep = np.unique(np.linspace(0, len(chunks) - 1, min(len(chunks), CHUNKS_PER_TRACK)).round().astype(int))
        return chunks[keep]

    return chunker


def _embed(model, paths, batch_size):
    """``(features (kept, D), kept indices)``: each track's mean chunk embedding; unusable ones dropped."""
    from keras_music_ssl.embed import iter_track_embeddings

    rows, kept = [], []
    chunker = _chunker(int(model.num_samples))
    for i, (_, embedding, _) in enumerate(iter_track_embeddings(model, paths, batch_size, chunker=chunker)):
        if embedding is not None:
            rows.append(np.asarray(embedding, np.float64).reshape(-1))
            kept.append(i)
    return np.stack(rows) if rows else np.zeros((0, 0)), np.asarray(kept, np.int64)


def fast_probe(x_train, y_train, x_valid, y_valid, single_label, seed=0):
    """Validation ``{roc_auc[, accuracy]}`` of a logistic regression fitted on standardised features;
    None when the valid tracks have no scorable class."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    from keras_music_ssl.probe.metrics import scorable_tags, tagging_metrics

    if not scorable_tags(y_valid).any():
        return None
    scaler = StandardScaler().fit(x_train)
    with warnings.catch_warnings():
        # 500 L-BFGS iterations on 1024 features may stop short of the optimum: a reading of
        # the trend, not the paper's probe, and not worth a warning per task per epoch.
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = _fit_scores(scaler.transform(x_train), y_train, scaler.transform(x_valid), single_label, seed)
    metrics = tagging_metrics(y_valid, scores, single_label=single_label)
    result = {"roc_auc": metrics["roc_auc_macro"]}
    if single_label:
        result["accuracy"] = metrics["accuracy"]
    return result


def _fit_scores(x_train, y_train, x_valid, single_label, seed):
    from sklearn.linear_model import LogisticRegression

    scores = np.zeros((len(x_valid), y_train.shape[1]))
    if single_label:
        classes = np.flatnonzero(y_train.any(axis=0))
        if len(classes) > 1:
            fitted = LogisticRegression(max_iter=500, random_state=seed).fit(x_train, y_train.argmax(axis=1))
            scores[:, fitted.classes_] = fitted.predict_proba(x_valid)
        else:
            scores[:, classes] = 1.0
        return scores
    for tag in range(y_train.shape[1]):
        column = y_train[:, tag]
        if column.min() == column.max():  # one class only in training: a constant score
            scores[:, tag] = column[0]
            continue
        fitted = LogisticRegression(max_iter=500, random_state=seed).fit(x_train, column)
        scores[:, tag] = fitted.predict_proba(x_valid)[:, 1]
    return scores


class LearningCurve(keras.callbacks.Callback):
    """Probe the encoder every ``every`` epochs on ``dataset`` (module docstring).

    Args:
        dataset: a ``kmssl probe`` DATASET (folder, ``mtat:``, ``jamendo:``) or a ``ProbeData``.
        every: probe every this many epochs (and after the last).
        run_dir: the run folder: ``probe_floors.json``, ``pretraining.png`` and the ``initial/``
            preset (the ``initial`` floor) live there; None: no floors, no figure.
        history: ``history.csv`` of earlier epochs (a resumed run), for the minutes axis.
        max_train, max_valid: tracks of each split probed (a seeded subset, the same every time).
        floors: which floors to compute (a subset of :data:`FLOORS`).
    """

    def __init__(self, dataset, every=1, run_dir=None, history=None, seed=0, max_train=256, max_valid=128,
                 batch_size=32, floors=FLOORS):
        super().__init__()
        from keras_music_ssl.probe.datasets import ProbeData, load_probe_dataset
        from keras_music_ssl.probe.harness import check_scorable

        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive number of epochs, got {every!r}")
        data = dataset if isinstance(dataset, ProbeData) else load_probe_dataset(dataset)
        self.data = check_scorable(data)
        self.every, self.run_dir, self.history, self.seed = every, run_dir, history, seed
        self.batch_size, self.floors = batch_size, tuple(floors) if run_dir else ()
        rng = np.random.default_rng(seed)  # its own generator: the training's draws are untouched
        self.splits = {}
        for split, limit in (("train", max_train), ("valid", max_valid)):
            rows = self.data.dataset.split(split).rows
            pick = np.sort(rng.permutation(len(rows))[:limit])
            self.splits[split] = [rows[i] for i in pick]
        self.points = []

    # --- what is logged ---------------------------------------------------------------------------

    def keys(self):
        keys = []
        for task in self.data.dataset.tasks:
            keys.append(f"probe_{task.name}_roc_auc")
            if task.single_label:
                keys.append(f"probe_{task.name}_accuracy")
            keys += [f"probe_{task.name}_floor_{floor}" for floor in self.floors]
        return keys + ["probe_seconds"]

    def scores(self, model):
        """``{task: {roc_auc[, accuracy]}}`` of ``model`` (an encoder-like model) on the subset."""
        root = self.data.dataset.root
        features, kept = {}, {}
        for split, rows in self.splits.items():
            paths = [os.path.normpath(os.path.join(root, row["path"])) for row in rows]
            features[split], kept[split] = _embed(model, paths, self.batch_size)
        result = {}
        for task in self.data.dataset.tasks:
            labels = {}
            for split, rows in self.splits.items():
                y, labelled = task.labels([rows[i] for i in kept[split]])
                labels[split] = (features[split][labelled], y[labelled])
            (x_train, y_train), (x_valid, y_valid) = labels["train"], labels["valid"]
            if len(x_train) < 2 or not len(x_valid):
                continue
            if not np.isfinite(x_train).all() or not np.isfinite(x_valid).all():
                result[task.name] = {"roc_auc": float("nan")}  # a broken encoder: said, not hidden
                continue
            scored = fast_probe(x_train, y_train, x_valid, y_valid, task.single_label, self.seed)
            if scored is not None:
                result[task.name] = scored
        return result

    # --- floors (once per run) --------------------------------------------------------------------

    def _floor_key(self):
        subset = {split: [row["path"] for row in rows] for split, rows in self.splits.items()}
        tasks = [task.to_json() | {"name": task.name} for task in self.data.dataset.tasks]
        payload = json.dumps({"subset": subset, "tasks": tasks, "seed": self.seed, "floors": self.floors,
                              "chunks": CHUNKS_PER_TRACK}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def floor_scores(self):
        if not self.floors:
            return {}
        from keras_music_ssl.backbone import MusicEncoder
        from keras_music_ssl.probe.models import resolve_model

        path, key = os.path.join(self.run_dir, FLOORS_FILE), self._floor_key()
        if os.path.exists(path):
            try:
                saved = storage.read_json(path, "the learning curve's floors")
                if saved.get("key") == key:
                    return saved["scores"]
            except (storage.StorageError, AttributeError, KeyError):
                pass  # recomputed below
        scores = {}
        for floor in self.floors:
            if floor == "initial":
                initial = os.path.join(self.run_dir, "initial")
                if not os.path.isdir(initial):
                    continue
                model = MusicEncoder.from_preset(initial)
            else:
                model = resolve_model(floor, self.seed).model
            scores[floor] = self.scores(model)
        storage.write_json(path, {"key": key, "scores": scores})
        return scores

    # --- the callback -----------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self.floor_values = self.floor_scores()
        self.points, self.minutes = self._read_history()

    def _read_history(self):
        """``(points, minutes)`` a resumed run has behind it (``history.csv``): its curve so far
        and its pretraining minutes."""
        if not self.history or not os.path.exists(self.history):
            return [], 0.0
        from keras_music_ssl.train import read_history

        points, minutes = [], 0.0
        for row in read_history(self.history):
            minutes += row.get("epoch_seconds", 0.0) / 60
            scores = {task.name: row[f"probe_{task.name}_roc_auc"] for task in self.data.dataset.tasks
                      if math.isfinite(row.get(f"probe_{task.name}_roc_auc", math.nan))}
            if scores:
                points.append({"epoch": int(row["epoch"]) + 1, "minutes": minutes, "roc_auc": scores})
        return points, minutes

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        self.minutes += logs.get("epoch_seconds", 0.0) / 60
        last = epoch + 1 == self.params.get("epochs")
        values = dict.fromkeys(self.keys(), float("nan"))
        if (epoch + 1) % self.every == 0 or last:
            started = time.perf_counter()
            encoder = getattr(self.model, "encoder", self.model)
            scores = self.scores(encoder)
            for task, result in scores.items():
                for metric, value in result.items():
                    values[f"probe_{task}_{metric}"] = value
            values["probe_seconds"] = time.perf_counter() - started
            self.points.append({"epoch": epoch + 1, "minutes": self.minutes,
                                "roc_auc": {task: r["roc_auc"] for task, r in scores.items()}})
            if self.run_dir:
                plot_curve(self.points, self.floor_values, os.path.join(self.run_dir, FIGURE))
        for floor, by_task in self.floor_values.items():  # constants, on every row
            for task, result in by_task.items():
                values[f"probe_{task}_floor_{floor}"] = result["roc_auc"]
        logs.update(values)


def plot_curve(points, floors, path):
    """``pretraining.png``: each task's validation ROC-AUC against pretraining minutes, floors as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_music_ssl.probe.report import save_figure

    tasks = list(dict.fromkeys(task for p in points for task in p["roc_auc"]))
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        shown = [p for p in points if task in p["roc_auc"]]
        ax.plot([p["minutes"] for p in shown], [p["roc_auc"][task] for p in shown], marker="o", label="pretrained")
        for floor, style in zip(floors, ("--", ":", "-.")):
            if task in floors[floor]:
                ax.axhline(floors[floor][task]["roc_auc"], color="black", linestyle=style,
                           label=f"{floor} {floors[floor][task]['roc_auc']:.3f}")
        ax.set_xlabel("pretraining minutes")
        ax.set_ylabel("valid macro ROC-AUC (fast linear probe)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
