"""The model card: the ``README.md`` that travels with every preset and every export.

A card is generated, never written by hand: :func:`model_card` reads a preset folder's
``metadata.json`` and ``config.json`` (and, when given, the ``results.json`` of a ``kmssl probe``
report), so it cannot drift from the model it describes. ``save_to_preset`` writes one into
every preset (``kmssl pretrain``, ``kmssl convert-deezer``), ``export`` into every exported
model (with an Essentia-style ``model.json``: :func:`export_files`), and ``kmssl upload`` adds
one to a folder that lacks it (:func:`ensure_card`).

The card opens with the Hugging Face Hub's YAML front matter (``library_name``, ``license``,
``tags``, ``pipeline_tag``); a preset is a Keras 3 folder (``config.json`` +
``model.weights.h5``) that ``keras.saving.load_model`` reads once ``keras_music_ssl`` is
imported, hence ``library_name: keras``. The text says what the model is, its input and output,
how it was trained (the run's settings, or the paper's setup for the authors' converted
weights), its parameter count, its probe results beside the floors, how to load it, its licence
and the paper to cite.

Metadata keys the card reads (all optional): ``method``, ``dataset`` (``{"name",
"description", "licence"}``: the training data), ``training`` (the run's settings),
``training_procedure`` (text), ``license`` / ``license_name`` / ``license_link`` (Hub licence
identifiers), ``licence`` (text), ``licence_notice`` (a licence's full text, quoted in the card),
``citation``, ``paper`` (its URL), ``source`` and ``checkpoint``
(a conversion's origin), ``finetuned`` (``kmssl finetune``'s record: ``from``, ``dataset``, ``task``,
``type``, ...), plus what ``save_to_preset`` records (versions, backend, date, parameter
counts, ``weights_fingerprint``, ``files``).

A model of another paper (the zoo: musicnn's taggers, ``musicnn/release.py``) is not described by
its config alone: its converter writes the card's text in ``card`` (``{"title", "summary",
"architecture", "frontend", "input", "output", "usage": [markdown lines], "hub_tags"}``), and a
config with ``tags`` makes it a tagger.
"""

import datetime
import json
import pathlib
import re

from keras_music_ssl import storage
from keras_music_ssl.errors import KmsslError

CARD_FILE = "README.md"
# Marks a card as generated: a README.md without it is someone's own, and is never replaced.
MARKER = "<!-- keras_music_ssl model card: generated from the model's files; regenerate it, do not edit it -->"
MADE_BY = "keras_music_ssl"  # model.json's "made_by": tells our sidecar files from a user's

PAPER_TITLE = "An Experimental Comparison of Multi-view Self-supervised Methods for Music Tagging"
PAPER_URL = "https://arxiv.org/abs/2404.09177"
AUTHORS_REPOSITORY = "https://github.com/deezer/multi-view-ssl-benchmark"
# The entry the authors ask for (their repository's README).
PAPER_CITATION = """@inproceedings{meseguer2024experimental,
  title={An Experimental Comparison of Multi-View Self-Supervised Methods for Music Tagging},
  author={Meseguer-Brocal, Gabriel and Desblancs, Dorian and Hennequin, Romain},
  booktitle={ICASSP 2024-2024 IEEE International Conference on Acoustics, Speech and Signal Processing (ICASSP)},
  pages={1141--1145},
  year={2024},
  organization={IEEE}
}"""
DEFAULT_LICENSE = "mit"  # keras-music-ssl's own licence, for weights a run of it trained

METHOD_NAMES = {"contrastive": "Contrastive", "byol": "BYOL", "clustering": "Clustering",
                "barlow_twins": "Barlow Twins", "vicreg": "VICReg"}
METHOD_PHRASES = {"contrastive": "contrastive learning", "byol": "BYOL", "clustering": "clustering (self-distillation)",
                  "barlow_twins": "Barlow Twins", "vicreg": "VICReg"}
METHOD_DESCRIPTIONS = {
    "contrastive": "contrastive learning (SimCLR's NT-Xent loss): the views of one track are pulled "
                   "together and pushed away from every other clip of the batch",
    "byol": "BYOL: an online network with a predictor regresses the projection of a teacher that is "
            "an exponential moving average of it; no negatives",
    "clustering": "clustering by self-distillation (DINO-style): the student matches the teacher's "
                  "sharpened and centred distribution over prototypes; the teacher is a moving average",
    "barlow_twins": "Barlow Twins: the cross-correlation of the two views' projections is driven to "
                    "the identity",
    "vicreg": "VICReg (the authors' `feature_stats`): variance, invariance and covariance terms on the "
              "projections",
}
FLOORS = {"random": "the same architecture, randomly initialised",
          "logmel-stats": "mean and standard deviation over time of each log-mel band"}
PROBE_METRICS = {"roc_auc_macro": "ROC-AUC macro", "pr_auc_macro": "PR-AUC macro"}
TENSOR_ROLES = {"waveform": "raw mono audio", "embedding": "embedding", "probabilities": "tag probabilities",
                "num_chunks": "clips the track was cut into (4 s chunks; musicnn's taggers: 3 s patches; "
                              "0: empty track)", "tags": "tag names",
                "kind": "embedder or tagger", "sample_rate": "input sample rate (Hz)",
                "clip_samples": "samples per clip"}
PAPER_ENCODER = {"width": 16, "layers": [3, 4, 6, 3], "heads": 8, "output_dim": 1024}


class CardError(KmsslError, ValueError):
    """A card that cannot be made: no preset there, or probe results that do not hold this model."""


# --- the public entry points ---------------------------------------------------------------------

def model_card(preset_dir, probe_results=None, model=None):
    """The card (``README.md`` text) of the preset folder ``preset_dir``.

    ``probe_results``: a ``kmssl probe`` ``results.json`` (path or dict) to report; the row of this
    model is the one with the preset's weights fingerprint, else the one named ``model`` or after
    the folder, else the only model that is not a floor.
    """
    folder = pathlib.Path(preset_dir)
    if not (folder / "config.json").is_file():
        raise CardError(f"{folder} is not a preset folder: it has no config.json")
    config = storage.read_json(folder / "config.json", "the preset's model config")
    meta_path = folder / "metadata.json"
    metadata = storage.read_json(meta_path, "the preset's metadata") if meta_path.is_file() else {}
    if not isinstance(metadata, dict):
        raise CardError(f"{meta_path} is not a JSON object")
    facts = _facts(config, metadata)
    if facts["parameter_count"] is None:  # a preset saved before the count was recorded
        facts["parameter_count"], facts["trainable_parameter_count"] = _count_from_config(config)
    probe = _probe(probe_results, facts["fingerprint"], [model, folder.name]) if probe_results is not None else None
    return _render(facts, probe, export=None)


def write_card(preset_dir, probe_results=None, model=None):
    """Write :func:`model_card` to ``preset_dir/README.md`` (atomically); return its path."""
    path = pathlib.Path(preset_dir) / CARD_FILE
    storage.write_text(path, model_card(preset_dir, probe_results, model))
    return path


def ensure_card(preset_dir):
    """``preset_dir/README.md``, written first if the folder has none (an existing one is kept)."""
    path = pathlib.Path(preset_dir) / CARD_FILE
    return path if path.is_file() else write_card(preset_dir)


def is_generated(path):
    """True for a card this module wrote (``MARKER`` near its top)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return MARKER in f.read(4096)
    except OSError:
        return False


def is_own_json(path):
    """True for a ``model.json`` this module wrote."""
    try:
        data = storage.read_json(path)
    except (OSError, storage.StorageError):
        return False
    return isinstance(data, dict) and data.get("made_by") == MADE_BY


def export_files(model, format, schema, metadata=None, probe_results=None):
    """``(card text, model.json dict)`` of an exported ``model`` (``MusicEncoder`` / ``MusicTagger`` /
    musicnn ``PatchTagger``).

    ``schema``: ``{signature: {"inputs": [...], "outputs": [...]}}`` read back from the written
    export (names, dtypes, shapes); ``metadata``: what the model's preset says about it
    (``presets.preset_metadata``), for its training and licence; ``probe_results``: a probe
    report that holds the encoder (matched by its weights fingerprint).
    """
    import keras

    from keras_music_ssl import __version__
    from keras_music_ssl.musicnn import PatchTagger
    from keras_music_ssl.tagger import MusicTagger

    encoder = model.encoder if isinstance(model, MusicTagger) else model
    kept = ("method", "dataset", "training", "training_procedure", "license", "license_name", "license_link",
            "licence", "licence_notice", "citation", "paper", "source", "checkpoint", "card", "reported_results",
            "finetuned")
    meta = {key: value for key, value in (metadata or {}).items() if key in kept}
    if metadata is None:  # nothing says where the weights come from, so nothing says under which terms
        meta["license"] = "unknown"
    meta.update(parameter_count=int(model.count_params()), trainable_parameter_count=_trainable(model),
                weights_fingerprint=storage.weights_fingerprint(encoder), sample_rate=int(encoder.sample_rate),
                keras_music_ssl_version=__version__, keras_version=keras.__version__, date=_now())
    if isinstance(model, PatchTagger):  # its config does not say its input length or feature width
        meta.update(clip_samples=model.num_samples, embedding_dim=model.feature_dim)
    facts = _facts(keras.saving.serialize_keras_object(model), meta)
    probe = _probe(probe_results, facts["fingerprint"], []) if probe_results is not None else None
    export = {"format": format, "schema": schema, "default": _default_signature(facts, schema),
              **_framework(format)}
    return _render(facts, probe, export), _model_json(facts, probe, export)


# --- what the files say --------------------------------------------------------------------------

def _facts(config, metadata):
    """Everything the card shows, from a serialized model config and the metadata."""
    kind, inner, tags = "model", {}, []
    name = config.get("class_name") if isinstance(config, dict) else None
    body = config.get("config", {}) if isinstance(config, dict) else {}
    text = metadata.get("card") if isinstance(metadata.get("card"), dict) else {}
    if name == "MusicEncoder":
        kind, inner = "encoder", body
    elif name == "MusicTagger":
        kind = "tagger"
        inner = (body.get("encoder") or {}).get("config", {})
        tags = list(((body.get("head") or {}).get("config") or {}).get("tags", []))
    elif text and isinstance(body.get("tags"), list):  # a zoo tagger: its tags are in its own config
        kind, tags = "tagger", list(body["tags"])
    frontend = {**_frontend_defaults(), **(inner.get("frontend") or {})}
    sample_rate = int(metadata.get("sample_rate") or frontend.get("sample_rate") or 16000)
    source = metadata.get("source")
    origin = ("zoo" if text else "deezer" if isinstance(source, dict) and source.get("release") else
              "pretrain" if source == "keras_music_ssl.pretrain" else
              "finetune" if source == "keras_music_ssl.finetune" else None)
    method = metadata.get("method") if isinstance(metadata.get("method"), str) else None
    return {
        "kind": kind, "class_name": name, "tags": tags, "text": text, "encoder": inner, "frontend": frontend,
        "sample_rate": sample_rate,
        "num_samples": int(inner.get("num_samples") or metadata.get("clip_samples") or 4 * sample_rate),
        "output_dim": inner.get("output_dim") or metadata.get("embedding_dim"), "method": method, "origin": origin,
        "metadata": metadata,
        "parameter_count": metadata.get("parameter_count"),
        "trainable_parameter_count": metadata.get("trainable_parameter_count"),
        "fingerprint": metadata.get("weights_fingerprint"),
        "license": metadata.get("license") or ("other" if origin == "deezer" else DEFAULT_LICENSE),
    }


def _finetuned(facts):
    """The fine-tuning record of ``kmssl finetune`` (a dict), or None."""
    tuned = facts["metadata"].get("finetuned")
    return tuned if isinstance(tuned, dict) else None


def _frontend_defaults():
    import inspect

    from keras_music_ssl.frontend import LogMelSpectrogram

    return {name: p.default for name, p in inspect.signature(LogMelSpectrogram.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _trainable(model):
    import numpy as np

    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


def _count_from_config(config):
    """(parameters, trainable parameters) of the model a config builds (no weights read), or Nones."""
    import importlib

    import keras

    importlib.import_module("keras_music_ssl")  # registers the classes the config names
    try:
        model = keras.saving.deserialize_keras_object(config)
        return int(model.count_params()), _trainable(model)
    except Exception:  # a config this version cannot build: the card says "not recorded"
        return None, None


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load_results(probe_results):
    if isinstance(probe_results, dict):
        return probe_results
    return storage.read_json(probe_results, "a kmssl probe report")


def _probe(probe_results, fingerprint, names):
    """``{"results", "name"}``: the report and the row of this model in it."""
    results = _load_results(probe_results)
    models = results.get("models") if isinstance(results, dict) else None
    if not isinstance(models, dict):
        raise CardError("the probe results hold no 'models' (expected a kmssl probe results.json)")
    chosen = next((n for n, r in models.items() if fingerprint and isinstance(r, dict)
                   and r.get("fingerprint") == fingerprint), None)
    chosen = chosen or next((n for n in names if n and n in models), None)
    others = [n for n in models if n not in FLOORS]
    if chosen is None and len(others) == 1:
        chosen = others[0]
    if chosen is None:
        raise CardError(f"the probe results do not say which model is this one (models: {', '.join(models)}); "
                        "name it (model=...)")
    return {"results": results, "name": chosen}


def _dataset_title(name):
    name = str(name).rstrip("/")
    return name if ":" in name else pathlib.PurePath(name).name  # a folder: its name, not the whole path


def _default_signature(facts, schema):
    for name in ("tag" if facts["kind"] == "tagger" else "embed", "serving_default"):
        if name in schema:
            return name
    return next(iter(schema), None)


def _framework(format):
    if format == "savedmodel":
        import tensorflow as tf

        return {"framework": "tensorflow", "framework_version": tf.__version__, "model_types": ["saved_model"]}
    if format == "onnx":
        from keras_music_ssl.export.onnx import OPSET

        return {"framework": "onnx", "framework_version": f"opset {OPSET}", "model_types": ["onnx"]}
    from importlib.metadata import PackageNotFoundError, version

    from keras_music_ssl.export import QUANTIZATIONS

    try:
        litert = version("ai-edge-litert")
    except PackageNotFoundError:
        litert = None
    return {"framework": "tensorflow-lite", "framework_version": litert, "model_types": ["tflite"],
            "quantization": QUANTIZATIONS.get(format) or "float32"}


# --- rendering -----------------------------------------------------------------------------------

def _yaml_scalar(value):
    text = str(value)
    plain = re.fullmatch(r"[A-Za-z][A-Za-z0-9._/+-]*", text) and text.lower() not in (
        "true", "false", "yes", "no", "on", "off", "null", "y", "n")
    return text if plain else json.dumps(text)  # JSON strings are YAML double-quoted scalars


def _front_matter(facts, export):
    fields = {}
    if export is None:
        fields["library_name"] = "keras"
    fields["license"] = facts["license"]
    meta = facts["metadata"]
    for key in ("license_name", "license_link"):
        if meta.get(key) and facts["license"] == "other":
            fields[key] = meta[key]
    tags = ["audio", "music", "music-tagging", "self-supervised-learning", "keras", "keras-music-ssl"]
    if facts["text"]:  # not self-supervised: a supervised tagger of another paper
        tags = [t for t in tags if t != "self-supervised-learning"] + list(facts["text"].get("hub_tags", []))
    if facts["method"]:
        tags.append(facts["method"].replace("_", "-"))
    if facts["origin"] == "deezer":
        tags.append("deezer")
    if _finetuned(facts):
        tags.append("fine-tuned")
    if export is not None:
        tags += {"savedmodel": ["tensorflow", "saved-model"], "onnx": ["onnx"]}.get(export["format"], ["tflite"])
    fields["tags"] = tags
    fields["pipeline_tag"] = "audio-classification" if facts["kind"] == "tagger" else "feature-extraction"
    lines = ["---"]
    for key, value in fields.items():
        if isinstance(value, list):
            lines += [f"{key}:"] + [f"- {_yaml_scalar(v)}" for v in value]
        else:
            lines.append(f"{key}: {_yaml_scalar(value)}")
    return "\n".join(lines + ["---"])


def _title(facts, export):
    if facts["text"].get("title"):
        title = facts["text"]["title"]
        return title + (f", exported as {_format_name(export['format'])}" if export is not None else "")
    method = METHOD_NAMES.get(facts["method"], facts["method"])
    what = {"tagger": "music tagger", "encoder": "music encoder"}.get(facts["kind"], "model")
    title = f"{method} {what}" if method else f"keras-music-ssl {what}"
    if facts["origin"] == "deezer":
        title += " (Deezer Research's release, in Keras)"
    if _finetuned(facts):
        title += ", fine-tuned"
    if export is not None:
        title += f", exported as {_format_name(export['format'])}"
    return title[0].upper() + title[1:]


def _format_name(format):
    return {"savedmodel": "a TensorFlow SavedModel", "onnx": "ONNX", "tflite": "TFLite (float32)",
            "tflite-fp16": "TFLite (float16 weights)", "tflite-int8": "TFLite (dynamic-range int8)",
            "tflite-int8-full": "TFLite (int8, calibrated)"}.get(format, format)


def _number(value):
    return f"{value:,}" if isinstance(value, int) else "not recorded"


def _architecture(facts):
    if facts["text"].get("architecture"):
        return facts["text"]["architecture"]
    enc = facts["encoder"]
    if not enc:
        return f"a `{facts['class_name']}` (see `config.json`)"
    layers = list(enc.get("layers") or [])
    text = (f"the paper's CLIP-style ModifiedResNet (3-convolution stem, anti-aliased bottleneck blocks "
            f"{tuple(layers)}, width {enc.get('width')}) with attention pooling ({enc.get('heads')} heads) "
            f"to a {enc.get('output_dim')}-d embedding")
    size = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in enc.items() if k in PAPER_ENCODER}
    return text + (", the paper's full size" if size == PAPER_ENCODER else
                   ", not the paper's size (width 16, blocks (3, 4, 6, 3), 8 heads, 1024-d)")


def _intro(facts, export):
    if facts["text"].get("summary"):
        return facts["text"]["summary"]
    dim, seconds = facts["output_dim"], facts["num_samples"] / facts["sample_rate"]
    method = facts["method"]
    if facts["kind"] == "tagger":
        what = (f"A music tagger: a self-supervised encoder{f' ({METHOD_NAMES.get(method, method)})' if method else ''}"
                f" with a probe head on its {dim}-d embedding, giving an independent probability for each of "
                f"{len(facts['tags'])} tags.")
    elif facts["kind"] == "encoder":
        what = (f"A self-supervised music encoder: {seconds:g} s of {facts['sample_rate'] // 1000} kHz mono audio in, "
                f"a {dim}-d embedding out, for music tagging and other downstream tasks (a probe on the frozen "
                f"embedding).")
        if method:
            what += f" Pretrained with {METHOD_PHRASES.get(method, method)}."
    else:
        what = f"A Keras model of keras-music-ssl (`{facts['class_name']}`)."
    tuned = _finetuned(facts)
    if tuned and facts["kind"] in ("encoder", "tagger"):
        kind = f"{tuned['type']} " if tuned.get("type") else ""
        what += (f" Then fine-tuned end to end (`kmssl finetune`) on the {kind}task `{tuned.get('task', '?')}` of "
                 f"`{tuned.get('dataset', '?')}`, starting from `{tuned.get('from', '?')}`: its embedding is shaped by "
                 "those labels too.")
    if facts["origin"] == "deezer":
        what += (f" These are the weights the paper's authors released ({AUTHORS_REPOSITORY}), converted "
                 "unchanged to Keras 3; they give the authors' PyTorch embeddings.")
    what += (f" It reproduces the setup of *{PAPER_TITLE}* (Meseguer-Brocal, Desblancs, Hennequin; Deezer Research, "
             f"ICASSP 2024, {PAPER_URL}) with keras-music-ssl, a Keras 3 library that runs on TensorFlow, JAX "
             "and PyTorch.")
    return what


def _model_section(facts):
    params = facts["parameter_count"]
    trainable = facts["trainable_parameter_count"]
    count = _number(params) + (f" ({trainable:,} trainable; the rest are BatchNorm statistics)"
                               if isinstance(trainable, int) and trainable != params else "")
    lines = ["## Model", "", f"- **Architecture**: {_architecture(facts)}."]
    f = facts["frontend"]
    if facts["text"].get("frontend"):
        lines.append(f"- **Frontend** (inside the model): {facts['text']['frontend']}.")
    elif facts["encoder"]:
        # "dft" only chooses how the same numbers are computed (ONNX); any other change is another frontend.
        own = {k: v for k, v in (facts["encoder"].get("frontend") or {}).items() if k not in ("dft", "name")}
        authors = all(_frontend_defaults().get(k) == v for k, v in own.items())
        lines.append(f"- **Frontend** (inside the model): log-mel spectrogram, {f.get('n_mels')} mel bands "
                     f"({f.get('mel_scale')} scale, {f.get('f_min'):g}–{f.get('f_max'):g} Hz), FFT {f.get('n_fft')}, "
                     f"hop {f.get('hop_length')}, in dB" + ("; the authors' torchaudio frontend." if authors else "."))
    lines.append(f"- **Parameters**: {count}.")
    if facts["kind"] == "tagger":
        lines.append(f"- **Tags** ({len(facts['tags'])}): " + ", ".join(f"`{t}`" for t in facts["tags"]) + ".")
    return lines


def _io_section(facts, export):
    if facts["text"].get("input"):
        return ["## Input and output", "", f"- **Input**: {facts['text']['input']}",
                f"- **Output**: {facts['text'].get('output', 'see `config.json`.')}"] + _signature_table(export)
    if facts["kind"] == "model":
        return ["## Input and output", "", "See `config.json`: this is not one of the library's music models."]
    sr, n, dim = facts["sample_rate"], facts["num_samples"], facts["output_dim"]
    lines = ["## Input and output", "",
             f"- **Input**: `waveform`, float32 `(batch, {n})`: {n / sr:g} s clips of {sr:,} Hz mono audio in "
             "[-1, 1]. A track is decoded to mono, resampled to "
             f"{sr:,} Hz and peak-normalised as a whole (divided by its largest |x|), zero-padded at the end to "
             f"a multiple of {n / sr:g} s and cut into consecutive clips."]
    if facts["kind"] == "tagger":
        lines.append(f"- **Output**: `probabilities`, float32 `(batch, {len(facts['tags'])})`, one sigmoid per tag "
                     "(multi-label). A track's tags are the head applied to the mean of its clips' embeddings.")
    else:
        lines.append(f"- **Output**: `embedding`, float32 `(batch, {dim})`. A track's embedding is the mean of "
                     "its clips' embeddings (`kmssl embed` does all of this).")
    return lines + _signature_table(export)


def _signature_table(export):
    if export is None:
        return []
    lines = ["", f"Signatures of this export, as written ({_format_name(export['format'])}):", "",
             "| signature | inputs | outputs |", "|---|---|---|"]
    for name, sig in export["schema"].items():
        lines.append(f"| `{name}`{' (default)' if name == export['default'] else ''} | "
                     f"{_tensors(sig['inputs'])} | {_tensors(sig['outputs'])} |")
    return lines


def _tensors(tensors):
    if not tensors:
        return "none"
    shape = lambda s: "scalar" if s == [] else "?" if s is None else "[" + ", ".join(  # noqa: E731
        "n" if d is None else str(d) for d in s) + "]"
    return "<br>".join(f"`{t['name']}` {t['dtype']} {shape(t['shape'])}" for t in tensors)


def _training_section(facts):
    meta = facts["metadata"]
    lines = ["## Training", ""]
    method = facts["method"]
    if method:
        text = METHOD_DESCRIPTIONS.get(method, f"{method}, a self-supervised pretext task")
        lines.append(f"- **Method**: {text[0].upper() + text[1:]}. The views of an example are segments of "
                     "the same track (the paper's multi-view setup).")
    dataset = meta.get("dataset")
    if isinstance(dataset, dict) and dataset.get("name"):
        text = f"- **Data**: {dataset['name']}"
        lines.append(text + (f": {dataset['description']}." if dataset.get("description") else "."))
    elif isinstance(meta.get("data"), str):
        lines.append(f"- **Data**: {meta['data']}.")
    if meta.get("training_procedure"):
        lines.append(f"- **Procedure**: {meta['training_procedure']}")
    training = meta.get("training")
    if isinstance(training, dict) and training:
        command = "kmssl finetune" if facts["origin"] == "finetune" else "kmssl pretrain"
        lines.append(f"- **Run**: `{command}` with keras-music-ssl {meta.get('keras_music_ssl_version', '?')}"
                     f" on the {meta.get('backend', '?')} backend; its settings:")
        lines += ["", "| setting | value |", "|---|---|"]
        for key, value in training.items():
            if key == "dataset_size" and training.get("data"):  # only read for the rendered dataset
                continue
            if value is not None and value != {}:
                shown = json.dumps(value) if isinstance(value, (dict, list)) else value
                lines.append(f"| `{key}` | `{shown}` |")
    elif not (method or dataset or meta.get("training_procedure")):
        lines.append("Not recorded: nothing saved with this model says how it was trained.")
    checkpoint, source = meta.get("checkpoint"), meta.get("source")
    if isinstance(source, dict) and source.get("file"):
        lines += ["", f"Converted from `{source['file']}` (sha256 `{source.get('sha256', '?')}`, "
                      f"{source.get('branch', 'student')} network) of {source.get('release', 'a checkpoint')}"
                      + (f"; the checkpoint records epoch {checkpoint['epoch']}" if isinstance(checkpoint, dict)
                         and "epoch" in checkpoint else "") + "."]
        if meta.get("frontend_check"):
            lines.append(f"Frontend check: {meta['frontend_check']}.")
    return lines


def _probe_section(probe):
    results, name = probe["results"], probe["name"]
    settings = results.get("settings") or {}
    rows = [(f"**this model** (`{name}`)", results["models"][name])]
    rows += [(f"`{floor}` floor: {what}", results["models"].get(floor)) for floor, what in FLOORS.items()]
    tracks = (results["models"][name].get("tracks") or {}).get("test")
    lines = ["## Probe results", "",
             f"A probe (`kmssl probe`, {results.get('protocol', '?')} protocol) trained on the frozen embeddings "
             f"of `{_dataset_title(results.get('dataset', '?'))}`, scored on its test split"
             + (f" ({tracks} tracks)" if tracks else "") + ": the point estimate, and in brackets the 95 % "
             f"bootstrap interval over {settings.get('bootstrap', '?')} resamples of the test tracks. The floors "
             "are what the probe reaches without self-supervised learning.", "",
             "| model | " + " | ".join(PROBE_METRICS.values()) + " |", "|---|" + "---:|" * len(PROBE_METRICS)]
    for label, result in rows:
        cells = []
        for metric in PROBE_METRICS:
            m = ((result or {}).get("test") or {}).get(metric)
            cells.append(f"{m['point']:.3f} ({m['ci95'][0]:.3f}–{m['ci95'][1]:.3f})" if m else "not in this report")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _usage_section(facts, export):
    track = "tag_track" if facts["kind"] == "tagger" else "embed_track"
    if export is not None:
        lines = ["## How to use", "", "```python", "from keras_music_ssl.export import load_exported", "",
                 "model = load_exported(\"path/to/this/model\")",
                 f"outputs = model.track(waveform)  # a whole {facts['sample_rate']:,} Hz mono track, float32 numpy",
                 "```", ""]
        if facts["kind"] == "tagger":
            lines += ["```bash", "kmssl tag song.mp3 --model path/to/this/model --top 5", "```", ""]
        lines.append({"savedmodel": f"Or `tf.saved_model.load(path).signatures[\"{track}\"]`; TF Serving serves the "
                                    "folder as it is.",
                      "onnx": "Or onnxruntime on `clips.onnx` / `track.onnx`, in any language (a tagger's tag names "
                              "are in the graphs' `metadata_props` and `tags` output)."}.get(
            export["format"], f"Or any LiteRT / TFLite interpreter, through the signature runner of `{track}` (a "
                              "tagger's tag names are in a zip appended to the file, and in the `.json` beside it)."))
        return lines
    lines = ["## How to use", ""]
    if facts["text"].get("usage"):
        return lines + [str(line) for line in facts["text"]["usage"]]
    if facts["kind"] == "encoder":
        lines += ["```python", "from keras_music_ssl import MusicEncoder", "",
                  "encoder = MusicEncoder.from_preset(\"path/to/this/folder\")  # or \"hf://OWNER/NAME\"",
                  f"embeddings = encoder.predict(clips)  # (n, {facts['num_samples']}) float32 -> "
                  f"(n, {facts['output_dim']})", "```", "", "```bash",
                  "kmssl embed song.mp3 other.wav --preset path/to/this/folder --out embeddings.npz", "```", "",
                  "To tag music, train a probe on its embeddings (`kmssl probe`) and export the two as a tagger "
                  "(`kmssl export --preset ... --head ...`). "]
    else:
        lines += ["```python", "import keras", "import keras_music_ssl  # registers its classes", "",
                  "model = keras.saving.load_model(\"path/to/this/folder\")", "```", ""]
    lines[-1] += ("`keras.saving.load_model(\"path/to/this/folder\")` (or `\"hf://OWNER/NAME\"`) loads the folder "
                  "too, once `keras_music_ssl` is imported." if facts["kind"] == "encoder" else
                  "The folder is a Keras 3 model (`config.json` + `model.weights.h5`).")
    return lines


def _licence_section(facts):
    meta = facts["metadata"]
    licence = facts["license"]
    if licence == "other":
        text = (f"`other`: {meta.get('licence') or 'see where these weights come from'}"
                + (f" ({meta['license_link']})" if meta.get("license_link") else ""))
    elif licence == "unknown":
        text = ("`unknown`: this export was made without its preset's metadata, so the terms of its weights are "
                "not recorded here; see the card of the preset it came from.")
    elif meta.get("license"):
        text = f"`{licence}`" + (f": {meta['licence']}" if meta.get("licence") else ".")
    else:
        text = (f"`{licence}`: the licence of keras-music-ssl, whose run trained these weights"
                + (f". {meta['licence']}" if meta.get("licence") else "."))
    dataset = meta.get("dataset")
    if isinstance(dataset, dict) and dataset.get("licence"):
        text += f" Training data: {dataset['licence']}"
    notice = meta.get("licence_notice")  # a licence text that must travel with every copy (ISC, MIT)
    quoted = ["", *(f"> {line}".rstrip() for line in str(notice).splitlines())] if notice else []
    return ["## Licence", "", text, *quoted]


def _citation_section(facts):
    citation = facts["metadata"].get("citation") or PAPER_CITATION
    paper = facts["metadata"].get("paper") or PAPER_URL
    what = "The architecture and the weights are" if facts["text"] else "The architecture, the methods and the evaluation are"
    return ["## Citation", "", f"{what} the paper's ({paper}):",
            "", "```bibtex", citation.strip(), "```"]


def _provenance(facts, export):
    meta = facts["metadata"]
    parts = [f"keras-music-ssl {meta.get('keras_music_ssl_version', '?')}"]
    if meta.get("keras_version"):
        parts.append(f"Keras {meta['keras_version']}" + (f" ({meta['backend']} backend)" if meta.get("backend") else ""))
    if export is not None and export.get("framework_version"):
        parts.append(f"{export['framework']} {export['framework_version']}")
    lines = ["## Files", ""]
    if export is None:
        files = meta.get("files") or {}
        weights = files.get("model.weights.h5") or {}
        lines += ["- `config.json`: the model (Keras serialization); rebuilds it without code of this folder.",
                  "- `model.weights.h5`: the weights" + (f" ({weights['size']:,} bytes, sha256 `{weights['sha256']}`)"
                                                        if weights.get("sha256") else "") + ".",
                  "- `metadata.json`: what the model is, versions, parameter count, checksums.",
                  "- `README.md`: this card, generated from the three files above."]
    else:
        lines.append("- `model.json` (or the `.json` beside a `.tflite` file): this card's facts for programs "
                     "(Essentia's layout: classes, schema, sample rate, dataset, metrics).")
    lines += ["", f"Written by {', '.join(parts)}" + (f" on {meta['date']}" if meta.get("date") else "") + "."]
    return lines


def _render(facts, probe, export):
    sections = [_front_matter(facts, export), MARKER, "", f"# {_title(facts, export)}", "", _intro(facts, export), ""]
    for part in (_model_section(facts), _io_section(facts, export), _training_section(facts),
                 _probe_section(probe) if probe else None, _usage_section(facts, export), _licence_section(facts),
                 _citation_section(facts), _provenance(facts, export)):
        if part:
            sections += part + [""]
    return "\n".join(sections).rstrip() + "\n"


def _model_json(facts, probe, export):
    """The Essentia-style ``model.json`` of an export."""
    meta = facts["metadata"]
    default = export["schema"].get(export["default"], {"inputs": [], "outputs": []})
    data = {
        "name": _title(facts, None),
        "type": "tagger" if facts["kind"] == "tagger" else "embedder",
        "description": _intro(facts, export),
        "version": meta.get("keras_music_ssl_version"),
        "release_date": str(meta.get("date", _now()))[:10],
        "framework": export["framework"], "framework_version": export["framework_version"],
        "format": export["format"], "model_types": export["model_types"],
    }
    if export.get("quantization"):
        data["quantization"] = export["quantization"]
    if facts["kind"] == "tagger":
        data["classes"] = list(facts["tags"])
    data["schema"] = {
        "inputs": default["inputs"],
        "outputs": [{**t, "output_purpose": _purpose(t["name"])} for t in default["outputs"]],
        "default_signature": export["default"], "signatures": export["schema"]}
    data["sample_rate"] = facts["sample_rate"]
    data["inference"] = {"sample_rate": facts["sample_rate"], "clip_samples": facts["num_samples"],
                         "embedding_dim": facts["output_dim"], "input": "mono float32 waveform in [-1, 1]",
                         "track": "peak-normalise the whole track, zero-pad it to a multiple of the clip, "
                                  "average the clips' embeddings (then the head): the *_track signatures"}
    if facts["text"]:  # a zoo tagger (musicnn): its own track rule, in its card text
        data["inference"].update(input="mono float32 waveform, as decoded (not normalised)",
                                 track=facts["text"].get("output", "see the card"))
    dataset = meta.get("dataset")
    pretraining = {key: value for key, value in (("method", facts["method"]), ("dataset", dataset))
                   if value and not facts["text"]}  # a zoo model was trained supervised, on its dataset
    if probe:
        results = probe["results"]
        data["dataset"] = {"name": _dataset_title(results.get("dataset", "")), "protocol": results.get("protocol")}
        data["metrics"] = {label: {metric: ((results["models"].get(model) or {}).get("test") or {}).get(
            metric, {}).get("point") for metric in PROBE_METRICS}
            for label, model in (("model", probe["name"]), *((f, f) for f in FLOORS))
            if model in results["models"]}
    elif isinstance(dataset, dict) and (facts["kind"] != "tagger" or facts["text"]):  # a probe's, else its own
        data["dataset"] = dataset
        reported = meta.get("reported_results")
        if facts["text"] and isinstance(reported, dict):  # what a zoo model's authors measured
            data["metrics"] = {"model": {metric: reported.get(metric) for metric in PROBE_METRICS}}
    if pretraining:
        data["pretraining"] = pretraining
    data.update(parameter_count=facts["parameter_count"], license=facts["license"],
                citation=meta.get("citation") or PAPER_CITATION, paper=meta.get("paper") or PAPER_URL,
                made_by=MADE_BY)
    return data


def _purpose(name):
    return {"probabilities": "predictions", "embedding": "embeddings"}.get(name, TENSOR_ROLES.get(name, name))
