"""The quickstart: the whole story on the embedded default. The library side of
``kmssl quickstart``.

1. build the rendered dataset (``small``: real scores played with a General MIDI SoundFont);
2. pretrain an encoder (contrastive, the budget below) on its train split;
3. probe it on the test split's three tasks (instrument tags, style, tempo) beside the floors
   (``medium-init``: the encoder this run started from; ``random``: the paper's encoder at
   random init; ``logmel-stats``) and a supervised reference, musicnn's MagnaTagATune tagger
   (``musicnn_mtt``: the one download, musicnn's wheel from PyPI, on first use; left out with a
   note when it cannot be had);
4. export a TFLite tagger (the encoder + the probe's head, raw audio in);
5. tag one test clip with that file through ``kmssl tag``;
6. print the results and where everything is.

The budget is the one ``benchmarks/quickstart_budget.py`` found to beat the handcrafted floor
within 20 minutes on 2 CPU cores; on the ``medium`` set it only ties the floors (its table is
in docs/quickstart.md). One verdict line per task says what this run found against each floor, and
which differences are beyond the test split's noise (``probe/verdict.py``): pretraining can
help one task and hurt another.
"""

import os
import time

from keras_music_ssl.probe.models import REFERENCE

# The quickstart's pretraining budget (see benchmarks/quickstart_budget.py).
BUDGET = dict(method="contrastive", encoder="medium", epochs=6, steps_per_epoch=50, batch_size=64,
              learning_rate=2e-3, probe_every=2)  # probe_every: the learning curve, pretraining.png
DATASET_SIZE = "medium"


def quickstart(out="outputs/quickstart", seed=0, data_dir=None, verbose=1, reference=REFERENCE):
    """Run the quickstart into ``out``; returns its summary (also ``out/quickstart.json``).
    ``reference``: the supervised tagger preset probed beside the floors (``None``: none)."""
    from keras_music_ssl import cli, storage
    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.compare import same_config_floor
    from keras_music_ssl.data.embedded import embedded_dataset
    from keras_music_ssl.errors import KmsslError
    from keras_music_ssl.probe import run_probe
    from keras_music_ssl.probe.models import supervised_reference
    from keras_music_ssl.probe.report import task_table, task_verdicts, task_views
    from keras_music_ssl.probe.verdict import verdict
    from keras_music_ssl.train import pretrain

    started = time.perf_counter()
    out = os.path.abspath(out)
    storage.check_output(out, "folder")  # before building the dataset and pretraining
    references = supervised_reference(reference)  # likewise: a --reference typo is refused now
    _step(1, "the embedded dataset")
    dataset = embedded_dataset(DATASET_SIZE, seed, data_dir, progress=bool(verbose))
    counts = {s: len(dataset.split(s)) for s in ("train", "valid", "test")}
    print(f"  {dataset.root}: {counts['train']} / {counts['valid']} / {counts['test']} clips, "
          f"{len(dataset.tags)} tags", flush=True)

    method = BUDGET["method"]
    steps = BUDGET["epochs"] * BUDGET["steps_per_epoch"]
    _step(2, f"pretraining {method}, {BUDGET['encoder']} encoder, {steps} steps x batch {BUDGET['batch_size']}")
    run = pretrain(out, data_dir=data_dir, verbose=verbose, seed=seed, dataset_size=DATASET_SIZE, **BUDGET)

    tasks = ", ".join(task.name for task in dataset.tasks)
    _step(3, f"probing on the test split's tasks ({tasks}), beside the floors"
          + (f" and {reference}" if reference else ""))
    encoder = MusicEncoder.from_preset(run["preset"])
    initial = same_config_floor(out, BUDGET["encoder"], seed)  # the encoder this run started from
    floors = ["random", *([initial[0]] if initial else []), "logmel-stats"]
    models = [(method, encoder), "random", *([initial] if initial else []), *references]
    results = run_probe(dataset.root, models, os.path.join(out, "probe"), seed=seed, progress=bool(verbose))

    _step(4, "exporting a TFLite tagger (raw 16 kHz audio in, tags out)")
    tagger = os.path.join(out, "tagger.tflite")
    head = os.path.join(out, "probe", "heads", f"{method}.keras")
    status = cli.main(["export", "--preset", run["preset"], "--head", head, "--format", "tflite",
                       "--out", tagger, "--overwrite"])
    if status:  # it printed its reason
        raise KmsslError(f"kmssl export failed (status {status}); its reason is on the line above")

    _step(5, "tagging a test clip with the TFLite file")
    test = dataset.split("test")
    clip, truth = test.paths[0], test.rows[0]["tags"].replace(";", ", ") or "none"
    print(f"  kmssl tag {os.path.relpath(clip)} --model {os.path.relpath(tagger)}   (true tags: {truth})",
          flush=True)
    status = cli.main(["tag", clip, "--model", tagger, "--top", "3"])
    if status:
        raise KmsslError(f"kmssl tag failed (status {status}); its reason is on the line above")

    rows = {name: r["test"] for name, r in results["models"].items()}
    summary = {"budget": BUDGET, "dataset": dataset.root, "clips": counts,
               "pretrain_seconds": run["fit_seconds"], "wall_seconds": round(time.perf_counter() - started, 1),
               "floors": floors, "references": [name for name in rows if name not in (method, *floors)],
               "test": {name: {"roc_auc": t["roc_auc_macro"]["point"], "roc_auc_ci95": t["roc_auc_macro"]["ci95"],
                               "pr_auc": t["pr_auc_macro"]["point"]} for name, t in rows.items()},
               "verdict": verdict(rows, method, floors),
               "tasks": {task: {name: {"roc_auc": r["test"]["roc_auc_macro"]["point"],
                                       "roc_auc_ci95": r["test"]["roc_auc_macro"]["ci95"],
                                       **({"accuracy": r["test"]["accuracy"]["point"]} if "accuracy" in r["test"]
                                          else {})}
                                for name, r in view["models"].items()}
                         for task, view in task_views(results)},
               "task_table": task_table(results),
               "task_verdicts": task_verdicts(results, method, floors),
               "reference_verdicts": {name: verdict(rows, name, [method]) for name in rows
                                      if name not in (method, *floors)},
               "preset": run["preset"], "tagger": tagger, "probe_report": os.path.join(out, "probe", "results.md")}
    storage.write_json(os.path.join(out, "quickstart.json"), summary)
    _print_summary(summary, method)
    return summary


def _step(number, text):
    print(f"\n[{number}/5] {text}", flush=True)


def _print_summary(summary, method):
    test = summary["test"]
    print(f"\nTest split ({summary['clips']['test']} clips), macro ROC-AUC with its 95 % bootstrap interval:\n")
    print("| model | ROC-AUC | 95 % CI | PR-AUC |")
    print("|---|---|---|---|")
    for name, t in test.items():
        low, high = t["roc_auc_ci95"]
        print(f"| {name} | {t['roc_auc']:.3f} | [{low:.3f}, {high:.3f}] | {t['pr_auc']:.3f} |")
    print(f"\npretrained {summary['verdict']}")
    if len(summary.get("tasks", {})) > 1:
        print("\nEvery task of the dataset (test macro ROC-AUC [95 % CI]; accuracy for single-label tasks):\n")
        print(summary["task_table"])
        print()
        for task, text in summary["task_verdicts"].items():
            print(f"{task}: {text}")
    print("(beyond the noise: the paired bootstrap interval of the difference excludes 0; within: the test "
          "split cannot tell them apart)")
    for text in summary["reference_verdicts"].values():
        print(f"supervised reference (trained with real labels on other music, not a floor): {text}")
    print(f"\nwall time {summary['wall_seconds'] / 60:.1f} min (pretraining {summary['pretrain_seconds'] / 60:.1f} min)")
    print(f"encoder preset  {summary['preset']}")
    print(f"TFLite tagger   {summary['tagger']}")
    print(f"probe report    {summary['probe_report']}")
