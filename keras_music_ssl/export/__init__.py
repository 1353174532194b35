"""Export an embedder (``MusicEncoder``) or a tagger (``MusicTagger``, or musicnn's ``PatchTagger``:
``Musicnn``, ``Vgg``) for serving.

Formats (``FORMATS``): a TensorFlow SavedModel (TF Serving, ``tf.saved_model.load``),
TFLite/LiteRT files: ``tflite`` (float32), ``tflite-fp16`` (float16 weights),
``tflite-int8`` (dynamic-range: int8 weights, activations quantised on the fly) and
``tflite-int8-full`` (the ResNet in int8 with activation ranges calibrated on audio), and
``onnx``: a folder of two standard-opset ONNX models (``onnx.py``).
Raw 16 kHz mono float32 waveform in, the log-mel frontend inside the graph, built-in ops
only. In every quantised file the frontend stays float32 (``tflite_rewrite.float_frontend``;
RFFT2D has no int8 kernel, and 8-bit or float16 constants there cost up to 80 / 20 dB).

One file per concern: ``signatures`` (the served functions, in TF ops), ``saved_model``,
``tflite`` (conversion and quantisation), ``tflite_rewrite`` (flatbuffer edits),
``calibration``, ``onnx``, ``metadata`` (what travels with a model), ``runtime`` (running
an export from Python) and ``private_api`` (the non-public TF/LiteRT calls, guarded).

Signatures (the same names in both formats; ``T`` tags, ``D`` embedding width):

- ``embed``: ``waveform`` (batch, 64000) -> ``embedding`` (batch, D)
- ``embed_track``: ``waveform`` (samples,), any length -> ``embedding`` (D,), ``num_chunks``
- ``tag``: ``waveform`` (batch, 64000) -> ``probabilities`` (batch, T), ``embedding``
- ``tag_track``: ``waveform`` (samples,) -> ``probabilities`` (T,), ``embedding``, ``num_chunks``
- ``head``: ``embedding`` (batch, D) -> ``probabilities`` (batch, T)
- ``metadata`` (SavedModel only): no input -> ``kind``, ``tags``, ``sample_rate``, ``clip_samples``,
  ``track_rule``, ``normalize`` (and ``hop_samples``, ``pad_mode`` for ``"patches"``)

Signatures per kind of model (``serving_default`` is ``embed`` or ``tag``):

- embedder (``MusicEncoder``): ``embed``, ``embed_track``;
- tagger (``MusicTagger``): ``tag``, ``tag_track``, ``head``;
- musicnn tagger (``PatchTagger``): ``tag`` (clips of 48,128 samples; ``embedding`` is its
  ``penultimate`` features) and ``tag_track``, no ``head``: its track's tags are the mean of its
  patches' probabilities, not a head applied to one mean feature vector.

Every export's metadata (``metadata.model_metadata``) says how a track is cut: ``track_rule``
``"chunks"`` (below) or ``"patches"`` (musicnn's), and ``normalize`` (whether the track is
peak-normalised first: ``kmssl tag --model`` decodes audio accordingly). Exports written before
these fields read as ``"chunks"`` and ``True``.

The track signatures follow ``keras_music_ssl/track.py``, the one definition that
``embed_files`` also follows (the authors' ``usage/sample.py``, docs/paper.md#track-embeddings): peak-normalise the
whole track (a no-op on the output of ``keras_music_ssl.data.load_audio``), zero-pad at the
end to a multiple of 4 s, embed each consecutive 4 s chunk, average the embeddings, then
apply the tag head to the mean embedding. An empty track is an error: the graph reports it
as ``num_chunks = 0`` (with the finite outputs of one silent chunk) and the runners raise.
The clip signatures take clips as they are (no normalisation).

A musicnn tagger's ``tag_track`` follows ``keras_music_ssl/musicnn/track.py`` instead (the same
numbers as ``model.track``): no normalisation; a track shorter than one patch is repeated until it
fills one; the track is padded by 256 samples at both ends (``pad_mode``, reflect as musicnn's
librosa did) and cut into 48,128-sample patches every 47,872 samples; ``probabilities`` is the
mean of the patches' probabilities, ``embedding`` the mean ``penultimate``, ``num_chunks`` the
number of patches (0 for an empty track, as above). All patches go through the network in one
batch: memory grows with the track (``kmssl tag`` reads at most 600 s by default). Only the float
formats are made for it (``savedmodel``, ``tflite``, ``onnx``): the quantised TFLite formats are
refused, unmeasured. The mel's float16 rounding (``musicnn/frontend.py``) is a CAST to float16
and back in every format (tf2onnx is kept from merging it away: ``onnx.keeping_float16_casts``).

Tag names travel inside the model: the SavedModel's ``metadata`` signature returns them
as a string tensor (and ``assets.extra/`` holds ``tags.txt`` + ``keras_music_ssl.json``);
a ``.tflite`` file carries those two files in a zip archive appended to the flatbuffer,
the way TFLite Support attaches label files: interpreters ignore it, any zip reader (or
``read_metadata``) reads it.

Every export also carries its model card (``card.py``): ``README.md`` (Hub front matter, what the
model is, its signatures as written, tags, training, licence, citation) and an Essentia-style
``model.json`` (classes, schema, sample rate, dataset, metrics), inside a SavedModel or ONNX folder
and as ``<stem>.md`` / ``<stem>.json`` beside a ``.tflite`` file.

On device, a long track is tagged either with ``tag_track`` (dynamic length) or, where
only a fixed 4 s input is wanted, by peak-normalising the whole track, running ``tag``
on each zero-padded 4 s chunk (batch 1, so memory stays constant), averaging the
``embedding`` outputs and running ``head`` on the mean: the same numbers. For a musicnn tagger,
cut the patches as ``musicnn/track.py`` does, run ``tag`` on each and average ``probabilities``.

Export runs on the TensorFlow backend. ``export()`` called under JAX or PyTorch saves the
model to a temporary ``.keras`` file and exports it in a TensorFlow subprocess
(dependencies.md §4e: the ``.keras`` route is the one that converts).
"""

import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

# Importing this package loads numpy only (``kmssl`` reads FORMATS before choosing a
# backend); TensorFlow and LiteRT are imported inside the functions that need them.
from keras_music_ssl.export.calibration import synthetic_clips
from keras_music_ssl.export.metadata import METADATA_FILE, TAGS_FILE, ExportError, model_metadata, read_metadata
from keras_music_ssl.export.onnx import export_onnx, onnx_operators
from keras_music_ssl.export.runtime import OnnxRunner, SavedModelRunner, TFLiteRunner, load_exported
from keras_music_ssl.export.saved_model import export_saved_model
from keras_music_ssl.export.signatures import require_tensorflow_backend, track_chunks
from keras_music_ssl.export.tflite import export_tflite, require_quantizable, tflite_operators

FORMATS = ("savedmodel", "tflite", "tflite-fp16", "tflite-int8", "tflite-int8-full", "onnx")
# format -> quantisation of the TFLite conversion
QUANTIZATIONS = {"tflite": None, "tflite-fp16": "float16", "tflite-int8": "dynamic_int8",
                 "tflite-int8-full": "full_int8"}

__all__ = ["FORMATS", "QUANTIZATIONS", "METADATA_FILE", "TAGS_FILE", "ExportError", "OnnxRunner", "SavedModelRunner",
           "TFLiteRunner", "card_sidecars", "export", "export_keras_file", "export_onnx", "export_saved_model",
           "export_tflite", "exported_schema", "load_exported", "model_metadata", "onnx_operators", "read_metadata", "synthetic_clips",
           "tflite_operators", "track_chunks"]


def export(model, path, format="savedmodel", representative=None, overwrite=False, *, metadata=None,
           probe_results=None, card=True):
    """Export ``model`` (``MusicEncoder``, ``MusicTagger`` or musicnn ``PatchTagger``) to ``path`` in one of
    ``FORMATS`` (a ``PatchTagger``: the float ones; a quantised format is an ExportError before any work).

    Under the TensorFlow backend it exports in-process; under JAX or PyTorch it saves the
    model to a temporary ``.keras`` file and exports that in a TensorFlow subprocess.
    The result appears at ``path`` only when complete (written beside it, then renamed).
    ``overwrite`` replaces only an earlier export (:func:`is_export`), never another file or
    folder; a model with a NaN or infinite weight is refused.

    ``card``: the export carries its model card (``README.md``) and an Essentia-style
    ``model.json`` (tag list, the signatures as written, sample rate, ...: ``card.export_files``),
    inside a SavedModel or ONNX folder (renamed into place with it) and beside a ``.tflite`` file
    as ``<stem>.md`` and ``<stem>.json`` (written once the file is in place; ``overwrite``
    replaces them with it, and files of those names that are not ours stop the export before
    any work). ``metadata``: what the model's preset says about it (``presets.preset_metadata``:
    method, training, licence); ``probe_results``: a ``kmssl probe`` ``results.json`` holding its
    encoder, whose numbers the card shows beside the floors.

    Args:
        model: a ``MusicEncoder``, a ``MusicTagger`` or one of musicnn's taggers.
        path: the ``.tflite`` file, or the SavedModel / ONNX folder, to write.
        format: one of ``FORMATS``: "savedmodel", "tflite", "tflite-fp16", "tflite-int8",
            "tflite-int8-full", "onnx".
        representative: calibration audio for "tflite-int8-full" (waveforms or files).
        overwrite: replace an earlier export at ``path``.
        metadata: the preset's metadata, for the card.
        probe_results: a ``kmssl probe`` ``results.json`` (path or dict), for the card.
        card: write the model card and ``model.json``.

    Returns:
        ``path``, once the export is complete there.

    Raises:
        ExportError: a model, format or path that cannot be exported (one line).

    Examples:
        >>> import numpy as np
        >>> from keras_music_ssl import MusicEncoder
        >>> from keras_music_ssl.export import export, load_exported
        >>> encoder = MusicEncoder(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32)  # tiny
        >>> path = export(encoder, "embedder.tflite", "tflite")
        >>> runner = load_exported("embedder.tflite")
        >>> runner.track(np.ones(16000 * 10, "float32"))["embedding"].shape
        (32,)
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    import keras

    from keras_music_ssl import storage
    from keras_music_ssl.presets import require_finite_weights

    meta = model_metadata(model)  # type check before any work
    if format in QUANTIZATIONS:
        require_quantizable(meta, QUANTIZATIONS[format])
    require_finite_weights(model, f"the {type(model).__name__} to export")
    path = pathlib.Path(path)
    storage.check_output(path, "file" if format.startswith("tflite") else "folder", "the export path")
    with storage.locked(path, folder=False):
        if os.path.lexists(path):
            if not overwrite:
                raise storage.OutputExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it.")
            if not is_export(path):
                raise storage.StorageError(f"{path} is not an export of keras_music_ssl; not replacing it "
                                           "(remove it yourself, or choose another output)")
        sidecars = card_sidecars(path) if card and format.startswith("tflite") else {}
        for sidecar in sidecars.values():  # before any work, as the checks above
            if os.path.lexists(sidecar) and not _own_sidecar(sidecar):
                raise storage.StorageError(f"{sidecar} is not a model card of keras_music_ssl; not replacing it with "
                                           f"the card of {path.name} (move it, or choose another output)")
        with storage.atomic_target(path, ".tflite" if format.startswith("tflite") else "") as partial:
            if keras.backend.backend() != "tensorflow":
                _export_in_tensorflow(model, partial, format, representative)
            elif format == "savedmodel":
                export_saved_model(model, partial)
            elif format == "onnx":
                export_onnx(model, partial)
            else:
                export_tflite(model, partial, QUANTIZATIONS[format], representative)
            cards = _card_texts(model, partial, format, metadata, probe_results) if card else {}
            if partial.is_dir():
                storage.mark_output(partial, "export", format=format)
                for name, text in cards.items():
                    storage.write_text(partial / FOLDER_CARD_FILES[name], text)
            if os.path.lexists(path) and partial.is_dir() != path.is_dir():  # another format: checked ours above
                stale = [] if path.is_dir() else [p for p in card_sidecars(path).values() if _own_sidecar(p)]
                storage.remove_output(path, "export", recognise=is_export)
                for old in stale:  # the card of the file export this folder replaces
                    old.unlink(missing_ok=True)
        for name, sidecar in sidecars.items():  # the .tflite file is in place: its card beside it
            storage.write_text(sidecar, cards[name])
    return path


FOLDER_CARD_FILES = {"card": "README.md", "json": "model.json"}


def card_sidecars(path):
    """The card files beside a ``.tflite`` export: ``<stem>.md`` and ``<stem>.json`` (Essentia ships
    a model file and its ``.json`` side by side)."""
    path = pathlib.Path(path)
    stem = path.name if path.suffix in (".md", ".json") else path.stem  # never the model file itself
    return {"card": path.with_name(f"{stem}.md"), "json": path.with_name(f"{stem}.json")}


def _own_sidecar(path):
    from keras_music_ssl.card import is_generated, is_own_json

    path = pathlib.Path(path)
    return not path.is_symlink() and path.is_file() and (is_own_json(path) if path.suffix == ".json"
                                                         else is_generated(path))


def _card_texts(model, written, format, metadata, probe_results):
    """``{"card": README text, "json": model.json text}`` of the export just written at ``written``."""
    from keras_music_ssl import storage
    from keras_music_ssl.card import export_files

    readme, data = export_files(model, format, exported_schema(written, format), metadata, probe_results)
    return {"card": readme, "json": storage.dumps_json(data)}


def exported_schema(path, format):
    """``{signature: {"inputs": [...], "outputs": [...]}}`` of an export, read back from its files:
    each tensor's ``name``, ``dtype`` and ``shape`` (None for a dimension of any size)."""
    path = pathlib.Path(path)
    if format == "savedmodel":
        return _saved_model_schema(path)
    if format == "onnx":
        return _onnx_schema(path)
    return _tflite_schema(path)


def _tensor(name, dtype, shape):
    return {"name": name, "dtype": dtype,
            "shape": None if shape is None else [None if d is None or d < 0 else int(d) for d in shape]}


def _saved_model_schema(path):
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    # The signature defs of saved_model.pb: what TF Serving exposes, without loading the graph.
    proto = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    schema = {}
    for name, signature in sorted(proto.meta_graphs[0].signature_def.items()):
        if name.startswith("__"):  # TF's own (__saved_model_init_op)
            continue
        schema[name] = {side: [_tensor(key, tf.dtypes.as_dtype(info.dtype).name, None if info.tensor_shape.unknown_rank
                                       else [d.size for d in info.tensor_shape.dim])
                               for key, info in sorted(getattr(signature, side).items())]
                        for side in ("inputs", "outputs")}
    return schema


def _tflite_schema(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    schema = {}
    for name in sorted(interpreter.get_signature_list()):
        runner = interpreter.get_signature_runner(name)
        schema[name] = {side: [_tensor(key, np.dtype(detail["dtype"]).name, detail["shape_signature"])
                               for key, detail in sorted(details.items())]
                        for side, details in (("inputs", runner.get_input_details()),
                                              ("outputs", runner.get_output_details()))}
    return schema


def _onnx_schema(path):
    import onnx
    from onnx import helper

    from keras_music_ssl.export.onnx import signature_files

    def tensors(values, constants):
        out = []
        for value in values:
            if value.name in constants:
                continue
            kind = value.type.tensor_type
            dtype = ("string" if kind.elem_type == onnx.TensorProto.STRING
                     else np.dtype(helper.tensor_dtype_to_np_dtype(kind.elem_type)).name)
            shape = ([d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim]
                     if kind.HasField("shape") else None)
            out.append(_tensor(value.name, dtype, shape))
        return out

    schema = {}
    for signature, file in signature_files(read_metadata(path)).items():
        if not (path / file).is_file():  # head.onnx: since 0.9
            continue
        graph = onnx.load(str(path / file), load_external_data=False).graph
        constants = {init.name for init in graph.initializer}
        schema[signature] = {"file": file, "inputs": tensors(graph.input, constants),
                             "outputs": tensors(graph.output, constants)}
    return schema


def is_export(path):
    """True for what :func:`export` writes: a folder with its marker, a SavedModel or ONNX folder
    carrying keras_music_ssl's metadata (exports older than the marker), or a ``.tflite`` file
    carrying it."""
    from keras_music_ssl import storage

    path = pathlib.Path(path)
    if path.is_symlink():
        return False
    if path.is_dir():
        return storage.made_by(path) == "export" or (path / "assets.extra" / METADATA_FILE).is_file() or (
            (path / "clips.onnx").is_file() and (path / METADATA_FILE).is_file())
    try:
        read_metadata(path)
        return True
    except (ExportError, OSError):
        return False


def export_keras_file(keras_path, path, format="savedmodel", representative=None, card=True):
    """Load a ``.keras`` encoder/tagger/musicnn tagger (saved on any backend) and export it (TF backend)."""
    import keras

    require_tensorflow_backend()  # importing keras_music_ssl registered every class load_model may meet
    model = keras.saving.load_model(str(keras_path))
    return export(model, path, format, representative, overwrite=True, card=card)


def _export_in_tensorflow(model, path, format, representative):
    with tempfile.TemporaryDirectory() as tmp:
        keras_path = os.path.join(tmp, "model.keras")
        model.save(keras_path)
        calibration = ""
        if representative is not None:
            calibration = os.path.join(tmp, "representative.npy")
            np.save(calibration, np.asarray(representative, np.float32))
        # card=False: the calling process writes the card, beside the final path it alone knows.
        code = ("import sys, numpy as np; from keras_music_ssl.export import export_keras_file; "
                "export_keras_file(sys.argv[1], sys.argv[2], sys.argv[3], "
                "np.load(sys.argv[4]) if sys.argv[4] else None, card=False)")
        package_root = str(pathlib.Path(__file__).resolve().parents[2])  # the folder holding keras_music_ssl/
        env = {**os.environ, "KERAS_BACKEND": "tensorflow",
               "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        done = subprocess.run([sys.executable, "-c", code, keras_path, str(path), format, calibration],
                              env=env, capture_output=True, text=True)
        if done.returncode:  # the exception's own line first: the CLI prints one line
            last = ([line for line in done.stderr.splitlines() if line.strip()] or ["no output"])[-1]
            raise ExportError(f"export in the TensorFlow subprocess failed: {last}\n{done.stderr[-3000:]}")
    return path
