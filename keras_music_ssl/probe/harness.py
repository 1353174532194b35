"""``run_probe``: extraction -> probe -> metrics -> report, for several models on one dataset.

For each model (the ones asked for, then ``logmel-stats`` unless ``baseline=False``):

1. frozen embeddings of the train / valid / test splits (``extract.py``, cached, resumable),
   once for every task of the dataset;
2. per task, a probe on the training segments of its labelled tracks (``probe.py``),
   early-stopped on the validation tracks;
3. test metrics with a bootstrap over test tracks (``metrics.py``); the test predictions go to
   ``predictions/<model>.npz`` and the head to ``heads/<model>.keras`` (a ``TagHead`` with the
   tag names inside, which ``kmssl export --head`` takes with the encoder it was trained on);
   for a task after the main one, ``predictions/TASK/`` and ``heads/TASK/``;
4. with ``fractions``: the same probe on seeded subsets of the training tracks (``fractions.py``).

The report (``report.py``) is rewritten after each model, and each finished model's result is
kept in ``<out>/models/<model>.json`` with the settings it was computed with: a rerun with the
same settings skips it (a state file that cannot be read back is ignored, with a warning, and
that model is probed again).

Before any model is loaded: the options, ``out`` and the cache folder are checked, and the
valid and test splits must each have a scorable tag (else no metric exists). ``out`` is locked
for the whole run (a second process on it is refused at once) and every file in it is written
atomically, so a run killed at any point resumes and ends with the report an uninterrupted run
writes.
"""

import hashlib
import json
import os
import sys
import time

import numpy as np

from keras_music_ssl import storage
from keras_music_ssl.errors import OptionError
from keras_music_ssl.probe.datasets import ProbeData, load_probe_dataset, select_tasks, validate
from keras_music_ssl.probe.extract import extract_split
from keras_music_ssl.probe.fractions import DRAWS, fraction_key, training_subset
from keras_music_ssl.probe.metrics import METRICS, bootstrap_metrics, require_scorable, tagging_metrics
from keras_music_ssl.probe.models import LOGMEL_STATS, ProbedModel, probed_model, resolve_model
from keras_music_ssl.probe.probe import ProbeError, protocol_settings, train_probe

SPLITS = ("train", "valid", "test")


def default_cache_dir():
    return os.path.expanduser(os.environ.get("KMSSL_CACHE_DIR", "~/.cache/keras_music_ssl/embeddings"))


def check_options(bootstrap=50, draws=DRAWS, fractions=None, epochs=None, embed_batch_size=32, options=None):
    """Raise :class:`OptionError` (naming the command-line option) for a value out of range.

    ``options`` renames options for another command (``{"epochs": "--probe-epochs"}``)."""
    names = {"bootstrap": "--bootstrap", "draws": "--draws", "fractions": "--fractions", "epochs": "--epochs",
             "embed_batch_size": "--batch-size", **(options or {})}
    for key, value in (("bootstrap", bootstrap), ("draws", draws), ("epochs", epochs),
                       ("embed_batch_size", embed_batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise OptionError(f"{names[key]} must be a positive integer, got {value!r}")
    if fractions and not all(0 < float(f) <= 1 for f in fractions):
        raise OptionError(f"{names['fractions']} must lie in (0, 1], got {' '.join(map(str, fractions))}")


def check_scorable(data, explicit=False):
    """``data`` (a :class:`ProbeData`) with the tasks that can be scored: each needs labelled
    training tracks, and valid and test splits that each have a tag with positive and negative
    tracks. Checked before any embedding or training. A task that fails is an error
    (:class:`ProbeError`) when it was asked for (``explicit``) or is the only one; else it is
    left out with a one-line warning (``data.report["tasks_left_out"]``)."""
    kept, left_out = [], {}
    for task in data.dataset.tasks:
        try:
            for split in SPLITS:
                labels, labelled = task.labels(data.dataset.split(split).rows)
                if split == "train":
                    if not labelled.any():
                        raise ProbeError("the train split has no labelled track")
                else:
                    require_scorable(labels[labelled], split, task.classes)
            kept.append(task)
        except ProbeError as error:
            where = f" task {task.name!r}" if data.dataset.task_list else ""  # named tasks: say which
            if explicit or len(data.dataset.tasks) == 1:
                raise ProbeError(f"{data.name}{where}: {error}") from None
            left_out[task.name] = str(error)
    if not kept:
        raise ProbeError(f"{data.name}: no task can be scored ({left_out})")
    for name, reason in left_out.items():
        _warn(f"{data.name}: task {name!r} left out: {reason}")
    if not left_out:
        return data
    return ProbeData(data.name, data.dataset.replace(task_list=tuple(kept)),
                     {**data.report, "tasks_left_out": left_out})


def _warn(message):
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _read_state(path):
    """A finished model's saved ``{"key", "result"}``, or None (absent, or unreadable: recomputed)."""
    if not os.path.exists(path):
        return None
    try:
        state = storage.read_json(path, "probe state")
    except (storage.StorageError, OSError) as error:
        _warn(f"{str(error).splitlines()[0]}; probing that model again")
        return None
    tasks = state.get("tasks") if isinstance(state, dict) else None
    if not (isinstance(tasks, dict) and tasks and all(
            isinstance(r, dict) and isinstance(r.get("test"), dict)
            and all(isinstance(r["test"].get(m), dict) for m in METRICS) for r in tasks.values())):
        _warn(f"{path}: not a probe state file; probing that model again")
        return None
    return state


def _save_head(head, path):
    """``save_tag_head`` written atomically (Keras wants the ``.keras`` suffix on its file name)."""
    from keras_music_ssl.tagger import save_tag_head

    storage.require_space(path, storage.model_bytes(head))  # h5py may crash the process on a full disk
    with storage.atomic_target(path, ".keras") as tmp:
        save_tag_head(head, str(tmp))


def _as_probed(model, seed, weights_dir):
    if isinstance(model, ProbedModel):
        return model
    if isinstance(model, (tuple, list)):
        name, keras_model = model
        return probed_model(keras_model, name)
    if isinstance(model, str):
        return resolve_model(model, seed, weights_dir)
    return probed_model(model)


def _unique_names(models):
    seen = {}
    for model in models:
        count = seen.get(model.name, 0)
        seen[model.name] = count + 1
        if count:
            model.name = f"{model.name}-{count + 1}"
    return models


# Part of every state key: 2 since heads hold decision thresholds (0.9), so the heads and results of
# an older run are made again on resume instead of being mixed with new ones.
STATE_VERSION = 2


def _state_key(probed, data, settings, extra):
    labels = [task.labels(data.dataset.rows)[0].tobytes() for task in data.dataset.tasks]
    payload = {"fingerprint": probed.fingerprint, "files": data.dataset.paths,
               "tasks": {task.name: task.to_json() for task in data.dataset.tasks},
               "labels": hashlib.sha256(b"".join(labels)).hexdigest(),
               "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
               "heads": STATE_VERSION, **extra}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _summary(values):
    values = np.asarray(values, np.float64)
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "draws": [float(v) for v in values]}


def task_file(out, folder, task, main, name, suffix):
    """``out/folder/NAME.suffix`` for the main task (the paths of a one-task report), else
    ``out/folder/TASK/NAME.suffix``."""
    path = os.path.join(out, folder, *(() if task == main else (task,)), f"{name}{suffix}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def probe_model(probed, data, out, settings, seed=0, bootstrap=50, fractions=None, draws=DRAWS,
                cache_dir=None, embed_batch_size=32, eval_chunks="segments", progress=True, verbose=0):
    """``{task: result dict}`` of one model (see ``results.json``); writes its heads and predictions.

    The splits are embedded once; each task then fits its own probe on its labelled tracks."""
    dataset = data.dataset
    start = time.perf_counter()
    features = {split: extract_split(probed, dataset, split, cache_dir or default_cache_dir(), seed=seed,
                                     batch_size=embed_batch_size, eval_chunks=eval_chunks, progress=progress)
                for split in SPLITS}
    extract_seconds = time.perf_counter() - start
    for split, part in features.items():
        if not part.paths:
            raise ProbeError(f"{probed.name}: no track of the {split} split could be used "
                             f"(skipped: {part.skipped_counts()})")
    main = dataset.tasks[0].name
    results = {}
    for task in dataset.tasks:
        parts = {split: features[split].for_task(task, dataset.split(split).rows) for split in SPLITS}
        result = _probe_task(probed, task, parts, settings, seed, bootstrap, fractions, draws, verbose)
        result["seconds"]["extract"] = round(extract_seconds, 2)
        result["skipped"] = {s: features[s].skipped_counts() for s in SPLITS}
        _save_head(result.pop("head"), task_file(out, "heads", task.name, main, probed.name, ".keras"))
        test, probabilities = parts["test"], result.pop("probabilities")
        with storage.atomic_write(task_file(out, "predictions", task.name, main, probed.name, ".npz"), "wb") as f:
            np.savez(f, paths=np.asarray(test.paths, dtype=str), labels=test.labels,
                     probabilities=probabilities.astype(np.float32), tags=np.asarray(task.classes, dtype=str))
        results[task.name] = result
    return results


def _probe_task(probed, task, parts, settings, seed, bootstrap, fractions, draws, verbose):
    """One task's probe, test metrics and fractions (``parts``: the task's tracks of each split)."""
    tags, single = list(task.classes), task.single_label
    train, valid, test = parts["train"], parts["valid"], parts["test"]
    if not train.paths:
        raise ProbeError(f"{probed.name}: no usable track of the train split is labelled in task {task.name!r}")
    for split in ("valid", "test"):  # skipped tracks may have taken the last positive or negative away
        try:
            require_scorable(parts[split].labels, split, tags)
        except ProbeError as error:
            raise ProbeError(f"{probed.name}: task {task.name!r}: {error} (after skipping "
                             f"{parts[split].skipped_counts()})") from None

    def fit_probe(track_subset=None, fit_seed=seed):
        rows = np.isin(train.track, track_subset) if track_subset is not None else slice(None)
        return train_probe(train.features[rows], train.row_labels[rows], valid.features, valid.labels, tags,
                           seed=fit_seed, verbose=verbose, single_label=single, **settings)

    start = time.perf_counter()
    trained = fit_probe()
    fit_seconds = time.perf_counter() - start
    probabilities = trained.predict(test.features)
    result = {"type": task.type,
              "test": bootstrap_metrics(test.labels, probabilities, tags, bootstrap, seed, single,
                                        thresholds=trained.head.thresholds),
              "best_epoch": trained.best_epoch, "embedding_dim": int(train.features.shape[1]),
              "fingerprint": probed.fingerprint, "exportable": probed.is_encoder,
              "tracks": {s: len(parts[s].paths) for s in SPLITS},
              "train_segments": int(len(train.features)),
              "seconds": {"fit": round(fit_seconds, 2)},
              "head": trained.head, "probabilities": probabilities}
    if fractions:
        result["fractions"] = {}
        for fraction in fractions:
            scores = {"roc_auc_macro": [], "pr_auc_macro": []}
            for draw in range(draws):
                subset = training_subset(len(train.paths), fraction, draw, seed)
                predicted = fit_probe(subset, seed + 1 + draw).predict(test.features)
                metrics = tagging_metrics(test.labels, predicted, tags, single)
                for metric in scores:
                    scores[metric].append(metrics[metric])
            result["fractions"][fraction_key(fraction)] = {
                "tracks": len(subset), **{metric: _summary(values) for metric, values in scores.items()}}
    return result


def run_probe(dataset, models, out, protocol="paper", fractions=None, draws=DRAWS, bootstrap=50, seed=0,
              baseline=True, cache_dir=None, embed_batch_size=32, eval_chunks="segments", weights_dir=None,
              audio_dir=None, tasks=None, progress=True, verbose=0, **overrides):
    """Probe ``models`` on ``dataset`` and write the report to ``out``; return the results dict.

    ``dataset``: a :class:`ProbeData`, or a ``kmssl probe`` DATASET string (``audio_dir``: its
    audio root, if not where its loader looks; ``tasks``: the task names to probe, default all).
    ``models``: names (``random``, ``logmel-stats``,
    preset folders or names), ``ProbedModel``s, Keras models or ``(name, model)`` pairs; names
    are loaded only once ``out`` is locked. ``eval_chunks``: how valid/test tracks are cut
    (``track.py``); ``embed_batch_size``: 4 s clips per model call. ``overrides``: probe settings
    (``hidden_units``, ``epochs``, ``batch_size``, ``learning_rate``, ...).

    Args:
        dataset: a ``ProbeData`` or a DATASET string: a labeled folder, ``mtat:ROOT`` or
            ``jamendo:ROOT[:SUBSET[:SPLIT]]`` (docs/probing.md).
        models: the models to probe (see above).
        out: the report folder (``results.json``, ``results.md``, figures, heads, predictions).
        protocol: "paper" (the authors' head) or "marble" (MARBLE's MLP).
        fractions: training-set percentages for the limited-data curves (None: off).
        draws: seeded draws per fraction.
        bootstrap: test resamples for the intervals (50, as the poster).
        seed: seed of the probes, draws and resamples.
        baseline: add the ``logmel-stats`` floor.
        cache_dir: the embeddings cache (default ``~/.cache/keras_music_ssl/embeddings``).
        embed_batch_size: 4 s clips per model call.
        eval_chunks: "segments" (default) or "padded", how valid/test tracks are cut.
        weights_dir: where named presets live.
        audio_dir: the dataset's audio root, if not where its loader looks.
        tasks: task names to probe (default: all).
        progress: print progress.
        verbose: Keras' ``fit`` verbosity of the probes.
        **overrides: probe settings (``hidden_units``, ``epochs``, ...).

    Returns:
        The results (also ``results.json``): ``dataset``, ``protocol``, ``task``, ``tags``,
        ``models`` (the main task's metrics per model, with bootstrap intervals), ``tasks`` (every
        task's), ``settings`` and ``data``.

    Raises:
        ProbeDataError: a dataset that cannot be read or scored (one line).

    Examples:
        >>> from keras_music_ssl import MusicEncoder
        >>> from keras_music_ssl.data.rendered import build_rendered_dataset
        >>> from keras_music_ssl.probe import run_probe
        >>> data = build_rendered_dataset("rendered-tiny", size="tiny", progress=False)  # 24 clips
        >>> encoder = MusicEncoder(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32)  # tiny, untrained
        >>> results = run_probe("rendered-tiny", [("tiny", encoder)], out="probe", bootstrap=5,
        ...                     cache_dir="embeddings", progress=False)
        >>> sorted(results["models"])
        ['logmel-stats', 'tiny']
    """
    out = os.fspath(out)
    cache_dir = os.fspath(cache_dir) if cache_dir else default_cache_dir()
    storage.check_output(out, "folder")
    storage.check_output(cache_dir, "folder", "--cache-dir")
    settings = protocol_settings(protocol, **overrides)
    check_options(bootstrap, draws, fractions, settings["epochs"], embed_batch_size)
    if isinstance(dataset, ProbeData):
        data = dataset if not tasks else ProbeData(dataset.name, *validate(select_tasks(dataset.dataset, tasks)))
    else:
        data = load_probe_dataset(dataset, audio_dir, tasks)
    data = check_scorable(data, explicit=bool(tasks))
    if progress:
        described = ", ".join(f"{t.name} ({len(t.classes)} {'classes' if t.single_label else 'tags'})"
                              for t in data.dataset.tasks)
        print(f"{data.name}: {data.report['splits']} tracks; task(s) {described}"
              + (f"; dropped {data.report['dropped']}" if data.report["dropped"] else ""), flush=True)
    os.makedirs(out, exist_ok=True)  # before the lock: the lock file lives inside it
    with storage.locked(out):
        for folder in ("", "models", "heads", "predictions"):  # what a killed run of ours left
            storage.clean_partials(os.path.join(out, folder))
        return _probe_all(data, models, out, settings, protocol=protocol, fractions=fractions, draws=draws,
                          bootstrap=bootstrap, seed=seed, baseline=baseline, cache_dir=cache_dir,
                          embed_batch_size=embed_batch_size, eval_chunks=eval_chunks, weights_dir=weights_dir,
                          progress=progress, verbose=verbose)


def _probe_all(data, models, out, settings, protocol, fractions, draws, bootstrap, seed, baseline, cache_dir,
               embed_batch_size, eval_chunks, weights_dir, progress, verbose):
    """``run_probe``'s work, with ``out`` locked."""
    from keras_music_ssl.probe.report import write_report

    probed = [_as_probed(m, seed, weights_dir) for m in models]
    if baseline and LOGMEL_STATS not in [m.name for m in probed]:
        probed.append(resolve_model(LOGMEL_STATS))
    probed = _unique_names(probed)
    os.makedirs(os.path.join(out, "models"), exist_ok=True)
    tasks = data.dataset.tasks
    results = {"dataset": data.name, "protocol": protocol, "task": tasks[0].name, "tags": list(tasks[0].classes),
               "models": {},
               "tasks": {t.name: {**t.to_json(), "models": {}} for t in tasks},
               "settings": {**{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
                            "seed": seed, "bootstrap": bootstrap,
                            "fractions": [float(f) for f in fractions or []], "draws": draws,
                            "eval_chunks": eval_chunks},
               "data": data.report}
    for model in probed:
        key = _state_key(model, data, settings, {"seed": seed, "bootstrap": bootstrap, "draws": draws,
                                                 "fractions": [float(f) for f in fractions or []],
                                                 "eval_chunks": eval_chunks})
        state = os.path.join(out, "models", f"{model.name}.json")
        previous = _read_state(state)
        if previous and previous.get("key") == key:
            by_task = previous["tasks"]
        else:
            by_task = probe_model(model, data, out, settings, seed, bootstrap, fractions, draws, cache_dir,
                                  embed_batch_size, eval_chunks, progress, verbose)
            storage.write_json(state, {"key": key, "tasks": by_task})
        for task, result in by_task.items():
            results["tasks"][task]["models"][model.name] = result
        results["models"][model.name] = by_task[tasks[0].name]  # the main task, where one-task readers look
        write_report(results, out)
        if progress:
            for task, result in by_task.items():
                test = result["test"]
                extra = (f", accuracy {test['accuracy']['point']:.3f}, F1 macro {test['f1_macro']['point']:.3f}"
                         if "accuracy" in test else "")
                print(f"{model.name}{f' [{task}]' if len(tasks) > 1 else ''}: test ROC-AUC macro "
                      f"{test['roc_auc_macro']['point']:.3f}, PR-AUC macro {test['pr_auc_macro']['point']:.3f}"
                      f"{extra} ({test['tags_scored']} {'classes' if 'accuracy' in test else 'tags'}; probe fit "
                      f"{result['seconds']['fit']:.1f} s, best epoch {result['best_epoch']})", flush=True)
    return results
