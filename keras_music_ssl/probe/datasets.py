"""Downstream datasets read into the generic ``LabeledDataset`` (``data/labeled_csv.py``), validated.

``load_probe_dataset(spec)`` takes what ``kmssl probe DATASET`` takes:

- a folder in the generic format (or its ``metadata.csv``): what users bring, and the rendered
  dataset;
- ``mtat:ROOT``: MagnaTagATune with the split of Lee et al. (SMC 2017) that the paper uses
  (docs/paper.md#mtat): ``{train,valid,test}_list_pub.cP`` and ``y_{train,valid,test}_pub.npy`` in ``ROOT``
  or ``ROOT/MTAT_split``, audio under ``ROOT/mp3`` (or ``ROOT``) as ``<dir>/<clip>.mp3`` (the lists
  name ``.npy`` files; the authors swap the suffix). The 50 tags in the published column order
  (:data:`MTAT_TAGS`). The ``.cP`` files are pickles: they are read by an unpickler that builds
  only lists/tuples of strings and refuses everything else before it runs;
- ``jamendo:ROOT[:SUBSET[:SPLIT]]``: MTG-Jamendo from the official TSVs in
  ``ROOT/data/splits/split-SPLIT/`` (SUBSET ``top50tags``, ``instrument``, ``moodtheme``,
  ``genre`` or ``all``, or several joined by ``+``, each then a task; default: ``top50tags`` and
  every other of the four subsets present, as tasks; SPLIT 0-4, default 0 as in the paper). Columns TRACK_ID, ARTIST_ID,
  ALBUM_ID, PATH, DURATION, then one ``category---tag`` per column. Tags are the bare names
  (unambiguous in every subset, docs/paper.md#mtg-jamendo), ordered by their full ``category---tag`` name, so
  the order is fixed and equals the official ``data/tags/top50.txt`` grouping (genre,
  instrument, mood/theme, each alphabetical). Audio under ``ROOT/raw_30s/audio`` (moodtheme:
  ``ROOT/autotagging_moodtheme/audio`` first), ``ROOT/audio`` or ``ROOT``; a ``.low.mp3``
  stands in for a missing ``.mp3``.

Validation (the same for every source) drops and counts: rows whose audio file is missing,
unknown tags (the row keeps its known ones), rows left without a label in any task (the MTAT
split drops them too); a split left empty is an error (:class:`ProbeDataError`) that says why.
The report counts each task's labelled rows per split (the harness refuses, or leaves out, a
task that cannot be scored).
"""

import collections
import dataclasses
import io
import os
import pickle

import numpy as np

from keras_music_ssl.data.labeled_csv import SPLITS, LabeledDataset, Task, read_labeled_dataset
from keras_music_ssl.errors import KmsslError

# jongpillee/music_dataset_split MTAT_split/top50_tags.txt: the column order of y_*_pub.npy.
MTAT_TAGS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
    "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing",
    "vocals", "noVocals", "harpsichord", "loud", "quiet", "flute", "woman", "maleVocal", "noVocal",
    "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice", "newAge", "dance",
    "maleVoice", "femaleVocal", "beats", "harp", "cello", "noVoice", "weird", "country",
    "femaleVoice", "metal", "choral",
)
JAMENDO_SUBSETS = ("top50tags", "instrument", "moodtheme", "genre", "all")
JAMENDO_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


class ProbeDataError(KmsslError, ValueError):
    """A dataset that cannot be probed; the message says why in one line."""


@dataclasses.dataclass
class ProbeData:
    """A validated dataset: ``dataset`` (rows with existing audio and >= 1 known tag) + ``report``."""

    name: str
    dataset: LabeledDataset
    report: dict


# --- MagnaTagATune -------------------------------------------------------------------------------

class _StringListUnpickler(pickle.Unpickler):
    """Builds lists, tuples and strings only: any global (class, function) is refused before it
    is looked up, so a pickle that would run code raises without running it."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused: the file asks for {module}.{name}; a split list "
                                     "holds only strings")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused: persistent ids are not allowed in a split list")


def read_string_list(path):
    """The list of strings pickled in ``path`` (a ``.cP`` split file, Python 2 or 3)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        value = _StringListUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as error:
        raise ProbeDataError(f"{path}: {error}") from None
    except Exception as error:  # truncated or not a pickle at all
        raise ProbeDataError(f"{path}: not a pickled list of strings ({type(error).__name__}: {error})") from None
    if isinstance(value, bytes):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, bytes)) for v in value):
        raise ProbeDataError(f"{path}: expected a list of strings, found {type(value).__name__}")
    return [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]


def _first_dir(*candidates):
    return next((c for c in candidates if os.path.isdir(c)), candidates[-1])


def read_mtat(root, audio_dir=None):
    """MagnaTagATune (Lee et al. split) -> ``LabeledDataset`` rooted at the audio folder."""
    root = os.path.abspath(os.fspath(root))
    split_dir = next((d for d in (root, os.path.join(root, "MTAT_split"))
                      if os.path.isfile(os.path.join(d, "train_list_pub.cP"))), None)
    if split_dir is None:
        raise ProbeDataError(f"mtat:{root}: no train_list_pub.cP in {root} or {root}/MTAT_split")
    audio_root = os.path.abspath(audio_dir) if audio_dir else _first_dir(os.path.join(root, "mp3"), root)
    rows = []
    for split in SPLITS:
        names = read_string_list(os.path.join(split_dir, f"{split}_list_pub.cP"))
        labels_path = os.path.join(split_dir, f"y_{split}_pub.npy")
        try:
            labels = np.load(labels_path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ProbeDataError(f"{labels_path}: {error}") from None
        if labels.shape != (len(names), len(MTAT_TAGS)):
            raise ProbeDataError(f"{labels_path}: shape {labels.shape}, expected ({len(names)}, "
                                 f"{len(MTAT_TAGS)}) for the {len(names)} clips of {split}_list_pub.cP")
        for name, row in zip(names, labels):
            stem = name[:-4] if name.endswith(".npy") else name
            tags = [tag for tag, on in zip(MTAT_TAGS, row) if on > 0]
            rows.append({"path": f"{stem}.mp3", "split": split, "tags": ";".join(tags)})
    return LabeledDataset(audio_root, list(MTAT_TAGS), rows)


# --- MTG-Jamendo ---------------------------------------------------------------------------------

def jamendo_tsv(root, subset, split_index, split):
    prefix = "autotagging" if subset == "all" else f"autotagging_{subset}"
    return os.path.join(root, "data", "splits", f"split-{split_index}", f"{prefix}-{JAMENDO_SPLITS[split]}.tsv")


def _jamendo_rows(root, subset, split_index, audio_root):
    """``(rows, full tag names)`` of one subset's three TSVs."""
    rows, full_names = [], {}
    for split in SPLITS:
        path = jamendo_tsv(root, subset, split_index, split)
        if not os.path.isfile(path):
            raise ProbeDataError(f"jamendo: {path} not found (ROOT must be a checkout of mtg-jamendo-dataset)")
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\n").split("\t") for line in f if line.strip()]
        if not lines or lines[0][:4] != ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH"]:
            raise ProbeDataError(f"{path}: not an MTG-Jamendo split (expected the header TRACK_ID ARTIST_ID ...)")
        for number, fields in enumerate(lines[1:], start=2):
            if len(fields) < 5:
                raise ProbeDataError(f"{path}:{number}: {len(fields)} columns, expected at least 5")
            tags = []
            for full in fields[5:]:
                bare = full.split("---", 1)[-1].strip()
                if not bare:
                    continue
                if full_names.setdefault(bare, full) != full:
                    raise ProbeDataError(f"{path}:{number}: tag {bare!r} is both {full_names[bare]!r} and {full!r}")
                tags.append(bare)
            audio = fields[3]
            if not os.path.exists(os.path.join(audio_root, audio)) and audio.endswith(".mp3"):
                low = audio[:-4] + ".low.mp3"
                audio = low if os.path.exists(os.path.join(audio_root, low)) else audio
            rows.append({"path": audio, "split": split, "tags": ";".join(dict.fromkeys(tags)),
                         "work": fields[2], "duration": fields[4], "track_id": fields[0]})
    return rows, full_names


def _by_category(full_names):
    return sorted(full_names, key=lambda bare: full_names[bare])


def read_jamendo(root, subset=None, split_index=0, audio_dir=None):
    """MTG-Jamendo (one of the five official splits) -> ``LabeledDataset``.

    ``subset``: one subset, a ``+``-joined list of them, or None: every subset among
    ``top50tags`` (required), ``genre``, ``instrument`` and ``moodtheme`` whose files exist. Several
    subsets are the tasks of one dataset (a track is embedded once); the first one's tags are
    the ``tags`` column.
    """
    root = os.path.abspath(os.fspath(root))
    if subset is None:
        subsets = ["top50tags"] + [s for s in ("genre", "instrument", "moodtheme")
                                   if os.path.isfile(jamendo_tsv(root, s, split_index, "train"))]
    else:
        subsets = list(dict.fromkeys(subset.split("+")))
    for name in subsets:
        if name not in JAMENDO_SUBSETS:
            raise ProbeDataError(f"jamendo subset must be one of {JAMENDO_SUBSETS} (or several joined by +), "
                                 f"got {name!r}")
    if str(split_index) not in ("0", "1", "2", "3", "4"):
        raise ProbeDataError(f"jamendo split must be 0-4, got {split_index!r}")
    if audio_dir:
        audio_root = os.path.abspath(audio_dir)
    else:
        candidates = [os.path.join(root, "raw_30s", "audio"), os.path.join(root, "audio"), root]
        if subsets == ["moodtheme"]:
            candidates.insert(0, os.path.join(root, "autotagging_moodtheme", "audio"))
        audio_root = _first_dir(*candidates)
    if len(subsets) == 1:
        rows, full_names = _jamendo_rows(root, subsets[0], split_index, audio_root)
        return LabeledDataset(audio_root, _by_category(full_names), rows)
    merged, tasks = {}, []
    for i, name in enumerate(subsets):
        rows, full_names = _jamendo_rows(root, name, split_index, audio_root)
        column = "tags" if i == 0 else name
        for row in rows:
            track = merged.setdefault(row["track_id"], {**row, "tags": ""})
            if track["split"] != row["split"]:
                raise ProbeDataError(f"jamendo: {row['track_id']} is in {track['split']} for {subsets[0]} but in "
                                     f"{row['split']} for {name}: the subsets' splits disagree")
            track[column] = row["tags"]
        tasks.append(Task(name, "multi-label", column, tuple(_by_category(full_names))))
    return LabeledDataset(audio_root, list(tasks[0].classes), list(merged.values()), tuple(tasks))


# --- any source ----------------------------------------------------------------------------------

def select_tasks(dataset, names):
    """``dataset`` with only the tasks ``names`` (in that order; None or empty: all)."""
    if not names:
        return dataset
    known = [task.name for task in dataset.tasks]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ProbeDataError(f"--task {unknown[0]!r}: the dataset has the task(s) {known}")
    return dataset.replace(task_list=tuple(dataset.task(name) for name in dict.fromkeys(names)))


def validate(dataset):
    """``(clean LabeledDataset, report)``: drops rows with missing audio or no known label in any
    task, strips unknown tags; raises :class:`ProbeDataError` if a split ends up empty."""
    tasks = dataset.tasks
    counts, examples = collections.Counter(), collections.defaultdict(list)
    unknown_tags = collections.Counter()
    rows = []

    def drop(reason, row):
        counts[reason] += 1
        if len(examples[reason]) < 5:
            examples[reason].append(row["path"])

    for row in dataset.rows:
        if row["split"] not in SPLITS:
            drop("unknown_split", row)
            continue
        cleaned, labelled = row, False
        for task in tasks:
            values = task.values(row)
            kept = [v for v in values if v in task.classes]
            unknown_tags.update(v if len(tasks) == 1 else f"{task.name}:{v}" for v in values if v not in kept)
            if len(kept) != len(values):
                cleaned = {**cleaned, task.column: ";".join(kept)}
            labelled = labelled or bool(kept)
        if not os.path.isfile(os.path.join(dataset.root, row["path"])):
            drop("missing_audio", row)
            continue
        if not labelled:
            drop("no_tags", row)
            continue
        rows.append(cleaned)
    clean = dataset.replace(rows=rows)
    sizes = {split: len(clean.split(split)) for split in SPLITS}
    report = {"rows": len(dataset.rows), "kept": len(rows), "splits": sizes,
              "dropped": dict(counts), "examples": dict(examples),
              "unknown_tags": dict(unknown_tags), "tasks": {}}
    if not rows:
        raise ProbeDataError(f"{dataset.root}: no usable row left ({len(dataset.rows)} read; dropped {dict(counts)})")
    empty = [split for split, size in sizes.items() if size == 0]
    if empty:
        raise ProbeDataError(f"{dataset.root}: split(s) {empty} empty after validation "
                             f"(kept {sizes}; dropped {dict(counts)})")
    for task in tasks:  # a task unlabelled in a split is refused or left out by the harness
        per_split = {split: int(task.labels(clean.split(split).rows)[1].sum()) for split in SPLITS}
        report["tasks"][task.name] = {"type": task.type, "classes": len(task.classes), "labelled": per_split}
    return clean, report


def load_probe_dataset(spec, audio_dir=None, tasks=None):
    """A :class:`ProbeData` from a ``kmssl probe`` DATASET argument (module docstring); ``tasks``:
    the task names to keep (default: all)."""
    spec = os.fspath(spec)
    if spec.startswith("mtat:"):
        dataset = read_mtat(spec[len("mtat:"):], audio_dir)
    elif spec.startswith("jamendo:"):
        parts = spec[len("jamendo:"):].split(":")
        if not parts[0] or len(parts) > 3:
            raise ProbeDataError(f"expected jamendo:ROOT[:SUBSET[:SPLIT]], got {spec!r}")
        root, subset, split = parts + [None, "0"][len(parts) - 1:]
        dataset = read_jamendo(root, subset or None, split, audio_dir)
    else:
        if not os.path.exists(spec):
            raise ProbeDataError(f"{spec}: no such folder or file (expected a folder with metadata.csv, "
                                 "mtat:ROOT or jamendo:ROOT[:SUBSET[:SPLIT]])")
        try:
            dataset = read_labeled_dataset(spec, strict=False)
        except (OSError, ValueError, KeyError) as error:
            raise ProbeDataError(f"{spec}: {error}") from None
        if audio_dir:
            dataset = dataset.replace(root=os.path.abspath(audio_dir))
    clean, report = validate(select_tasks(dataset, tasks))
    return ProbeData(spec, clean, report)
