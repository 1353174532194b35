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
5. probe: logistic regression on frozen track embeddings (train split) -> macro ROC-AUC on the
   test split's instrument tags, beside the same probe on a randomly initialised encoder.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def probe(encoder, dataset, seed):
    """Macro ROC-AUC of a logistic-regression probe on frozen track embeddings (test split)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from keras_music_ssl.embed import embed_files

    def features(split):
        part = dataset.split(split)
        result = embed_files(encoder, part.paths, progress=False)
        keep = [part.paths.index(p) for p in result.paths]
        return result.embeddings, part.labels[keep]

    x_train, y_train = features("train")
    x_test, y_test = features("test")
    usable = (y_train.min(0) < 1) & (y_train.max(0) > 0) & (y_test.min(0) < 1) & (y_test.max(0) > 0)
    scaler = StandardScaler().fit(x_train)
    scores = []
    for t in np.flatnonzero(usable):
        clf = LogisticRegression(C=0.1, max_iter=2000, random_state=seed)
        clf.fit(scaler.transform(x_train), y_train[:, t])
        scores.append(roc_auc_score(y_test[:, t], clf.predict_proba(scaler.transform(x_test))[:, 1]))
    return float(np.mean(scores)), int(usable.sum())


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
        pretrained, n_tags = probe(encoder, dataset, args.seed)
        baseline, _ = probe(MusicEncoder(**ENCODERS[args.encoder]), dataset, args.seed)
        summary["probe_roc_auc"] = {"pretrained": pretrained, "random_init": baseline, "tags": n_tags}
        print(f"probe macro ROC-AUC on {n_tags} tags (test split): pretrained {pretrained:.3f}, "
              f"random init {baseline:.3f}")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
