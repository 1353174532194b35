"""What pretraining learns on real recordings: contrastive at several budgets, the five methods
at the middle one, each probed against every floor on the ``source`` task (which game).

    python benchmarks/real_music/build_dataset.py --out /work/data/real_music     # once, ~5 min
    python benchmarks/real_music/run.py --data /work/data/real_music --out outputs/real_music curve
    python benchmarks/real_music/run.py --data /work/data/real_music --out outputs/real_music probe
    python benchmarks/real_music/run.py --data /work/data/real_music --out outputs/real_music compare
    python benchmarks/real_music/run.py --data /work/data/real_music --out outputs/real_music table

``curve``: one long contrastive run (``medium`` encoder, the quickstart's recipe) on the pool of
train-split tracks, with the learning-curve callback every epoch (``--probe-every 1``) and a
checkpoint per epoch: one run gives the whole curve. ``probe``: for each budget (pretraining
minutes, ``--budgets``), the last checkpoint within it, probed with the paper's protocol on the
test split beside ``medium-init`` (the run's own initial weights), ``random``, ``logmel-stats``
and musicnn's tagger (when its wheel can be had). ``compare``: ``kmssl compare`` of the five
methods with the epochs the contrastive run needed for the middle budget. ``table``: the
results as Markdown and ``real_music.png`` (test ROC-AUC against pretraining minutes, the floors
as horizontal lines). Every phase resumes where a kill left it.

Minutes are wall time of the training epochs alone (``epoch_seconds``; the curve's own probes
are not counted), on the machine and cores the run had: say which beside any number.
"""

import argparse
import json
import os
import sys

RECIPE = dict(method="contrastive", encoder="medium", batch_size=64, learning_rate=2e-3, steps_per_epoch=50)


def _paths(args):
    return {"pool": os.path.join(args.data, "pool"), "labeled": os.path.join(args.data, "labeled"),
            "cache": os.path.join(args.data, "audio_cache"), "long": os.path.join(args.out, "contrastive-long")}


def curve(args, paths):
    from keras_music_ssl.train import pretrain

    pretrain(paths["long"], data=paths["pool"], audio_cache=paths["cache"], epochs=args.epochs, probe_every=1,
             probe_dataset=paths["labeled"], seed=args.seed, verbose=2, **RECIPE)


def _minutes(run):
    """``[(epoch, cumulative training minutes)]`` of a run folder."""
    from keras_music_ssl.train import read_history

    total, points = 0.0, []
    for row in read_history(os.path.join(run, "history.csv")):
        total += row.get("epoch_seconds", 0.0) / 60
        points.append((int(row["epoch"]) + 1, total))
    return points


def _budget_epochs(run, budgets):
    """``{budget: (epoch, minutes)}``: the last epoch whose cumulative minutes fit in each budget."""
    points = _minutes(run)
    chosen = {}
    for budget in budgets:
        fitting = [p for p in points if p[1] <= budget + 1e-9]
        if fitting:
            chosen[budget] = fitting[-1]
    return chosen


def probe(args, paths):
    import keras

    from keras_music_ssl.compare import same_config_floor
    from keras_music_ssl.probe import run_probe
    from keras_music_ssl.probe.models import supervised_reference

    models = []
    for budget, (epoch, minutes) in _budget_epochs(paths["long"], args.budgets).items():
        checkpoint = os.path.join(paths["long"], "checkpoints", f"epoch{epoch:03d}.keras")
        encoder = keras.saving.load_model(checkpoint).encoder
        models.append((f"contrastive-{budget:g}min", encoder))
        print(f"budget {budget:g} min: epoch {epoch} ({minutes:.1f} min)", flush=True)
    initial = same_config_floor(paths["long"], RECIPE["encoder"], args.seed)
    references = supervised_reference(None if args.reference == "none" else args.reference)
    models += ["random", *([initial] if initial else []), *references]
    run_probe(paths["labeled"], models, os.path.join(args.out, "probe"), seed=args.seed)


def compare(args, paths):
    from keras_music_ssl.compare import compare as compare_methods

    middle = sorted(args.budgets)[len(args.budgets) // 2]
    epoch, minutes = _budget_epochs(paths["long"], [middle])[middle]
    print(f"the five methods at {middle:g} min: {epoch} epochs (contrastive took {minutes:.1f} min)", flush=True)
    settings = {k: v for k, v in RECIPE.items() if k != "method"}
    compare_methods(os.path.join(args.out, "compare"), probe_dataset=paths["labeled"], data=paths["pool"],
                    audio_cache=paths["cache"], epochs=epoch, seed=args.seed, **settings)


def table(args, paths):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.load(open(os.path.join(args.out, "probe", "results.json")))
    chosen = _budget_epochs(paths["long"], args.budgets)
    lines = ["| model | pretraining | test ROC-AUC macro [95 % CI] | accuracy | F1 macro |", "|---|---|---|---|---|"]
    points = []
    for name, result in results["models"].items():
        test = result["test"]
        roc = test["roc_auc_macro"]
        budget = next((b for b in chosen if name == f"contrastive-{b:g}min"), None)
        floor = "none (floor)" if name in ("medium-init", "random", "logmel-stats") else "supervised (reference)"
        spent = f"{chosen[budget][1]:.1f} min ({chosen[budget][0]} epochs)" if budget is not None else floor
        if budget is not None:
            points.append((chosen[budget][1], roc["point"], roc["ci95"]))
        lines.append(f"| {name} | {spent} | {roc['point']:.3f} [{roc['ci95'][0]:.3f}, {roc['ci95'][1]:.3f}] "
                     f"| {test['accuracy']['point']:.3f} | {test['f1_macro']['point']:.3f} |")
    from keras_music_ssl.probe.verdict import verdict

    tests = {name: result["test"] for name, result in results["models"].items()}
    floors = [name for name in ("medium-init", "random", "logmel-stats") if name in tests]
    lines += ["", "Against every floor (test macro ROC-AUC, paired bootstrap over the same resamples):", ""]
    lines += [f"- {verdict(tests, name, floors)}" for name in tests if name.startswith("contrastive-")]
    lines += [f"- {verdict(tests, name, floors)} (supervised reference)" for name in tests
              if not name.startswith("contrastive-") and name not in floors]
    markdown = "\n".join(lines)
    comparison = os.path.join(args.out, "compare", "comparison.md")
    if os.path.exists(comparison):
        markdown += "\n\nThe five methods at the middle budget (`kmssl compare`):\n\n" + open(comparison).read()
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown + "\n")
    print(markdown)

    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        x, y, ci = zip(*sorted(points))
        ax.errorbar(x, y, yerr=[[p - c[0] for p, c in zip(y, ci)], [c[1] - p for p, c in zip(y, ci)]],
                    marker="o", capsize=4, label="contrastive (paper probe, test)")
    for (name, result), style in zip([(n, r) for n, r in results["models"].items() if not n.startswith("contrastive-")],
                                     ("--", ":", "-.", (0, (1, 3)), (0, (5, 5)))):
        value = result["test"]["roc_auc_macro"]["point"]
        ax.axhline(value, color="black", linestyle=style, label=f"{name} {value:.3f}")
    ax.set_xlabel("pretraining minutes")
    ax.set_ylabel("test macro ROC-AUC (source: which game)")
    ax.set_title("real recordings: 12 game soundtracks")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "real_music.png"), dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("curve", "probe", "compare", "table"))
    parser.add_argument("--data", required=True, help="build_dataset.py's --out")
    parser.add_argument("--out", default="outputs/real_music")
    parser.add_argument("--budgets", type=float, nargs="+", default=[10.0, 30.0, 90.0], metavar="MINUTES")
    parser.add_argument("--epochs", type=int, default=200, help="epochs of the long run (50 steps each; default "
                                                                "200, more than the largest budget needs on 2 cores)")
    parser.add_argument("--reference", default="musicnn_mtt", help="supervised reference of the probe phase "
                                                                    "(a tagger preset; none: none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    globals()[args.phase](args, _paths(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
