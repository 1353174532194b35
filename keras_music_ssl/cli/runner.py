"""The ``--runner`` / ``--beam-option`` arguments that ``kmssl prepare`` and ``kmssl embed`` share.

Apache Beam is an optional extra: its modules are imported only for ``--runner beam``, and
without it the command says how to install it.
"""

import importlib

BEAM_MISSING = "--runner beam needs Apache Beam: pip install 'keras-music-ssl[beam]'"


def add_runner_arguments(parser):
    parser.add_argument("--runner", choices=("local", "beam"), default="local",
                        help="local (default): on this machine, without Beam; beam: an Apache Beam "
                             "pipeline (DirectRunner unless --beam-option runner=... says otherwise)")
    parser.add_argument("--beam-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a Beam pipeline option, repeatable (runner=DataflowRunner, project=..., "
                             "direct_num_workers=4; a bare KEY sets a flag); only with --runner beam")


def check_runner_arguments(args):
    """A one-line reason when the runner arguments do not fit together, else None."""
    if args.beam_option and args.runner != "beam":
        return "--beam-option needs --runner beam."
    return None


def import_beam_module(name):
    """The module ``name`` (which imports apache_beam), or None when Apache Beam is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if (error.name or "").partition(".")[0] != "apache_beam":
            raise
        return None
