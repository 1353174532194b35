"""What every embedder offers the code that runs it: its clip length and its embedding width.

An embedder is a ``MusicEncoder``, the probe's ``LogMelStats``, a musicnn ``PatchFeatures`` or any
Keras model from ``(batch, samples)`` waveforms to ``(batch, D)`` embeddings. The library's own
hold ``num_samples`` and ``output_dim``; a plain Keras model is read from its input and output
shapes. One home for the two questions, asked by ``embed.py``, ``embed_beam.py`` and the pretext
models.
"""


def clip_samples(model):
    """Samples per input clip (64,000 for the paper's 4 s at 16 kHz)."""
    return int(getattr(model, "num_samples", None) or model.input_shape[-1])


def embedding_dim(model):
    """Width ``D`` of the embeddings; ``ValueError`` when the model does not say."""
    dim = getattr(model, "output_dim", None)
    if not dim:
        try:
            dim = model.output_shape[-1]
        except (AttributeError, ValueError):  # a subclassed model that was never called
            dim = None
    if not dim:
        raise ValueError(f"Cannot tell the embedding size of {getattr(model, 'name', type(model).__name__)!r}.")
    return int(dim)
