"""Compare pretext methods: the same data, budget, seed and encoder for each, then one probe
report beside the floors (the runs' own initial encoder ``<encoder>-init``, ``random``: the paper's
encoder at random init, and ``logmel-stats``) and a supervised reference, with each method's
verdict against each floor. The library side of ``kmssl compare``.

    from keras_music_ssl.compare import compare
    table = compare("runs/compare", methods=["contrastive", "byol"], epochs=10, steps_per_epoch=50)

``out`` holds ``runs/<method>/`` (one ``pretrain`` run folder each), ``probe/`` (the probe
harness's report) and the comparison: ``comparison.json``, ``comparison.md``,
``comparison.png`` (test macro ROC-AUC with its 95 % bootstrap interval, floors as lines) and
``pretraining.png`` (the collapse monitor's effective rank per epoch, and each task's learning
curve: every run probes itself every ``probe_every`` epochs, by default a quarter of the run, on
the probe dataset, ``probe/curve.py``). Resumable: finished runs are not retrained and finished
probes are not refitted.

Every option, ``out`` and the probe dataset (loaded, with a scorable valid and test split) are
checked before the first pretraining step: a mistake costs seconds, not a pretraining per
method. ``out`` is locked for the run; its files are written atomically, as strict JSON.
"""

import math
import os

from keras_music_ssl.probe.models import REFERENCE

FLOORS = ("random", "logmel-stats")


def compare(out, methods=None, probe_dataset=None, protocol="paper", bootstrap=50, probe_options=None, data_dir=None,
            verbose=1, reference=REFERENCE, **settings):
    """Pretrain each of ``methods`` (default all five) with ``settings`` (the fields of
    ``PretrainConfig`` but ``method``), probe them on ``probe_dataset`` (default: the rendered
    dataset the runs trained on; ``probe_options`` go to ``run_probe``, e.g. ``epochs``) beside the
    floors and the supervised ``reference`` (a tagger preset, default ``musicnn_mtt``; ``None``: none;
    left out, saying why, when it cannot be had) and write the comparison; returns it as a dict."""
    from keras_music_ssl import storage
    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.pretext import METHODS
    from keras_music_ssl.probe.datasets import ProbeData, load_probe_dataset
    from keras_music_ssl.probe.fractions import DRAWS
    from keras_music_ssl.probe.harness import check_options, check_scorable, run_probe
    from keras_music_ssl.probe.models import supervised_reference
    from keras_music_ssl.probe.probe import protocol_settings
    from keras_music_ssl.train import PretrainConfig, PretrainError, pretrain

    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or len(set(methods)) != len(methods):
        raise PretrainError(f"methods must be distinct names among {', '.join(METHODS)}, got {methods}")
    if "method" in settings:
        raise PretrainError("compare takes methods=[...], not method=")
    base = PretrainConfig(**settings)  # checks the settings once, before any training
    out = os.fspath(out)
    storage.check_output(out, "folder")
    probe_options = dict(probe_options or {})
    protocol_settings(protocol)
    check_options(bootstrap, probe_options.get("draws", DRAWS), probe_options.get("fractions"),
                  probe_options.get("epochs"), probe_options.get("embed_batch_size", 32),
                  options={"epochs": "--probe-epochs"})
    if probe_options.get("cache_dir"):
        storage.check_output(probe_options["cache_dir"], "folder", "--cache-dir")
    if probe_dataset is None:
        if base.data is not None:
            raise PretrainError("with your own data, say which labeled dataset to probe on (probe_dataset / "
                                "--probe-dataset)")
        from keras_music_ssl.data.embedded import embedded_dataset

        probe_dataset = embedded_dataset(base.dataset_size, base.seed, data_dir).root
    # Loaded and checked now: a dataset that cannot be probed must not cost a pretraining per method.
    probe_data = probe_dataset if isinstance(probe_dataset, ProbeData) else load_probe_dataset(
        probe_dataset, probe_options.pop("audio_dir", None))
    probe_data = check_scorable(probe_data)
    # Each run's learning curve, on the same dataset (probe_every=None: none).
    settings.setdefault("probe_every", max(1, base.epochs // 4))
    if settings["probe_every"] and settings.get("probe_dataset") is None:
        settings["probe_dataset"] = probe_data.name
    # Before any pretraining: a --reference typo is refused, musicnn's wheel fetched on first use.
    references = supervised_reference(reference, probe_options.get("weights_dir"))

    os.makedirs(out, exist_ok=True)
    with storage.locked(out):
        storage.clean_partials(out)
        runs = {}
        for i, method in enumerate(methods, 1):
            print(f"[{i}/{len(methods)}] pretraining {method}", flush=True)
            runs[method] = pretrain(os.path.join(out, "runs", method), data_dir=data_dir, verbose=verbose,
                                    method=method, **settings)
        print(f"probing {', '.join(methods)} and the floors on {probe_data.name}", flush=True)
        models = [(m, MusicEncoder.from_preset(runs[m]["preset"])) for m in methods] + ["random"]
        initial = same_config_floor(os.path.join(out, "runs", methods[0]), base.encoder, base.seed)
        floors = ["random", *([initial[0]] if initial else []), "logmel-stats"]
        models += ([initial] if initial else []) + references
        results = run_probe(probe_data, models, os.path.join(out, "probe"), protocol=protocol,
                            bootstrap=bootstrap, seed=base.seed, progress=bool(verbose), **probe_options)
        return _write_comparison(out, methods, base, protocol, bootstrap, runs, results, floors)


def _finite(value):
    """A pretraining statistic for the table, or None where it is missing or not finite (a
    collapsed run's NaN effective rank must not make the comparison unwritable as strict JSON)."""
    return value if value is not None and math.isfinite(value) else None


def same_config_floor(run, encoder, seed):
    """``(name, MusicEncoder)``: the initial weights of the pretraining run folder ``run`` (every
    method of a comparison starts from the same encoder: one seed, one configuration), named
    ``<encoder>-init``; None for a run folder older than ``initial/`` (0.7)."""
    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.probe.models import RANDOM, resolve_model
    from keras_music_ssl.storage import weights_fingerprint
    from keras_music_ssl.train import INITIAL

    path = os.path.join(run, INITIAL)
    if not os.path.isdir(path):
        return None
    model = MusicEncoder.from_preset(path)
    if weights_fingerprint(model) == resolve_model(RANDOM, seed).fingerprint:
        return None  # the paper's encoder with the probe's seed: `random` is this floor already
    return f"{encoder}-init", model


def _write_comparison(out, methods, base, protocol, bootstrap, runs, results, floors=FLOORS):
    from keras_music_ssl import storage
    from keras_music_ssl.probe.report import task_table, task_verdicts
    from keras_music_ssl.probe.verdict import verdict

    rows = []
    for name, result in results["models"].items():
        test = result["test"]
        run = runs.get(name, {})
        kind = "method" if name in methods else "floor" if name in floors else "reference"
        rows.append({"model": name, "kind": kind, "pretrain_seconds": run.get("fit_seconds"),
                     "steps": run.get("steps"),
                     "final_loss": _finite(run.get("final", {}).get("loss")),
                     "effective_rank": _finite(run.get("final", {}).get("val_effective_rank")),
                     "roc_auc": test["roc_auc_macro"]["point"], "roc_auc_ci95": test["roc_auc_macro"]["ci95"],
                     "pr_auc": test["pr_auc_macro"]["point"], "pr_auc_ci95": test["pr_auc_macro"]["ci95"]})
    floors = [f for f in floors if f in results["models"]]
    tests = {name: result["test"] for name, result in results["models"].items()}
    comparison = {"settings": {k: v for k, v in base.to_dict().items() if k != "method"}, "methods": methods,
                  "floors": floors, "references": [r["model"] for r in rows if r["kind"] == "reference"],
                  "probe_dataset": results["dataset"], "protocol": protocol, "bootstrap": bootstrap,
                  "tracks": results["models"][methods[0]]["tracks"], "rows": rows,
                  "verdicts": {m: verdict(tests, m, floors) for m in methods},
                  "tasks": list(results.get("tasks") or [results.get("task", "tags")]),
                  "task_table": task_table(results),
                  "task_verdicts": {m: task_verdicts(results, m, floors) for m in methods}}
    storage.write_json(os.path.join(out, "comparison.json"), comparison)
    storage.write_text(os.path.join(out, "comparison.md"), comparison_table(comparison) + "\n")
    _figures(out, comparison, runs)
    return comparison


def comparison_table(comparison):
    """Markdown: one row per model (methods, floors, references), then each method's verdict."""
    lines = ["| model | pretraining | final loss | effective rank | test ROC-AUC [95 % CI] | test PR-AUC [95 % CI] |",
             "|---|---|---|---|---|---|"]
    for row in comparison["rows"]:
        if row["pretrain_seconds"] is not None:
            budget = f"{row['steps']} steps, {row['pretrain_seconds'] / 60:.1f} min"
        else:  # a floor, or a supervised reference (trained on labels elsewhere)
            budget = "supervised (reference)" if row.get("kind") == "reference" else "none (floor)"
        loss = "" if row["final_loss"] is None else f"{row['final_loss']:.3f}"
        rank = "" if row["effective_rank"] is None else f"{row['effective_rank']:.1f}"
        roc, pr = row["roc_auc_ci95"], row["pr_auc_ci95"]
        lines.append(f"| {row['model']} | {budget} | {loss} | {rank} | {row['roc_auc']:.3f} [{roc[0]:.3f}, {roc[1]:.3f}] "
                     f"| {row['pr_auc']:.3f} [{pr[0]:.3f}, {pr[1]:.3f}] |")
    verdicts = comparison.get("verdicts") or {}  # comparisons written before 0.7 have none
    if verdicts:
        lines += ["", "Test macro ROC-AUC against each floor (paired bootstrap over the same test resamples):", ""]
        lines += [f"- {text}" for text in verdicts.values()]
    if len(comparison.get("tasks") or ()) > 1:  # the rows above are the main task's
        lines += ["", f"Every task ({', '.join(comparison['tasks'])}):", "", comparison["task_table"], ""]
        lines += [f"- [{task}] {text}" for by_task in comparison["task_verdicts"].values()
                  for task, text in by_task.items() if task != comparison["tasks"][0]]
    return "\n".join(lines)


def _figures(out, comparison, runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_music_ssl.probe.report import save_figure
    from keras_music_ssl.train import read_history

    rows = [r for r in comparison["rows"] if r.get("kind", "method") == "method" and r["model"] not in FLOORS]
    floors = [r for r in comparison["rows"] if r not in rows]  # the floors and the reference: lines
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 3, 3.5))
    points = [r["roc_auc"] for r in rows]
    errors = [[p - r["roc_auc_ci95"][0] for p, r in zip(points, rows)],
              [r["roc_auc_ci95"][1] - p for p, r in zip(points, rows)]]
    ax.bar(range(len(rows)), points, yerr=errors, capsize=4, color="tab:blue")
    for floor, style in zip(floors, ("--", ":", "-.", (0, (1, 3)), (0, (5, 5)))):
        ax.axhline(floor["roc_auc"], color="black", linestyle=style, label=f"{floor['model']} {floor['roc_auc']:.3f}")
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=20)
    low = min(points + [f["roc_auc"] for f in floors]) - 0.08
    ax.set_ylim(max(0.0, low), 1.0)
    ax.set_ylabel("test macro ROC-AUC")
    ax.set_title(f"{os.path.basename(os.path.normpath(comparison['probe_dataset']))}: {comparison['protocol']} probe")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "comparison.png"))

    histories = {method: read_history(os.path.join(os.path.dirname(run["preset"]), "history.csv"))
                 for method, run in runs.items()}
    tasks = list(dict.fromkeys(key[len("probe_"):-len("_roc_auc")] for rows in histories.values() for row in rows
                               for key in row if key.startswith("probe_") and key.endswith("_roc_auc")))
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(5 + 4.5 * len(tasks), 3.5), squeeze=False)
    ax = axes[0][0]
    for method, history in histories.items():
        if history and "val_effective_rank" in history[0]:
            ax.plot([h["epoch"] + 1 for h in history], [h["val_effective_rank"] for h in history], marker="o",
                    label=method)
    ax.set_xlabel("epoch")
    ax.set_ylabel("effective rank (validation views)")
    ax.set_title("collapse monitor")
    ax.legend(fontsize=8)
    for ax, task in zip(axes[0][1:], tasks):  # the learning curves (probe/curve.py), floors as lines
        key = f"probe_{task}_roc_auc"
        for method, history in histories.items():
            shown = [h for h in history if math.isfinite(h.get(key, math.nan))]
            ax.plot([h["epoch"] + 1 for h in shown], [h[key] for h in shown], marker="o", label=method)
        first = next((h for rows in histories.values() for h in rows), {})
        floors = [k for k in first if k.startswith(f"probe_{task}_floor_")]
        for floor, style in zip(floors, ("--", ":", "-.")):
            ax.axhline(first[floor], color="black", linestyle=style,
                       label=f"{floor[len(f'probe_{task}_floor_'):]} {first[floor]:.3f}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("valid macro ROC-AUC (fast linear probe)")
        ax.set_title(task)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "pretraining.png"))
