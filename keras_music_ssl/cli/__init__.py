"""The ``kmssl`` command. One module per subcommand; only the chosen one is imported.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status).

One error boundary for every command (:func:`main`): a known failure (``errors.KmsslError``) or
a disk that refuses a write (full, read-only, no permission) is one line on stderr and exit 2;
Ctrl-C is one line and exit 130. Any other exception is a bug and keeps its traceback.

Fast and quiet. ``kmssl --help`` and ``kmssl COMMAND --help`` import no Keras, TensorFlow, JAX or
PyTorch, in three steps:

1. ``kmssl`` and ``python -m keras_music_ssl`` import the package in a light form: its
   ``__init__`` sees that it is the command line starting (``_started_by_the_command_line``) and
   imports nothing more (any other ``import keras_music_ssl`` imports everything, as before).
2. :func:`main` parses the arguments. Parsing imports only the subcommand modules here, and
   their top level and ``add_arguments`` use light modules only (the standard library,
   ``errors``, ``storage``, ``train``'s and ``probe.models``' constants; never keras, tensorflow,
   jax, torch or numpy): ``--help`` and a bad option end here. ``tests/test_cli_quiet.py`` holds
   every command's ``--help`` to it.
3. Only then, when a command runs: the backend check (one line when ``KERAS_BACKEND`` is unusable),
   TensorFlow's native log lines turned off unless ``--verbose`` (``tf_logs.quiet``, which must
   come before TensorFlow is imported), and the full package import (``import_all``: Keras and
   every registered class), before the command's ``run``. Called in a process that has imported
   the package already (the tests call ``main([...])``), the import is a no-op.

Progress bars are drawn on a terminal only; written to a file or a pipe, each bar becomes one
summary line (``keras_music_ssl.progress``).
"""

import argparse
import contextlib
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


def _command_in(argv):
    """The subcommand ``argv`` names (its first word that is not an option: kmssl's own options
    take no value), or None."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


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
    command = _command_in(argv) or "kmssl"
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


VERBOSE_HELP = "show TensorFlow's own log lines (C++ and absl; off by default)"


def _parser(argv):
    """The argument parser; imports only the subcommand module(s) it needs (light, see above)."""
    parser = argparse.ArgumentParser(prog="kmssl", description="keras-music-ssl command line.")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _command_in(argv)
    modules = {chosen: _load(chosen)} if chosen else _available()
    for command, module in modules.items():
        sub = subparsers.add_parser(command, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        # also after the command (kmssl embed ... --verbose); SUPPRESS keeps kmssl --verbose embed's
        sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser, modules


def _main(argv):
    parser, modules = _parser(argv)
    args = parser.parse_args(argv)  # --help and bad options end here, before any heavy import
    if args.command is None:
        parser.print_help()
        return 2
    from keras_music_ssl.errors import backend_problem

    problem = backend_problem()
    if problem:
        print(f"kmssl: {problem}", file=sys.stderr)
        return 2
    import keras_music_ssl
    from keras_music_ssl import tf_logs

    with contextlib.nullcontext() if args.verbose else tf_logs.quiet():
        keras_music_ssl.import_all()  # Keras and every registered class (step 3 above)
        return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
