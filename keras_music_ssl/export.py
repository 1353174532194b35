"""Export an embedder (``MusicEncoder``) or a tagger (``MusicTagger``) for serving.

Formats (``FORMATS``): a TensorFlow SavedModel (TF Serving, ``tf.saved_model.load``) and
TFLite/LiteRT files: ``tflite`` (float32), ``tflite-fp16`` (float16 weights),
``tflite-int8`` (dynamic-range: int8 weights, activations quantised on the fly) and
``tflite-int8-full`` (the ResNet in int8 with activation ranges calibrated on audio).
Raw 16 kHz mono float32 waveform in, the log-mel frontend inside the graph, built-in ops
only. In every quantised file the frontend stays float32 (see ``_float_frontend``; RFFT2D
has no int8 kernel, and 8-bit or float16 constants there cost up to 80 / 20 dB).

Signatures (the same names in both formats; ``T`` tags, ``D`` embedding width):

- ``embed``: ``waveform`` (batch, 64000) -> ``embedding`` (batch, D)
- ``embed_track``: ``waveform`` (samples,), any length -> ``embedding`` (D,), ``num_chunks``
- ``tag``: ``waveform`` (batch, 64000) -> ``probabilities`` (batch, T), ``embedding``
- ``tag_track``: ``waveform`` (samples,) -> ``probabilities`` (T,), ``embedding``, ``num_chunks``
- ``head``: ``embedding`` (batch, D) -> ``probabilities`` (batch, T)
- ``metadata`` (SavedModel only): no input -> ``kind``, ``tags``, ``sample_rate``, ``clip_samples``

An embedder has ``embed`` + ``embed_track``; a tagger has ``tag``, ``tag_track``, ``head``.
``serving_default`` is ``embed`` or ``tag``.

The track signatures follow the authors' ``usage/sample.py`` (spec §2): peak-normalise
the whole track (divide by max |x| when it is not zero; a no-op on the output of
``keras_music_ssl.data.load_audio``, which already does it), zero-pad at the end to a
multiple of 4 s, embed each consecutive 4 s chunk, average the embeddings, then apply the
tag head to the mean embedding. A track shorter than 4 s, or an empty one, is one
zero-padded chunk. The clip signatures take clips as they are (no normalisation).

Tag names travel inside the model: the SavedModel's ``metadata`` signature returns them
as a string tensor (and ``assets.extra/`` holds ``tags.txt`` + ``keras_music_ssl.json``);
a ``.tflite`` file carries those two files in a zip archive appended to the flatbuffer,
the way TFLite Support attaches label files: interpreters ignore it, any zip reader (or
``read_metadata``) reads it.

On device, a long track is tagged either with ``tag_track`` (dynamic length) or, where
only a fixed 4 s input is wanted, by peak-normalising the whole track, running ``tag``
on each zero-padded 4 s chunk (batch 1, so memory stays constant), averaging the
``embedding`` outputs and running ``head`` on the mean: the same numbers.

Export runs on the TensorFlow backend. ``export()`` called under JAX or PyTorch saves the
model to a temporary ``.keras`` file and exports it in a TensorFlow subprocess
(dependencies.md §4e: the ``.keras`` route is the one that converts).
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import warnings
import zipfile

import numpy as np

FORMATS = ("savedmodel", "tflite", "tflite-fp16", "tflite-int8", "tflite-int8-full")
# format -> quantisation of the TFLite conversion
QUANTIZATIONS = {"tflite": None, "tflite-fp16": "float16", "tflite-int8": "dynamic_int8",
                 "tflite-int8-full": "full_int8"}
METADATA_FILE = "keras_music_ssl.json"
TAGS_FILE = "tags.txt"
# Ops that would make a TFLite file need the Flex delegate or resource-variable state
# (an unfrozen variable reads back uninitialised in the interpreter).
_FORBIDDEN_OPS = ("CUSTOM", "DELEGATE", "VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE")


class ExportError(RuntimeError):
    """A model that cannot be exported, or an exported file that cannot be used."""


def model_metadata(model):
    """What travels with an export: kind, tags, sample rate, clip length, embedding width."""
    from keras_music_ssl import __version__
    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.tagger import MusicTagger

    if isinstance(model, MusicTagger):
        kind, encoder, tags = "tagger", model.encoder, model.tags
    elif isinstance(model, MusicEncoder):
        kind, encoder, tags = "embedder", model, []
    else:
        raise TypeError(f"Export takes a MusicEncoder or a MusicTagger, got {type(model).__name__}.")
    return {"kind": kind, "tags": list(tags), "sample_rate": int(encoder.sample_rate),
            "clip_samples": int(encoder.num_samples), "embedding_dim": int(encoder.output_dim),
            "keras_music_ssl_version": __version__}


# --------------------------------------------------------------------------- graph


def track_chunks(waveform, clip_samples):
    """(samples,) -> ((chunks, clip_samples), chunks): peak-normalised, zero-padded, split.

    TensorFlow ops, for the track signatures; at least one chunk, even for an empty input.
    """
    import tensorflow as tf

    waveform = tf.reshape(tf.cast(waveform, tf.float32), [-1])
    length = tf.shape(waveform)[0]
    chunks = tf.maximum(1, (length + clip_samples - 1) // clip_samples)
    padded = tf.pad(waveform, [[0, chunks * clip_samples - length]])
    peak = tf.reduce_max(tf.abs(padded))  # zero padding leaves max |x| unchanged
    padded = padded / tf.where(peak > 0, peak, tf.ones_like(peak))
    return tf.reshape(padded, [chunks, clip_samples]), chunks


def _endpoints(model, meta):
    """name -> (function, input signature) for the model's kind."""
    import tensorflow as tf

    clip_samples, dim = meta["clip_samples"], meta["embedding_dim"]
    clips_spec = [tf.TensorSpec([None, clip_samples], tf.float32, name="waveform")]
    track_spec = [tf.TensorSpec([None], tf.float32, name="waveform")]
    tagger = meta["kind"] == "tagger"
    encoder = model.encoder if tagger else model

    def embed(waveform):
        return {"embedding": encoder(waveform, training=False)}

    def embed_track(waveform):
        chunks, count = track_chunks(waveform, clip_samples)
        embeddings = encoder(chunks, training=False)  # (chunks, D)
        return {"embedding": tf.reduce_mean(embeddings, axis=0), "num_chunks": count}

    if not tagger:
        return {"embed": (embed, clips_spec), "embed_track": (embed_track, track_spec)}

    def head(embedding):
        return {"probabilities": model.head(embedding, training=False)}

    def tag(waveform):
        embedding = encoder(waveform, training=False)
        return {"probabilities": model.head(embedding, training=False), "embedding": embedding}

    def tag_track(waveform):
        out = embed_track(waveform)
        mean = out["embedding"][None]  # (1, D): the head sees the mean embedding
        return {**out, "probabilities": model.head(mean, training=False)[0]}

    return {"tag": (tag, clips_spec), "tag_track": (tag_track, track_spec),
            "head": (head, [tf.TensorSpec([None, dim], tf.float32, name="embedding")])}


def _require_tensorflow_backend():
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"Export needs the TensorFlow backend (KERAS_BACKEND={keras.backend.backend()}). "
            "Use keras_music_ssl.export.export(), which exports through a TensorFlow "
            "subprocess, or `kmssl export`.")


def _write_saved_model(model, path, meta, with_metadata=True):
    import keras
    import tensorflow as tf

    _require_tensorflow_backend()
    archive = keras.export.ExportArchive()
    archive.track(model)
    endpoints = _endpoints(model, meta)
    for name, (fn, spec) in endpoints.items():  # the first one is also serving_default
        archive.add_endpoint(name, fn, input_signature=spec)
    if with_metadata:
        def metadata():
            return {"kind": tf.constant(meta["kind"]),
                    "tags": tf.constant(meta["tags"], dtype=tf.string, shape=[len(meta["tags"])]),
                    "sample_rate": tf.constant(meta["sample_rate"], tf.int32),
                    "clip_samples": tf.constant(meta["clip_samples"], tf.int32)}

        archive.add_endpoint("metadata", metadata, input_signature=[])
    archive.write_out(str(path), verbose=False)
    return list(endpoints)


def export_saved_model(model, path):
    """Write a SavedModel of an encoder or tagger (TensorFlow backend). Returns ``path``.

    Besides the ``metadata`` signature, ``assets.extra/`` holds ``tags.txt`` and
    ``keras_music_ssl.json`` for clients that do not run the model to read its tags.
    """
    meta = model_metadata(model)
    _write_saved_model(model, path, meta)
    _write_metadata_files(pathlib.Path(path) / "assets.extra", meta)
    return pathlib.Path(path)


def _metadata_files(meta):
    """name -> text of the files that carry the tags beside (or inside) a model."""
    return {TAGS_FILE: "".join(f"{tag}\n" for tag in meta["tags"]),
            METADATA_FILE: json.dumps(meta, indent=2)}


def _write_metadata_files(folder, meta):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in _metadata_files(meta).items():
        (folder / name).write_text(text)


# --------------------------------------------------------------------------- TFLite


def synthetic_clips(count, clip_samples=64000, sample_rate=16000, seed=0):
    """Varied 4 s test/calibration audio: tones, chords, noise, chirps, clicks, silence.

    Peak-normalised like real inputs (silence stays zero). float32 (count, clip_samples).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(clip_samples) / sample_rate
    clips = np.zeros((count, clip_samples), np.float32)
    for i in range(count):
        kind = i % 6
        if kind == 0:  # a pure tone
            x = np.sin(2 * np.pi * rng.uniform(50, 4000) * t)
        elif kind == 1:  # a chord of decaying harmonic notes
            x = sum(np.exp(-t * rng.uniform(0.5, 3)) * np.sin(2 * np.pi * f0 * k * t) / k
                    for f0 in rng.uniform(80, 800, 3) for k in range(1, 5))
        elif kind == 2:  # coloured noise
            x = np.cumsum(rng.normal(size=clip_samples)) * rng.uniform(0, 1) + rng.normal(size=clip_samples)
            x = x - np.convolve(x, np.ones(64) / 64, mode="same")
        elif kind == 3:  # a chirp
            f0, f1 = rng.uniform(40, 400), rng.uniform(1000, 7900)
            x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1])))
        elif kind == 4:  # a drum-like pattern: clicks with decaying noise over a bass line
            x = np.sin(2 * np.pi * rng.uniform(40, 120) * t)
            beat = int(sample_rate * rng.uniform(0.25, 0.6))
            env = np.exp(-np.arange(beat) / (0.03 * sample_rate))
            for start in range(0, clip_samples - beat, beat):
                x[start:start + beat] += 2 * env * rng.normal(size=beat)
        else:  # silence for a random part, then noise
            x = rng.normal(size=clip_samples) * (t > rng.uniform(0, 3.5))
        peak = np.max(np.abs(x))
        clips[i] = x / peak if peak > 0 else x
    return clips


def _calibration_samples(model, meta, clips):
    """(signature, inputs) pairs for full-integer calibration: every signature gets data."""
    encoder = model.encoder if meta["kind"] == "tagger" else model
    clip, track = ("tag", "tag_track") if meta["kind"] == "tagger" else ("embed", "embed_track")
    samples = [(clip, {"waveform": c[None]}) for c in clips]
    # Tracks of 1 to 3 chunks made of the same clips; the track graph peak-normalises.
    samples += [(track, {"waveform": clips[i:i + 1 + i % 3].reshape(-1)}) for i in range(0, len(clips), 4)]
    if meta["kind"] == "tagger":
        embeddings = np.asarray(encoder.predict(clips, batch_size=8, verbose=0), np.float32)
        samples += [("head", {"embedding": e[None]}) for e in embeddings]
    return samples


def _tflite_bytes(saved_model_dir, signatures, quantization, calibration, network_name):
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
        converter._experimental_calibrate_only = True  # quantised below: the ResNet only
    elif quantization not in (None, "dynamic_int8"):
        raise ValueError(f"Unknown quantization {quantization!r}")
    try:
        with warnings.catch_warnings():
            # TF's calibrator runs tf.lite.Interpreter, which warns that it is deprecated.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            content = converter.convert()
        if quantization == "full_int8":
            content = _quantize_network_only(content, network_name)
        return content
    except Exception as error:
        raise ExportError(f"TFLite conversion ({quantization or 'float32'}) failed: {error}") from error


def _quantize_network_only(calibrated, network_name):
    """Full-integer quantisation of a calibrated model, restricted to the ResNet.

    Int8 activations anywhere before the ResNet would quantise the waveform or the power
    spectrum (a 100 dB range) to 256 levels, and RFFT2D has no int8 kernel anyway. So
    every node outside the ResNet layer's name scope (track chunking, frontend, tag
    head) goes to the quantiser's denylist, as ``tf.lite.experimental.QuantizationDebugger``
    does; the ResNet gets int8 kernels, with float input and output.
    """
    from ai_edge_litert import schema_py_generated as schema
    from tensorflow.lite.python.convert import mlir_quantize

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


def _frontend_constants(frontend):
    """The frontend's large float constants, exactly: STFT window and mel filterbank."""
    window = np.asarray(frontend.window, np.float64)
    if frontend.normalized:  # torchaudio's normalized=True, folded into the window
        window = window / np.sqrt(np.sum(window ** 2))
    filterbank = np.asarray(frontend.mel_filterbank, np.float32)
    return [window.astype(np.float32), filterbank, np.ascontiguousarray(filterbank.T)]


def _float_frontend(content, frontend):
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
    from ai_edge_litert import schema_py_generated as schema

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


def _share_identical_buffers(content):
    """Point tensors with byte-identical constants at one buffer.

    The full-integer quantiser writes a quantised copy of every weight per signature
    (``tag`` and ``tag_track`` hold the same network), doubling the file.
    """
    import hashlib

    from ai_edge_litert import schema_py_generated as schema

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


def export_tflite(model, path, quantization=None, representative=None):
    """Write a ``.tflite`` file of an encoder or tagger (TensorFlow backend).

    ``quantization``: ``None`` (float32), ``"float16"`` (fp16 weights), ``"dynamic_int8"``
    (int8 weights, float activations), ``"full_int8"`` (int8 weights and activations
    where a kernel exists, calibrated on ``representative`` clips (n, clip_samples) or
    ``synthetic_clips``; float fallback elsewhere, float input/output).
    The op list is checked: only TFLite built-ins, no Flex/custom or variable ops.
    """
    meta = model_metadata(model)
    encoder = model.encoder if meta["kind"] == "tagger" else model
    calibration = None
    if quantization == "full_int8":
        clips = (synthetic_clips(48, meta["clip_samples"], meta["sample_rate"])
                 if representative is None else np.asarray(representative, np.float32))
        calibration = _calibration_samples(model, meta, clips)
    with tempfile.TemporaryDirectory() as tmp:
        signatures = _write_saved_model(model, tmp, meta, with_metadata=False)
        content = _tflite_bytes(tmp, signatures, quantization, calibration, encoder.resnet.name)
    if quantization in ("float16", "dynamic_int8"):
        content = _float_frontend(content, encoder.frontend)
    content = _share_identical_buffers(content)
    bad = sorted(set(tflite_operators(content)) & set(_FORBIDDEN_OPS))
    if bad:
        raise ExportError(f"The TFLite model uses ops outside the built-in set: {bad}")
    path = pathlib.Path(path)
    path.write_bytes(content)
    meta["quantization"] = quantization or "float32"
    with zipfile.ZipFile(path, "a") as archive:  # appended after the flatbuffer
        for name, text in _metadata_files(meta).items():
            archive.writestr(name, text)
    return path


# --------------------------------------------------------------------------- public entry


def export(model, path, format="savedmodel", representative=None, overwrite=False):
    """Export ``model`` (``MusicEncoder`` or ``MusicTagger``) to ``path`` in one of ``FORMATS``.

    Under the TensorFlow backend it exports in-process; under JAX or PyTorch it saves the
    model to a temporary ``.keras`` file and exports that in a TensorFlow subprocess.
    The result appears at ``path`` only when complete (written beside it, then renamed).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    import keras

    model_metadata(model)  # type check before any work
    path = pathlib.Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    _remove(partial)
    try:
        if keras.backend.backend() != "tensorflow":
            _export_in_tensorflow(model, partial, format, representative)
        elif format == "savedmodel":
            export_saved_model(model, partial)
        else:
            export_tflite(model, partial, QUANTIZATIONS[format], representative)
        _remove(path)
        os.replace(partial, path)
    finally:
        _remove(partial)
    return path


def _remove(path):
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def export_keras_file(keras_path, path, format="savedmodel", representative=None):
    """Load a ``.keras`` encoder/tagger (saved on any backend) and export it (TF backend)."""
    import keras

    from keras_music_ssl import tagger  # noqa: F401  (registers TagHead / MusicTagger)

    _require_tensorflow_backend()
    model = keras.saving.load_model(str(keras_path))
    return export(model, path, format, representative, overwrite=True)


def _export_in_tensorflow(model, path, format, representative):
    with tempfile.TemporaryDirectory() as tmp:
        keras_path = os.path.join(tmp, "model.keras")
        model.save(keras_path)
        calibration = ""
        if representative is not None:
            calibration = os.path.join(tmp, "representative.npy")
            np.save(calibration, np.asarray(representative, np.float32))
        code = ("import sys, numpy as np; from keras_music_ssl.export import export_keras_file; "
                "export_keras_file(sys.argv[1], sys.argv[2], sys.argv[3], "
                "np.load(sys.argv[4]) if sys.argv[4] else None)")
        package_root = str(pathlib.Path(__file__).resolve().parent.parent)
        env = {**os.environ, "KERAS_BACKEND": "tensorflow",
               "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        done = subprocess.run([sys.executable, "-c", code, keras_path, str(path), format, calibration],
                              env=env, capture_output=True, text=True)
        if done.returncode:
            raise ExportError(f"Export in the TensorFlow subprocess failed:\n{done.stderr[-3000:]}")
    return path


# --------------------------------------------------------------------------- reading


def tflite_operators(model):
    """Sorted op names used by a TFLite model (bytes or path), over all subgraphs.

    Custom ops are reported by their custom code (Flex ops start with ``Flex``) and
    as ``CUSTOM``.
    """
    from ai_edge_litert import schema_py_generated as schema

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


def read_metadata(path):
    """The metadata of an exported model: a SavedModel folder or a ``.tflite`` file."""
    path = _existing_model_path(path)
    if (path / "assets.extra" / METADATA_FILE).is_file():
        return json.loads((path / "assets.extra" / METADATA_FILE).read_text())
    if path.is_dir():
        import tensorflow as tf

        signature = tf.saved_model.load(str(path)).signatures.get("metadata")
        if signature is None:
            raise ExportError(f"{path} has no 'metadata' signature: not exported by keras_music_ssl.")
        return _decode_metadata(signature())
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(METADATA_FILE))
    except (zipfile.BadZipFile, KeyError):
        raise ExportError(f"{path} carries no {METADATA_FILE}: not exported by keras_music_ssl.") from None


def _decode_metadata(outputs):
    return {"kind": outputs["kind"].numpy().decode(),
            "tags": [t.decode() for t in outputs["tags"].numpy()],
            "sample_rate": int(outputs["sample_rate"]), "clip_samples": int(outputs["clip_samples"])}


def _existing_model_path(path):
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No exported model at {path}.")
    if path.is_dir() and not (path / "saved_model.pb").is_file():
        raise ExportError(f"{path} is a folder but not a SavedModel (no saved_model.pb).")
    return path


class SavedModelRunner:
    """Runs an exported SavedModel: ``clips(waveforms)`` and ``track(waveform)`` -> dict."""

    def __init__(self, path):
        import tensorflow as tf

        self.path = _existing_model_path(path)
        self._model = tf.saved_model.load(str(self.path))
        if "metadata" not in self._model.signatures:
            raise ExportError(f"{path} has no 'metadata' signature: not exported by keras_music_ssl.")
        self.metadata = _decode_metadata(self._model.signatures["metadata"]())
        self.signatures = sorted(self._model.signatures)

    def run(self, signature, **inputs):
        outputs = self._model.signatures[signature](**{k: np.asarray(v, np.float32) for k, v in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}

    def clips(self, waveforms):
        return self.run("tag" if self.metadata["kind"] == "tagger" else "embed", waveform=waveforms)

    def track(self, waveform):
        return self.run("tag_track" if self.metadata["kind"] == "tagger" else "embed_track",
                        waveform=waveform)


class TFLiteRunner(SavedModelRunner):
    """Runs an exported ``.tflite`` file with ``ai_edge_litert`` (same interface)."""

    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = _existing_model_path(path)
        self.metadata = read_metadata(self.path)
        try:
            self._interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
        except (ValueError, RuntimeError) as error:
            raise ExportError(f"{path} is not a readable TFLite model: {error}") from None
        self.signatures = sorted(self._interpreter.get_signature_list())
        self._runners = {}

    def run(self, signature, **inputs):
        if signature not in self._runners:
            self._runners[signature] = self._interpreter.get_signature_runner(signature)
        outputs = self._runners[signature](**{k: np.asarray(v, np.float32) for k, v in inputs.items()})
        return {name: np.array(value) for name, value in outputs.items()}


def load_exported(path, num_threads=None):
    """A runner for an exported model: ``SavedModelRunner`` (folder) or ``TFLiteRunner``."""
    path = _existing_model_path(path)
    return SavedModelRunner(path) if path.is_dir() else TFLiteRunner(path, num_threads)
