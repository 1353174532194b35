"""The authors' PyTorch checkpoints (``weights.zip``) -> a Keras ``MusicEncoder`` preset.

A released checkpoint is ``torch.save({"pretext", "model": state_dict, "optimizer",
"loss_fn", "epoch", "gin_info", "val_loss"})`` (docs/paper.md#checkpoints). The encoder's tensors sit in
``model`` under one prefix per network:

- ``module.backbone.``          contrastive, barlow_twins, feature_stats (= VICReg);
- ``student.module.backbone.``  byol, clustering (the trained network);
- ``teacher.backbone.``         byol, clustering (the EMA teacher, not DDP-wrapped).

Heads and predictors (``module.head.``, ``projector.``, ...) are not part of the encoder
and are ignored. The prefix is found as whatever precedes ``embedding.`` / ``spec.spec.``,
so the converter needs no per-method table.

Files are read with ``torch.load(weights_only=True)``: nothing in the pickle is executed.
The only extra globals allowed are numpy's scalar/array/dtype constructors, because the
authors' schema stores ``val_loss`` (and a numpy LR schedule stores optimizer values) as
numpy floats, which plain ``weights_only`` loading refuses. They only rebuild data.
"""

import pathlib
import re
import warnings

from keras_music_ssl.card import PAPER_CITATION, PAPER_URL
from keras_music_ssl.download import sha256_of
from keras_music_ssl.presets import DEEZER_PRESETS, PresetNotFoundError, weights_dir
from keras_music_ssl.torch_weights import (FILTERBANK_KEY, WINDOW_KEY, frontend_mismatch,
                                           load_torch_state_dict)

# The released code never passes `heads` to ModifiedResNet, so its default (8) ran; the
# head count changes no tensor shape and cannot be read from the state dict.
DEFAULT_HEADS = 8
SOURCE = "deezer/multi-view-ssl-benchmark, release v0.0.1 (weights.zip)"
LICENCE = ("Architecture and conversion follow the authors' MIT-licensed code "
           "(deezer/multi-view-ssl-benchmark). The weights are the authors' release, converted "
           "unchanged; see that repository for their terms before redistributing them.")
# What the model card (card.py) says about the released weights: their training data and setup as
# the paper, its poster and the authors' released code describe them, the citation, and the Hub
# licence fields (the authors' terms apply to their weights, not this package's MIT licence).
PAPER_DATASET = {
    "name": "Deezer catalogue (in-house)",
    "description": "about 4 million full tracks of the Deezer catalogue (the paper's poster: '~4 Millions songs'), "
                   "resampled to 16 kHz mono; not public",
}
PAPER_PROCEDURE = (
    "Trained by the authors (Deezer Research), one model per method with the same backbone, data and pipeline. "
    "Each example is two 4 s segments of the same track, at least 4 s apart, drawn online as tracks stream; no "
    "augmentation is described. The released code trains data-parallel with synchronised BatchNorm, each loss "
    "on the globally gathered batch, with a projection head (and, for BYOL and clustering, a moving-average teacher) "
    "discarded after training. The optimizer, learning rate, batch size and number of steps were not published.")
LICENSE_FIELDS = {"license": "other", "license_name": "deezer-multi-view-ssl-benchmark",
                  "license_link": "https://github.com/deezer/multi-view-ssl-benchmark"}
# pretext / file stem -> method name used by presets
METHOD_NAMES = {"contrastive": "contrastive", "byol": "byol", "clustering": "clustering",
                "barlow_twins": "barlow_twins", "feature_stats": "vicreg", "vicreg": "vicreg"}
_BACKBONE_KEY = re.compile(r"^(.*?)(?:embedding|spec\.spec)\.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted: unreadable, unsafe, or without an encoder."""


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("Reading PyTorch checkpoints needs torch: "
                          "pip install 'keras-music-ssl[torch]'") from None
    return torch


def _numpy_safe_globals():
    """numpy's data-only constructors, under both the numpy 1.x and 2.x module names."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed = [np.dtype, np.ndarray]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray.scalar, f"{module}.scalar"),
                    (multiarray._reconstruct, f"{module}._reconstruct")]
    allowed += [cls for cls in vars(np.dtypes).values() if isinstance(cls, type)
                and issubclass(cls, np.dtype)]
    return allowed


def load_checkpoint(path):
    """``torch.load(path, weights_only=True)`` on CPU, with clear errors.

    Raises ``CheckpointError`` for a missing, truncated or non-PyTorch file, and for a
    pickle that would import or run anything beyond tensors, containers and numpy data
    (the offending globals are named; nothing from the file is executed).
    """
    torch = _torch()
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(_load_failure(torch, path, error)) from None


def _load_failure(torch, path, error):
    text = str(error)
    names = re.findall(r"GLOBAL ([\w.]+)", text)  # what torch's unpickler stopped at
    try:
        names += torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: keep what the message said
        pass
    allowed = {item[1] if isinstance(item, tuple) else f"{item.__module__}.{item.__qualname__}"
               for item in _numpy_safe_globals()}
    names = sorted(set(names) - allowed)
    if names:
        return (f"{path}: refused. Loading it would import or call {', '.join(names)}, and "
                "checkpoints are read with torch.load(weights_only=True), which never runs code "
                "from the file. A checkpoint should hold only tensors and plain values; if you "
                "trust this file, re-save just its state dict (torch.save({'model': "
                "ckpt['model']}, ...)) in the environment that wrote it.")
    first = text.strip().splitlines()[-1] if text.strip() else ""
    return (f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
            f"{type(error).__name__}: {first}")


def state_dict_of(checkpoint):
    """The model state dict: ``checkpoint["model"]``, or the checkpoint itself if it is one."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    if isinstance(checkpoint, dict) and checkpoint and all(
            isinstance(k, str) and hasattr(v, "shape") for k, v in checkpoint.items()):
        return checkpoint
    keys = list(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise CheckpointError(f"No model state dict in this checkpoint (expected a 'model' entry; "
                          f"found {keys}).")


def backbone_prefixes(state_dict):
    """{prefix: number of tensors} for each encoder in the state dict (prefix may be "")."""
    counts = {}
    for key in state_dict:
        match = _BACKBONE_KEY.match(key)
        if match and (match.group(1) == "" or match.group(1).endswith(".")):
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def select_prefix(state_dict, branch="student"):
    """The key prefix of the ``student`` (trained) or ``teacher`` (EMA) encoder."""
    if branch not in ("student", "teacher"):
        raise ValueError(f"branch must be 'student' or 'teacher', got {branch!r}")
    found = backbone_prefixes(state_dict)
    candidates = [p for p in found if p.startswith("teacher.") == (branch == "teacher")]
    if len(candidates) == 1:
        return candidates[0]
    listing = ", ".join(f"{p or '(no prefix)'!s} ({n} tensors)" for p, n in found.items()) or "none"
    if not candidates:
        extra = " (only byol and clustering keep an EMA teacher)" if branch == "teacher" else ""
        raise CheckpointError(f"No {branch} encoder in this checkpoint{extra}. "
                              f"Encoder prefixes found: {listing}.")
    raise CheckpointError(f"Several {branch} encoders in this checkpoint: {listing}.")


def strip_prefix(state_dict, prefix):
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _first_dim(state, candidates):
    for key, to_value in candidates:
        if key in state:
            return int(to_value(tuple(state[key].shape)))
    names = ", ".join(key for key, _ in candidates)
    raise CheckpointError(f"Cannot infer the encoder size: none of {names} is in the state dict.")


def infer_encoder_config(backbone_state, heads=DEFAULT_HEADS):
    """``MusicEncoder`` arguments (width, layers, heads, output_dim) from tensor shapes.

    ``heads`` changes no shape, so it is taken as given (8 in the released models).
    """
    width = _first_dim(backbone_state, [
        ("embedding.conv3.weight", lambda s: s[0]),
        ("embedding.conv1.weight", lambda s: 2 * s[0]),
        ("embedding.attnpool.positional_embedding", lambda s: s[1] // 32),
    ])
    output_dim = _first_dim(backbone_state, [
        ("embedding.attnpool.c_proj.weight", lambda s: s[0]),
        ("embedding.attnpool.c_proj.bias", lambda s: s[0]),
    ])
    blocks = [set() for _ in range(4)]
    for key in backbone_state:
        match = re.match(r"embedding\.layer([1-4])\.(\d+)\.", key)
        if match:
            blocks[int(match.group(1)) - 1].add(int(match.group(2)))
    layers = tuple(max(b) + 1 if b else 0 for b in blocks)
    if 0 in layers:
        raise CheckpointError(f"Cannot infer the encoder depth: blocks per stage {layers}.")
    if (width * 32) % heads:
        raise CheckpointError(f"{heads} attention heads do not divide the pooling width "
                              f"{width * 32}.")
    return {"width": width, "layers": layers, "heads": int(heads), "output_dim": output_dim}


def _plain(value):
    """A JSON-friendly copy of checkpoint run metadata (numbers, strings, lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return repr(value)
    if number != number or number in (float("inf"), float("-inf")):
        return str(number)  # JSON has no inf/nan
    return int(number) if number.is_integer() and "int" in type(value).__name__ else number


def method_name(checkpoint, path):
    """A checkpoint's method: its ``pretext`` entry, else its file name (feature_stats: vicreg)."""
    pretext = checkpoint.get("pretext") if isinstance(checkpoint, dict) else None
    for name in (pretext, pathlib.Path(path).stem):
        if isinstance(name, str) and name.lower() in METHOD_NAMES:
            return METHOD_NAMES[name.lower()]
    return pretext if isinstance(pretext, str) else "unknown"


def inspect_checkpoint(path, heads=DEFAULT_HEADS):
    """What a checkpoint holds: run metadata, encoders (prefix, size) and other key groups."""
    checkpoint = load_checkpoint(path)
    state = state_dict_of(checkpoint)
    encoders = {}
    for prefix, count in backbone_prefixes(state).items():
        try:
            config = infer_encoder_config(strip_prefix(state, prefix), heads)
        except CheckpointError as error:
            config = str(error)
        encoders[prefix] = {"tensors": count, "config": config}
    claimed = tuple(encoders)
    others = {}
    for key in state:
        if not any(key.startswith(p) for p in claimed if p):
            parts = key.split(".")
            group = ".".join(parts[:next((i for i, p in enumerate(parts) if p.isdigit()),
                                         len(parts) - 1)])
            others[group] = others.get(group, 0) + 1
    info = {"file": str(path), "method": method_name(checkpoint, path), "encoders": encoders,
            "other_tensors": others}
    if isinstance(checkpoint, dict):
        info["entries"] = sorted(str(k) for k in checkpoint)
        for key in ("pretext", "epoch", "val_loss", "gin_info"):
            if key in checkpoint:
                info[key] = _plain(checkpoint[key])
    return info


def convert_checkpoint(path, out_dir, branch="student", heads=DEFAULT_HEADS, method=None,
                       overwrite=False):
    """Convert one released checkpoint into a preset folder; return ``(encoder, metadata)``.

    Every check runs before anything is written: an unreadable or unsafe file
    (``CheckpointError``), a state dict that does not fit the encoder the shapes imply
    (``StateDictMismatchError``, naming each key), or an existing non-empty ``out_dir``
    without ``overwrite`` (``FileExistsError``). The preset itself is written atomically.
    A stored window / mel filterbank that differs from the Keras frontend only warns
    (``UserWarning``): the weights still load, but were trained on other inputs.
    """
    from keras_music_ssl.backbone import MusicEncoder

    path, out_dir = pathlib.Path(path), pathlib.Path(out_dir).expanduser()
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True / "
                              "--overwrite to replace the preset in it).")
    checkpoint = load_checkpoint(path)
    state = state_dict_of(checkpoint)
    prefix = select_prefix(state, branch)
    backbone = strip_prefix(state, prefix)
    config = infer_encoder_config(backbone, heads)
    encoder = MusicEncoder(**config)
    buffers = load_torch_state_dict(encoder, backbone, strict=True)
    mismatch = frontend_mismatch(encoder, **buffers)
    if mismatch:
        warnings.warn(f"{path.name}: the checkpoint's frontend buffers differ from the Keras "
                      f"frontend: {mismatch}. The converted encoder will see different "
                      "log-mels than the ones it was trained on.", UserWarning, stacklevel=2)
    stored = [name for name, key in (("window", WINDOW_KEY), ("mel filterbank", FILTERBANK_KEY))
              if key in backbone]
    metadata = {
        "method": method or method_name(checkpoint, path),
        "source": {"file": path.name, "sha256": sha256_of(path), "branch": branch,
                   "prefix": prefix, "release": SOURCE},
        "licence": LICENCE,
        "encoder_config": {**config, "layers": list(config["layers"])},
        "frontend_check": mismatch or (f"{' and '.join(stored)} match the Keras frontend"
                                       if stored else "no frontend buffers in the checkpoint"),
        "dataset": PAPER_DATASET, "training_procedure": PAPER_PROCEDURE, "paper": PAPER_URL,
        "citation": PAPER_CITATION, **LICENSE_FIELDS,
    }
    if isinstance(checkpoint, dict):
        run = {key: _plain(checkpoint[key]) for key in ("pretext", "epoch", "val_loss", "gin_info")
               if key in checkpoint}
        if run:
            metadata["checkpoint"] = run
    encoder.save_to_preset(out_dir, **metadata)
    return encoder, metadata


def default_preset_dir(path, root=None):
    """``<weights dir>/<preset name>`` for a released file name (``byol.pt`` -> ``deezer_byol``)."""
    name = pathlib.Path(path).name
    for preset, (_, filename) in DEEZER_PRESETS.items():
        if name == filename:
            return weights_dir(root) / preset
    known = ", ".join(f for _, f in DEEZER_PRESETS.values())
    raise PresetNotFoundError(f"{name} is not one of the released checkpoints ({known}): "
                              "give the output folder explicitly (--out DIR).")

