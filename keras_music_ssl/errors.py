"""The one base class of the failures a user can fix (bad options, a broken preset, a full disk, ...).

Every command's known failures derive from :class:`KmsslError`: ``kmssl`` prints its message
in one line and exits 2 (``cli/__init__.py``). Anything else is a bug and keeps its traceback.
The subclasses also derive from the builtin they replace (``ValueError``, ``FileNotFoundError``),
so code that caught those before still does.

:func:`backend_problem` is here because it must run before anything imports Keras (which fails
with a bare traceback on an unknown or missing ``KERAS_BACKEND``).
"""

import importlib.util
import os

BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy"}


def backend_problem():
    """A one-line reason when ``KERAS_BACKEND`` names no usable backend, else None."""
    name = os.environ.get("KERAS_BACKEND", "tensorflow")
    if name not in BACKEND_MODULES:
        return f"KERAS_BACKEND={name!r} is not a Keras backend; use one of {', '.join(BACKEND_MODULES)}"
    if importlib.util.find_spec(BACKEND_MODULES[name]) is None:
        return (f"KERAS_BACKEND={name} but {BACKEND_MODULES[name]} is not installed: "
                f"pip install 'keras-music-ssl[{name}]', or choose another backend")
    return None


class KmsslError(Exception):
    """A failure with a one-line reason the user can act on."""


class OptionError(KmsslError, ValueError):
    """An option or argument out of its range (the message names the option)."""
