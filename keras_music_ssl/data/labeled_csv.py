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

**Tasks.** Without more, a dataset has one task, ``tags`` (multi-label: the ``tags`` column and
``tags.txt``). An optional ``tasks.json`` names several, in order (the first is the main one)::

    {"instruments": {"column": "tags", "type": "multi-label"},
     "style": {"column": "style", "type": "single-label"},
     "tempo": {"column": "tempo", "type": "single-label", "classes": ["slow", "moderate", "fast"]}}

``type``: ``multi-label`` (``;``-separated tags; classes default to ``tags.txt`` for the ``tags``
column, else every value found) or ``single-label`` (one class per row; classes default to the
sorted values found). ``classes`` fixes the order of the label columns. A row whose cell is empty
has no label for that task (it may still serve the others). With ``tasks.json`` only ``path`` and
``split`` and the tasks' columns are required.
"""

import csv
import dataclasses
import json
import os
import re

import numpy as np

from keras_music_ssl import storage
from keras_music_ssl.data.csvfile import CsvFileError, read_rows

METADATA_FILE = "metadata.csv"
TAGS_FILE = "tags.txt"
TASKS_FILE = "tasks.json"
TASK_TYPES = ("multi-label", "single-label")
DEFAULT_TASK = "tags"
COLUMNS = ("path", "split", "tags", "style", "work", "duration")
REQUIRED = ("path", "split", "tags")
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class Task:
    """One labelling of the rows: ``type`` is ``multi-label`` or ``single-label``; ``classes`` are
    the label columns, in order."""

    name: str
    type: str
    column: str
    classes: tuple

    @property
    def single_label(self):
        return self.type == "single-label"

    def values(self, row):
        """The classes a row names in this task's column (known or not)."""
        cell = (row.get(self.column) or "").strip()
        if self.single_label:
            return [cell] if cell else []
        return split_tags(cell)

    def labels(self, rows):
        """``(labels, labelled)``: multi-hot (one-hot for single-label) float32 ``(rows, classes)``
        of the known classes, and which rows name at least one of them."""
        index = {c: i for i, c in enumerate(self.classes)}
        labels = np.zeros((len(rows), len(self.classes)), np.float32)
        for i, row in enumerate(rows):
            for value in self.values(row):
                if value in index:
                    labels[i, index[value]] = 1.0
        return labels, labels.any(axis=1)

    def to_json(self):
        return {"type": self.type, "column": self.column, "classes": list(self.classes)}


@dataclasses.dataclass
class LabeledDataset:
    """Rows of ``metadata.csv`` (dicts of strings), the tag vocabulary and the tasks (empty: the
    one ``tags`` task)."""

    root: str
    tags: list
    rows: list
    task_list: tuple = ()

    def __len__(self):
        return len(self.rows)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def split(self, name):
        """The rows of one split."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return self.replace(rows=[r for r in self.rows if r["split"] == name])

    @property
    def tasks(self):
        """The tasks, the main one first."""
        return tuple(self.task_list) or (Task(DEFAULT_TASK, "multi-label", "tags", tuple(self.tags)),)

    def task(self, name):
        found = [t for t in self.tasks if t.name == name]
        if not found:
            raise KeyError(f"no task {name!r}: the dataset has {[t.name for t in self.tasks]}")
        return found[0]

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


def _read_task_specs(root, tags):
    """``tasks.json`` as ``[(name, type, column, classes or None)]``, or None without the file."""
    path = os.path.join(root, TASKS_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8-sig") as f:
            specs = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CsvFileError(f"{path}: not a JSON object ({error})") from None
    if not isinstance(specs, dict) or not specs:
        raise CsvFileError(f"{path}: expected a non-empty object {{task name: {{column, type}}}}")
    tasks = []
    for name, spec in specs.items():
        # A task name becomes part of file names in reports: keep it plain.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise CsvFileError(f"{path}: task name {name!r}: use letters, digits, '_', '-' or '.'")
        if not isinstance(spec, dict) or spec.get("type") not in TASK_TYPES or not isinstance(spec.get("column"), str):
            raise CsvFileError(f"{path}: task {name!r} needs \"column\" and \"type\" (one of {TASK_TYPES})")
        classes = spec.get("classes")
        if classes is None and spec["type"] == "multi-label" and spec["column"] == "tags":
            classes = tags
        if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) and c.strip()
                                                                               for c in classes)
                                    or len(set(classes)) != len(classes) or not classes):
            raise CsvFileError(f"{path}: task {name!r}: classes must be distinct non-empty strings")
        tasks.append((name, spec["type"], spec["column"], classes))
    return tasks


def read_labeled_dataset(path, strict=True):
    """Read a dataset folder (or its ``metadata.csv``), validating splits, tags and tasks.

    ``strict=False`` keeps rows whose tags (or a task's classes) are unknown (for a caller
    that counts and removes them, as the probe harness does); their ``labels`` are then undefined.
    """
    path = os.fspath(path)
    csv_path = os.path.join(path, METADATA_FILE) if os.path.isdir(path) else path
    root = os.path.dirname(os.path.abspath(csv_path))
    tags_path = os.path.join(root, TAGS_FILE)
    try:
        with open(tags_path, encoding="utf-8-sig") as f:  # -sig: a BOM is not part of the first tag
            tags = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        if not os.path.exists(os.path.join(root, TASKS_FILE)):
            raise
        tags = []  # tasks.json alone may label the rows
    except UnicodeDecodeError as error:
        raise CsvFileError(f"{tags_path}: not UTF-8 text ({error.reason})") from None
    if len(set(tags)) != len(tags):
        raise CsvFileError(f"{tags_path} lists a tag twice")
    specs = _read_task_specs(root, tags)
    required = REQUIRED if specs is None else ("path", "split") + tuple(dict.fromkeys(s[2] for s in specs))
    known, rows = set(tags), []
    # A malformed row (a field missing, a duplicated column, a field over 128 KB) is an error
    # naming its line, not a row of None fields or a silently dropped value (data/csvfile.py).
    for line, row in read_rows(csv_path, required=required):
        if row["split"] not in SPLITS:
            raise CsvFileError(f"{csv_path}:{line}: split {row['split']!r} is not one of {SPLITS}")
        unknown = [t for t in split_tags(row.get("tags", "")) if t not in known]
        if unknown and strict and specs is None:
            raise CsvFileError(f"{csv_path}:{line}: tag(s) {unknown} not in {TAGS_FILE}")
        for name, kind, column, classes in specs or ():
            values = Task(name, kind, column, ()).values(row)
            if classes is not None and strict and any(v not in classes for v in values):
                raise CsvFileError(f"{csv_path}:{line}: task {name!r}: {values} not among its classes {classes}")
        rows.append(row)
    tasks = ()
    if specs is not None:
        tasks = tuple(Task(name, kind, column, tuple(classes) if classes is not None else
                           tuple(sorted({v for row in rows for v in Task(name, kind, column, ()).values(row)})))
                      for name, kind, column, classes in specs)
    return LabeledDataset(root, tags, rows, tasks)


def write_labeled_dataset(root, rows, tags, tasks=None):
    """Write ``metadata.csv`` and ``tags.txt`` (and ``tasks.json`` from ``tasks``: ``{name: {column,
    type[, classes]}}``) into ``root`` (rows: dicts with at least REQUIRED)."""
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    extra = sorted({key for row in rows for key in row} - set(COLUMNS))
    header = list(COLUMNS) + extra
    with storage.atomic_write(os.path.join(root, METADATA_FILE), newline="") as f:
        writer = csv.DictWriter(f, header, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(rows)
    storage.write_text(os.path.join(root, TAGS_FILE), "".join(f"{tag}\n" for tag in tags))
    if tasks is not None:
        storage.write_json(os.path.join(root, TASKS_FILE), tasks, indent=1)
    return read_labeled_dataset(root)
