"""Tiny labeled datasets in each official format, written by the tests (no download).

The audio is synthetic but learnable: a clip's tags say which sources sound in it (a low tone,
a high tone, noise), so a probe on log-mel statistics separates them. Every writer returns the
``kmssl probe`` DATASET string and the clips' tags by split.
"""

import os
import pickle

import numpy as np
import soundfile as sf

SR = 16000
SOURCE_TAGS = ("low", "high", "noise")


def synth_clip(tags, seconds, rng):
    t = np.arange(int(seconds * SR)) / SR
    x = 0.01 * rng.standard_normal(t.size)
    if "low" in tags:
        x += 0.5 * np.sin(2 * np.pi * rng.uniform(100, 200) * t)
    if "high" in tags:
        x += 0.5 * np.sin(2 * np.pi * rng.uniform(2500, 4000) * t)
    if "noise" in tags:
        x += 0.3 * rng.standard_normal(t.size)
    return (x / np.max(np.abs(x)) * 0.8).astype(np.float32)


def draw_tags(rng):
    while True:
        tags = [tag for tag in SOURCE_TAGS if rng.random() < 0.5]
        if tags:
            return tags


def split_sizes(train=16, valid=6, test=8):
    return {"train": train, "valid": valid, "test": test}


def write_generic(root, seconds=5.0, seed=0, sizes=None, fmt="flac"):
    """metadata.csv + tags.txt + audio/*.flac. Returns (DATASET, {split: [tags, ...]})."""
    from keras_music_ssl.data.labeled_csv import write_labeled_dataset

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "audio"), exist_ok=True)
    rows, by_split = [], {}
    for split, count in (sizes or split_sizes()).items():
        for i in range(count):
            tags = draw_tags(rng)
            path = f"audio/{split}_{i:03d}.{fmt}"
            sf.write(os.path.join(root, path), synth_clip(tags, seconds, rng), SR)
            rows.append({"path": path, "split": split, "tags": ";".join(tags)})
            by_split.setdefault(split, []).append(tags)
    write_labeled_dataset(root, rows, SOURCE_TAGS)
    return str(root), by_split


def write_mtat(root, seconds=5.0, seed=0, sizes=None, protocol=2):
    """MTAT_split/{split}_list_pub.cP + y_{split}_pub.npy, audio under mp3/<dir>/<clip>.mp3."""
    from keras_music_ssl.probe.datasets import MTAT_TAGS

    rng = np.random.default_rng(seed)
    split_dir = os.path.join(root, "MTAT_split")
    os.makedirs(split_dir, exist_ok=True)
    column = {"low": MTAT_TAGS.index("slow"), "high": MTAT_TAGS.index("female"), "noise": MTAT_TAGS.index("rock")}
    by_split = {}
    for split, count in (sizes or split_sizes()).items():
        names, labels = [], np.zeros((count, len(MTAT_TAGS)), np.int64)
        for i in range(count):
            tags = draw_tags(rng)
            folder = {"train": "0", "valid": "c", "test": "d"}[split]
            name = f"{folder}/artist-album-{split}_{i:03d}-0-29.npy"
            os.makedirs(os.path.join(root, "mp3", folder), exist_ok=True)
            sf.write(os.path.join(root, "mp3", name[:-4] + ".mp3"), synth_clip(tags, seconds, rng), SR)
            names.append(name)
            for tag in tags:
                labels[i, column[tag]] = 1
            by_split.setdefault(split, []).append([MTAT_TAGS[column[t]] for t in tags])
        with open(os.path.join(split_dir, f"{split}_list_pub.cP"), "wb") as f:
            pickle.dump(names, f, protocol=protocol)
        np.save(os.path.join(split_dir, f"y_{split}_pub.npy"), labels)
    return f"mtat:{root}", by_split


JAMENDO_FULL = {"low": "instrument---bass", "high": "instrument---violin", "noise": "genre---rock"}


def write_jamendo(root, subset="top50tags", split_index=0, seconds=5.0, seed=0, sizes=None):
    """data/splits/split-N/autotagging_<subset>-<split>.tsv, audio under raw_30s/audio/NN/ID.mp3."""
    from keras_music_ssl.probe.datasets import jamendo_tsv

    rng = np.random.default_rng(seed)
    by_split, track = {}, 1000
    for split, count in (sizes or split_sizes()).items():
        path = jamendo_tsv(root, subset, split_index, split)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lines = ["TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"]
        for _ in range(count):
            track += 1
            tags = draw_tags(rng)
            audio = f"{track % 100:02d}/{track}.mp3"
            os.makedirs(os.path.join(root, "raw_30s", "audio", os.path.dirname(audio)), exist_ok=True)
            sf.write(os.path.join(root, "raw_30s", "audio", audio), synth_clip(tags, seconds, rng), SR)
            full = [JAMENDO_FULL[t] for t in tags]
            lines.append("\t".join([f"track_{track:07d}", f"artist_{track % 7:06d}", f"album_{track % 11:06d}",
                                    audio, f"{seconds:.1f}", *full]))
            by_split.setdefault(split, []).append([f.split("---")[1] for f in full])
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return f"jamendo:{root}:{subset}:{split_index}", by_split
