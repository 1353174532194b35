"""``kmssl prepare --runner beam``: the prepared folder of ``data/prepare.py``, built by Apache Beam.

Beam runs the same pipeline on one machine (DirectRunner) and on a cluster (Dataflow, Flink,
Spark). Every step is the local path's own function (``data/prepare.py``), so the folder is the
same file for file, and either path resumes the other's run:

- the driver checks the sources and the folder's settings, lists the entries and keeps the
  shards that are not finished (a finished shard is never decoded again);
- it writes those shards' entries to a work list in the output folder, one JSON line per shard,
  so the pipeline graph stays small however long the catalog is;
- the pipeline reads the work list, spreads the shards over the workers and runs
  :func:`prepare.prepare_shard` on each: ``prepare_file`` on every entry in input order, then the
  local path's shard writer. A shard, not a file, is the unit of work: its decoded audio (about
  430 MB for 64 tracks of 3.5 min) is written where it was decoded and never goes through a
  shuffle, and the shard assignment is the local path's (by input order) by construction;
- the driver then writes ``index.csv``, ``skipped.csv`` and ``report.json`` from the shard files,
  as the local path does (:func:`prepare.finish_prepared`).

A bad file is a skip record, never an exception. Beam metrics, namespace ``kmssl.prepare``:
``prepared`` (tracks written) and ``skipped_<reason>`` (``data/audio.py``'s reasons), counted
over the shards this run wrote.

The sources and the output folder must be paths that the driver and every worker can open: one
machine, or a filesystem shared by the cluster (NFS, Filestore, a bucket mounted with gcsfuse).
This module imports ``apache_beam``; the command line imports it only for ``--runner beam``.
"""

import contextlib
import io
import json
import logging
import os
import re

import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from keras_music_ssl import storage
from keras_music_ssl.data import prepare
from keras_music_ssl.data.audio import MAX_DURATION, SAMPLE_RATE
from keras_music_ssl.data.parallel import default_workers

NAMESPACE = "kmssl.prepare"
# Without --beam-option runner=...: Beam's DirectRunner, one thread per core. Decoding (libsndfile,
# soxr) and the TFRecord writer release the GIL, so threads decode in parallel (2 cores, 24 FLAC
# tracks of 60 s in 3 shards: 11.5 files/s with 2 threads, 7.8 with one in-process worker, 1.9
# with 2 worker processes, which first import TensorFlow). Beam 2.77's DirectRunner first tries
# PrismRunner, which downloads a Go binary from GitHub on first use; without network it falls
# back at once to the FnApiRunner that these options configure.
LOCAL_DEFAULTS = {"runner": "DirectRunner", "direct_num_workers": str(default_workers()),
                  "direct_running_mode": "multi_threading"}
_LOCAL_RUNNERS = ("directrunner", "direct", "fnapirunner", "fnapi", "prismrunner", "prism", "switchingdirectrunner")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def pipeline_options(beam_options=(), defaults=None):
    """``PipelineOptions`` from ``KEY=VALUE`` strings (``--beam-option``); a bare ``KEY`` sets a flag.

    On a local runner (the default one included), ``defaults`` (:data:`LOCAL_DEFAULTS`) fill
    the options not given.
    Raises ``ValueError`` (one line) for a malformed, unknown or invalid option.
    """
    given = {}
    for option in beam_options:
        key, sep, value = str(option).partition("=")
        key = key.strip().lstrip("-")
        if not _KEY.fullmatch(key):
            raise ValueError(f"--beam-option {option!r}: expected KEY=VALUE, e.g. runner=DataflowRunner")
        given[key] = value if sep else None
    defaults = LOCAL_DEFAULTS if defaults is None else defaults
    if (given.get("runner") or defaults["runner"]).lower() in _LOCAL_RUNNERS:
        for key, value in defaults.items():
            given.setdefault(key, value)
    flags = [f"--{key}" if value is None else f"--{key}={value}" for key, value in given.items()]
    options = PipelineOptions(flags)
    # Beam's parser prints its whole usage and exits on a bad value: keep its last line only.
    stderr = io.StringIO()
    quiet = logging.getLogger("apache_beam.options.pipeline_options")  # "Discarding unparseable args"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(stderr):
            known = options.get_all_options()
            everything = options.get_all_options(retain_unknown_options=True)
    except SystemExit:
        message = (stderr.getvalue().strip().splitlines() or ["invalid value"])[-1]
        raise ValueError(f"--beam-option: {message.split('error: ', 1)[-1]}") from None
    finally:
        quiet.setLevel(level)
    unknown = sorted(set(everything) - set(known))
    if unknown:
        raise ValueError(f"--beam-option: unknown Beam pipeline option(s) {', '.join(unknown)}")
    return options


def run_pipeline(build, options, namespace):
    """Build a pipeline with ``build(pipeline)``, run it to the end and return its counters in
    ``namespace`` as ``{name: value}``."""
    pipeline = beam.Pipeline(options=options)
    build(pipeline)
    result = pipeline.run()
    state = result.wait_until_finish()
    if state not in (None, PipelineState.DONE):
        raise RuntimeError(f"the Beam pipeline ended in state {state}")
    counters = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + value
    return dict(sorted(counters.items()))


@contextlib.contextmanager
def work_list(out, lines):
    """A temporary file in ``out`` that holds ``lines`` (JSON-able objects, one per line); yields
    its path, or None when there are none. Its name is a ``storage`` temporary's, which a later
    run removes should this one be killed."""
    path = os.fspath(storage.partial_path(os.path.join(out, "beam-work.jsonl")))
    f = open(path, "w", encoding="utf-8")
    try:
        count = 0
        with f:  # ``lines`` may raise (a shard made from other inputs): the file goes all the same
            for line in lines:
                f.write(json.dumps(line) + "\n")
                count += 1
        yield path if count else None
    finally:
        os.remove(path)


def read_work(path):
    """The work list's items, one per line."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def read_and_spread(pipeline, path):
    """The work list as a PCollection spread over the workers: one small element (the path) in
    the graph, one worker reads the file, a reshuffle hands its lines out."""
    return (pipeline
            | "Work list" >> beam.Create([path])
            | "Read" >> beam.FlatMap(read_work)
            | "Spread" >> beam.Reshuffle())


class PrepareShard(beam.DoFn):
    """One work item ``{"shard": k, "entries": [[path, meta], ...]}`` -> shard k written."""

    def __init__(self, out, sample_rate, min_duration, max_duration):
        self.out, self.settings = out, dict(sample_rate=sample_rate, min_duration=min_duration,
                                            max_duration=max_duration)

    def process(self, work):
        index = prepare.prepare_shard(self.out, work["shard"], work["entries"], **self.settings)
        Metrics.counter(NAMESPACE, "prepared").inc(len(index["tracks"]))
        for skipped in index["skipped"]:
            Metrics.counter(NAMESPACE, f"skipped_{skipped['reason']}").inc()
        yield work["shard"]


def prepare_shards_beam(sources, out, tracks_per_shard=prepare.TRACKS_PER_SHARD, sample_rate=SAMPLE_RATE,
                        min_duration=prepare.MIN_DURATION, max_duration=MAX_DURATION, beam_options=()):
    """:func:`prepare.prepare_shards` on Beam; returns ``(report, counters)``.

    ``report`` is the local path's (also written to ``out/report.json``); ``counters`` the Beam
    metrics of this run (``{}`` when every shard was already finished: the pipeline does not
    start). ``beam_options``: ``KEY=VALUE`` pipeline options (:func:`pipeline_options`).
    """
    out = os.fspath(out)
    options = pipeline_options(beam_options)
    settings = prepare.prepare_settings(tracks_per_shard, sample_rate, min_duration, max_duration)
    # The driver holds the folder's lock for the whole run, so a second run (local or Beam) on it
    # is refused; the workers write inside it under that lock.
    with prepare.prepared_folder(sources, out, settings) as entries:
        num_shards = 0

        def todo():
            nonlocal num_shards
            for k, chunk in prepare.iter_shard_inputs(entries, tracks_per_shard):
                num_shards = k + 1
                if not prepare.shard_finished(out, k, [path for path, _ in chunk]):
                    yield {"shard": k, "entries": chunk}

        counters = {}
        with work_list(out, todo()) as path:
            if path is not None:
                fn = PrepareShard(out, sample_rate, min_duration, max_duration)
                counters = run_pipeline(lambda p: read_and_spread(p, path) | "Prepare shards" >> beam.ParDo(fn),
                                        options, NAMESPACE)
        return prepare.finish_prepared(out, num_shards, settings), counters
