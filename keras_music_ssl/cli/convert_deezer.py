"""kmssl convert-deezer: the authors' released .pt checkpoints -> Keras presets.

    kmssl convert-deezer --download          # fetch weights.zip, convert all five (deezer_byol, ...)
    kmssl convert-deezer ~/weights.zip       # the same from a zip downloaded by hand
    kmssl convert-deezer byol.pt --branch teacher --out byol_teacher/
"""

import json
import sys

HELP = "Convert the authors' released PyTorch checkpoints (weights.zip) into Keras presets."


def add_arguments(parser):
    parser.add_argument("checkpoints", nargs="*", metavar="PATH",
                        help="checkpoint(s) from weights.zip (contrastive.pt, byol.pt, ...), or the "
                             "weights.zip itself (all five are converted into $KMSSL_WEIGHTS_DIR)")
    parser.add_argument("--download", action="store_true",
                        help="download the authors' weights.zip ($KMSSL_DEEZER_WEIGHTS_URL, else their GitHub "
                             "release; resumed if interrupted) and convert all five into $KMSSL_WEIGHTS_DIR")
    parser.add_argument("--weights-dir", default=None,
                        help="where the named presets go (default: $KMSSL_WEIGHTS_DIR, else "
                             "~/.cache/keras_music_ssl/presets)")
    parser.add_argument("--out", metavar="DIR",
                        help="preset folder to write (one checkpoint only); default: "
                             "$KMSSL_WEIGHTS_DIR/<preset name>, e.g. deezer_byol for byol.pt")
    parser.add_argument("--branch", choices=("student", "teacher"), default="student",
                        help="which encoder to convert: the trained student (default) or, for "
                             "byol/clustering, the EMA teacher")
    parser.add_argument("--heads", type=int, default=None,
                        help="attention-pool heads (not in the file; default 8, as released)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the preset files in a non-empty output folder")
    parser.add_argument("--inspect", action="store_true",
                        help="print what each checkpoint holds (run metadata, encoders, other "
                             "tensors) as JSON and write nothing")


def run(args):
    import warnings

    from keras_music_ssl import convert
    from keras_music_ssl.presets import PresetNotFoundError
    from keras_music_ssl.torch_weights import StateDictMismatchError

    if args.out and len(args.checkpoints) > 1:
        print("kmssl convert-deezer: --out takes one checkpoint; leave it out to convert several "
              "into $KMSSL_WEIGHTS_DIR.", file=sys.stderr)
        return 2
    if args.branch == "teacher" and not args.out and not args.inspect:
        print("kmssl convert-deezer: give --out for a teacher: the named presets hold the "
              "trained (student) encoders.", file=sys.stderr)
        return 2
    zips = [p for p in args.checkpoints if str(p).lower().endswith(".zip")]
    if args.download or zips:
        return _release(args, zips)
    if not args.checkpoints:
        print("kmssl convert-deezer: give checkpoint files, a weights.zip, or --download.", file=sys.stderr)
        return 2
    heads = args.heads or convert.DEFAULT_HEADS
    failed = 0
    for path in args.checkpoints:
        try:
            if args.inspect:
                print(json.dumps(convert.inspect_checkpoint(path, heads), indent=2))
                continue
            out = args.out or convert.default_preset_dir(path, args.weights_dir)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                _, meta = convert.convert_checkpoint(path, out, args.branch, heads,
                                                     overwrite=args.overwrite)
            for warning in caught:
                print(f"WARNING: {warning.message}", file=sys.stderr)
            config = meta["encoder_config"]
            print(f"{path} -> {out}\n  method {meta['method']}, {args.branch} encoder "
                  f"({meta['source']['prefix'] or 'no prefix'}), width {config['width']}, "
                  f"layers {tuple(config['layers'])}, {config['output_dim']}-d output\n"
                  f"  frontend: {meta['frontend_check']}")
        except (convert.CheckpointError, StateDictMismatchError, FileExistsError,
                PresetNotFoundError, ImportError) as error:
            print(f"kmssl convert-deezer: {error}\n  nothing was written for {path}.",
                  file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _release(args, zips):
    """All five named presets from the release zip (downloaded, or given)."""
    from keras_music_ssl.deezer_release import fetch_presets

    if len(zips) > 1 or (zips and (args.download or len(args.checkpoints) > 1)) or args.out or args.inspect \
            or args.branch != "student" or args.heads:
        print("kmssl convert-deezer: --download and a weights.zip convert the five released encoders as they are: "
              "give one of them alone (with --weights-dir, --overwrite); convert single .pt files for "
              "--out, --branch, --heads or --inspect.", file=sys.stderr)
        return 2
    folders = fetch_presets(args.weights_dir, source=zips[0] if zips else None, overwrite=args.overwrite)
    for name, folder in folders.items():
        print(f"{name} -> {folder}")
    return 0
