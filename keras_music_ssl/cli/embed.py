"""kmssl embed: one track embedding per audio file (mean of 4-s chunk embeddings) -> .npz.

With ``--timeline`` the .npz also holds every window's embedding with its times
(``keras_music_ssl/timeline.py``: 4 s windows every ``--hop`` seconds, the whole file, streamed).

With ``--runner beam`` the files are embedded by an Apache Beam pipeline into a folder of
shards (``keras_music_ssl/embed_beam.py``), resumable by shard, with the same numbers.

Exit status: 0 when every file was embedded; 1 when some were skipped (the .npz still holds
the others, and the skipped files are listed on stderr, or in OUT/skipped.csv on Beam); 2 when
nothing could run.
"""

import os
import sys

from keras_music_ssl.cli.runner import BEAM_MISSING, add_runner_arguments, check_runner_arguments, import_beam_module

HELP = "Embed audio files with a preset: mean of the 4-s chunk embeddings, saved as .npz."


def add_arguments(parser):
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="audio files (WAV, FLAC, OGG, MP3, ...: whatever "
                             "keras_music_ssl.data.load_audio decodes) or folders of them")
    parser.add_argument("--preset", required=True, metavar="NAME_OR_DIR",
                        help="preset folder or name (deezer_contrastive, deezer_byol, ...)")
    parser.add_argument("--out", required=True, metavar="EMB.npz",
                        help="output: arrays 'embeddings' (N, D) float32 and 'paths' (N,); "
                             "with --runner beam, a folder of shard-NNNNN.npz (rerun to resume)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="4-s chunks per encoder call (default 32)")
    parser.add_argument("--weights-dir", default=None,
                        help="where named presets live (default: $KMSSL_WEIGHTS_DIR)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the files already in --out and embed only the others; refused when "
                             "--out was written with other weights (a --runner beam run always resumes)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out .npz")
    parser.add_argument("--max-duration", type=float, default=None, metavar="SECONDS",
                        help="embed at most the first SECONDS of each file (default 600, as the paper; with "
                             "--timeline the whole file; 0: the whole file, whatever its length); files cut "
                             "are counted")
    parser.add_argument("--timeline", action="store_true",
                        help="also store every window's embedding: arrays window_embeddings (W, D), window_file "
                             "(W,: row of paths), window_start / window_end (seconds); local runner, no --resume")
    parser.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                        help="--timeline: seconds between window starts (default 4, the window; implies --timeline)")
    parser.add_argument("--save-every", type=float, default=300.0, metavar="SECONDS",
                        help="rewrite --out at most this often while running, so that an "
                             "interrupted run can --resume (default 300; local runner only)")
    parser.add_argument("--files-per-shard", type=int, default=512, metavar="N",
                        help="--runner beam: input files per shard (default 512)")
    add_runner_arguments(parser)


def run_beam(args, paths):
    from keras_music_ssl.presets import PresetNotFoundError

    beam = import_beam_module("keras_music_ssl.embed_beam")
    if beam is None:
        print(f"kmssl embed: {BEAM_MISSING}", file=sys.stderr)
        return 2
    try:
        report, _ = beam.embed_shards_beam(paths, args.out, args.preset, args.weights_dir, args.batch_size,
                                           args.files_per_shard, beam_options=args.beam_option)
    except (PresetNotFoundError, ValueError) as error:
        print(f"kmssl embed: {error}", file=sys.stderr)
        return 2
    print(f"{report['embedded']} file(s) embedded in {report['shards']} shard(s) -> {args.out}")
    if report["skipped"]:
        reasons = ", ".join(f"{n} {reason}" for reason, n in report["skipped_by_reason"].items())
        print(f"{report['skipped']} of {report['files']} file(s) skipped ({reasons}): see {args.out}/skipped.csv",
              file=sys.stderr)
        return 1
    return 0


def report_cut(paths, max_duration, verb):
    """Say on stderr how many files were longer than ``max_duration`` (only their start was used)."""
    from keras_music_ssl.data.audio import duration_seconds

    if max_duration:
        cut = [p for p in paths if (duration_seconds(p) or 0.0) > max_duration + 1e-3]
        if cut:
            print(f"{len(cut)} file(s) longer than {max_duration:g} s: only their first {max_duration:g} s were "
                  f"{verb} (--max-duration 0 uses whole files), e.g. {cut[0]}", file=sys.stderr)


def run(args):
    from keras_music_ssl.embed import ResumeMismatchError, embed_to_file, expand_audio_paths
    from keras_music_ssl.presets import PresetNotFoundError

    import math

    from keras_music_ssl import storage

    if args.batch_size < 1 or not (0 <= args.save_every < math.inf) or args.files_per_shard < 1:
        print("kmssl embed: --batch-size and --files-per-shard must be positive and --save-every a finite "
              "number >= 0.", file=sys.stderr)
        return 2
    args.timeline = bool(args.timeline or args.hop is not None)
    if args.hop is not None and not (0 < args.hop < math.inf):
        print("kmssl embed: --hop must be a positive number of seconds.", file=sys.stderr)
        return 2
    if args.timeline and (args.runner == "beam" or args.resume):
        print("kmssl embed: --timeline runs on the local runner and writes its .npz once, at the end: "
              "no --runner beam, no --resume.", file=sys.stderr)
        return 2
    if args.max_duration is None:
        args.max_duration = 0.0 if args.timeline else 600.0
    if not (0 <= args.max_duration < math.inf):
        print("kmssl embed: --max-duration must be a finite number of seconds >= 0 (0: whole files).",
              file=sys.stderr)
        return 2
    if args.resume and args.overwrite:
        print("kmssl embed: --resume and --overwrite exclude each other.", file=sys.stderr)
        return 2
    storage.check_output(args.out, "folder" if args.runner == "beam" else "file")
    if args.runner == "local" and os.path.exists(args.out) and not (args.resume or args.overwrite):
        print(f"kmssl embed: {args.out} exists: --resume to continue it, --overwrite to replace it, "
              "or choose another --out.", file=sys.stderr)
        return 2
    problem = check_runner_arguments(args)
    if problem:
        print(f"kmssl embed: {problem}", file=sys.stderr)
        return 2
    paths = expand_audio_paths(args.files)
    if not paths:
        print("kmssl embed: no audio files found.", file=sys.stderr)
        return 2
    if args.runner == "beam":
        return run_beam(args, paths)
    from keras_music_ssl.backbone import MusicEncoder

    try:
        encoder = MusicEncoder.from_preset(args.preset, args.weights_dir)
    except PresetNotFoundError as error:
        print(f"kmssl embed: {error}", file=sys.stderr)
        return 2
    max_duration = args.max_duration or None
    if args.timeline:
        return _run_timeline(args, encoder, paths, max_duration)
    try:
        result = embed_to_file(encoder, paths, args.out, args.batch_size, resume=args.resume,
                               save_every=args.save_every, preset=str(args.preset), max_duration=max_duration,
                               overwrite=args.overwrite)
    except ResumeMismatchError as error:
        print(f"kmssl embed: {error}", file=sys.stderr)
        return 2
    for path, reason in result.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if result.paths:
        print(f"{len(result.paths)} file(s) embedded -> {args.out} "
              f"(embeddings {result.embeddings.shape[0]} x {result.embeddings.shape[1]})")
        report_cut(result.paths, max_duration, "embedded")
    else:
        print("no file could be embedded; nothing written.", file=sys.stderr)
    if result.skipped:
        print(f"{len(result.skipped)} of {len(paths)} file(s) skipped.", file=sys.stderr)
        return 1
    return 0


def _run_timeline(args, encoder, paths, max_duration):
    from keras_music_ssl.embed import embed_timelines_to_file

    result = embed_timelines_to_file(encoder, paths, args.out, hop=args.hop, batch_size=args.batch_size,
                                     preset=str(args.preset), max_duration=max_duration, overwrite=args.overwrite)
    for path, reason in result.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not result.paths:
        print("no file could be embedded; nothing written.", file=sys.stderr)
    else:
        print(f"{len(result.paths)} file(s), {result.windows} windows embedded -> {args.out}")
        report_cut(result.paths, max_duration, "embedded")
    if result.skipped:
        print(f"{len(result.skipped)} of {len(paths)} file(s) skipped.", file=sys.stderr)
        return 1
    return 0
