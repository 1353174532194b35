"""``kmssl tag``: tag audio files with an exported tagger (SavedModel folder or .tflite) or a tagger preset.

    kmssl tag song.mp3 other.flac --model tagger.tflite --top 5
    kmssl tag music/*.wav --model tagger_savedmodel/ --json > tags.json
    kmssl tag song.mp3 --preset musicnn_mtt        # musicnn's taggers, converted on first use

With ``--model``, each file is decoded with ``keras_music_ssl.data.load_audio`` (mono, 16 kHz,
peak-normalised unless the export's metadata says ``"normalize": false``, as musicnn's do) and
tagged whole with the model's ``tag_track`` signature: the mean embedding of its 4 s chunks goes
through the tag head (or, for an exported musicnn tagger, the mean of its 3 s patches'
probabilities: the same tags as ``--preset``). With ``--preset`` (a preset that holds a tagger with
its own track rule: ``musicnn_mtt``, ``musicnn_msd``, ``vgg_mtt``, ``vgg_msd`` or a folder of one),
each file is decoded as that model's authors decode it (musicnn: mono, 16 kHz, not normalised)
and tagged by the model's ``track``: the mean of its 3 s patches' probabilities (musicnn's
taggram). Files that cannot be decoded are reported with their reason and skipped; the exit
status is then 1 (0 when every file was tagged, 2 for a model that cannot be used).
"""

import json
import os
import sys

HELP = "Tag audio files with an exported tagger (SavedModel folder or .tflite file) or a tagger preset."


def add_arguments(parser):
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files to tag")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="exported tagger: SavedModel folder or .tflite")
    source.add_argument("--preset", metavar="NAME_OR_DIR",
                        help="tagger preset: musicnn_mtt, musicnn_msd, vgg_mtt, vgg_msd (converted from the musicnn "
                             "wheel on first use) or a folder of one")
    parser.add_argument("--weights-dir", default=None,
                        help="where named presets live (default: $KMSSL_WEIGHTS_DIR, else "
                             "~/.cache/keras_music_ssl/presets)")
    parser.add_argument("--top", type=int, default=5, help="number of tags to show per file (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--threads", type=int, default=None, help="TFLite interpreter threads")
    parser.add_argument("--max-duration", type=float, default=600.0, metavar="SECONDS",
                        help="tag at most the first SECONDS of each file (default 600; 0: the whole file, "
                             "in memory); files cut are counted")


def _fail(message):
    print(f"kmssl tag: error: {message}", file=sys.stderr)
    return 2


def top_tags(probabilities, tags, k):
    """[(tag, score)] of the k highest scores, best first (ties keep the tag order)."""
    import numpy as np

    order = np.argsort(-np.asarray(probabilities), kind="stable")[:k]
    return [(tags[i], float(probabilities[i])) for i in order]


def run(args):
    from tqdm.auto import tqdm

    from keras_music_ssl.data import AudioError, load_audio
    from keras_music_ssl.export import ExportError, load_exported
    from keras_music_ssl.track import UnusableTrack

    import math

    import numpy as np

    from keras_music_ssl.cli.embed import report_cut

    if args.top < 1:
        return _fail("--top must be at least 1")
    if args.threads is not None and args.threads < 1:
        return _fail("--threads must be at least 1")
    if not (0 <= args.max_duration < math.inf):
        return _fail("--max-duration must be a finite number of seconds >= 0 (0: whole files)")
    max_duration = args.max_duration or None
    if args.preset is not None:
        model = _preset_tagger(args.preset, args.weights_dir)
        if isinstance(model, int):
            return model
        meta, normalize = {"sample_rate": model.sample_rate, "tags": model.tags}, False
    else:
        try:
            model = load_exported(args.model, num_threads=args.threads)
        except (FileNotFoundError, ExportError) as error:
            return _fail(error)
        # musicnn's exports tag the samples as decoded; older exports carry no "normalize": True
        meta, normalize = model.metadata, model.metadata.get("normalize", True)
        if meta.get("kind") != "tagger" or not meta.get("tags"):
            return _fail(f"{args.model} has no tags: it is an embedder. Export a tagger with "
                         "`kmssl export --preset ... --head PROBE`.")
    results, skipped = [], []
    for path in tqdm(args.files, unit="file", desc="tag", disable=None, file=sys.stderr):
        try:
            waveform = load_audio(path, sample_rate=meta["sample_rate"], normalize=normalize, max_duration=max_duration)
        except AudioError as error:
            skipped.append({"path": error.path, "reason": error.reason, "detail": error.detail})
            print(f"kmssl tag: skipping {error}", file=sys.stderr)
            continue
        try:
            out = model.track(waveform)
        except UnusableTrack as error:  # decoded to 0 samples after resampling: the empty-track rule
            skipped.append({"path": str(path), "reason": error.reason, "detail": error.detail})
            print(f"kmssl tag: skipping {path}: {error}", file=sys.stderr)
            continue
        if not np.all(np.isfinite(out["probabilities"])):  # a model gone bad: never print NaN as a score
            skipped.append({"path": str(path), "reason": "non_finite_output", "detail": "the model output NaN"})
            print(f"kmssl tag: skipping {path}: the model output NaN or infinite scores", file=sys.stderr)
            continue
        result = {"path": str(path), "num_chunks": int(out["num_chunks"]),
                  "tags": [{"tag": t, "score": s} for t, s in top_tags(out["probabilities"], meta["tags"], args.top)]}
        results.append(result)
        if not args.json:
            print(os.fsencode(result["path"]).decode("utf-8", "backslashreplace"))  # any name the OS gives
            for item in result["tags"]:
                print(f"  {item['score']:.3f}  {item['tag']}")
    if args.json:
        print(json.dumps({"model": str(args.model if args.preset is None else args.preset), "results": results,
                          "skipped": skipped}, indent=2))
    report_cut([r["path"] for r in results], max_duration, "tagged")
    if skipped:
        print(f"kmssl tag: {len(skipped)} of {len(args.files)} files skipped", file=sys.stderr)
    return 1 if skipped else 0


def _preset_tagger(preset, weights_dir):
    """The tagger model of a preset (a ``PatchTagger``: musicnn's), or an exit status after saying why not."""
    from keras_music_ssl.musicnn import PatchTagger
    from keras_music_ssl.presets import PresetNotFoundError, load_preset

    try:
        model = load_preset(preset, weights_dir)
    except PresetNotFoundError as error:
        return _fail(error)
    if not isinstance(model, PatchTagger):
        return _fail(f"{preset} holds a {type(model).__name__}, which tags nothing by itself: tag with an exported "
                     "tagger (`kmssl export --preset ... --head PROBE`, then `kmssl tag --model ...`), or give a "
                     "tagger preset (musicnn_mtt, musicnn_msd, vgg_mtt, vgg_msd)")
    return model
