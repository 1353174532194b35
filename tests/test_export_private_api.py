"""The private TensorFlow / LiteRT APIs the TFLite export uses fail with an ExportError that
names them, not with an ImportError or AttributeError from inside the converter."""

import sys

import pytest

from keras_music_ssl.export import ExportError, tflite_operators
from keras_music_ssl.export.private_api import litert_schema, private_api, require_calibrate_only

pytestmark = pytest.mark.backend_independent


def test_a_missing_private_module_is_an_export_error_that_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow.lite.python.convert", None)  # import fails
    with pytest.raises(ExportError, match=r"tflite-int8-full needs tensorflow\.lite\.python\.convert\.mlir_quantize"):
        private_api("tensorflow.lite.python.convert", "mlir_quantize", "tflite-int8-full")


def test_a_missing_private_attribute_is_an_export_error(monkeypatch):
    import json

    with pytest.raises(ExportError, match=r"json\.no_such_function.*pyproject"):
        private_api("json", "no_such_function")
    assert private_api("json", "dumps") is json.dumps


def test_reading_a_tflite_file_without_the_litert_schema_is_an_export_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.schema_py_generated", None)
    with pytest.raises(ExportError, match="ai_edge_litert.schema_py_generated"):
        litert_schema()
    with pytest.raises(ExportError, match="reading a .tflite file"):
        tflite_operators(b"\0" * 64)


def test_a_converter_without_calibrate_only_is_an_export_error():
    class Converter:
        pass

    with pytest.raises(ExportError, match="_experimental_calibrate_only.*tflite-int8"):
        require_calibrate_only(Converter())
    converter = Converter()
    converter._experimental_calibrate_only = False
    require_calibrate_only(converter)
    assert converter._experimental_calibrate_only is True
