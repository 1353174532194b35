"""TensorFlow's own log lines, off for the command line (``kmssl --verbose`` keeps them).

TensorFlow 2.21 logs through absl's C++ logging. Its import writes INFO lines before anything
calls ``absl::InitializeLog()`` ("WARNING: All log messages before absl::InitializeLog() ...",
"oneDNN custom operations are on", "Could not find cuda drivers", "This TensorFlow binary is
optimized ..."; once per shared library, so twice), and ``TF_CPP_MIN_LOG_LEVEL`` does not reach
them; only where fd 2 points does. After the import, ``TF_CPP_MIN_LOG_LEVEL`` holds: "3" also hides
the "failed call to cuInit" ERROR that a CUDA build logs on a machine without a GPU ("2" does not).
Errors that matter reach Python as exceptions either way. Python-side, TensorFlow and Keras warn
through ``absl.logging`` ("WARNING:absl:...").

So :func:`quiet`, entered before TensorFlow is imported: sets ``TF_CPP_MIN_LOG_LEVEL=3`` (unless
the environment sets it: the user's choice stands; child processes inherit it), lowers
``absl.logging`` to errors, and imports TensorFlow, whenever something first imports it, with
fd 2 captured: the absl INFO and WARNING messages of that import are dropped, anything else it
wrote is written back to stderr. Numerics are untouched (``TF_ENABLE_ONEDNN_OPTS`` is left alone).
Entered after TensorFlow's import (a test calling ``cli.main`` in-process), only the absl
verbosity changes. On exit it puts back what it changed.
"""

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

QUIET_LEVEL = "3"

# An absl C++ log line: severity, MMDD, time, thread, file:line]. I and W are dropped; E and F are kept.
# (Before absl::InitializeLog the time reads 00:00:<seconds since 1970>: "I0000 00:00:1796685542.978617".)
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# What Python itself writes to stderr starts so (a warning: "file:line: Category: text"; a traceback)
_PYTHON_LINE = re.compile(r"^(\S.*:\d+: \w+: |Traceback )")


def dropped_noise(text):
    """``text`` (what was written to fd 2) without absl's INFO and WARNING messages (with their
    continuation lines, which have no prefix, unless a line is Python's) and absl's preamble."""
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        absl = _ABSL_LINE.match(line)
        if absl:
            dropping = absl.group(1) in "IW"
        elif line.rstrip("\r\n") == _ABSL_PREAMBLE:
            dropping = True
            continue
        elif _PYTHON_LINE.match(line):
            dropping = False
        if not dropping:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def native_stderr_filtered():
    """Capture fd 2 for the ``with`` block and write back :func:`dropped_noise` of it at the end.
    (Python's ``sys.stderr`` writes to fd 2 as well, line by line, so the order is kept.)"""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved_fd = os.dup(2)
    except OSError:  # no fd 2 at all: nothing to filter
        yield
        return
    try:
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os.dup2(saved_fd, 2)
                captured.seek(0)
                text = dropped_noise(captured.read().decode("utf-8", "replace"))
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()
    finally:
        os.close(saved_fd)


class _FilteredImport(importlib.abc.MetaPathFinder):
    """A finder that lets the import of ``tensorflow`` run in :func:`native_stderr_filtered`.
    It stays until that import runs: Keras asks ``importlib.util.find_spec("tensorflow")`` first."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        for finder in sys.meta_path:  # the spec the import system would find without this finder
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    if spec.loader is not None:
                        spec.loader = _FilteredLoader(spec.loader, self)
                    return spec
        return None


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader, hook):
        self.loader, self.hook = loader, hook

    def __getattr__(self, name):  # anything else is TensorFlow's own loader's
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        remove_hook(self.hook)  # once: TensorFlow is in sys.modules from here on
        module.__loader__ = module.__spec__.loader = self.loader  # TensorFlow's own, from here on
        with native_stderr_filtered():
            self.loader.exec_module(module)


def remove_hook(hook):
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(hook)


@contextlib.contextmanager
def quiet():
    """TensorFlow's log lines off for the ``with`` block (module docstring)."""
    from absl import logging as absl_logging

    level_was = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL)
    verbosity_was = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    hook = None
    if "tensorflow" not in sys.modules:
        hook = _FilteredImport()
        sys.meta_path.insert(0, hook)
    try:
        yield
    finally:
        if hook is not None:
            remove_hook(hook)
        absl_logging.set_verbosity(verbosity_was)
        if level_was is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
