"""kmssl quickstart: build the embedded rendered dataset, pretrain, probe against the floors,
export a TFLite tagger and tag a clip with it. Its one download, on first use, is musicnn's wheel
from PyPI (the supervised reference; ``--reference none`` skips it). About a quarter of an hour on 2 CPU
cores; run again with the same --out, it resumes (or only reprints the results).
"""

import sys

from keras_music_ssl.cli.probe import add_reference_option, reference_from

HELP = "The whole story on the embedded default: data, pretraining, probe, TFLite tagger, tagging."


def add_arguments(parser):
    parser.add_argument("--out", default="outputs/quickstart", help="output folder (default outputs/quickstart)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="rendered dataset cache (default $KMSSL_DATA_DIR)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_reference_option(parser)


def run(args):
    from keras_music_ssl.errors import KmsslError
    from keras_music_ssl.quickstart import quickstart

    try:
        quickstart(args.out, seed=args.seed, data_dir=args.data_dir, verbose=0 if args.quiet else 1,
                   reference=reference_from(args))
    except KmsslError as error:
        print(f"kmssl quickstart: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
              file=sys.stderr)
        return 2
    return 0
