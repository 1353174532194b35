"""Running an exported model from Python: the same interface for a SavedModel folder, a
``.tflite`` file and an ONNX folder (``clips(waveforms)``, ``track(waveform)``,
``run(signature, **inputs)``)."""

import numpy as np

from keras_music_ssl.export.metadata import (ExportError, decisions, decode_metadata, existing_model_path,
                                             is_onnx_folder, read_metadata)
from keras_music_ssl.track import UnusableTrack, require_samples


class SavedModelRunner:
    """Runs an exported SavedModel: ``clips(waveforms)`` and ``track(waveform)`` -> dict."""

    def __init__(self, path):
        import tensorflow as tf

        self.path = existing_model_path(path)
        self._model = tf.saved_model.load(str(self.path))
        if "metadata" not in self._model.signatures:
            raise ExportError(f"{path} has no 'metadata' signature: not exported by keras_music_ssl.")
        self.metadata = decode_metadata(self._model.signatures["metadata"]())
        self.signatures = sorted(self._model.signatures)

    def run(self, signature, **inputs):
        outputs = self._model.signatures[signature](**{k: np.asarray(v, np.float32) for k, v in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}

    def decide(self, probabilities):
        """Boolean decisions of the export's thresholds (``metadata.decisions``), or None without them."""
        return decisions(self.metadata, probabilities)

    def clips(self, waveforms):
        return self.run("tag" if self.metadata["kind"] == "tagger" else "embed", waveform=waveforms)

    def track(self, waveform):
        """The track signature; an empty waveform raises ``track.UnusableTrack`` (``empty``), as
        in Python (the graph itself reports it as ``num_chunks = 0``); so does, for musicnn's
        ``"patches"`` rule, a waveform with NaN or infinite samples (``non_finite``), as its
        ``model.track`` does."""
        require_samples(waveform)
        if self.metadata.get("track_rule") == "patches" and not np.all(np.isfinite(waveform)):
            raise UnusableTrack("non_finite", "the waveform holds NaN or infinite samples")
        return self.run("tag_track" if self.metadata["kind"] == "tagger" else "embed_track",
                        waveform=waveform)


class TFLiteRunner(SavedModelRunner):
    """Runs an exported ``.tflite`` file with ``ai_edge_litert`` (same interface)."""

    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = existing_model_path(path)
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


class OnnxRunner(SavedModelRunner):
    """Runs an ONNX export folder with onnxruntime (same interface; sessions made on first use).

    Its signatures are those of the other formats: ``embed`` / ``tag`` run ``clips.onnx``,
    ``embed_track`` / ``tag_track`` run ``track.onnx``, ``head`` runs ``head.onnx`` (a tagger's).
    """

    def __init__(self, path, num_threads=None):
        from keras_music_ssl.export.onnx import signature_files

        self.path = existing_model_path(path)
        self.metadata = read_metadata(self.path)
        self.num_threads = num_threads
        self._files = {signature: self.path / file for signature, file in signature_files(self.metadata).items()
                       if (self.path / file).is_file()}
        self.signatures = sorted(self._files)
        self._sessions = {}

    def session(self, signature):
        if signature not in self._sessions:
            try:
                import onnxruntime
            except ImportError:
                raise ExportError("Running an ONNX export needs onnxruntime: "
                                  "pip install 'keras-music-ssl[onnx]'") from None
            options = onnxruntime.SessionOptions()
            if self.num_threads:
                options.intra_op_num_threads = self.num_threads
            self._sessions[signature] = onnxruntime.InferenceSession(
                str(self._files[signature]), options, providers=["CPUExecutionProvider"])
        return self._sessions[signature]

    def run(self, signature, **inputs):
        session = self.session(signature)
        names = [output.name for output in session.get_outputs() if output.name != "tags"]
        outputs = session.run(names, {k: np.asarray(v, np.float32) for k, v in inputs.items()})
        return dict(zip(names, outputs))


def load_exported(path, num_threads=None):
    """A runner for an exported model: ``SavedModelRunner`` or ``OnnxRunner`` (folders) or
    ``TFLiteRunner`` (a file).

    Args:
        path: a ``.tflite`` file, a SavedModel folder or an ONNX folder written by ``export``.
        num_threads: threads of the TFLite interpreter / onnxruntime (None: theirs).

    Returns:
        A runner with ``metadata`` (kind, tags, thresholds, ...), ``clips(waveforms)`` (4 s
        clips, ``(batch, 64000)``), ``track(waveform)`` (a whole track: the mean of its 4 s
        chunks' embeddings, and the tags of that mean), ``run(signature, **inputs)`` and
        ``decide(probabilities)``, each output a dict of numpy arrays.

    Raises:
        ExportError: a path that is not an export, or whose metadata is damaged.

    Examples:
        >>> import numpy as np
        >>> from keras_music_ssl import MusicEncoder
        >>> from keras_music_ssl.export import export, load_exported
        >>> from keras_music_ssl.tagger import MusicTagger, TagHead
        >>> encoder = MusicEncoder(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32)  # tiny
        >>> path = export(MusicTagger(encoder, TagHead(["piano", "drums"])), "tagger.tflite", "tflite")
        >>> runner = load_exported("tagger.tflite")
        >>> runner.metadata["tags"] == ["piano", "drums"]  # the names travel with the export
        True
        >>> out = runner.track(np.ones(16000 * 10, "float32"))  # 10 s: 3 chunks of 4 s
        >>> out["probabilities"].shape, int(out["num_chunks"])
        ((2,), 3)
    """
    path = existing_model_path(path)
    if path.is_dir():
        return OnnxRunner(path, num_threads) if is_onnx_folder(path) else SavedModelRunner(path)
    return TFLiteRunner(path, num_threads)
