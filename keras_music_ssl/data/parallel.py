"""An ordered, lazy, bounded parallel map over worker processes (for `prepare` and the builder).

Results come back in input order, the input is consumed lazily (at most ``window`` items in
flight, so a manifest of millions of paths is never held in memory), ``workers <= 1`` runs
inline in this process, and a consumer that stops early (``close()``) cancels the rest. The
function must be a picklable, module-level callable.
"""

import collections
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor


def _context():
    # fork: workers inherit the already-imported modules instead of re-importing Keras and
    # TensorFlow (the package root imports them) in every worker; they only run numpy-level
    # decoding. Elsewhere (macOS/Windows) spawn is the safe default.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods and os.name == "posix" else "spawn")


def default_workers():
    """All cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ordered_map(fn, items, workers=1, window=None):
    """Yield ``fn(item)`` for each item, in order, computing up to ``window`` ahead in parallel."""
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    window = window or 4 * workers
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context())
    try:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # also when the consumer stops early: drop what has not started
        pool.shutdown(wait=True, cancel_futures=True)
