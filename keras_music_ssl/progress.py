"""Progress: bars on a terminal, one summary line elsewhere. The one place that decides.

Redrawn bars are for people watching a terminal. Written to a file or a pipe (a log, CI, a
notebook's ``!kmssl``), every redraw of a tqdm bar or a Keras progress bar became a line of
its own, thousands per run. So, wherever the library shows progress:

- :func:`bar` (tqdm's bars: files embedded, tracks probed, bytes downloaded, ...): a tqdm bar
  when stderr is a terminal; elsewhere a :class:`Summary`, which counts and prints one line,
  tqdm's final state (``embed: 100% 12/12 [00:03<00:00, 3.53file/s]``), when it closes, unless an
  error ends it. A download (``summary=False``), a step of whatever command needs the file, stays
  silent off a terminal, so that a failure after it is still the command's one line.
- :func:`keras_verbosity` (``fit``, ``predict``, ``keras.utils.Progbar``; Keras writes to
  stdout): ``verbose=1`` or ``"auto"`` stays a bar on a terminal and becomes Keras' ``verbose=2``
  elsewhere: one line per epoch (``fit``) or per call (``predict``).

:func:`interactive` is the test: the stream is a terminal, or this is a Jupyter kernel (which
draws bars itself, as tqdm.auto and Keras know). Light: tqdm is imported when a bar is made.
"""

import sys
import time


def interactive(stream=None):
    """Whether progress written to ``stream`` (default stderr) is seen redrawn, as a bar."""
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False


def keras_verbosity(verbose):
    """The ``verbose`` to give Keras (``fit``, ``predict``, ``Progbar``) for a caller's ``verbose``:
    1, True or "auto" is a bar on a terminal (stdout) and 2 (one line per epoch or call)
    elsewhere; 0 and 2 stay as they are."""
    if verbose == "auto" or (verbose == 1 and not isinstance(verbose, str)):
        return 1 if interactive(sys.stdout) else 2
    return verbose


def bar(iterable=None, *, enabled=True, summary=True, **kwargs):
    """A progress bar: tqdm's (``kwargs`` are tqdm's: ``total``, ``desc``, ``unit``, ``initial``,
    ``unit_scale``, ``file``) on a terminal, a :class:`Summary` elsewhere (nothing if not
    ``summary``: a step inside a command whose failures are one line, such as a download), a silent
    tqdm when not ``enabled``. Use it as tqdm: iterate it, or ``update()`` and ``close()`` it (or ``with``)."""
    from tqdm.auto import tqdm

    if enabled and interactive(kwargs.get("file")):
        return tqdm(iterable, **kwargs)
    if enabled and summary:
        return Summary(iterable, **kwargs)
    return tqdm(iterable, disable=True, **kwargs)


class Summary:
    """A progress bar off a terminal: counts as tqdm does, draws nothing, and prints one line
    (tqdm's last state) when it is closed or its iteration ends; not when an exception ends its
    ``with`` block or is on its way when it is closed (a ``finally``): the error says what happened."""

    def __init__(self, iterable=None, desc=None, total=None, unit="it", unit_scale=False, initial=0, file=None,
                 **_tqdm_only):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.total, self.unit, self.unit_scale = iterable, desc, total, unit, unit_scale
        self.n = self.initial = initial
        self.file = file
        self.postfix = None
        self._start = time.monotonic()
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        if error_type is None:
            self.close()
        self._closed = True

    def update(self, n=1):
        self.n += n

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{key}={value}" for key, value in items.items()) or None

    def set_postfix_str(self, s="", refresh=True):
        self.postfix = s or None

    def set_description(self, desc=None, refresh=True):
        self.desc = desc

    def line(self):
        """The summary line (without its newline)."""
        from tqdm import tqdm

        return tqdm.format_meter(self.n, self.total, time.monotonic() - self._start, ncols=0, prefix=self.desc or "",
                                 unit=self.unit, unit_scale=self.unit_scale, postfix=self.postfix,
                                 initial=self.initial)

    def close(self):
        if self._closed:
            return
        self._closed = True
        if sys.exc_info()[0] is not None:  # closed by a `finally` on an error's way up
            return
        print(self.line(), file=self.file or sys.stderr, flush=True)
