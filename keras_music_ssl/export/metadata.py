"""What travels with an exported model, and reading it back.

A SavedModel carries ``tags.txt`` and ``keras_music_ssl.json`` in ``assets.extra/`` (and a
``metadata`` signature); a ``.tflite`` file carries the same two files in a zip archive
appended to the flatbuffer, the way TFLite Support attaches label files: interpreters
ignore it, any zip reader (or :func:`read_metadata`) reads it.
"""

import json
import math
import pathlib
import zipfile

from keras_music_ssl.errors import KmsslError

METADATA_FILE = "keras_music_ssl.json"
TAGS_FILE = "tags.txt"


class ExportError(KmsslError, RuntimeError):
    """A model that cannot be exported, or an exported file that cannot be used."""


# How a track becomes the model's inputs (``track_rule``), when the metadata does not say:
# exports written before the field are all of the library's own encoders and taggers.
TRACK_RULES = ("chunks", "patches")
DEFAULT_TRACK = {"track_rule": "chunks", "normalize": True}


def model_metadata(model):
    """What travels with an export: kind, tags, sample rate, clip length, embedding width, and how a
    track is tagged or embedded.

    ``track_rule``: ``"chunks"`` (``keras_music_ssl/track.py``: consecutive zero-padded clips, mean
    embedding, then the head) or ``"patches"`` (a ``musicnn.PatchTagger``: musicnn's overlapping
    patches every ``hop_samples`` of the track padded with ``pad_mode``, mean of the patches'
    probabilities: ``musicnn/track.py``). ``normalize``: whether a track is peak-normalised before
    it is cut (musicnn uses the samples as decoded). ``thresholds`` (a tagger whose head has them):
    one per tag, a tag is on when its probability reaches it (:func:`decisions`).
    """
    from keras_music_ssl import __version__
    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.musicnn import PatchTagger
    from keras_music_ssl.tagger import MusicTagger

    if isinstance(model, PatchTagger):
        return {"kind": "tagger", "tags": list(model.tags), "sample_rate": int(model.sample_rate),
                "clip_samples": int(model.num_samples), "embedding_dim": int(model.feature_dim),
                "track_rule": "patches", "normalize": False, "hop_samples": model.hop_samples,
                "pad_mode": model.pad_mode, "keras_music_ssl_version": __version__}
    thresholds = {}
    if isinstance(model, MusicTagger):
        kind, encoder, tags = "tagger", model.encoder, model.tags
        if model.head.thresholds is not None:
            thresholds = {"thresholds": [float(t) for t in model.head.thresholds]}
    elif isinstance(model, MusicEncoder):
        kind, encoder, tags = "embedder", model, []
    else:
        raise TypeError(f"Export takes a MusicEncoder or a MusicTagger (or musicnn's PatchTagger: Musicnn, Vgg), "
                        f"got {type(model).__name__}.")
    return {"kind": kind, "tags": list(tags), "sample_rate": int(encoder.sample_rate),
            "clip_samples": int(encoder.num_samples), "embedding_dim": int(encoder.output_dim),
            **DEFAULT_TRACK, **thresholds, "keras_music_ssl_version": __version__}


def metadata_files(meta):
    """name -> text of the files that carry the tags beside (or inside) a model."""
    return {TAGS_FILE: "".join(f"{tag}\n" for tag in meta["tags"]),
            METADATA_FILE: json.dumps(meta, indent=2)}


def write_metadata_files(folder, meta):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in metadata_files(meta).items():
        (folder / name).write_text(text)


def read_metadata(path):
    """The metadata of an exported model: a SavedModel or ONNX folder, or a ``.tflite`` file.
    Metadata that is missing, unreadable or not of the shape ``model_metadata`` writes (a
    tampered file) raises :class:`ExportError`."""
    path = existing_model_path(path)
    for beside in (path / "assets.extra" / METADATA_FILE, path / METADATA_FILE):
        if beside.is_file():
            return checked_metadata(beside.read_bytes(), beside)
    if path.is_dir():
        import tensorflow as tf

        signature = tf.saved_model.load(str(path)).signatures.get("metadata")
        if signature is None:
            raise ExportError(f"{path} has no 'metadata' signature: not exported by keras_music_ssl.")
        return decode_metadata(signature())
    try:
        with zipfile.ZipFile(path) as archive:
            return checked_metadata(archive.read(METADATA_FILE), path)
    except (zipfile.BadZipFile, KeyError, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError):
        raise ExportError(f"{path} carries no readable {METADATA_FILE}: not exported by keras_music_ssl, "
                          "or damaged.") from None


def checked_metadata(data, source):
    """The metadata in ``data`` (JSON bytes), checked field by field."""
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"{source}: the model's metadata is not valid JSON ({error}).") from None
    problems = []
    if not isinstance(meta, dict):
        raise ExportError(f"{source}: the model's metadata is not a JSON object.")
    if meta.get("kind") not in ("embedder", "tagger"):
        problems.append(f"kind {meta.get('kind')!r}")
    tags = meta.get("tags")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        problems.append("tags not a list of names")
    for key in ("sample_rate", "clip_samples"):
        if not _positive_int(meta.get(key)):
            problems.append(f"{key} {meta.get(key)!r}")
    problems += _track_problems(meta)
    thresholds = meta.get("thresholds")
    if thresholds is not None and not (
            isinstance(thresholds, list) and isinstance(tags, list) and len(thresholds) == len(tags)
            and all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in thresholds)):
        problems.append("thresholds not one finite number per tag")
    if problems:
        raise ExportError(f"{source}: the model's metadata is damaged ({', '.join(problems)}).")
    return with_track_defaults(meta)


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _track_problems(meta):
    """What is wrong with the track fields present (absent ones take ``DEFAULT_TRACK``)."""
    problems = []
    rule = meta.get("track_rule", DEFAULT_TRACK["track_rule"])
    if rule not in TRACK_RULES:
        problems.append(f"track_rule {rule!r}")
    if not isinstance(meta.get("normalize", True), bool):
        problems.append(f"normalize {meta.get('normalize')!r}")
    if rule == "patches":
        if meta.get("kind") != "tagger":
            problems.append("track_rule 'patches' of a model that is not a tagger")
        if not _positive_int(meta.get("hop_samples")):
            problems.append(f"hop_samples {meta.get('hop_samples')!r}")
        if meta.get("pad_mode") not in ("reflect", "constant"):
            problems.append(f"pad_mode {meta.get('pad_mode')!r}")
    return problems


def with_track_defaults(meta):
    """``meta`` with ``DEFAULT_TRACK`` for the track fields an older export does not carry."""
    return {**DEFAULT_TRACK, **meta}


def decode_metadata(outputs):
    """The ``metadata`` signature's outputs (a SavedModel's) -> the metadata; ``track_rule`` and
    ``normalize`` are outputs of exports since they exist, defaults before."""
    meta = {"kind": outputs["kind"].numpy().decode(),
            "tags": [t.decode() for t in outputs["tags"].numpy()],
            "sample_rate": int(outputs["sample_rate"]), "clip_samples": int(outputs["clip_samples"])}
    if "track_rule" in outputs:
        meta["track_rule"] = outputs["track_rule"].numpy().decode()
    if "normalize" in outputs:
        meta["normalize"] = bool(outputs["normalize"].numpy())
    if "hop_samples" in outputs:
        meta["hop_samples"] = int(outputs["hop_samples"])
    if "pad_mode" in outputs:
        meta["pad_mode"] = outputs["pad_mode"].numpy().decode()
    if "thresholds" in outputs:
        meta["thresholds"] = [float(t) for t in outputs["thresholds"].numpy()]
    return with_track_defaults(meta)


def decisions(meta, probabilities):
    """Boolean (..., tags): ``probabilities >= thresholds`` of an export's metadata, or None when it
    carries none (an embedder, musicnn's taggers, a tagger exported before 0.9 or from a head without
    thresholds: top-k only)."""
    from keras_music_ssl.probe.thresholds import decide

    return decide(probabilities, meta["thresholds"]) if meta.get("thresholds") else None


def existing_model_path(path):
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No exported model at {path}.")
    if path.is_dir() and not is_saved_model(path) and not is_onnx_folder(path):
        raise ExportError(f"{path} is a folder but not a SavedModel (no saved_model.pb) or an ONNX export "
                          f"(no {ONNX_CLIPS_FILE}).")
    return path


ONNX_CLIPS_FILE = "clips.onnx"


def is_saved_model(path):
    return (path / "saved_model.pb").is_file()


def is_onnx_folder(path):
    return (path / ONNX_CLIPS_FILE).is_file()
