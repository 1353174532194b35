"""The private TensorFlow / LiteRT APIs the TFLite export needs, behind one clear error.

Three are not public: the flatbuffer schema classes of ``ai_edge_litert`` (read and rewrite
``.tflite`` files), ``tensorflow.lite.python.convert.mlir_quantize`` (full-integer
quantisation with a denylist) and ``TFLiteConverter._experimental_calibrate_only``
(calibrate without quantising). A release that moves one makes that export fail with an
``ExportError`` that names it, not an ``ImportError`` from deep inside the converter.
"""

import importlib

from keras_music_ssl.export.metadata import ExportError


def private_api(module, name=None, purpose="this export"):
    """``module`` (or its attribute ``name``), or an ExportError that says what is missing."""
    try:
        found = importlib.import_module(module)
        return getattr(found, name) if name else found
    except (ImportError, AttributeError) as error:
        where = f"{module}.{name}" if name else module
        raise ExportError(
            f"{purpose} needs {where}, a private TensorFlow/LiteRT API that the installed versions "
            f"({_versions()}) do not provide ({error}). Install the versions pyproject.toml pins, "
            "or use a format that does not need it (savedmodel, tflite).") from error


def litert_schema(purpose="reading a .tflite file"):
    return private_api("ai_edge_litert.schema_py_generated", purpose=purpose)


def require_calibrate_only(converter):
    """Ask ``converter`` to calibrate only (activation ranges recorded, nothing quantised)."""
    if not hasattr(converter, "_experimental_calibrate_only"):
        raise ExportError(
            "tflite-int8-full needs TFLiteConverter._experimental_calibrate_only, a private "
            f"TensorFlow API that the installed version ({_versions()}) does not have. Use "
            "tflite-int8 (dynamic range) or install the TensorFlow version pyproject.toml pins.")
    converter._experimental_calibrate_only = True


def _versions():
    from importlib import metadata

    found = []
    for package in ("tensorflow", "ai-edge-litert"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return ", ".join(found)
