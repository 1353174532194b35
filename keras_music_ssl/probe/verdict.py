"""Does a pretrained encoder beat its floors? A verdict that says which differences are beyond the noise.

The probe's bootstrap draws the same resamples of the test tracks for every model of a report
(``metrics.bootstrap_metrics``, one seed), so the difference between two models can be read per
resample: a *paired* bootstrap. A difference is **beyond the noise** when the 2.5-97.5 % interval
of the paired differences excludes 0; otherwise it is within the test split's noise, whatever the
sign of the point estimates. Where the resamples cannot be paired (a model whose resamples were
dropped as unscorable), the two models' own intervals are compared: beyond the noise only if they
do not overlap.
"""

import numpy as np

METRIC = "roc_auc_macro"


def difference(ours, floor, metric=METRIC):
    """``{"diff", "ci95", "beyond"}`` of ``ours - floor`` on ``metric``: two ``results["models"][name]["test"]``."""
    a, b = ours[metric], floor[metric]
    diff = a["point"] - b["point"]
    if len(a["resamples"]) == len(b["resamples"]) and len(a["resamples"]) > 1:
        paired = np.asarray(a["resamples"]) - np.asarray(b["resamples"])
        low, high = (float(v) for v in np.percentile(paired, [2.5, 97.5]))
        return {"diff": diff, "ci95": [low, high], "beyond": low > 0 or high < 0, "paired": True}
    beyond = a["ci95"][0] > b["ci95"][1] or a["ci95"][1] < b["ci95"][0]
    return {"diff": diff, "ci95": None, "beyond": beyond, "paired": False}


def verdict(tests, ours, floors, metric=METRIC):
    """One line: how ``ours`` compares with each of ``floors`` (names in ``tests``: ``{name: test results}``)."""
    parts = []
    for floor in floors:
        d = difference(tests[ours], tests[floor], metric)
        if d["diff"] == 0 and (not d["paired"] or d["ci95"] == [0.0, 0.0]):
            # the same scores: e.g. a fine-tuning whose best epoch was the frozen probe it started from
            parts.append(f"ties with {floor} (the same test scores)")
            continue
        word = "beats" if d["diff"] > 0 else "loses to"
        noise = "beyond the noise" if d["beyond"] else "within the noise"
        interval = f", paired 95 % interval [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d["paired"] else ""
        parts.append(f"{word} {floor} by {abs(d['diff']):.3f} ({noise}{interval})")
    return f"{ours} " + "; ".join(parts) + "."
