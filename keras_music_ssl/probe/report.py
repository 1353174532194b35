"""The probe report in ``--out``: ``results.json``, ``results.csv``, ``results.md`` and figures.

- ``results.json``: everything: ``{"dataset", "protocol", "task", "tags", "models": {NAME: {"test":
  {metric: {point, mean, std, ci95, resamples}, tags_scored, tags_excluded}, "fractions": {...}}},
  "tasks": {TASK: {"type", "column", "classes", "models": {...}}}}``. ``task`` / ``tags`` /
  ``models`` are the main (first) task's, where a reader of a one-task report looks; ``tasks``
  holds every task. Single-label tasks add the metrics ``accuracy`` and ``f1_macro``;
- ``results.csv``: one row per task x model x metric (and per training fraction);
- ``results.md``: the tables a person pastes, one per task (point estimate on the full test set,
  bootstrap mean ± std and 95 % interval);
- ``bootstrap.png``: each model's bootstrap resamples as dots and their mean as a marker, per
  metric (the poster's Fig. 1); ``bootstrap-TASK.png`` for each task after the main one;
- ``fractions.png`` (when fractions were run): macro metrics against the training fraction, the
  band being the 95 % t-interval of the mean over the draws (the poster's Fig. 2); likewise
  ``fractions-TASK.png``.

Every file is written atomically (``storage``): a kill leaves the previous version or the new
one; ``results.json`` is strict JSON (a NaN is refused, not written).
"""

import csv
import os

import numpy as np

from keras_music_ssl import storage
from keras_music_ssl.probe.metrics import metric_names
from keras_music_ssl.probe.thresholds import DECISION_METRICS

LABELS = {"roc_auc_macro": "ROC-AUC macro", "pr_auc_macro": "PR-AUC macro",
          "roc_auc_micro": "ROC-AUC micro", "pr_auc_micro": "PR-AUC micro",
          "accuracy": "accuracy", "f1_macro": "F1 macro", "f1_micro": "F1 micro",
          "precision_macro": "precision macro", "recall_macro": "recall macro",
          "precision_micro": "precision micro", "recall_micro": "recall micro"}


def task_views(results):
    """``[(task, results of that task alone)]``, the main task first; an older one-task
    ``results.json`` (no ``tasks``) is its own view."""
    tasks = results.get("tasks") or {results.get("task", "tags"): {"models": results["models"]}}
    return [(name, {**results, "task": name, "models": entry["models"], "type": entry.get("type", "multi-label")})
            for name, entry in tasks.items()]


def _metrics(results):
    return metric_names(results.get("type") == "single-label")


def _decision_metrics(results):
    """The decision metrics every model of a multi-label view has (heads with thresholds, 0.9 on)."""
    tests = [r["test"] for r in results["models"].values()]
    if results.get("type") == "single-label" or not tests:
        return ()
    return tuple(m for m in DECISION_METRICS if all(m in test for test in tests))


def save_figure(fig, path):
    """``fig`` as a PNG at ``path``, atomically."""
    import matplotlib.pyplot as plt

    with storage.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def markdown_table(results):
    """Every task's tables (a one-task report: exactly its table)."""
    views = task_views(results)
    if len(views) == 1:
        return _markdown_table(views[0][1])
    return "\n".join(f"## Task `{task}` ({view['type']})\n\n" + _markdown_table(view) for task, view in views)


def _markdown_table(results):
    metrics = _metrics(results)
    scored = "classes scored" if results.get("type") == "single-label" else "tags scored"
    lines = [f"Probe on `{results['dataset']}` ({results['protocol']} protocol): test split, point estimate "
             f"(bootstrap mean ± std over {results['settings']['bootstrap']} resamples, 95 % interval).", "",
             "| model | " + " | ".join(LABELS[m] for m in metrics) + f" | {scored} |",
             "|---|" + "---:|" * (len(metrics) + 1)]
    for name, result in results["models"].items():
        cells = []
        for metric in metrics:
            m = result["test"][metric]
            cells.append(f"{m['point']:.3f} ({m['mean']:.3f} ± {m['std']:.3f}, {m['ci95'][0]:.3f}–{m['ci95'][1]:.3f})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {result['test']['tags_scored']} |")
    decisions = _decision_metrics(results)
    if decisions:
        lines += ["", "Decisions (a tag is on when its probability reaches the tag's threshold, chosen for the "
                      "maximum F1 on the validation split): test point estimate [95 % interval].", "",
                  "| model | " + " | ".join(LABELS[m] for m in decisions) + " |", "|---|" + "---:|" * len(decisions)]
        for name, result in results["models"].items():
            cells = [f"{result['test'][m]['point']:.3f} [{result['test'][m]['ci95'][0]:.3f}, "
                     f"{result['test'][m]['ci95'][1]:.3f}]" for m in decisions]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    fractions = [r.get("fractions") for r in results["models"].values() if r.get("fractions")]
    if fractions:
        keys = list(fractions[0])
        lines += ["", f"Limited data: mean ± std over {results['settings']['draws']} draws of the training tracks "
                      "(test split, ROC-AUC macro / PR-AUC macro).", "",
                  "| model | " + " | ".join(f"{float(k):.0%}" for k in keys) + " |",
                  "|---|" + "---:|" * len(keys)]
        for name, result in results["models"].items():
            if result.get("fractions"):
                cells = [f"{result['fractions'][k]['roc_auc_macro']['mean']:.3f} / "
                         f"{result['fractions'][k]['pr_auc_macro']['mean']:.3f}" for k in keys]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def task_table(results):
    """Markdown, one row per model and one column per task: test macro ROC-AUC [95 % interval]
    (and accuracy for a single-label task): every task at a glance."""
    views = task_views(results)
    header = [f"{task} ({'ROC-AUC / accuracy' if view['type'] == 'single-label' else 'ROC-AUC'})"
              for task, view in views]
    lines = ["| model | " + " | ".join(header) + " |", "|---|" + "---|" * len(views)]
    for name in results["models"]:
        cells = []
        for _, view in views:
            test = view["models"].get(name, {}).get("test")
            if test is None:
                cells.append("")
                continue
            roc = test["roc_auc_macro"]
            cell = f"{roc['point']:.3f} [{roc['ci95'][0]:.3f}, {roc['ci95'][1]:.3f}]"
            cells.append(cell + (f" / {test['accuracy']['point']:.3f}" if "accuracy" in test else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def task_verdicts(results, ours, floors):
    """``{task: verdict line}`` of ``ours`` against each of ``floors`` present, per task."""
    from keras_music_ssl.probe.verdict import verdict

    verdicts = {}
    for task, view in task_views(results):
        tests = {name: r["test"] for name, r in view["models"].items()}
        if ours in tests:
            verdicts[task] = verdict(tests, ours, [f for f in floors if f in tests])
    return verdicts


def csv_rows(results):
    rows = []
    for task, view in task_views(results):
        for name, result in view["models"].items():
            for metric in _metrics(view) + _decision_metrics(view):
                m = result["test"][metric]
                rows.append([name, "", metric, m["point"], m["mean"], m["std"], *m["ci95"], task])
            for fraction, entry in (result.get("fractions") or {}).items():
                for metric in ("roc_auc_macro", "pr_auc_macro"):
                    rows.append([name, fraction, metric, "", entry[metric]["mean"], entry[metric]["std"], "", "",
                                 task])
    return rows


def _title(results):
    name = results["dataset"].rstrip("/")
    name = name if ":" in name else os.path.basename(name)  # a folder: its name, not the whole path
    return f"{name} [{results['task']}]" if len(results.get("tasks") or ()) > 1 else name


def plot_bootstrap(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(names), 4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes[0], ("pr_auc_macro", "roc_auc_macro")):
        for i, name in enumerate(names):
            m = results["models"][name]["test"][metric]
            values = np.asarray(m["resamples"])
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, s=8, alpha=0.5, color=f"C{i}")
            ax.scatter([i], [m["mean"]], marker="D", s=50, color="black", zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(LABELS[metric])
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{_title(results)}: bootstrap over test tracks")
    fig.tight_layout()
    save_figure(fig, path)


def plot_fractions(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
    for ax, metric in zip(axes[0], ("pr_auc_macro", "roc_auc_macro")):
        for i, (name, result) in enumerate(results["models"].items()):
            if not result.get("fractions"):
                continue
            keys = sorted(result["fractions"], key=float)
            x = np.array([float(k) for k in keys]) * 100
            draws = [np.asarray(result["fractions"][k][metric]["draws"]) for k in keys]
            mean = np.array([d.mean() for d in draws])
            half = np.array([stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
                             for d in draws])
            ax.plot(x, mean, marker="o", color=f"C{i}", label=name)
            ax.fill_between(x, mean - half, mean + half, color=f"C{i}", alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("training tracks (%)")
        ax.set_title(LABELS[metric])
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"{_title(results)}: limited training data")
    fig.tight_layout()
    save_figure(fig, path)


def write_report(results, out):
    """Write every report file of ``results`` into ``out``; return the paths written."""
    import io

    os.makedirs(out, exist_ok=True)
    paths = {name: os.path.join(out, name) for name in ("results.json", "results.csv", "results.md")}
    storage.write_json(paths["results.json"], results, indent=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "fraction", "metric", "point", "mean", "std", "ci95_low", "ci95_high", "task"])
    writer.writerows(csv_rows(results))
    storage.write_text(paths["results.csv"], buffer.getvalue())
    storage.write_text(paths["results.md"], markdown_table(results))
    for i, (task, view) in enumerate(task_views(results)):
        if not view["models"]:
            continue
        suffix = "" if i == 0 else f"-{task}"
        paths[f"bootstrap{suffix}.png"] = os.path.join(out, f"bootstrap{suffix}.png")
        plot_bootstrap(view, paths[f"bootstrap{suffix}.png"])
        if any(r.get("fractions") for r in view["models"].values()):
            paths[f"fractions{suffix}.png"] = os.path.join(out, f"fractions{suffix}.png")
            plot_fractions(view, paths[f"fractions{suffix}.png"])
    return paths
