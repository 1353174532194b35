"""The HEAR 2021 API over a preset, so any HEAR task runs with the existing ``heareval`` kit.

    import keras_music_ssl.hear as hear
    model = hear.load_model("path/to/preset")        # a preset folder (or a named preset)
    scene = hear.get_scene_embeddings(audio, model)  # (n_sounds, D)
    emb, ts = hear.get_timestamp_embeddings(audio, model)   # (n_sounds, n_times, D), (n_sounds, n_times) ms

``audio`` is a float32 tensor ``(n_sounds, n_samples)`` at 16 kHz in the model's framework
(``torch.Tensor`` on the PyTorch backend, ``tf.Tensor`` on TensorFlow); the outputs are float32
tensors of the same framework. Validate with ``hear-validator keras_music_ssl.hear -m PRESET``.

- Scene embedding: the library's track embedding (``track.py``): peak-normalise each sound,
  zero-pad to whole 4 s chunks, mean of the chunk embeddings.
- Timestamp embeddings: one 4 s window centred on each timestamp ``t_k = k * hop``,
  ``k = 0 .. floor(duration / hop)``, the sound zero-padded by 2 s on both sides; ``hop`` is
  :data:`TIMESTAMP_HOP_MS` (250 ms; ``load_model(..., hop_ms=50)`` for HEAR's suggested 50 ms
  at 5x the cost). Window starts are rounded per window, so they never drift.

``load_model`` returns a ``torch.nn.Module`` on the PyTorch backend and a ``tf.Module`` on
TensorFlow (what the HEAR validator accepts), holding the Keras encoder as ``.encoder``; with
no path, the paper's encoder with a seeded random init.
"""

import keras
import numpy as np

from keras_music_ssl.embed import embed_chunks
from keras_music_ssl.track import chunk_waveform, peak_normalize

TIMESTAMP_HOP_MS = 250.0
BATCH_SIZE = 32


def _module_base():
    """The framework module class the HEAR validator checks for (the one backend switch here)."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return torch.nn.Module
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.Module
    return object


class HearModel(_module_base()):
    """A ``MusicEncoder`` with the attributes the HEAR API asks for."""

    def __init__(self, encoder, hop_ms=TIMESTAMP_HOP_MS):
        super().__init__()
        self.encoder = encoder
        self.sample_rate = int(encoder.sample_rate)
        self.scene_embedding_size = int(encoder.output_dim)
        self.timestamp_embedding_size = int(encoder.output_dim)
        self.hop_ms = float(hop_ms)
        if self.hop_ms <= 0:
            raise ValueError(f"hop_ms must be positive, got {hop_ms}")


def load_model(model_file_path="", hop_ms=TIMESTAMP_HOP_MS):
    """A :class:`HearModel` from a preset folder or name ('' : the paper's encoder, random init)."""
    from keras_music_ssl.backbone import MusicEncoder

    if model_file_path:
        encoder = MusicEncoder.from_preset(model_file_path)
    else:
        keras.utils.set_random_seed(0)
        encoder = MusicEncoder()
    return HearModel(encoder, hop_ms)


def _audio(audio):
    x = np.asarray(keras.ops.convert_to_numpy(audio), np.float32)
    if x.ndim != 2:
        raise ValueError(f"audio must be (n_sounds, n_samples), got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError("audio has no samples")
    return x


def _tensor(array):
    return keras.ops.convert_to_tensor(np.ascontiguousarray(array, np.float32), dtype="float32")


def get_scene_embeddings(audio, model):
    """(n_sounds, n_samples) -> (n_sounds, scene_embedding_size): the track embedding of each sound."""
    x = _audio(audio)
    chunks = np.stack([chunk_waveform(peak_normalize(sound), model.encoder.num_samples) for sound in x])
    n, k, length = chunks.shape
    outputs = embed_chunks(model.encoder, chunks.reshape(n * k, length), BATCH_SIZE)
    return _tensor(outputs.reshape(n, k, -1).mean(axis=1))


def timestamps_ms(num_samples, sample_rate, hop_ms=TIMESTAMP_HOP_MS):
    """Window centres in ms: ``k * hop_ms`` for k = 0 .. floor(duration / hop)."""
    count = int(np.floor(num_samples * 1000.0 / sample_rate / hop_ms + 1e-9)) + 1
    return np.arange(count) * hop_ms


def get_timestamp_embeddings(audio, model):
    """(n_sounds, n_samples) -> embeddings (n_sounds, n_times, D), timestamps (n_sounds, n_times) in ms."""
    x = _audio(audio)
    window = model.encoder.num_samples
    times = timestamps_ms(x.shape[1], model.sample_rate, model.hop_ms)
    starts = np.round(times * model.sample_rate / 1000.0).astype(np.int64)  # in the padded signal
    embeddings = []
    for sound in x:
        padded = np.pad(peak_normalize(sound), (window // 2, window - window // 2))
        windows = np.stack([padded[s:s + window] for s in starts])
        embeddings.append(embed_chunks(model.encoder, windows, BATCH_SIZE))
    return _tensor(np.stack(embeddings)), _tensor(np.tile(times, (len(x), 1)))
