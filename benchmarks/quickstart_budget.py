"""Which pretraining budget lets the quickstart's encoder beat the floors within its 20 minutes?

    python benchmarks/quickstart_budget.py                 # every configuration below
    python benchmarks/quickstart_budget.py --only medium-b16-800 paper-b16-300
    python benchmarks/quickstart_budget.py --size small --out /tmp/budget

Each configuration pretrains with ``keras_music_ssl.pretrain`` on the rendered dataset's train
split and is probed with the probe harness (paper protocol, test split, 50 bootstrap resamples)
beside ``random`` and ``logmel-stats``. Prints one table: pretraining wall time, test macro
ROC-AUC [95 % interval], PR-AUC. Runs are resumable (finished ones are read back), and each
result is kept in OUT/results.jsonl. docs/quickstart.md's "What we tried" table comes from this script.
"""

import argparse
import json
import os
import sys
import time

# name -> pretrain settings (all contrastive unless said; the paper's view rule unless said)
CONFIGS = {
    "small-b16-200": dict(encoder="small", epochs=8, steps_per_epoch=25, batch_size=16),  # the old recipe
    "small-b16-1000": dict(encoder="small", epochs=10, steps_per_epoch=100, batch_size=16, learning_rate=1e-3),
    "medium-b16-600": dict(encoder="medium", epochs=6, steps_per_epoch=100, batch_size=16, learning_rate=1e-3),
    "medium-b16-1000": dict(encoder="medium", epochs=10, steps_per_epoch=100, batch_size=16, learning_rate=1e-3),
    "medium-b64-300": dict(encoder="medium", epochs=6, steps_per_epoch=50, batch_size=64, learning_rate=2e-3),
    "small-b64-600": dict(encoder="small", epochs=6, steps_per_epoch=100, batch_size=64, learning_rate=2e-3),
    "paper-b16-300": dict(encoder="paper", epochs=6, steps_per_epoch=50, batch_size=16, learning_rate=1e-3),
    "medium-b16-600-aug": dict(encoder="medium", epochs=6, steps_per_epoch=100, batch_size=16, learning_rate=1e-3,
                               gain_db=6.0, polarity=0.5),
    "medium-b32-400-gap0": dict(encoder="medium", epochs=4, steps_per_epoch=100, batch_size=32, learning_rate=1e-3,
                                min_gap_seconds=0.0),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, choices=tuple(CONFIGS))
    parser.add_argument("--size", default="small", help="rendered dataset size (default small)")
    parser.add_argument("--out", default="outputs/quickstart_budget")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from keras_music_ssl import MusicEncoder
    from keras_music_ssl.data.embedded import embedded_dataset
    from keras_music_ssl.probe import run_probe
    from keras_music_ssl.train import pretrain

    dataset = embedded_dataset(args.size, args.seed)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in args.only or CONFIGS:
        run = os.path.join(args.out, "runs", name)
        started = time.perf_counter()
        summary = pretrain(run, dataset_size=args.size, seed=args.seed, verbose=2, **CONFIGS[name])
        seconds = summary.get("fit_seconds", time.perf_counter() - started)
        results = run_probe(dataset.root, [(name, MusicEncoder.from_preset(os.path.join(run, "preset"))), "random"],
                            os.path.join(args.out, "probe", name), seed=args.seed, progress=False)
        for model, result in results["models"].items():
            test = result["test"]
            rows.append({"config": name, "model": model, "pretrain_seconds": seconds if model == name else None,
                         "roc_auc": test["roc_auc_macro"]["point"], "ci95": test["roc_auc_macro"]["ci95"],
                         "pr_auc": test["pr_auc_macro"]["point"], "settings": CONFIGS[name]})
        with open(os.path.join(args.out, "results.jsonl"), "a") as f:
            for row in rows[-len(results["models"]):]:
                f.write(json.dumps(row) + "\n")
    print(f"\n{dataset.root}: test split {len(dataset.split('test'))} clips, paper protocol\n")
    print("| configuration | model | pretrain (s) | ROC-AUC [95 % CI] | PR-AUC |")
    print("|---|---|---|---|---|")
    for row in rows:
        seconds = "" if row["pretrain_seconds"] is None else f"{row['pretrain_seconds']:.0f}"
        low, high = row["ci95"]
        print(f"| {row['config']} | {row['model']} | {seconds} | {row['roc_auc']:.3f} [{low:.3f}, {high:.3f}] "
              f"| {row['pr_auc']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
