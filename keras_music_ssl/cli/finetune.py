"""kmssl finetune: an encoder preset and a tag head trained end to end on a labeled dataset's main
task, in a run folder like ``kmssl pretrain``'s (resumable, TensorBoard, checkpoints, a preset with
its card, a head for ``kmssl export``), reported beside the frozen probe and the floors.

    kmssl finetune data/rendered-medium-seed0 --preset runs/contrastive/preset --out runs/ft
    kmssl finetune mtat:/data/mtat --preset deezer_contrastive --out runs/ft-mtat --epochs 5
    KERAS_BACKEND=jax kmssl finetune DATASET --preset P --out RUN --learning-rate 1e-4
    kmssl export --preset runs/ft/preset --head runs/ft/head.keras --format tflite --out ft.tflite

Phase 1 is the probe of the frozen preset (``--protocol``'s head, at most ``--epochs-head``
epochs); phase 2 trains everything, the encoder at ``--learning-rate`` x ``--encoder-lr-factor``
(``keras_music_ssl/finetune.py``). Killed or interrupted, the same command resumes; other
settings in the same ``--out`` are refused. Exit status 0 on success, 2 with a one-line reason on
bad input.
"""

import sys

HELP = ("Fine-tune an encoder preset with a tag head end to end on a labeled dataset; report it beside the "
        "frozen probe and the floors.")

# option -> (FinetuneConfig field, type, help)
OPTIONS = {
    "--task": ("task", str, "the task to fine-tune (default: the dataset's main task, its first)"),
    "--protocol": ("protocol", str, "the probe's head and loss: paper (linear, the authors' loss) or marble "
                                    "(512-unit MLP); default paper"),
    "--epochs-head": ("epochs_head", int, "phase 1: at most this many probe epochs on frozen embeddings "
                                          "(default: the protocol's 100, early-stopped)"),
    "--epochs": ("epochs", int, "phase 2: at most this many epochs of the encoder and head (default 10)"),
    "--steps-per-epoch": ("steps_per_epoch", int, "phase 2 steps per epoch (default: one pass over the training "
                                                  "segments)"),
    "--batch-size": ("batch_size", int, "4 s segments per phase-2 step (default 32)"),
    "--learning-rate": ("learning_rate", float, "phase 2: the head's Adam learning rate (default 1e-3, the probe's)"),
    "--encoder-lr-factor": ("encoder_lr_factor", float, "phase 2: the encoder's learning rate is the head's times "
                                                        "this (default 0.1; 0 keeps the encoder frozen)"),
    "--patience": ("patience", int, "phase 2 stops after this many epochs without a better validation ROC-AUC "
                                    "(default 3)"),
    "--bootstrap": ("bootstrap", int, "bootstrap resamples of the test report (default 50)"),
    "--seed": ("seed", int, "seed of the probe, the data stream and the report (default 0)"),
}
FLAGS = {field: flag for flag, (field, _, _) in OPTIONS.items()}


def add_arguments(parser):
    parser.add_argument("dataset", metavar="DATASET",
                        help="labeled folder (metadata.csv + tags.txt), mtat:ROOT or jamendo:ROOT[:SUBSET[:SPLIT]]")
    parser.add_argument("--preset", required=True, metavar="P",
                        help="the encoder to start from: a preset folder (e.g. RUN/preset of kmssl pretrain), a "
                             "named preset (deezer_contrastive, ...) or a hub handle")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (resumes if it holds this run)")
    for flag, (field, kind, text) in OPTIONS.items():
        parser.add_argument(flag, dest=field, type=kind, default=None, help=text)
    parser.add_argument("--cache-dir", default=None,
                        help="embedding cache (default $KMSSL_CACHE_DIR or ~/.cache/keras_music_ssl/embeddings)")
    parser.add_argument("--no-floors", action="store_true",
                        help="report the fine-tuned tagger beside the frozen probe only, without the floors "
                             "(same-config random init, random, logmel-stats), which embed the dataset three more "
                             "times; a report setting, not a training one")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def option_message(error):
    """A FinetuneError's message with the setting it names as its command-line option."""
    message = str(error)
    field = message.split(" ", 1)[0]
    return FLAGS[field] + message[len(field):] if field in FLAGS else message


def run(args):
    from keras_music_ssl.finetune import FinetuneError, finetune

    settings = {field: getattr(args, field) for field, _, _ in OPTIONS.values() if getattr(args, field) is not None}
    try:
        # Keras' progress bar where someone watches, one line per epoch in a log
        verbose = 0 if args.quiet else 1 if sys.stdout.isatty() else 2
        summary = finetune(args.out, args.dataset, args.preset, cache_dir=args.cache_dir, verbose=verbose,
                           floors=not args.no_floors, **settings)
    except FinetuneError as error:
        print(f"kmssl finetune: {option_message(error)}", file=sys.stderr)
        return 2
    if args.quiet:  # the table and the verdict were printed unless --quiet
        print(summary["verdict"])
    print(f"fine-tuned tagger -> {summary['model']}; encoder preset -> {summary['preset_out']}; "
          f"head -> {summary['head']}; report -> {summary['report']}")
    return 0
