"""Pretrain an encoder with one of the five pretext methods, then check it with a quick probe.

    python recipes/pretrain.py                                   # the embedded default, on CPU
    python recipes/pretrain.py --method clustering --epochs 20   # another method, longer
    python recipes/pretrain.py --data my_prepared_shards --encoder paper --batch-size 64

With no --data, it builds the offline labeled dataset (music21 scores rendered with a General
MIDI SoundFont, keras_music_ssl/data/rendered.py) and pretrains on its train split. Steps:
1. data: build the rendered dataset (cached), `prepare` its train split into shards (resumable);
2. views: two 4 s crops of the same clip, >= 4 s apart (the paper's sampler);
3. fit: Method(encoder).fit with a collapse monitor, a CSV log and BackupAndRestore, so an
   interrupted run resumes where it stopped when run again with the same --out;
4. save: the encoder as a preset (OUT/preset), usable by `kmssl embed` / `kmssl export`;
5. probe: the probe harness (keras_music_ssl.probe, as `kmssl probe`) on the rendered set's
   instrument tags: the pretrained encoder beside `random` (the paper's encoder, random init)
   and `logmel-stats` (the handcrafted floor); the report goes to OUT/probe/results.md.
"""

import argparse
import json
import os
import sys

ENCODERS = {  # a CPU-sized model for demos, and the paper's
    "small": dict(width=8, layers=(1, 1, 1, 1), heads=4, output_dim=256),
    "paper": dict(width=16, layers=(3, 4, 6, 3), heads=8, output_dim=1024),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="contrastive",
                        choices=("contrastive", "byol", "clustering", "barlow_twins", "vicreg"))
    parser.add_argument("--out", default="outputs/pretrain", help="run folder (resumes if it exists)")
    parser.add_argument("--data", default=None,
                        help="a folder made by `kmssl prepare`, or of audio files (default: rendered dataset)")
    parser.add_argument("--dataset-size", default="small", choices=("tiny", "small", "full"))
    parser.add_argument("--encoder", default="small", choices=tuple(ENCODERS))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-probe", action="store_true", help="skip the probe at the end")
    return parser.parse_args()


def rendered_train_shards(out, size, seed):
    """Build (or reuse) the rendered dataset and prepare its train split as shards."""
    import csv

    from keras_music_ssl.data.prepare import prepare_shards
    from keras_music_ssl.data.rendered import build_rendered_dataset
    from keras_music_ssl.data.labeled_csv import read_labeled_dataset

    root = os.path.join(out, f"rendered_{size}")
    if os.path.exists(os.path.join(root, "build.json")):
        dataset = read_labeled_dataset(root)
    else:
        dataset = build_rendered_dataset(root, size=size, seed=seed)
    manifest = os.path.join(out, "train_manifest.csv")
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path"])
        writer.writerows([p] for p in dataset.split("train").paths)
    shards = os.path.join(out, "shards")
    report = prepare_shards([manifest], shards)
    print(f"prepared {report['tracks']} train clips into {shards} ({report['skipped']} skipped)")
    return shards, dataset


def main():
    args = parse_args()
    import keras
    import numpy as np

    from keras_music_ssl import MusicEncoder
    from keras_music_ssl.data import ViewSampler
    from keras_music_ssl.data.pipelines import ViewSamplerCounts, pretraining_dataset
    from keras_music_ssl.pretext import METHODS, CollapseMonitor

    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    dataset = None
    if args.data:
        source = args.data
    else:
        source, dataset = rendered_train_shards(args.out, args.dataset_size, args.seed)

    sampler = ViewSampler()  # the paper: 2 views of 4 s, start times >= 4 s apart, no augmentation
    views = pretraining_dataset(source, batch_size=args.batch_size, sampler=sampler, seed=args.seed)
    held_out = np.asarray(next(iter(pretraining_dataset(source, batch_size=32, seed=args.seed + 1))))

    encoder = MusicEncoder(**ENCODERS[args.encoder])
    model = METHODS[args.method](encoder, steps_per_epoch=args.steps_per_epoch)
    model.compile(learning_rate=args.learning_rate, warmup_steps=args.steps_per_epoch)
    callbacks = [
        CollapseMonitor(held_out),
        ViewSamplerCounts(sampler),
        keras.callbacks.CSVLogger(os.path.join(args.out, "history.csv"), append=True),
        keras.callbacks.BackupAndRestore(os.path.join(args.out, "backup")),
    ]
    history = model.fit(views, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, callbacks=callbacks)

    preset = os.path.join(args.out, "preset")
    encoder.save_to_preset(preset, method=args.method, source="recipes/pretrain.py",
                           data=args.data or f"rendered_{args.dataset_size}", epochs=args.epochs)
    print(f"encoder preset -> {preset}")
    summary = {"method": args.method, "final": {k: float(v[-1]) for k, v in history.history.items()}}

    if dataset is not None and not args.no_probe:
        from keras_music_ssl.probe import run_probe
        from keras_music_ssl.probe.report import markdown_table

        results = run_probe(dataset.root, [(args.method, encoder), "random"], os.path.join(args.out, "probe"),
                            seed=args.seed)
        summary["probe_roc_auc_macro"] = {name: r["test"]["roc_auc_macro"]["point"]
                                          for name, r in results["models"].items()}
        print(markdown_table(results))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
