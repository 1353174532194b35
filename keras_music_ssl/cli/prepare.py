"""kmssl prepare: audio folders / manifests -> sharded TFRecords of 16 kHz int16 for pretraining.

Exit status: 0 when the run finished (skipped files are listed in OUT/skipped.csv and counted
on stderr); 2 when it could not run (a missing source, or OUT made with other settings/inputs).
"""

import sys

HELP = "Decode audio folders or manifests into resumable TFRecord shards (16 kHz int16) for pretraining."


def add_arguments(parser):
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="folder trees, manifests (text: one path per line; CSV/TSV: a 'path' "
                             "column, other columns kept as metadata) or audio files")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (rerun to resume)")
    parser.add_argument("--tracks-per-shard", type=int, default=64, metavar="N",
                        help="input entries per shard (default 64, ~430 MB for 3.5-min tracks)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: all cores; 0 decodes in this process)")
    parser.add_argument("--min-duration", type=float, default=4.0, metavar="SEC",
                        help="skip shorter tracks as too_short (default 4 s, one view)")
    parser.add_argument("--max-duration", type=float, default=600.0, metavar="SEC",
                        help="decode at most this many seconds per track (default 600, as the paper)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="output rate in Hz (default 16000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    from keras_music_ssl.data.prepare import prepare_shards

    if args.tracks_per_shard < 1:
        print("kmssl prepare: --tracks-per-shard must be >= 1.", file=sys.stderr)
        return 2
    try:
        report = prepare_shards(args.sources, args.out, tracks_per_shard=args.tracks_per_shard, workers=args.workers,
                         sample_rate=args.sample_rate, min_duration=args.min_duration,
                         max_duration=args.max_duration, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as error:
        print(f"kmssl prepare: {error}", file=sys.stderr)
        return 2
    print(f"{report['tracks']} track(s), {report['hours']:.2f} h, in {report['shards']} shard(s) -> {args.out}")
    if report["skipped"]:
        reasons = ", ".join(f"{n} {reason}" for reason, n in report["skipped_by_reason"].items())
        print(f"{report['skipped']} file(s) skipped ({reasons}): see {args.out}/skipped.csv", file=sys.stderr)
    return 0
