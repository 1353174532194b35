"""The generic labeled-audio format that the probe harness reads (MagnaTagATune, MTG-Jamendo and
the rendered dataset are all converted to it).

A dataset is a folder with two files:

``metadata.csv`` (UTF-8, comma-separated, with a header), one row per audio clip or track:

============  ===========================================================================
column        meaning
============  ===========================================================================
``path``      audio file, relative to the folder of ``metadata.csv`` (or absolute)
``split``     ``train``, ``valid`` or ``test``
``tags``      the clip's tags, ``;``-separated, each one a line of ``tags.txt`` (may be empty)
``style``     optional: a single-label class (e.g. the corpus a rendered piece came from)
``work``      optional: the composition/album/artist id; splits never share a ``work``
``duration``  optional: seconds
============  ===========================================================================

Other columns are allowed and kept. ``tags.txt``: the tag vocabulary, one tag per line; its
order is the column order of the multi-hot label matrix.
"""

import csv
import dataclasses
import os

import numpy as np

METADATA_FILE = "metadata.csv"
TAGS_FILE = "tags.txt"
COLUMNS = ("path", "split", "tags", "style", "work", "duration")
REQUIRED = ("path", "split", "tags")
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class LabeledDataset:
    """Rows of ``metadata.csv`` (dicts of strings) plus the tag vocabulary."""

    root: str
    tags: list
    rows: list

    def __len__(self):
        return len(self.rows)

    def split(self, name):
        """The rows of one split."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return LabeledDataset(self.root, self.tags, [r for r in self.rows if r["split"] == name])

    @property
    def paths(self):
        """Absolute audio paths."""
        return [os.path.normpath(os.path.join(self.root, r["path"])) for r in self.rows]

    @property
    def labels(self):
        """Multi-hot float32 ``(clips, len(tags))`` in ``tags`` order."""
        index = {tag: i for i, tag in enumerate(self.tags)}
        labels = np.zeros((len(self.rows), len(self.tags)), np.float32)
        for i, row in enumerate(self.rows):
            for tag in split_tags(row["tags"]):
                labels[i, index[tag]] = 1.0
        return labels

    def column(self, name):
        return [r.get(name, "") for r in self.rows]


def split_tags(field):
    return [t for t in (s.strip() for s in field.split(";")) if t]


def read_labeled_dataset(path, strict=True):
    """Read a dataset folder (or its ``metadata.csv``), validating splits and tags.

    ``strict=False`` keeps rows whose tags are not in ``tags.txt`` (for a caller that counts
    and removes them, as the probe harness does); their ``labels`` are then undefined.
    """
    path = os.fspath(path)
    csv_path = os.path.join(path, METADATA_FILE) if os.path.isdir(path) else path
    root = os.path.dirname(os.path.abspath(csv_path))
    with open(os.path.join(root, TAGS_FILE), encoding="utf-8") as f:
        tags = [line.strip() for line in f if line.strip()]
    if len(set(tags)) != len(tags):
        raise ValueError(f"{root}/{TAGS_FILE} lists a tag twice")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {missing}")
        rows = list(reader)
    known = set(tags)
    for line, row in enumerate(rows, start=2):
        if row["split"] not in SPLITS:
            raise ValueError(f"{csv_path}:{line}: split {row['split']!r} is not one of {SPLITS}")
        unknown = [t for t in split_tags(row["tags"]) if t not in known]
        if unknown and strict:
            raise ValueError(f"{csv_path}:{line}: tag(s) {unknown} not in {TAGS_FILE}")
    return LabeledDataset(root, tags, rows)


def write_labeled_dataset(root, rows, tags):
    """Write ``metadata.csv`` and ``tags.txt`` into ``root`` (rows: dicts with at least REQUIRED)."""
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    extra = sorted({key for row in rows for key in row} - set(COLUMNS))
    header = list(COLUMNS) + extra
    with open(os.path.join(root, METADATA_FILE), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, header, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(root, TAGS_FILE), "w", encoding="utf-8") as f:
        f.write("".join(f"{tag}\n" for tag in tags))
    return read_labeled_dataset(root)
