"""Rewrites of a converted ``.tflite`` flatbuffer the converter has no option for: float32
constants back in the frontend of a quantised model, byte-identical buffers shared."""

import numpy as np

from keras_music_ssl.export.private_api import litert_schema


def _frontend_constants(frontend):
    """The frontend's large float constants, exactly: STFT window and mel filterbank."""
    window = np.asarray(frontend.window, np.float64)
    if frontend.normalized:  # torchaudio's normalized=True, folded into the window
        window = window / np.sqrt(np.sum(window ** 2))
    filterbank = np.asarray(frontend.mel_filterbank, np.float32)
    return [window.astype(np.float32), filterbank, np.ascontiguousarray(filterbank.T)]


def float_frontend(content, frontend):
    """Give the frontend of a quantised TFLite model its float32 constants back.

    The converter has no per-op opt-out for weight quantisation, and both variants break
    the log-mel, whose values span ``top_db`` = 100 dB:

    - dynamic-range int8 turns the mel projection into a hybrid FULLY_CONNECTED that
      quantises its input, the power spectrum, to int8 per row: bins more than ~48 dB
      below the frame's peak become 0 and the log-mel is off by up to 80 dB;
    - float16 rounds the STFT window (relative error up to 0.7 % in its tails), which
      lifts the spectral-leakage floor to about -66 dB: up to 20 dB off in quiet bins.

    A quantised tensor is put back to float32 when its values are the rounding of one
    of ``_frontend_constants``: an int8 weight is retyped in place (the op becomes a
    float op again); a float16 constant feeding a DEQUANTIZE op is replaced by a float32
    constant and the DEQUANTIZE op is dropped. Scalars stay as the converter left them.
    """
    schema = litert_schema("rewriting a .tflite file")

    exact = _frontend_constants(frontend)
    flat = schema.ModelT.InitFromPackedBuf(content, 0)
    dequantize = {i for i, code in enumerate(flat.operatorCodes)
                  if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE}

    def original(tensor):
        """The exact float32 array that ``tensor`` quantises, or None."""
        shape = tuple(int(d) for d in tensor.shape)
        raw = flat.buffers[tensor.buffer].data
        if raw is None or len(shape) == 0:
            return None
        raw = np.asarray(raw, np.uint8).tobytes()
        for value in exact:
            if value.size != int(np.prod(shape)):
                continue
            value = value.reshape(shape)
            if tensor.type == schema.TensorType.FLOAT16:
                if np.array_equal(np.frombuffer(raw, np.float16).reshape(shape), value.astype(np.float16)):
                    return value
            elif tensor.type == schema.TensorType.INT8 and tensor.quantization is not None:
                scale = np.asarray(tensor.quantization.scale, np.float32)
                scale = scale.reshape((-1,) + (1,) * (len(shape) - 1)) if scale.size > 1 else scale
                dequantised = np.frombuffer(raw, np.int8).reshape(shape) * scale
                if np.abs(dequantised - value).max() <= scale.max():
                    return value
        return None

    added = {}  # the signatures' subgraphs share one float32 copy of each constant

    def float_buffer(value):
        key = (value.shape, value.tobytes())
        if key not in added:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(value.astype("<f4").tobytes(), np.uint8)
            flat.buffers.append(buffer)
            added[key] = len(flat.buffers) - 1
        return added[key]

    changed = 0
    for subgraph in flat.subgraphs:
        kept = []
        for op in subgraph.operators:
            if op.opcodeIndex in dequantize:
                source, target = subgraph.tensors[op.inputs[0]], subgraph.tensors[op.outputs[0]]
                value = original(source) if source.type == schema.TensorType.FLOAT16 else None
                if value is not None:  # the DEQUANTIZE output becomes the float32 constant
                    target.buffer = float_buffer(value)
                    changed += 1
                    continue
            kept.append(op)
        subgraph.operators = kept
        for tensor in subgraph.tensors:
            if tensor.type == schema.TensorType.INT8 and (value := original(tensor)) is not None:
                tensor.type, tensor.quantization = schema.TensorType.FLOAT32, None
                tensor.buffer = float_buffer(value)
                changed += 1
    if not changed:
        return content
    # Free the quantised copies that no op reads any more (buffer 0 is the empty one).
    used = {m.buffer for m in flat.metadata or []}
    for subgraph in flat.subgraphs:
        read = {int(i) for op in subgraph.operators for i in list(op.inputs) + list(op.outputs)}
        read |= {int(i) for i in list(subgraph.inputs) + list(subgraph.outputs)}
        for index, tensor in enumerate(subgraph.tensors):
            if index in read:
                used.add(tensor.buffer)
            else:
                tensor.buffer = 0
    for index, buffer in enumerate(flat.buffers):
        if index and index not in used:
            buffer.data = None
    return _pack(flat)


def share_identical_buffers(content):
    """Point tensors with byte-identical constants at one buffer.

    The full-integer quantiser writes a quantised copy of every weight per signature
    (``tag`` and ``tag_track`` hold the same network), doubling the file.
    """
    import hashlib

    schema = litert_schema("rewriting a .tflite file")

    flat = schema.ModelT.InitFromPackedBuf(content, 0)
    first, same = {}, {}
    for index, buffer in enumerate(flat.buffers):
        if index and buffer.data is not None and len(buffer.data):
            key = hashlib.sha256(np.asarray(buffer.data, np.uint8).tobytes()).digest()
            same[index] = first.setdefault(key, index)
    same = {index: kept for index, kept in same.items() if index != kept}
    if not same:
        return content
    for subgraph in flat.subgraphs:
        for tensor in subgraph.tensors:
            tensor.buffer = same.get(tensor.buffer, tensor.buffer)
    for entry in flat.metadata or []:
        entry.buffer = same.get(entry.buffer, entry.buffer)
    for index in same:
        flat.buffers[index].data = None
    return _pack(flat)


def _pack(flat):
    import flatbuffers

    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(flat.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
