"""kmssl embed: one track embedding per audio file (mean of 4-s chunk embeddings) -> .npz.

With ``--runner beam`` the files are embedded by an Apache Beam pipeline into a folder of
shards (``keras_music_ssl/embed_beam.py``), resumable by shard, with the same numbers.

Exit status: 0 when every file was embedded; 1 when some were skipped (the .npz still holds
the others, and the skipped files are listed on stderr, or in OUT/skipped.csv on Beam); 2 when
nothing could run.
"""

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
                        help="keep the files already in --out and embed only the others "
                             "(a --runner beam run always resumes)")
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


def run(args):
    from keras_music_ssl.embed import ResumeMismatchError, embed_to_file, expand_audio_paths
    from keras_music_ssl.presets import PresetNotFoundError

    if args.batch_size < 1 or args.save_every < 0 or args.files_per_shard < 1:
        print("kmssl embed: --batch-size and --files-per-shard must be positive and --save-every not negative.",
              file=sys.stderr)
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
    try:
        result = embed_to_file(encoder, paths, args.out, args.batch_size, resume=args.resume,
                               save_every=args.save_every, preset=str(args.preset))
    except ResumeMismatchError as error:
        print(f"kmssl embed: {error}", file=sys.stderr)
        return 2
    for path, reason in result.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if result.paths:
        print(f"{len(result.paths)} file(s) embedded -> {args.out} "
              f"(embeddings {result.embeddings.shape[0]} x {result.embeddings.shape[1]})")
    else:
        print("no file could be embedded; nothing written.", file=sys.stderr)
    if result.skipped:
        print(f"{len(result.skipped)} of {len(paths)} file(s) skipped.", file=sys.stderr)
        return 1
    return 0
