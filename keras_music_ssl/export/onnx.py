"""ONNX export: a folder of standard-opset ONNX models, raw 16 kHz audio in.

    clips.onnx              ``embed`` / ``tag``: ``waveform`` (batch, 64000; musicnn's 48128), any batch
    track.onnx              ``embed_track`` / ``tag_track``: ``waveform`` (samples,), any length
    head.onnx               ``head`` (a tagger of the chunks rule, 0.9 on): ``embedding`` (batch, D) ->
                            ``probabilities``: the tags of a mean embedding, so a timeline's windows
                            give the track's tags without a second pass (``timeline.py``)
    tags.txt, keras_music_ssl.json

ONNX holds one graph per file, hence one file per kind of call the other exports
serve as signatures (``signatures.py``, the same functions). The frontend is inside both
graphs with its DFT as a matrix product (``LogMelSpectrogram(dft="matmul")``: tf2onnx cannot
convert the RFFT of an STFT), so only standard ONNX ops are used and every runtime runs the
files: onnxruntime (Python, C++, Java, C#), onnxruntime-node and onnxruntime-web.

Tag names travel twice: in ``metadata_props`` (``keras_music_ssl``: the JSON of
``metadata.model_metadata``; ``tags``: one per line), which onnxruntime's Python, C++,
Java and C# APIs read, and, for a tagger, as a constant string output ``tags`` of every
graph, for runtimes that expose no model metadata (onnxruntime-node / -web).

Conversion runs on the TensorFlow backend (tf2onnx, the ``onnx`` extra); ``export()``
under JAX or PyTorch goes through a ``.keras`` file and a TensorFlow subprocess, as the
other formats do.
"""

import contextlib
import json
import pathlib

from keras_music_ssl.export.metadata import ONNX_CLIPS_FILE, ExportError, model_metadata, write_metadata_files
from keras_music_ssl.export.private_api import private_api
from keras_music_ssl.export.signatures import endpoints, require_tensorflow_backend

OPSET = 17
FILES = {"clips": ONNX_CLIPS_FILE, "track": "track.onnx", "head": "head.onnx"}  # kind of call -> file
SIGNATURES = {"embedder": {"clips": "embed", "track": "embed_track"},
              "tagger": {"clips": "tag", "track": "tag_track", "head": "head"}}


def signature_files(meta):
    """``{signature: file name}`` an ONNX export of this metadata holds (musicnn's taggers have no head;
    exports before 0.9 lack ``head.onnx``: callers check the file exists)."""
    chunks = meta.get("track_rule", "chunks") == "chunks"
    return {signature: FILES[call] for call, signature in SIGNATURES[meta["kind"]].items()
            if call != "head" or chunks}
INSTALL_HINT = "ONNX export needs the onnx extra: pip install 'keras-music-ssl[onnx]'"


def convertible(model):
    """The same model with the frontend's DFT as a matrix product (no weights change)."""
    from keras_music_ssl.tagger import MusicTagger

    if isinstance(model, MusicTagger):
        encoder = _matmul_dft(model.encoder)
        return model if encoder is model.encoder else MusicTagger(encoder, model.head)
    return _matmul_dft(model)


def _matmul_dft(model):
    """A ``MusicEncoder`` or musicnn ``PatchTagger`` (both keep their frontend's arguments under
    ``frontend`` in their config) rebuilt with ``dft="matmul"``, its weights copied."""
    if model.frontend.dft == "matmul":
        return model
    config = model.get_config()
    clone = type(model).from_config({**config, "frontend": {**config["frontend"], "dft": "matmul"}})
    clone.set_weights(model.get_weights())
    return clone


def export_onnx(model, path):
    """Write the ONNX folder of an encoder or tagger (TensorFlow backend). Returns ``path``."""
    require_tensorflow_backend()
    try:
        import onnx
        import tensorflow as tf
        import tf2onnx
    except ImportError as error:
        raise ExportError(f"{INSTALL_HINT} ({error})") from None

    meta = model_metadata(model)
    model = convertible(model)
    functions = endpoints(model, meta)
    # musicnn's frontend rounds its mel to float16 (a cast there and back), which tf2onnx would merge away.
    rounds = any(getattr(layer, "float16_mel", False) for layer in model.layers)
    path = pathlib.Path(path)
    path.mkdir(parents=True)
    for signature, file in signature_files(meta).items():
        fn, spec = functions[signature]
        try:
            with keeping_float16_casts(rounds):
                proto, _ = tf2onnx.convert.from_function(tf.function(fn), input_signature=spec, opset=OPSET)
        except ExportError:
            raise
        except Exception as error:  # tf2onnx raises bare ValueError / KeyError on unsupported graphs
            raise ExportError(f"ONNX conversion of {signature!r} failed: {error}") from error
        if rounds and not float16_casts(proto):
            raise ExportError(f"ONNX conversion of {signature!r} dropped the float16 rounding of the mel.")
        proto = with_metadata(without_unused_opsets(proto), meta, signature)
        check_standard_ops(proto)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(path / file))
    write_metadata_files(path, meta)
    return path


@contextlib.contextmanager
def keeping_float16_casts(needed=True):
    """Convert without tf2onnx's back-to-back optimiser, which merges ``Cast(float16)`` then
    ``Cast(float)`` into one cast (it counts float16 as lossless), dropping a rounding the model does
    on purpose (musicnn's mel). Its optimiser table is private: a release without it is an ExportError."""
    if not needed:
        yield
        return
    module = private_api("tf2onnx.optimizer", purpose="ONNX export of a float16-rounding frontend")
    table = getattr(module, "_optimizers", None)
    if not isinstance(table, dict) or "remove_back_to_back" not in table:
        raise ExportError("ONNX export of musicnn's models needs tf2onnx's optimizer table "
                          "(tf2onnx.optimizer._optimizers) to keep the float16 rounding of the mel; the installed "
                          "tf2onnx has none: install the version pyproject.toml pins.")
    module._optimizers = type(table)((k, v) for k, v in table.items() if k != "remove_back_to_back")
    try:
        yield
    finally:
        module._optimizers = table


def float16_casts(proto):
    """The ``Cast`` nodes of a graph that cast to float16."""
    from onnx import TensorProto

    return [node for node in proto.graph.node if node.op_type == "Cast"
            and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in node.attribute)]


def without_unused_opsets(proto):
    """Drop opset imports no node uses (tf2onnx always declares ``ai.onnx.ml``)."""
    used = {node.domain for node in proto.graph.node} | {""}
    kept = [entry for entry in proto.opset_import if entry.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    return proto


def with_metadata(proto, meta, signature):
    """``metadata_props`` and, for a tagger, the constant string output ``tags``."""
    from onnx import TensorProto, helper

    for key, value in {"keras_music_ssl": json.dumps({**meta, "signature": signature}),
                       "tags": "\n".join(meta["tags"])}.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (f"keras_music_ssl {meta['kind']} ({signature}): raw {meta['sample_rate']} Hz mono "
                        f"float32 waveform in, log-mel frontend inside.")
    if meta["tags"]:
        tags = helper.make_tensor("tags_value", TensorProto.STRING, [len(meta["tags"])],
                                  [tag.encode() for tag in meta["tags"]])
        proto.graph.node.append(helper.make_node("Constant", [], ["tags"], value=tags, name="tags"))
        proto.graph.output.append(helper.make_tensor_value_info("tags", TensorProto.STRING, [len(meta["tags"])]))
    return proto


def onnx_operators(proto):
    """Sorted ``(domain, op_type)`` pairs of a model's graph (``""`` is the standard domain)."""
    return sorted({(node.domain, node.op_type) for node in proto.graph.node})


def check_standard_ops(proto):
    """Refuse a graph with a custom domain or an op outside the standard ONNX set."""
    import onnx

    custom = [f"{domain}::{op}" for domain, op in onnx_operators(proto)
              if domain not in ("", "ai.onnx") or not onnx.defs.has(op)]
    imports = [entry.domain for entry in proto.opset_import if entry.domain not in ("", "ai.onnx")]
    if custom or imports:
        raise ExportError(f"The ONNX graph uses non-standard ops {custom} or opsets {imports}")
