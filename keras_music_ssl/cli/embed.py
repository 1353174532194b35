"""kmssl embed: one track embedding per audio file (mean of 4-s chunk embeddings) -> .npz.

Exit status: 0 when every file was embedded; 1 when some were skipped (the .npz still holds
the others, and the skipped files are listed on stderr); 2 when nothing could run.
"""

import sys

HELP = "Embed audio files with a preset: mean of the 4-s chunk embeddings, saved as .npz."


def add_arguments(parser):
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="audio files (WAV, FLAC, OGG, MP3, ...: whatever "
                             "keras_music_ssl.data.load_audio decodes) or folders of them")
    parser.add_argument("--preset", required=True, metavar="NAME_OR_DIR",
                        help="preset folder or name (deezer_contrastive, deezer_byol, ...)")
    parser.add_argument("--out", required=True, metavar="EMB.npz",
                        help="output: arrays 'embeddings' (N, D) float32 and 'paths' (N,)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="4-s chunks per encoder call (default 32)")
    parser.add_argument("--weights-dir", default=None,
                        help="where named presets live (default: $KMSSL_WEIGHTS_DIR)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the files already in --out and embed only the others")
    parser.add_argument("--save-every", type=float, default=300.0, metavar="SECONDS",
                        help="rewrite --out at most this often while running, so that an "
                             "interrupted run can --resume (default 300)")


def run(args):
    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.embed import ResumeMismatchError, embed_to_file, expand_audio_paths
    from keras_music_ssl.presets import PresetNotFoundError

    if args.batch_size < 1 or args.save_every < 0:
        print("kmssl embed: --batch-size must be positive and --save-every not negative.",
              file=sys.stderr)
        return 2
    paths = expand_audio_paths(args.files)
    if not paths:
        print("kmssl embed: no audio files found.", file=sys.stderr)
        return 2
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
