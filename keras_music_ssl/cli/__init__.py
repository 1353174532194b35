"""The ``kmssl`` command. One module per subcommand; only the chosen one is imported.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status).

One error boundary for every command (:func:`main`): a known failure (``errors.KmsslError``) or
a disk that refuses a write (full, read-only, no permission) is one line on stderr and exit 2;
Ctrl-C is one line and exit 130. Any other exception is a bug and keeps its traceback.
"""

import argparse
import errno
import importlib
import os
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
    "finetune": "finetune",
    "compare": "compare",
    "quickstart": "quickstart",
    "upload": "upload",
    "serve-demo": "serve_demo",
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


def _one_line(error):
    from keras_music_ssl import storage

    if isinstance(error, OSError) and storage.disk_error(error):
        where = f": {error.filename}" if error.filename else ""
        reason = error.strerror or os.strerror(error.errno)
        if error.errno == errno.ENOSPC:
            reason = "no space left on the device"
        return f"{reason}{where}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _quiet_about_full_disks(unraisable, default=sys.unraisablehook):
    """h5py reports a write that hit a full disk again from its objects' destructors, as
    "Exception ignored" tracebacks; the write itself raised already (one line). Others pass on."""
    if "errno = 28" not in str(unraisable.exc_value):
        default(unraisable)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else "kmssl"
    sys.unraisablehook = _quiet_about_full_disks
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(f"kmssl {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        from keras_music_ssl import storage
        from keras_music_ssl.errors import KmsslError

        if isinstance(error, KmsslError) or storage.disk_error(error):
            print(f"kmssl {command}: {_one_line(error)}", file=sys.stderr)
            return 2
        raise


def _main(argv):
    from keras_music_ssl.errors import backend_problem

    problem = backend_problem()
    if problem:
        print(f"kmssl: {problem}", file=sys.stderr)
        return 2
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
