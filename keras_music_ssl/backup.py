"""The training state of a run, kept so that a kill at any instant loses at most one epoch.

    backup/
      epoch-0003/   model.weights.h5 (the model and its optimizer: Keras' save_weights) + state.json
      epoch-0004/

``Backup`` (a Keras callback) writes a state after every finished epoch whose loss is finite:
into ``.epoch-NNNN.PID.partial/`` first, ``state.json`` (the epoch and the weights file's
sha256) last, then one rename, so a state folder exists only complete. The newest two are
kept. :func:`restore` loads the newest state whose checksum matches and which loads; a damaged
newest one (a disk error, a copy cut short) falls back to the one before, with a warning.

Keras' own ``BackupAndRestore`` rewrites ``latest.weights.h5`` in place: a kill during that
write left a run that could never resume. Its folders (from keras-music-ssl <= 0.4.3) are still
read, as one state.
"""

import os
import pathlib
import re
import shutil
import warnings

import keras
import numpy as np

from keras_music_ssl import storage
from keras_music_ssl.download import sha256_of

WEIGHTS = "model.weights.h5"
STATE = "state.json"
KEEP = 2
_NAME = re.compile(r"epoch-(\d{4,})$")
_LEGACY = ("latest.weights.h5", "training_metadata.json")  # keras.callbacks.BackupAndRestore


def states(folder):
    """The complete state folders in ``folder``, oldest first."""
    folder = pathlib.Path(folder)
    found = [(int(m.group(1)), p) for p in folder.glob("epoch-*") if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def save_state(model, folder, epoch):
    """Write ``model``'s state after ``epoch`` finished epochs as ``folder/epoch-NNNN/``."""
    folder = pathlib.Path(folder)
    final = folder / f"epoch-{epoch:04d}"
    storage.require_space(final, storage.model_bytes(model))  # h5py may crash the process on a full disk
    with storage.atomic_target(final) as tmp:
        tmp.mkdir(parents=True)
        model.save_weights(str(tmp / WEIGHTS))
        storage.fault_point("backup:weights")
        storage.write_json(tmp / STATE, {"epoch": int(epoch), "sha256": sha256_of(tmp / WEIGHTS)})
    storage.fault_point("backup:renamed")
    for old in states(folder)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    for name in _LEGACY:  # superseded by a state of ours
        if (folder / name).exists():
            os.remove(folder / name)


def _candidates(folder):
    """``(epoch, weights file, expected sha256 or None)``, newest first."""
    found = []
    for state in states(folder):
        try:
            meta = storage.read_json(state / STATE)
            found.append((int(meta["epoch"]), state / WEIGHTS, meta.get("sha256")))
        except (OSError, storage.StorageError, KeyError, TypeError, ValueError) as error:
            warnings.warn(f"backup {state} is unreadable ({error}); skipping it", stacklevel=3)
    legacy = [pathlib.Path(folder) / name for name in _LEGACY]
    if not found and all(p.is_file() for p in legacy):
        try:
            found.append((int(storage.read_json(legacy[1])["epoch"]), legacy[0], None))
        except (storage.StorageError, KeyError, TypeError, ValueError) as error:
            warnings.warn(f"backup {legacy[1]} is unreadable ({error}); skipping it", stacklevel=3)
    return sorted(found, key=lambda c: c[0], reverse=True)


def restore(model, folder):
    """Load the newest usable state of ``folder`` into ``model`` (built, with its optimizer);
    return its epoch, or 0 when there is none. Raises ``storage.StorageError`` when states exist
    but none loads (the model may then hold part of one: rebuild it to start afresh)."""
    candidates = _candidates(folder)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    failures = []
    for epoch, weights, sha256 in candidates:
        try:
            if sha256 is not None and sha256_of(weights) != sha256:
                raise ValueError("checksum mismatch: the file was damaged after it was written")
            model.load_weights(str(weights))
            if failures:
                warnings.warn(f"{failures[-1]}; resumed from the state of epoch {epoch} instead", stacklevel=2)
            return epoch
        except (OSError, ValueError, KeyError) as error:
            failures.append(f"backup {weights.parent.name if sha256 else weights} is damaged "
                            f"({str(error).splitlines()[0]})")
    if failures:
        raise storage.StorageError(f"{folder}: no usable training state ({'; '.join(failures)})")
    return 0


def _finite(logs):
    return all(np.isfinite(v) for k, v in (logs or {}).items() if k == "loss" or k.endswith("_loss"))


class Backup(keras.callbacks.Callback):
    """Saves the training state after each epoch with a finite loss (module docstring)."""

    def __init__(self, folder):
        super().__init__()
        self.folder = pathlib.Path(folder)

    def on_train_batch_end(self, batch, logs=None):
        storage.fault_point("batch")

    def on_epoch_end(self, epoch, logs=None):
        if not self.model.stop_training and _finite(logs):
            save_state(self.model, self.folder, epoch + 1)


class Checkpoint(keras.callbacks.Callback):
    """``folder/epochNNN.keras`` (the whole model) every ``every`` epochs, each written atomically;
    none for an epoch whose loss is not finite."""

    def __init__(self, folder, every=1):
        super().__init__()
        self.folder, self.every = pathlib.Path(folder), int(every)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 and not self.model.stop_training and _finite(logs):
            storage.require_space(self.folder, storage.model_bytes(self.model))
            with storage.atomic_target(self.folder / f"epoch{epoch + 1:03d}.keras", ".keras") as tmp:
                self.model.save(str(tmp))
