"""Tagging metrics (scikit-learn) and their bootstrap over test tracks (docs/paper.md#metrics).

- ROC-AUC and PR-AUC (average precision), macro (mean over tags) and micro (every
  track x tag pair pooled), as the authors' torchmetrics ``AUROC`` / ``AveragePrecision``.
- A tag with no positive or no negative among the evaluated tracks has no ROC-AUC: it is
  excluded from every metric and listed (``tags_excluded``).
- Bootstrap (the poster's Fig. 1: 50 resamples): ``n`` resamples of the test tracks with
  replacement, each as large as the test set, seeded; each resample excludes its own
  degenerate tags (a resample with no scorable tag is dropped). Reported: the point estimate on
  the whole test set, the mean and std of the resamples, and their 2.5-97.5 % percentile interval.
- Single-label tasks (one class per track) add ``accuracy`` and ``f1_macro`` (F1 of each class
  present among the true or predicted classes, averaged) of the arg-max class; their ROC/PR-AUC
  are one-vs-rest on the class probabilities.
- Multi-label tasks whose probe has decision thresholds (``thresholds.py``: per tag, max F1 on the
  validation split) add precision, recall and F1 of those decisions, macro and micro, over the
  scorable tags (``DECISION_METRICS``).
- A test set with no scorable tag has no metric at all: :func:`bootstrap_metrics` raises
  :class:`ProbeError` rather than report NaN (``run_probe`` checks it before any training, with
  :func:`require_scorable`).
"""

import numpy as np

from keras_music_ssl.probe.probe import ProbeError
from keras_music_ssl.probe.thresholds import DECISION_METRICS, decide, decision_metrics

METRICS = ("roc_auc_macro", "pr_auc_macro", "roc_auc_micro", "pr_auc_micro")
SINGLE_LABEL_METRICS = METRICS + ("accuracy", "f1_macro")


def metric_names(single_label=False, thresholds=False):
    if single_label:
        return SINGLE_LABEL_METRICS
    return METRICS + (DECISION_METRICS if thresholds else ())


def scorable_tags(labels):
    """Boolean (tags,): tags with at least one positive and one negative."""
    labels = np.asarray(labels)
    return (labels.max(axis=0) > 0) & (labels.min(axis=0) < 1) if len(labels) else np.zeros(labels.shape[1], bool)


def require_scorable(labels, split, tags=None):
    """Raise :class:`ProbeError` unless some tag of ``labels`` (tracks, tags) has a positive and a
    negative track: without one no ROC-AUC exists (test) or early stopping has nothing to follow
    (valid)."""
    labels = np.asarray(labels)
    if scorable_tags(labels).any():
        return
    if not len(labels):
        raise ProbeError(f"the {split} split has no track to score")
    tags = list(tags) if tags is not None else [str(i) for i in range(labels.shape[1])]
    positives = labels.sum(axis=0)
    always = [t for t, n in zip(tags, positives) if n == len(labels)]
    raise ProbeError(f"the {split} split ({len(labels)} tracks) has no scorable tag: every tag is on all of its "
                     f"tracks ({', '.join(always[:5]) or 'none'}{', ...' if len(always) > 5 else ''}) or on none; "
                     "ROC-AUC needs a tag with both positive and negative tracks")


def tagging_metrics(labels, scores, tags=None, single_label=False, thresholds=None):
    """``{roc_auc_macro, pr_auc_macro, roc_auc_micro, pr_auc_micro, tags_scored, tags_excluded}``,
    ``accuracy`` / ``f1_macro`` with ``single_label`` (one-hot ``labels``), and the
    ``DECISION_METRICS`` of ``scores >= thresholds`` (one per tag) when given."""
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be equal (tracks, tags)")
    if not np.all(np.isfinite(scores)):
        raise ProbeError("the probe's scores hold NaN or infinite values (did its training diverge?)")
    tags = list(tags) if tags is not None else [str(i) for i in range(labels.shape[1])]
    keep = scorable_tags(labels)
    excluded = [tag for tag, k in zip(tags, keep) if not k]
    extra = {}
    if single_label:
        truth, predicted = labels.argmax(axis=1), scores.argmax(axis=1)
        extra = {"accuracy": float(accuracy_score(truth, predicted)),
                 "f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0))}
    names = metric_names(single_label, thresholds is not None and not single_label)
    if not keep.any():  # a bootstrap resample may draw such a set: it is dropped there
        nan = float("nan")
        return {**{m: nan for m in names}, "tags_scored": 0, "tags_excluded": excluded}
    y, s = labels[:, keep], scores[:, keep]
    if thresholds is not None and not single_label:
        extra = decision_metrics(y, decide(s, np.asarray(thresholds)[keep]))
    return {**extra,
        "roc_auc_macro": float(roc_auc_score(y, s, average="macro")),
        "pr_auc_macro": float(average_precision_score(y, s, average="macro")),
        "roc_auc_micro": float(roc_auc_score(y, s, average="micro")),
        "pr_auc_micro": float(average_precision_score(y, s, average="micro")),
        "tags_scored": int(keep.sum()),
        "tags_excluded": excluded,
    }


def bootstrap_metrics(labels, scores, tags=None, resamples=50, seed=0, single_label=False, thresholds=None):
    """Each metric as ``{point, mean, std, ci95, resamples}``, plus ``tags_scored`` / ``tags_excluded``
    of the point estimate (``thresholds``: see :func:`tagging_metrics`)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    require_scorable(labels, "test", tags)
    names = metric_names(single_label, thresholds is not None and not single_label)
    point = tagging_metrics(labels, scores, tags, single_label, thresholds)
    rng = np.random.default_rng(seed)
    draws = {m: [] for m in names}
    for _ in range(int(resamples)):
        index = rng.integers(0, len(labels), len(labels))
        values = tagging_metrics(labels[index], scores[index], tags, single_label, thresholds)
        for m in names:
            draws[m].append(values[m])
    result = {}
    for m in names:
        values = np.asarray(draws[m], np.float64)
        values = values[np.isfinite(values)]
        if len(values):
            summary = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                       "ci95": [float(v) for v in np.percentile(values, [2.5, 97.5])]}
        else:
            summary = {"mean": point[m], "std": 0.0, "ci95": [point[m], point[m]]}
        result[m] = {"point": point[m], **summary, "resamples": [float(v) for v in values]}
    result["tags_scored"] = point["tags_scored"]
    result["tags_excluded"] = point["tags_excluded"]
    return result
