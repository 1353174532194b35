"""``run_probe``: extraction -> probe -> metrics -> report, for several models on one dataset.

For each model (the ones asked for, then ``logmel-stats`` unless ``baseline=False``):

1. frozen embeddings of the train / valid / test splits (``extract.py``, cached, resumable);
2. a probe on all training segments (``probe.py``), early-stopped on the validation tracks;
3. test metrics with a bootstrap over test tracks (``metrics.py``); the test predictions go to
   ``predictions/<model>.npz`` and the head to ``heads/<model>.keras`` (a ``TagHead`` with the
   tag names inside, which ``kmssl export --head`` takes with the encoder it was trained on);
4. with ``fractions``: the same probe on seeded subsets of the training tracks (``fractions.py``).

The report (``report.py``) is rewritten after each model, and each finished model's result is
kept in ``<out>/models/<model>.json`` with the settings it was computed with: a rerun with the
same settings skips it.
"""

import hashlib
import json
import os
import time

import numpy as np

from keras_music_ssl.probe.datasets import ProbeData, load_probe_dataset
from keras_music_ssl.probe.extract import extract_split
from keras_music_ssl.probe.fractions import DRAWS, fraction_key, training_subset
from keras_music_ssl.probe.metrics import bootstrap_metrics, tagging_metrics
from keras_music_ssl.probe.models import LOGMEL_STATS, ProbedModel, probed_model, resolve_model
from keras_music_ssl.probe.probe import protocol_settings, train_probe

SPLITS = ("train", "valid", "test")


def default_cache_dir():
    return os.path.expanduser(os.environ.get("KMSSL_CACHE_DIR", "~/.cache/keras_music_ssl/embeddings"))


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


def _state_key(probed, data, settings, extra):
    payload = {"fingerprint": probed.fingerprint, "files": data.dataset.paths, "tags": data.dataset.tags,
               "labels": hashlib.sha256(data.dataset.labels.tobytes()).hexdigest(),
               "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}, **extra}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _summary(values):
    values = np.asarray(values, np.float64)
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "draws": [float(v) for v in values]}


def probe_model(probed, data, out, settings, seed=0, bootstrap=50, fractions=None, draws=DRAWS,
                cache_dir=None, embed_batch_size=32, eval_chunks="segments", progress=True, verbose=0):
    """The result dict of one model (see ``results.json``); writes its head and predictions."""
    from keras_music_ssl.tagger import save_tag_head

    dataset, tags = data.dataset, data.dataset.tags
    start = time.perf_counter()
    features = {split: extract_split(probed, dataset, split, cache_dir or default_cache_dir(), seed=seed,
                                     batch_size=embed_batch_size, eval_chunks=eval_chunks, progress=progress)
                for split in SPLITS}
    extract_seconds = time.perf_counter() - start
    for split, part in features.items():
        if not part.paths:
            raise ValueError(f"{probed.name}: no track of the {split} split could be used "
                             f"(skipped: {part.skipped_counts()})")
    train, valid, test = features["train"], features["valid"], features["test"]

    def fit_probe(track_subset=None, fit_seed=seed):
        rows = np.isin(train.track, track_subset) if track_subset is not None else slice(None)
        return train_probe(train.features[rows], train.row_labels[rows], valid.features, valid.labels, tags,
                           seed=fit_seed, verbose=verbose, **settings)

    start = time.perf_counter()
    trained = fit_probe()
    fit_seconds = time.perf_counter() - start
    probabilities = trained.predict(test.features)
    result = {"test": bootstrap_metrics(test.labels, probabilities, tags, bootstrap, seed),
              "best_epoch": trained.best_epoch, "embedding_dim": int(train.features.shape[1]),
              "fingerprint": probed.fingerprint, "exportable": probed.is_encoder,
              "tracks": {s: len(features[s].paths) for s in SPLITS},
              "train_segments": int(len(train.features)),
              "skipped": {s: features[s].skipped_counts() for s in SPLITS},
              "seconds": {"extract": round(extract_seconds, 2), "fit": round(fit_seconds, 2)}}
    os.makedirs(os.path.join(out, "heads"), exist_ok=True)
    save_tag_head(trained.head, os.path.join(out, "heads", f"{probed.name}.keras"))
    os.makedirs(os.path.join(out, "predictions"), exist_ok=True)
    np.savez(os.path.join(out, "predictions", f"{probed.name}.npz"), paths=np.asarray(test.paths, dtype=str),
             labels=test.labels, probabilities=probabilities.astype(np.float32), tags=np.asarray(tags, dtype=str))
    if fractions:
        result["fractions"] = {}
        for fraction in fractions:
            scores = {"roc_auc_macro": [], "pr_auc_macro": []}
            for draw in range(draws):
                subset = training_subset(len(train.paths), fraction, draw, seed)
                metrics = tagging_metrics(test.labels, fit_probe(subset, seed + 1 + draw).predict(test.features), tags)
                for metric in scores:
                    scores[metric].append(metrics[metric])
            result["fractions"][fraction_key(fraction)] = {
                "tracks": len(subset), **{metric: _summary(values) for metric, values in scores.items()}}
    return result


def run_probe(dataset, models, out, protocol="paper", fractions=None, draws=DRAWS, bootstrap=50, seed=0,
              baseline=True, cache_dir=None, embed_batch_size=32, eval_chunks="segments", weights_dir=None,
              progress=True, verbose=0, **overrides):
    """Probe ``models`` on ``dataset`` and write the report to ``out``; return the results dict.

    ``dataset``: a :class:`ProbeData`, or a ``kmssl probe`` DATASET string. ``models``: names
    (``random``, ``logmel-stats``, preset folders or names), ``ProbedModel``s, Keras models or
    ``(name, model)`` pairs. ``eval_chunks``: how valid/test tracks are cut (``track.py``);
    ``embed_batch_size``: 4 s clips per model call. ``overrides``: probe settings
    (``hidden_units``, ``epochs``, ``batch_size``, ``learning_rate``, ...).
    """
    from keras_music_ssl.probe.report import atomic_write_text, write_report

    data = dataset if isinstance(dataset, ProbeData) else load_probe_dataset(dataset)
    settings = protocol_settings(protocol, **overrides)
    probed = [_as_probed(m, seed, weights_dir) for m in models]
    if baseline and LOGMEL_STATS not in [m.name for m in probed]:
        probed.append(resolve_model(LOGMEL_STATS))
    probed = _unique_names(probed)
    os.makedirs(os.path.join(out, "models"), exist_ok=True)
    results = {"dataset": data.name, "protocol": protocol, "tags": list(data.dataset.tags), "models": {},
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
        previous = None
        if os.path.isfile(state):
            with open(state) as f:
                previous = json.load(f)
        if previous and previous.get("key") == key:
            result = previous["result"]
        else:
            result = probe_model(model, data, out, settings, seed, bootstrap, fractions, draws, cache_dir,
                                 embed_batch_size, eval_chunks, progress, verbose)
            atomic_write_text(state, json.dumps({"key": key, "result": result}))
        results["models"][model.name] = result
        write_report(results, out)
        if progress:
            test = result["test"]
            print(f"{model.name}: test ROC-AUC macro {test['roc_auc_macro']['point']:.3f}, PR-AUC macro "
                  f"{test['pr_auc_macro']['point']:.3f} ({test['tags_scored']} tags; probe fit "
                  f"{result['seconds']['fit']:.1f} s, best epoch {result['best_epoch']})", flush=True)
    return results
