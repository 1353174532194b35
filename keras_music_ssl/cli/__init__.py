"""The ``kmssl`` command. One module per subcommand; only the chosen one is imported.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status).
"""

import argparse
import importlib
import sys

# subcommand -> module under keras_music_ssl.cli
COMMANDS = {
    "prepare": "prepare",
    "convert-deezer": "convert_deezer",
    "embed": "embed",
    "export": "export",
    "tag": "tag",
    "probe": "probe",
    "pretrain": "pretrain",
    "compare": "compare",
    "quickstart": "quickstart",
}


def _load(command):
    return importlib.import_module(f"keras_music_ssl.cli.{COMMANDS[command]}")


def _available():
    found = {}
    for command in COMMANDS:
        try:
            found[command] = _load(command)
        except ModuleNotFoundError as error:
            if not error.name.startswith("keras_music_ssl.cli."):
                raise
    return found


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="kmssl", description="keras-music-ssl command line.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    # Importing a subcommand imports Keras/TensorFlow: do it only for the one being run.
    modules = {chosen: _load(chosen)} if chosen else _available()
    for command, module in modules.items():
        sub = subparsers.add_parser(command, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
