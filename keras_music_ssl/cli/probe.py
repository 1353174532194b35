"""kmssl probe: frozen embeddings -> MLP probe -> ROC/PR-AUC with a bootstrap, for several models.

    kmssl probe DATASET --model M [--model M2 ...] --out DIR [--task NAME ...] [--protocol paper|marble]
                [--fractions [F ...]] [--bootstrap 50] [--seed 0] [--no-baseline]

DATASET: a folder in the generic format (or its metadata.csv), ``mtat:ROOT``, or
``jamendo:ROOT[:SUBSET[:SPLIT]]``. M: a preset folder, a named preset, ``random`` or
``logmel-stats`` (always added unless ``--no-baseline``), or a tagger preset (``musicnn_mtt``, ...:
its ``penultimate`` features, a supervised reference). The preset of a ``kmssl pretrain`` run
folder brings the run's initial encoder (``RUN/initial``, named ``initial``) as the floor of its
own configuration, and the verdict against each floor is printed under the table. A dataset
with several tasks (``tasks.json``; MTG-Jamendo's subsets) is embedded once and probed per task
(``--task`` keeps some), with a table and verdicts per task. Exit status 0
on success, 2 with a one-line reason on bad input.
"""

import sys

HELP = "Probe frozen encoders on a tagging dataset (MTAT, MTG-Jamendo, a labeled folder) and report."


def add_reference_option(parser):
    """``--reference``: the supervised tagger that ``kmssl compare`` and ``quickstart`` probe beside the floors."""
    from keras_music_ssl.probe.models import REFERENCE

    parser.add_argument("--reference", default=REFERENCE, metavar="PRESET",
                        help=f"a tagger preset trained on real tags, probed beside the floors as a supervised "
                             f"reference (default {REFERENCE}, converted from the musicnn wheel on first use; left "
                             "out with a note when it cannot be had; none: no reference)")


def reference_from(args):
    return None if args.reference.lower() in ("none", "") else args.reference


def add_arguments(parser):
    from keras_music_ssl.probe.fractions import DEFAULT_FRACTIONS

    parser.add_argument("dataset", metavar="DATASET",
                        help="labeled folder (metadata.csv + tags.txt), mtat:ROOT or jamendo:ROOT[:SUBSET[:SPLIT]]")
    parser.add_argument("--model", action="append", required=True, metavar="M",
                        help="preset folder or name, 'random' (seeded paper encoder) or 'logmel-stats'; repeatable")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="report folder: results.json/.csv/.md, bootstrap.png, fractions.png, "
                             "predictions/, heads/")
    parser.add_argument("--task", action="append", default=None, metavar="NAME",
                        help="probe only this task of the dataset (repeatable; default: every task; the first "
                             "named is the report's main task)")
    parser.add_argument("--protocol", default="paper", choices=("paper", "marble"),
                        help="paper: the authors' linear head and loss; marble: MARBLE's 512-unit MLP (default paper)")
    parser.add_argument("--fractions", nargs="*", type=float, default=None, metavar="F",
                        help=f"also probe on fractions of the training tracks (no value: "
                             f"{' '.join(map(str, DEFAULT_FRACTIONS))})")
    parser.add_argument("--draws", type=int, default=4, help="seeded draws per fraction (default 4)")
    parser.add_argument("--bootstrap", type=int, default=50, metavar="N", help="bootstrap resamples (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true", help="do not add the logmel-stats floor")
    parser.add_argument("--hidden-units", type=int, nargs="*", default=None, metavar="H",
                        help="hidden layer widths of the probe (default: the protocol's)")
    parser.add_argument("--epochs", type=int, default=None, help="at most this many probe epochs (default 100)")
    parser.add_argument("--eval-chunks", default="segments", choices=("segments", "padded"),
                        help="valid/test track embedding: mean over whole 4-s segments (default), or over "
                             "zero-padded chunks as kmssl embed does")
    parser.add_argument("--batch-size", type=int, default=32, help="4-s segments per encoder call (default 32)")
    parser.add_argument("--cache-dir", default=None,
                        help="embedding cache (default $KMSSL_CACHE_DIR or ~/.cache/keras_music_ssl/embeddings)")
    parser.add_argument("--audio-dir", default=None, help="audio root, if not where the dataset's loader looks")
    parser.add_argument("--weights-dir", default=None, help="where named presets live (default $KMSSL_WEIGHTS_DIR)")


def with_initial_floors(specs):
    """``(specs, pairs)``: each preset of a pretraining run folder (``RUN/preset``) brings the run's
    initial encoder (``RUN/initial``, the floor of its own configuration) into the report;
    ``pairs`` are the ``(trained, initial)`` positions in the returned list."""
    import os

    from keras_music_ssl.train import INITIAL

    specs, pairs = list(specs), []
    for i, spec in enumerate(list(specs)):
        run = os.path.dirname(os.path.normpath(spec))
        initial = os.path.join(run, INITIAL)
        if (os.path.isdir(spec) and os.path.basename(os.path.normpath(spec)) != INITIAL
                and os.path.isfile(os.path.join(run, "config.json")) and os.path.isdir(initial)):
            if initial not in specs:
                specs.append(initial)
            pairs.append((i, specs.index(initial)))
    return specs, pairs


def _fail(message):
    print(f"kmssl probe: {message}", file=sys.stderr)
    return 2


def run(args):
    from keras_music_ssl import storage
    from keras_music_ssl.errors import KmsslError
    from keras_music_ssl.probe.datasets import ProbeDataError
    from keras_music_ssl.probe.fractions import DEFAULT_FRACTIONS
    from keras_music_ssl.probe.harness import check_options, default_cache_dir, run_probe
    from keras_music_ssl.probe.report import markdown_table, task_views
    from keras_music_ssl.probe.verdict import verdict

    fractions = args.fractions
    if fractions is not None and not fractions:
        fractions = list(DEFAULT_FRACTIONS)
    try:
        # Everything a user can get wrong is refused here, in one line, before any model is loaded.
        check_options(args.bootstrap, args.draws, fractions, args.epochs, args.batch_size)
        storage.check_output(args.out, "folder")
        storage.check_output(args.cache_dir or default_cache_dir(), "folder", "--cache-dir")
        specs, pairs = with_initial_floors(args.model)
        results = run_probe(args.dataset, specs, args.out, protocol=args.protocol, fractions=fractions,
                            draws=args.draws, bootstrap=args.bootstrap, seed=args.seed, baseline=not args.no_baseline,
                            cache_dir=args.cache_dir, embed_batch_size=args.batch_size, eval_chunks=args.eval_chunks,
                            weights_dir=args.weights_dir, audio_dir=args.audio_dir, tasks=args.task,
                            hidden_units=args.hidden_units, epochs=args.epochs)
    except (KmsslError, ProbeDataError) as error:  # ProbeDataError: named until it is a KmsslError
        return _fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    print(markdown_table(results))
    for task, view in task_views(results):
        names, tests = list(view["models"]), {name: r["test"] for name, r in view["models"].items()}
        for trained, initial in pairs:  # the harness keeps the order of the models it was given
            floors = [names[initial]] + [f for f in ("random", "logmel-stats") if f in tests]
            print(("" if len(results["tasks"]) == 1 else f"[{task}] ") + verdict(tests, names[trained], floors))
    print(f"report -> {args.out}/results.md, results.json, bootstrap.png"
          + (", fractions.png" if fractions else ""))
    return 0
