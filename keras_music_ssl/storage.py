"""What every long command does to the disk, in one place.

- **Atomic files.** :func:`atomic_write` (and :func:`write_text`, :func:`write_json`,
  :func:`write_bytes`) writes ``.NAME.PID-RANDOM.partial`` beside the target, flushes it to disk and
  renames it onto ``NAME``: a reader, or a rerun after a kill at any instant, sees the old file
  or the new one, never half of one. On an error the temporary file is removed.
- **Strict JSON.** :func:`write_json` refuses NaN and infinities (``allow_nan=False``): a value
  that cannot be computed is an error, not a bare ``NaN`` that strict parsers reject.
  :func:`read_json` turns a truncated or hand-broken file into one :class:`StorageError` line.
- **One writer per output.** :func:`locked` takes an advisory lock (``fcntl.flock``) beside an
  output; a second process on the same output is refused at once with the holder's pid.
  The lock dies with its process, so a killed run never leaves a stale lock (forked workers
  close their copy, so one orphaned by a killed parent does not hold it on).
- **Delete only what we made.** An output folder a command creates carries :data:`MARKER`
  (``.kmssl-output.json``: which command made it). :func:`remove_output` deletes a folder only
  when its marker names that command, so ``--overwrite`` never removes a folder of the user's.
- **Outputs checked before work.** :func:`check_output` refuses an ``--out`` that is a folder
  where a file is written (or the reverse), or whose parent cannot be created, before anything
  runs.
- **Which weights made it.** :func:`weights_fingerprint` (sha256 of class, config and every
  weight) is recorded in what a model writes (embeddings, caches), so a resume with other
  weights under the same name is refused instead of mixed in.
- **Kill tests.** :func:`fault_point` marks the instants a test may kill the process at.
- **A full disk** (or a read-only one, a quota) is an ``OSError``; :func:`disk_error` says whether
  an exception is one, and the CLI prints it in one line naming the path. Keras' h5py writers can
  crash the process on a full disk instead of raising, so :func:`require_space` checks for
  :func:`model_bytes` before they start.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import secrets
import shutil
import signal

from keras_music_ssl.errors import KmsslError

MARKER = ".kmssl-output.json"
LOCK = ".kmssl.lock"
PARTIAL = ".partial"
FAULT_ENV = "KMSSL_FAULT"
_FAULTS = {}
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


class StorageError(KmsslError):
    """An output that cannot be written, read back or replaced (one line, naming the path)."""


class BusyError(StorageError):
    """Another process holds the lock of this output."""


class OutputExistsError(StorageError, FileExistsError):
    """An output exists and the command was not asked to replace or continue it."""


def partial_path(path, suffix=""):
    """The temporary name of ``path`` while it is written: ``.NAME.PID-RANDOM.partial`` in the same folder
    (``suffix`` after it for writers that insist on one: ``.keras``, ``.weights.h5``)."""
    path = pathlib.Path(path)  # pid + random: writers on other hosts (Beam workers) may share a pid
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}{PARTIAL}{suffix}")


@contextlib.contextmanager
def atomic_target(path, suffix=""):
    """``with atomic_target(path, ".keras") as tmp: model.save(tmp)``: for writers that take a
    file name; the result is renamed onto ``path`` when the block ends, removed on an error."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path, suffix)
    try:
        yield tmp
        fault_point(f"write:{path.name}")
        _replace(tmp, path)
    except BaseException as error:
        _remove(tmp)
        raise _naming(error, path)


def _naming(error, path):
    """``error``, or for an OSError that names no file (a write that hit a full disk) the same
    error naming ``path``, so that the one line the CLI prints says where."""
    if isinstance(error, OSError) and error.errno and not error.filename:
        return type(error)(error.errno, error.strerror or os.strerror(error.errno), str(path))
    return error


def _replace(tmp, path):
    """Rename ``tmp`` onto ``path``; a folder onto an existing folder goes through a rename aside."""
    if pathlib.Path(tmp).is_dir() and pathlib.Path(path).is_dir():
        old = partial_path(path, ".old")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def _remove(path):
    path = pathlib.Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def atomic_write(path, mode="w", encoding="utf-8", newline=None):
    """``with atomic_write(path) as f: ...``: the file appears at ``path`` only when the block ends."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException as error:
        _remove(tmp)
        raise _naming(error, path)


def write_text(path, text):
    with atomic_write(path, newline="") as f:
        f.write(text)


def write_bytes(path, data):
    with atomic_write(path, "wb") as f:
        f.write(data)


def dumps_json(obj, indent=2):
    """Strict JSON text: NaN or an infinity anywhere raises :class:`StorageError`."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False) + "\n"
    except ValueError as error:
        raise StorageError(f"refusing to write a non-finite number as JSON ({error})") from None


def write_json(path, obj, indent=2):
    write_text(path, dumps_json(obj, indent))


def read_json(path, what=None):
    """The JSON object in ``path``; a truncated or broken file is one :class:`StorageError` line."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StorageError(f"{path}: not valid JSON{f' ({what})' if what else ''}: {error}") from None


def copy_file(source, target):
    """Copy ``source`` onto ``target`` atomically."""
    with open(source, "rb") as src, atomic_write(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


# --- one writer per output ----------------------------------------------------------------------

@contextlib.contextmanager
def locked(output, folder=True, wait=False):
    """Hold the advisory lock of ``output`` for the block; :class:`BusyError` at once when another
    process holds it (``wait=True``: wait for it instead, for shared caches that the first
    process fills for all).

    ``folder=True``: ``output`` is a folder, created here, with the lock file inside it (kept: it
    is hidden, and removing it would race a waiting process). ``folder=False``: a file output,
    locked through ``.NAME.lock`` beside it, removed when the block ends (kept with ``wait``).
    """
    output = pathlib.Path(output)
    if folder:
        output.mkdir(parents=True, exist_ok=True)
        path = output / LOCK
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        path = output.with_name(f".{output.name}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise BusyError(f"{output} is being written by another process (pid {holder}); "
                            "wait for it to finish, or choose another output") from None
        held = True
        _HELD.add(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as error:
            raise _naming(error, path) from None
        yield
    finally:
        _HELD.discard(fd)
        if held and not folder and not wait:  # a waiter may hold this file's lock next: keep it then
            with contextlib.suppress(OSError):
                path.unlink()
        os.close(fd)  # releases the lock


_HELD = set()  # descriptors of the locks this process holds


def _close_held_in_child():
    """After a fork: close the child's copies of the held locks (closing, never unlocking: the
    parent keeps them), so that a worker outliving a killed parent does not hold its lock."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


# --- output folders that know what made them ------------------------------------------------------

def check_output(path, kind="file", option="--out"):
    """Refuse, before any work, an output that cannot be what the command writes.

    ``kind``: ``"file"`` (an existing folder is refused) or ``"folder"`` (an existing file is
    refused). The nearest existing parent must be a writable folder.
    """
    path = pathlib.Path(path)
    if kind == "file" and path.is_dir():
        raise StorageError(f"{option} {path} is a folder; name a file")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise StorageError(f"{option} {path} is a file; name a folder")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise StorageError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StorageError(f"{option} {path}: {parent} is not writable")
    return path


def mark_output(folder, command, **info):
    """Record in ``folder`` that ``command`` made it (see :func:`remove_output`)."""
    write_json(pathlib.Path(folder) / MARKER, {"made_by": command, **info})


def made_by(folder):
    """The command recorded in ``folder``'s marker, or None (no marker, or an unreadable one)."""
    try:
        return read_json(pathlib.Path(folder) / MARKER).get("made_by")
    except (OSError, StorageError, AttributeError):
        return None


def remove_output(path, command, recognise=None):
    """Delete ``path`` only if ``command`` made it: a folder with its marker (or one that
    ``recognise(path)`` accepts, for outputs written before markers), or a file that
    ``recognise`` accepts. Anything else raises :class:`StorageError` and is left alone."""
    path = pathlib.Path(path)
    if not os.path.lexists(path):
        return
    ours = (path.is_dir() and not path.is_symlink() and made_by(path) == command) or bool(
        recognise and recognise(path))
    if not ours:
        what = "folder" if path.is_dir() else "file"
        raise StorageError(f"{path} is a {what} that kmssl {command} did not make; not replacing it "
                           "(remove it yourself, or choose another output)")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def clean_partials(folder, only_dead=False):
    """Remove the temporaries a killed writer left in ``folder``: all of them (call with the
    folder's lock held), or with ``only_dead`` those whose writer (the pid in the name) is no
    longer running on this machine, for folders several processes share (caches)."""
    folder = pathlib.Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(f".*{PARTIAL}*"):
            if not (only_dead and _running(tmp.name)):
                _remove(tmp)


def _running(name):
    """Whether the pid in a temporary's name ``.NAME.PID-RANDOM.partial`` is a running process."""
    stem = name[:name.rindex(PARTIAL)]
    pid = stem.rsplit(".", 1)[-1].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# --- which weights made an output ---------------------------------------------------------------

def weights_fingerprint(model):
    """sha256 of a model's class, config and every weight's bytes: equal iff the outputs are.

    Names are left out (Keras numbers them per process: ``music_encoder_3``), so the same
    weights give the same fingerprint in every run.
    """
    import keras
    import numpy as np

    digest = hashlib.sha256(type(model).__name__.encode())
    config = {k: v for k, v in model.get_config().items() if k != "name"}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{value.dtype}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def fault_point(name):
    """Fault injection for the kill tests: with ``KMSSL_FAULT=NAME`` (or ``NAME:N``) set, the process
    kills itself (SIGKILL) the first (N-th) time it reaches the point ``NAME``. Points:
    ``write:FILE`` (a temporary file complete, before its rename), ``backup:weights``,
    ``backup:renamed``, ``batch`` (after a training step)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, nth = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "1")
    if target == name:
        _FAULTS[name] = _FAULTS.get(name, 0) + 1
        if _FAULTS[name] >= int(nth):
            os.kill(os.getpid(), signal.SIGKILL)


def require_space(path, nbytes):
    """Raise ``OSError(ENOSPC)`` naming ``path`` unless its file system has ``nbytes`` free: for
    writers that do not fail cleanly on a full disk (h5py, under Keras' ``save_weights``, can
    crash the process), checked before they start."""
    folder = pathlib.Path(path)
    while not folder.exists():
        folder = folder.parent
    stat = os.statvfs(folder)
    if stat.f_bavail * stat.f_frsize < nbytes:
        raise OSError(errno.ENOSPC, f"No space left on device (needs about {nbytes / 2**20:.1f} MB, "
                                    f"{stat.f_bavail * stat.f_frsize / 2**20:.1f} MB free)", str(path))


def model_bytes(model):
    """About what a weights or ``.keras`` file of ``model`` (with its optimizer) takes on disk, with
    room to spare: what :func:`require_space` asks for before Keras writes one."""
    import numpy as np

    optimizer = getattr(model, "optimizer", None)
    variables = list(model.variables) + (list(optimizer.variables) if optimizer is not None else [])
    return int(1.25 * sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)) + (1 << 20)


def disk_error(error):
    """True for an ``OSError`` that is about the disk (full, read-only, no permission, quota)."""
    return isinstance(error, OSError) and error.errno in DISK_ERRNOS
