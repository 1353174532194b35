"""PyTorch state_dict -> MusicEncoder weights, strictly.

Keys are those of the paper's ``Backbone`` module with any checkpoint prefix already
removed: ``embedding.conv1.weight``, ``embedding.layer1.0.downsample.1.running_var``,
``embedding.attnpool.q_proj.bias``, ... plus the torchaudio frontend buffers
``spec.spec.spectrogram.window`` and ``spec.spec.mel_scale.fb``, which are checked against
the Keras frontend rather than loaded (the Keras frontend builds its own constants).

Values may be torch tensors or numpy arrays; torch itself is not imported here.
"""

import numpy as np

WINDOW_KEY = "spec.spec.spectrogram.window"
FILTERBANK_KEY = "spec.spec.mel_scale.fb"


class StateDictMismatchError(ValueError):
    """The state_dict does not fit the encoder: names the missing, unexpected and mis-shaped keys."""

    def __init__(self, missing=(), unexpected=(), mismatched=()):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = ["The PyTorch state_dict does not match the Keras encoder:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        for key, expected, got in self.mismatched:
            lines.append(f"  wrong shape for {key}: expected {expected}, got {got}")
        super().__init__("\n".join(lines))


def _to_numpy(value):
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _conv(t):  # (out, in, kh, kw) -> (kh, kw, in, out)
    return np.transpose(t, (2, 3, 1, 0))


def _linear(t):  # (out, in) -> (in, out)
    return np.transpose(t)


def _same(t):
    return t


def _conv_entries(prefix, conv):
    return [(f"{prefix}.weight", conv.kernel, _conv)]


def _bn_entries(prefix, bn):
    return [
        (f"{prefix}.weight", bn.gamma, _same),
        (f"{prefix}.bias", bn.beta, _same),
        (f"{prefix}.running_mean", bn.moving_mean, _same),
        (f"{prefix}.running_var", bn.moving_variance, _same),
    ]


def _linear_entries(prefix, dense):
    return [(f"{prefix}.weight", dense.kernel, _linear), (f"{prefix}.bias", dense.bias, _same)]


def torch_weight_map(encoder, prefix="embedding"):
    """[(torch key, keras variable, numpy transform)] for every weight of ``encoder.resnet``."""
    resnet = encoder.resnet
    entries = []
    for i in (1, 2, 3):
        entries += _conv_entries(f"{prefix}.conv{i}", getattr(resnet, f"conv{i}"))
        entries += _bn_entries(f"{prefix}.bn{i}", getattr(resnet, f"bn{i}"))
    for li in (1, 2, 3, 4):
        for bi, block in enumerate(getattr(resnet, f"layer{li}")):
            p = f"{prefix}.layer{li}.{bi}"
            for i in (1, 2, 3):
                entries += _conv_entries(f"{p}.conv{i}", getattr(block, f"conv{i}"))
                entries += _bn_entries(f"{p}.bn{i}", getattr(block, f"bn{i}"))
            if block.downsample is not None:
                entries += _conv_entries(f"{p}.downsample.0", block.downsample[0])
                entries += _bn_entries(f"{p}.downsample.1", block.downsample[1])
    pool = resnet.attnpool
    entries.append((f"{prefix}.attnpool.positional_embedding", pool.positional_embedding, _same))
    for name in ("q_proj", "k_proj", "v_proj", "c_proj"):
        entries += _linear_entries(f"{prefix}.attnpool.{name}", getattr(pool, name))
    return entries


def _is_bookkeeping(key):
    # BatchNorm's integer step counter has no Keras counterpart and no effect in eval mode.
    return key.endswith(".num_batches_tracked")


def load_torch_state_dict(encoder, state_dict, strict=True):
    """Copy a PyTorch ``Backbone`` state_dict (prefix removed) into ``encoder`` in place.

    With ``strict`` (the default) every backbone tensor must be present with the right
    shape and no unknown key may remain; otherwise ``StateDictMismatchError`` lists each
    offending key and nothing is assigned. Returns a dict with the frontend buffers found
    (``window``, ``mel_filterbank``, as numpy, or None) so callers can check them with
    ``frontend_mismatch``.
    """
    state = {k: v for k, v in state_dict.items() if not _is_bookkeeping(k)}
    frontend = {
        "window": _to_numpy(state.pop(WINDOW_KEY)) if WINDOW_KEY in state else None,
        "mel_filterbank": _to_numpy(state.pop(FILTERBANK_KEY)) if FILTERBANK_KEY in state else None,
    }
    entries = torch_weight_map(encoder)
    expected = {key for key, _, _ in entries}
    missing = [key for key, _, _ in entries if key not in state]
    unexpected = sorted(set(state) - expected)
    assignments, mismatched = [], []
    for key, variable, transform in entries:
        if key not in state:
            continue
        value = transform(_to_numpy(state[key]).astype(np.float32))
        if tuple(value.shape) != tuple(variable.shape):
            torch_shape = tuple(_to_numpy(state[key]).shape)
            mismatched.append((key, _torch_shape(transform, variable.shape), torch_shape))
            continue
        assignments.append((variable, value))
    # A wrong shape can never be loaded; missing/unexpected keys are tolerated if not strict.
    if mismatched or (strict and (missing or unexpected)):
        raise StateDictMismatchError(missing if strict else (), unexpected if strict else (),
                                     mismatched)
    for variable, value in assignments:
        variable.assign(value)
    return frontend


def _torch_shape(transform, keras_shape):
    """The PyTorch shape that maps onto ``keras_shape`` (for error messages)."""
    if transform is _conv:
        kh, kw, cin, cout = keras_shape
        return (cout, cin, kh, kw)
    if transform is _linear:
        return tuple(reversed(keras_shape))
    return tuple(keras_shape)


def frontend_mismatch(encoder, window=None, mel_filterbank=None, atol=1e-5):
    """Describe how stored torchaudio buffers differ from the encoder's frontend, or None.

    ``window`` is the un-normalised periodic Hann window (n_fft,), ``mel_filterbank`` is
    torchaudio's (n_freqs, n_mels) ``fb``.
    """
    problems = []
    frontend = encoder.frontend
    for name, stored, own in (("window", window, frontend.window),
                              ("mel filterbank", mel_filterbank, frontend.mel_filterbank)):
        if stored is None:
            continue
        stored = np.asarray(stored, dtype=np.float32)
        if stored.shape != own.shape:
            problems.append(f"{name} shape {stored.shape} != frontend's {own.shape}")
            continue
        err = float(np.max(np.abs(stored - own))) if stored.size else 0.0
        if err > atol:
            problems.append(f"{name} differs from the frontend's by up to {err:.3g} (> {atol:g})")
    return "; ".join(problems) or None
