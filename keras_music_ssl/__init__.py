"""keras-music-ssl: multi-view self-supervised music representation learning in Keras 3.

Importing the package imports Keras and every module that registers a serializable class
(frontend, backbone, heads, tagger, the pretext methods with their optimizer and schedules,
the probe's ``LogMelStats``, musicnn's taggers, the fine-tuning model), so
``keras.saving.load_model`` reads any of its ``.keras`` files
in a process that only ran ``import keras_music_ssl``. Data workers fork
(``data/parallel.py``), so they inherit these modules instead of importing them again.

One exception, the command line: when this import is the first step of ``kmssl ...`` or
``python -m keras_music_ssl ...`` (:func:`_started_by_the_command_line`), it imports nothing
more, so ``kmssl --help`` parses without Keras; ``cli.main`` calls :func:`import_all` before it
runs a command. Until then, any public name imports everything first (``__getattr__``).
"""

import importlib
import os
import sys

__version__ = "0.9.0"

from keras_music_ssl.errors import KmsslError, backend_problem  # noqa: E402

__all__ = ["AttentionPool2D", "Bottleneck", "LogMelSpectrogram", "ModifiedResNet", "MusicEncoder", "pretrain"]

_BACKEND_PROBLEM = None
_IMPORTED_ALL = False


def import_all():
    """Import Keras and every module that registers a class (the module docstring); once."""
    global _BACKEND_PROBLEM, _IMPORTED_ALL
    if _IMPORTED_ALL:
        return
    _IMPORTED_ALL = True
    _BACKEND_PROBLEM = backend_problem()
    if _BACKEND_PROBLEM is not None:  # else Keras cannot load: `kmssl` says why in one line, attributes raise
        return
    from keras_music_ssl.backbone import AttentionPool2D, Bottleneck, ModifiedResNet, MusicEncoder
    from keras_music_ssl.frontend import LogMelSpectrogram

    # Imported for their registrations. None of them reads a name from this half-initialised
    # package (they import submodules by their full path), so no import cycle can bite.
    for module in ("heads", "tagger", "schedules", "pretext", "probe.baselines", "musicnn", "finetune"):
        importlib.import_module(f"{__name__}.{module}")

    from keras_music_ssl.train import pretrain  # (numpy-free at import; Keras is loaded above)

    globals().update(AttentionPool2D=AttentionPool2D, Bottleneck=Bottleneck, ModifiedResNet=ModifiedResNet,
                     MusicEncoder=MusicEncoder, LogMelSpectrogram=LogMelSpectrogram, pretrain=pretrain)


def _started_by_the_command_line():
    """Whether the process is ``kmssl`` or ``python -m keras_music_ssl`` importing this package
    on its way to ``cli.main`` (which calls :func:`import_all` once the arguments are parsed)."""
    if sys.argv[:1] == ["-m"]:  # `python [options] -m NAME args`: NAME is being located, NAME's __init__ runs
        # sys.argv is ["-m", *args]; sys.orig_argv ends with [..., NAME or -mNAME, *args]
        token = sys.orig_argv[len(sys.orig_argv) - len(sys.argv)] if len(sys.orig_argv) > len(sys.argv) else ""
        return token == __name__ or (token.startswith("-") and token.endswith("m" + __name__))
    # The `kmssl` console script (pyproject's [project.scripts]): argv[0] is its path while it imports
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name in ("kmssl", "kmssl.exe", "kmssl-script.py")


if not _started_by_the_command_line():
    import_all()


def __getattr__(name):
    if name in __all__ and not _IMPORTED_ALL:  # the command line deferred the import: do it now
        import_all()
        if name in globals():
            return globals()[name]
    if _BACKEND_PROBLEM is not None and not name.startswith("__"):
        raise KmsslError(_BACKEND_PROBLEM)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
