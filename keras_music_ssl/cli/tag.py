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

A tagger whose head holds decision thresholds (a probe's, 0.9 on: per tag, the maximum F1 on the
validation split) also prints its decisions: the tags whose probability reaches their threshold.

``--timeline`` also tags every window (``keras_music_ssl/timeline.py``): 4 s windows every
``--hop`` seconds with their start and end, over the whole file, streamed in bounded memory;
``--csv`` writes the windows' scores, ``--plot`` draws the taggram (tags x time).

    kmssl tag concert.flac --model tagger_onnx --timeline --hop 2 --csv concert.csv --plot concert.png
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
    parser.add_argument("--max-duration", type=float, default=None, metavar="SECONDS",
                        help="tag at most the first SECONDS of each file (default 600, as the paper; with "
                             "--timeline the whole file; 0: the whole file); files cut are counted")
    timeline = parser.add_argument_group("timeline (tags window by window; --hop, --csv and --plot imply it)")
    timeline.add_argument("--timeline", action="store_true",
                          help="also tag every window of the file, with its start and end in seconds "
                               "(streamed: bounded memory whatever the length)")
    timeline.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                          help="seconds between window starts (default: the window, 4 s; musicnn: its "
                               "2.992 s patches)")
    timeline.add_argument("--csv", metavar="FILE", help="write the windows' scores as CSV: path, start, end, "
                                                        "one column per tag")
    timeline.add_argument("--plot", metavar="PNG_OR_DIR",
                          help="draw the taggram: a PNG for one file, a folder of NAME.png for several")


def _fail(message):
    print(f"kmssl tag: error: {message}", file=sys.stderr)
    return 2


def top_tags(probabilities, tags, k):
    """[(tag, score)] of the k highest scores, best first (ties keep the tag order)."""
    import numpy as np

    order = np.argsort(-np.asarray(probabilities), kind="stable")[:k]
    return [(tags[i], float(probabilities[i])) for i in order]


def _check(args):
    """The first problem with the options, or None."""
    import math

    if args.top < 1:
        return "--top must be at least 1"
    if args.threads is not None and args.threads < 1:
        return "--threads must be at least 1"
    if args.max_duration is not None and not (0 <= args.max_duration < math.inf):
        return "--max-duration must be a finite number of seconds >= 0 (0: whole files)"
    if args.hop is not None and not (0 < args.hop < math.inf):
        return "--hop must be a positive number of seconds"
    return None


def _outputs(args):
    """Refuse, before any work, a --csv or --plot that cannot be written."""
    from keras_music_ssl import storage

    if args.csv:
        storage.check_output(args.csv, "file", "--csv")
    if args.plot:
        storage.check_output(args.plot, "file" if len(args.files) == 1 else "folder", "--plot")


def _load_model(args):
    """``(model, metadata, normalize)`` or an exit status after saying why not."""
    from keras_music_ssl.export import ExportError, load_exported

    if args.preset is not None:
        model = _preset_tagger(args.preset, args.weights_dir)
        if isinstance(model, int):
            return model
        if args.timeline:
            from keras_music_ssl.timeline import check_patch_hop

            try:
                check_patch_hop(model, args.hop)
            except ValueError as error:
                return _fail(error)
        return model, {"sample_rate": model.sample_rate, "tags": model.tags}, False
    try:
        model = load_exported(args.model, num_threads=args.threads)
    except (FileNotFoundError, ExportError) as error:
        return _fail(error)
    # musicnn's exports tag the samples as decoded; older exports carry no "normalize": True
    meta = model.metadata
    if meta.get("kind") != "tagger" or not meta.get("tags"):
        return _fail(f"{args.model} has no tags: it is an embedder. Export a tagger with "
                     "`kmssl export --preset ... --head PROBE`.")
    if args.timeline and meta.get("track_rule") == "patches":
        return _fail(f"{args.model} is an export of musicnn's taggers: take its timeline (the taggram) from its "
                     "preset: kmssl tag --preset musicnn_mtt --timeline")
    if args.timeline and "head" not in model.signatures:
        return _fail(f"{args.model} was exported before 0.9 and has no 'head': export it again for --timeline")
    return model, meta, meta.get("normalize", True)


def _tag_file(args, path, model, meta, normalize, max_duration):
    """``(probabilities, num_chunks, decisions or None, Timeline or None)`` of one file; raises
    ``AudioError`` / ``UnusableTrack`` for a file that cannot be used."""
    from keras_music_ssl.data import load_audio
    from keras_music_ssl.timeline import timeline

    if args.timeline:
        line = timeline(model, path, hop=args.hop, max_duration=max_duration)
        return line.track_probabilities, line.num_chunks, line.track_tags(), line
    waveform = load_audio(path, sample_rate=meta["sample_rate"], normalize=normalize,
                          max_duration=max_duration)
    out = model.track(waveform)
    decided = model.decide(out["probabilities"]) if hasattr(model, "decide") else None
    tags = None if decided is None else [t for t, on in zip(meta["tags"], decided) if on]
    return out["probabilities"], out["num_chunks"], tags, None


def run(args):
    import numpy as np

    from keras_music_ssl.cli.embed import report_cut
    from keras_music_ssl.data import AudioError
    from keras_music_ssl.progress import bar as progress_bar
    from keras_music_ssl.track import UnusableTrack

    args.timeline = bool(args.timeline or args.hop is not None or args.csv or args.plot)
    problem = _check(args)
    if problem:
        return _fail(problem)
    _outputs(args)
    loaded = _load_model(args)
    if isinstance(loaded, int):
        return loaded
    model, meta, normalize = loaded
    if args.max_duration is None:
        max_duration = None if args.timeline else 600.0
    else:
        max_duration = args.max_duration or None
    results, skipped, lines = [], [], []
    for path in progress_bar(args.files, unit="file", desc="tag", file=sys.stderr):
        try:
            probabilities, chunks, decided, line = _tag_file(args, path, model, meta, normalize, max_duration)
        except (AudioError, UnusableTrack) as error:  # UnusableTrack: 0 samples after resampling
            reason, detail = error.reason, error.detail
            skipped.append({"path": str(path), "reason": reason, "detail": detail})
            print(f"kmssl tag: skipping {error if isinstance(error, AudioError) else f'{path}: {error}'}",
                  file=sys.stderr)
            continue
        scores = [probabilities] + ([line.probabilities] if line is not None else [])
        if not all(np.all(np.isfinite(s)) for s in scores):  # a model gone bad: never print NaN as a score
            skipped.append({"path": str(path), "reason": "non_finite_output", "detail": "the model output NaN"})
            print(f"kmssl tag: skipping {path}: the model output NaN or infinite scores", file=sys.stderr)
            continue
        result = {"path": str(path), "num_chunks": int(chunks),
                  "tags": [{"tag": t, "score": s} for t, s in top_tags(probabilities, meta["tags"], args.top)]}
        if decided is not None:
            result["decisions"] = decided
        if line is not None:
            result["timeline"] = {k: v for k, v in line.to_json().items() if k not in ("path", "tags")}
            lines.append(line)
        results.append(result)
        if not args.json:
            _print_result(result, line, args.top)
    if args.json:
        print(json.dumps({"model": str(args.model if args.preset is None else args.preset), "tags": meta["tags"],
                          "results": results, "skipped": skipped}, indent=2))
    _write_timelines(args, lines)
    report_cut([r["path"] for r in results], max_duration, "tagged")
    if skipped:
        print(f"kmssl tag: {len(skipped)} of {len(args.files)} files skipped", file=sys.stderr)
    return 1 if skipped else 0


def _print_result(result, line, top):
    print(os.fsencode(result["path"]).decode("utf-8", "backslashreplace"))  # any name the OS gives
    for item in result["tags"]:
        print(f"  {item['score']:.3f}  {item['tag']}")
    if "decisions" in result:
        print(f"  decisions: {', '.join(result['decisions']) or '(no tag reaches its threshold)'}")
    if line is not None:
        print(f"  timeline: {len(line.start)} windows of {line.window:g} s every {line.hop:g} s "
              f"({line.duration:.1f} s)")
        for i in range(len(line.start)):
            best = top_tags(line.probabilities[i], line.tags, min(top, 3))
            print(f"  {line.start[i]:8.2f}-{line.end[i]:<8.2f} " + "  ".join(f"{t} {p:.2f}" for t, p in best))


def _write_timelines(args, lines):
    import csv

    from keras_music_ssl import storage

    if args.csv and lines:
        with storage.atomic_write(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(lines[0].csv_rows()[0])
            for line in lines:
                writer.writerows(line.csv_rows()[1])
        print(f"timeline of {len(lines)} file(s) -> {args.csv}", file=sys.stderr)
    if args.plot and lines:
        if len(args.files) == 1:
            targets = [args.plot]
        else:
            os.makedirs(args.plot, exist_ok=True)
            targets, used = [], set()
            for line in lines:  # NAME.png, NAME-2.png, ... for files of the same name in other folders
                stem = os.path.splitext(os.path.basename(line.path))[0] or "track"
                name, count = f"{stem}.png", 1
                while name in used:
                    count += 1
                    name = f"{stem}-{count}.png"
                used.add(name)
                targets.append(os.path.join(args.plot, name))
        for line, target in zip(lines, targets):
            line.plot(target)
        print(f"taggram(s) -> {args.plot}", file=sys.stderr)


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
