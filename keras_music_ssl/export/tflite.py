"""TFLite/LiteRT export: ``tflite`` (float32), ``tflite-fp16`` (float16 weights),
``tflite-int8`` (dynamic range: int8 weights, activations quantised on the fly) and
``tflite-int8-full`` (the ResNet in int8, activation ranges calibrated on audio).

Built-in ops only. In every quantised file the frontend stays float32 (``tflite_rewrite``;
RFFT2D has no int8 kernel, and 8-bit or float16 constants there cost up to 80 / 20 dB).
"""

import pathlib
import tempfile
import warnings
import zipfile

import numpy as np

from keras_music_ssl.export.calibration import calibration_samples, synthetic_clips
from keras_music_ssl.export.metadata import ExportError, metadata_files, model_metadata
from keras_music_ssl.export.private_api import litert_schema, private_api, require_calibrate_only
from keras_music_ssl.export.saved_model import write_saved_model
from keras_music_ssl.export.tflite_rewrite import float_frontend, share_identical_buffers

# Ops that would make a TFLite file need the Flex delegate or resource-variable state
# (an unfrozen variable reads back uninitialised in the interpreter).
FORBIDDEN_OPS = ("CUSTOM", "DELEGATE", "VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE")


def tflite_bytes(saved_model_dir, signatures, quantization, calibration, network_name):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir),
                                                         signature_keys=signatures)
    # Built-in ops only: a model that would need Flex ops fails here, not on the device.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "full_int8":
        converter.representative_dataset = lambda: iter(calibration)
        require_calibrate_only(converter)  # quantised below: the ResNet only
    elif quantization not in (None, "dynamic_int8"):
        raise ValueError(f"Unknown quantization {quantization!r}")
    try:
        with warnings.catch_warnings():
            # TF's calibrator runs tf.lite.Interpreter, which warns that it is deprecated.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            content = converter.convert()
        if quantization == "full_int8":
            content = quantize_network_only(content, network_name)
        return content
    except ExportError:
        raise
    except Exception as error:
        raise ExportError(f"TFLite conversion ({quantization or 'float32'}) failed: {error}") from error


def quantize_network_only(calibrated, network_name):
    """Full-integer quantisation of a calibrated model, restricted to the ResNet.

    Int8 activations anywhere before the ResNet would quantise the waveform or the power
    spectrum (a 100 dB range) to 256 levels, and RFFT2D has no int8 kernel anyway. So
    every node outside the ResNet layer's name scope (track chunking, frontend, tag
    head) goes to the quantiser's denylist, as ``tf.lite.experimental.QuantizationDebugger``
    does; the ResNet gets int8 kernels, with float input and output.
    """
    schema = litert_schema("tflite-int8-full")
    mlir_quantize = private_api("tensorflow.lite.python.convert", "mlir_quantize", "tflite-int8-full")

    flat = schema.ModelT.InitFromPackedBuf(calibrated, 0)
    inside, outside = set(), set()
    for subgraph in flat.subgraphs:
        names = [tensor.name.decode() for tensor in subgraph.tensors]
        for op in subgraph.operators:
            # An op belongs to the ResNet if its output or one of its weights is named in
            # its scope (the op that yields the embedding output is named after the output).
            weights = [i for i in op.inputs if i >= 0 and subgraph.tensors[i].buffer
                       and flat.buffers[subgraph.tensors[i].buffer].data is not None]
            mine = any(f"/{network_name}" in names[i] for i in [*op.outputs, *weights])
            (inside if mine else outside).update(names[i] for i in op.outputs)
    if not inside:
        raise ExportError(f"No node of the layer {network_name!r} found to quantise.")
    return mlir_quantize(calibrated, denylisted_nodes=sorted(outside))


def require_quantizable(meta, quantization):
    """Refuse a quantised format for a musicnn tagger (``track_rule`` ``"patches"``): the float
    frontend rewrite and the int8 calibration are made and measured for the library's ResNet only."""
    if quantization is not None and meta.get("track_rule") == "patches":
        raise ExportError(f"Quantised TFLite ({quantization}) is not made or measured for musicnn's models; "
                          "use --format tflite (float32).")


def export_tflite(model, path, quantization=None, representative=None):
    """Write a ``.tflite`` file of an encoder or tagger (TensorFlow backend).

    ``quantization``: ``None`` (float32), ``"float16"`` (fp16 weights), ``"dynamic_int8"``
    (int8 weights, float activations), ``"full_int8"`` (int8 weights and activations
    where a kernel exists, calibrated on ``representative`` clips (n, clip_samples) or
    ``synthetic_clips``; float fallback elsewhere, float input/output).
    The op list is checked: only TFLite built-ins, no Flex/custom or variable ops.
    """
    meta = model_metadata(model)
    require_quantizable(meta, quantization)
    encoder = model.encoder if meta["kind"] == "tagger" and meta["track_rule"] == "chunks" else model
    calibration = None
    if quantization == "full_int8":
        clips = (synthetic_clips(48, meta["clip_samples"], meta["sample_rate"])
                 if representative is None else np.asarray(representative, np.float32))
        calibration = calibration_samples(model, meta, clips)
    with tempfile.TemporaryDirectory() as tmp:
        signatures = write_saved_model(model, tmp, meta, with_metadata=False)
        network = encoder.resnet.name if quantization == "full_int8" else None
        content = tflite_bytes(tmp, signatures, quantization, calibration, network)
    if quantization in ("float16", "dynamic_int8"):
        content = float_frontend(content, encoder.frontend)
    content = share_identical_buffers(content)
    bad = sorted(set(tflite_operators(content)) & set(FORBIDDEN_OPS))
    if bad:
        raise ExportError(f"The TFLite model uses ops outside the built-in set: {bad}")
    path = pathlib.Path(path)
    path.write_bytes(content)
    meta["quantization"] = quantization or "float32"
    with zipfile.ZipFile(path, "a") as archive:  # appended after the flatbuffer
        for name, text in metadata_files(meta).items():
            archive.writestr(name, text)
    return path


def tflite_operators(model):
    """Sorted op names used by a TFLite model (bytes or path), over all subgraphs.

    Custom ops are reported by their custom code (Flex ops start with ``Flex``) and
    as ``CUSTOM``.
    """
    schema = litert_schema()

    content = model if isinstance(model, (bytes, bytearray)) else pathlib.Path(model).read_bytes()
    flat = schema.Model.GetRootAs(content, 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
    ops = set()
    for i in range(flat.OperatorCodesLength()):
        code = flat.OperatorCodes(i)
        # Codes > 127 live in BuiltinCode; DeprecatedBuiltinCode caps at 127.
        name = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        ops.add(name)
        if name == "CUSTOM":
            ops.add(code.CustomCode().decode())
    return sorted(ops)
