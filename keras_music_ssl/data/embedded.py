"""The embedded default dataset: the rendered dataset (``rendered.py``) built once into a cache
folder, its train split prepared as TFRecord shards, so pretraining, probing and the quickstart
run with no download.

The cache folder is ``$KMSSL_DATA_DIR``, else ``~/.cache/keras_music_ssl/datasets``; a build
is reused when its ``build.json`` is there (the build writes it last), and shard preparation
resumes where it stopped.
"""

import csv
import os
import time

from keras_music_ssl.data.labeled_csv import read_labeled_dataset


def default_data_dir():
    return os.path.expanduser(os.environ.get("KMSSL_DATA_DIR", "~/.cache/keras_music_ssl/datasets"))


def embedded_dataset(size="small", seed=0, data_dir=None, progress=True):
    """The rendered dataset of ``size`` and ``seed`` (a :class:`LabeledDataset`), built if missing."""
    root = os.path.join(data_dir or default_data_dir(), f"rendered-{size}-seed{seed}")
    if os.path.exists(os.path.join(root, "build.json")):
        if not os.path.exists(os.path.join(root, "tasks.json")):  # built before 0.8: labels its tempo
            from keras_music_ssl.data.rendered import add_tasks

            with open(os.path.join(root, "styles.txt")) as f:
                return add_tasks(root, [line.strip() for line in f if line.strip()])
        return read_labeled_dataset(root)
    from keras_music_ssl.data.rendered import build_rendered_dataset

    print(f"building the rendered {size} dataset into {root} (once; later runs reuse it)", flush=True)
    return build_rendered_dataset(root, size=size, seed=seed, progress=progress)


def split_shards(dataset, split="train", progress=True):
    """TFRecord shards of one split of ``dataset`` (prepared once, beside it); returns the folder."""
    from keras_music_ssl.data.prepare import prepare_shards
    from keras_music_ssl.storage import BusyError

    out = os.path.join(dataset.root, f"shards-{split}")
    manifest = os.path.join(dataset.root, f"{split}_manifest.csv")
    if not os.path.exists(manifest):
        from keras_music_ssl import storage

        with storage.atomic_write(manifest, newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path"])
            writer.writerows([p] for p in dataset.split(split).paths)
    # Several processes of one job (JAX hosts, a test and its subprocesses) may ask at once: the
    # first prepares the shards, the others wait for its lock instead of being refused.
    while not os.path.exists(os.path.join(out, "report.json")):
        try:
            prepare_shards([manifest], out, progress=progress)
        except BusyError:
            time.sleep(1)
    return out
