"""Decisions from tag scores: one threshold per tag, the one that maximises F1 on the validation split.

A multi-label probe's head holds, for each tag ``j``, the threshold

    t_j = argmax_t F1_j(t),   F1_j(t) = 2 P_j(t) R_j(t) / (P_j(t) + R_j(t)),   tag on  <=>  p_j >= t_j

over the tag's distinct validation scores (scikit-learn's ``precision_recall_curve``; on a tie the
lowest such score). A tag with no positive validation track gets ``NEVER`` (above any probability:
never on). This is the rule MTG-Jamendo's evaluation uses for its decisions; it tunes each tag to
its own base rate, unlike one global 0.5. Single-label tasks decide by arg-max and need no threshold.
"""

import numpy as np

NEVER = float(np.nextafter(np.float32(1.0), np.float32(2.0)))  # > every probability, and JSON-writable
DECISION_METRICS = ("precision_macro", "recall_macro", "f1_macro", "precision_micro", "recall_micro", "f1_micro")


def f1_thresholds(labels, scores):
    """(tags,) float thresholds: per tag, the score at which F1 on ``labels`` (tracks, tags) is highest."""
    from sklearn.metrics import precision_recall_curve

    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be equal (tracks, tags)")
    thresholds = np.full(labels.shape[1], NEVER)
    for j in range(labels.shape[1]):
        if not labels[:, j].any():
            continue
        precision, recall, cuts = precision_recall_curve(labels[:, j], scores[:, j])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        thresholds[j] = cuts[int(np.argmax(f1))]
    return thresholds


def decide(scores, thresholds):
    """Boolean (..., tags): ``scores >= thresholds``, compared in float32 (the models' scores; every
    threshold chosen here is one of them, so the comparison is exact)."""
    return np.asarray(scores, np.float32) >= np.asarray(thresholds, np.float32)


def decision_metrics(labels, decided):
    """Precision, recall and F1 of boolean decisions, macro (mean over tags) and micro (pooled)."""
    from sklearn.metrics import precision_recall_fscore_support

    result = {}
    for average in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(np.asarray(labels, bool), np.asarray(decided, bool),
                                                     average=average, zero_division=0)
        result.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    return result
