"""kmssl compare: pretrain several methods with the same data, budget, seed and encoder, then
probe them together beside the floors (random init, logmel-stats) in one report.

    kmssl compare --out runs/compare                                # all five, embedded dataset
    kmssl compare --out runs/two --methods contrastive byol --epochs 4 --steps-per-epoch 50
    kmssl compare --out runs/mine --data shards/ --probe-dataset mtat:/data/mtat --encoder paper

Killed, the same command resumes: finished methods are not retrained, finished probes not refitted.
"""

import sys

from keras_music_ssl.cli.pretrain import add_pretrain_options, settings_from
from keras_music_ssl.cli.probe import add_reference_option, reference_from

HELP = "Pretrain several pretext methods alike and compare them with one probe report."


def add_arguments(parser):
    from keras_music_ssl.train import METHOD_NAMES as METHODS  # pretext.METHODS' keys, without Keras

    parser.add_argument("--out", required=True, metavar="DIR",
                        help="comparison folder: runs/<method>/, probe/, comparison.md/.json/.png")
    parser.add_argument("--methods", nargs="+", default=None, choices=tuple(METHODS), metavar="METHOD",
                        help=f"methods to compare (default all: {' '.join(METHODS)})")
    parser.add_argument("--probe-dataset", default=None, metavar="DATASET",
                        help="labeled dataset to probe on, as for kmssl probe (default: the rendered dataset)")
    parser.add_argument("--protocol", default="paper", choices=("paper", "marble"), help="probe protocol")
    parser.add_argument("--bootstrap", type=int, default=50, metavar="N", help="bootstrap resamples (default 50)")
    add_reference_option(parser)
    parser.add_argument("--probe-epochs", type=int, default=None, help="at most this many probe epochs (default 100)")
    add_pretrain_options(parser, exclude=("method", "probe_dataset"))  # --probe-dataset serves both


def run(args):
    from keras_music_ssl.compare import compare, comparison_table
    from keras_music_ssl.errors import KmsslError
    from keras_music_ssl.probe.datasets import ProbeDataError

    try:
        settings = settings_from(args)
        settings.pop("probe_dataset", None)  # compare's own option: the probe's and the learning curves' dataset
        comparison = compare(args.out, methods=args.methods, probe_dataset=args.probe_dataset,
                             protocol=args.protocol, bootstrap=args.bootstrap, data_dir=args.data_dir,
                             probe_options=None if args.probe_epochs is None else {"epochs": args.probe_epochs},
                             verbose=0 if args.quiet else 1, reference=reference_from(args), **settings)
    # ProbeDataError: named until it is a KmsslError; FileNotFoundError: a --data source not found
    except (KmsslError, ProbeDataError, FileNotFoundError) as error:
        print(f"kmssl compare: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
              file=sys.stderr)
        return 2
    print(comparison_table(comparison))
    print(f"report -> {args.out}/comparison.md (figures comparison.png, pretraining.png; probe report in probe/)")
    return 0
