"""Running an exported model from Python: the same interface for a SavedModel folder and a
``.tflite`` file (``clips(waveforms)``, ``track(waveform)``, ``run(signature, **inputs)``)."""

import numpy as np

from keras_music_ssl.export.metadata import ExportError, decode_metadata, existing_model_path, read_metadata
from keras_music_ssl.track import require_samples


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

    def clips(self, waveforms):
        return self.run("tag" if self.metadata["kind"] == "tagger" else "embed", waveform=waveforms)

    def track(self, waveform):
        """The track signature; an empty waveform raises ``track.UnusableTrack`` (``empty``), as
        in Python (the graph itself reports it as ``num_chunks = 0``)."""
        require_samples(waveform)
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


def load_exported(path, num_threads=None):
    """A runner for an exported model: ``SavedModelRunner`` (folder) or ``TFLiteRunner``."""
    path = existing_model_path(path)
    return SavedModelRunner(path) if path.is_dir() else TFLiteRunner(path, num_threads)
