"""The generic labeled-audio format that the probe harness reads (MagnaTagATune, MTG-Jamendo and
the rendered dataset are all converted to it).

A dataset is a folder with two files:

``metadata.csv`` (UTF-8, a byte-order mark allowed, comma-separated, with a header), one row per audio clip or track:

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

Other columns are allowed and kept. A row has at most the header's number of fields (trailing
optional ones left off read as empty) and a column name appears once, else
:class:`~keras_music_ssl.data.csvfile.CsvFileError` names the line. ``tags.txt``: the tag
vocabulary, one tag per line; its order is the column order of the multi-hot label matrix.
"""

import csv
import dataclasses
import os

import numpy as np

from keras_music_ssl import storage
from keras_music_ssl.data.csvfile import CsvFileError, read_rows

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
    tags_path = os.path.join(root, TAGS_FILE)
    try:
        with open(tags_path, encoding="utf-8-sig") as f:  # -sig: a BOM is not part of the first tag
            tags = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as error:
        raise CsvFileError(f"{tags_path}: not UTF-8 text ({error.reason})") from None
    if len(set(tags)) != len(tags):
        raise CsvFileError(f"{tags_path} lists a tag twice")
    known, rows = set(tags), []
    # A malformed row (a field missing, a duplicated column, a field over 128 KB) is an error
    # naming its line, not a row of None fields or a silently dropped value (data/csvfile.py).
    for line, row in read_rows(csv_path, required=REQUIRED):
        if row["split"] not in SPLITS:
            raise CsvFileError(f"{csv_path}:{line}: split {row['split']!r} is not one of {SPLITS}")
        unknown = [t for t in split_tags(row["tags"]) if t not in known]
        if unknown and strict:
            raise CsvFileError(f"{csv_path}:{line}: tag(s) {unknown} not in {TAGS_FILE}")
        rows.append(row)
    return LabeledDataset(root, tags, rows)


def write_labeled_dataset(root, rows, tags):
    """Write ``metadata.csv`` and ``tags.txt`` into ``root`` (rows: dicts with at least REQUIRED)."""
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    extra = sorted({key for row in rows for key in row} - set(COLUMNS))
    header = list(COLUMNS) + extra
    with storage.atomic_write(os.path.join(root, METADATA_FILE), newline="") as f:
        writer = csv.DictWriter(f, header, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(rows)
    storage.write_text(os.path.join(root, TAGS_FILE), "".join(f"{tag}\n" for tag in tags))
    return read_labeled_dataset(root)
