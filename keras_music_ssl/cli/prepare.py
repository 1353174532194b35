"""kmssl prepare: audio folders / manifests -> sharded TFRecords of 16 kHz int16 for pretraining.

Exit status: 0 when the run finished (skipped files are listed in OUT/skipped.csv and counted
on stderr); 2 when it could not run (a missing source, OUT made with other settings/inputs,
--runner beam without Apache Beam installed, a bad --beam-option).
"""

import sys

from keras_music_ssl.cli.runner import BEAM_MISSING, add_runner_arguments, check_runner_arguments, import_beam_module

HELP = "Decode audio folders or manifests into resumable TFRecord shards (16 kHz int16) for pretraining."


def add_arguments(parser):
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="folder trees, manifests (text: one path per line; CSV/TSV: a 'path' "
                             "column, other columns kept as metadata) or audio files")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (rerun to resume)")
    parser.add_argument("--tracks-per-shard", type=int, default=64, metavar="N",
                        help="input entries per shard (default 64, ~430 MB for 3.5-min tracks)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: all cores; 0 decodes in this process); "
                             "local runner only")
    parser.add_argument("--min-duration", type=float, default=4.0, metavar="SEC",
                        help="skip shorter tracks as too_short (default 4 s, one view)")
    parser.add_argument("--max-duration", type=float, default=600.0, metavar="SEC",
                        help="decode at most this many seconds per track (default 600, as the paper)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="output rate in Hz (default 16000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runner_arguments(parser)


def run(args):
    if args.tracks_per_shard < 1:
        print("kmssl prepare: --tracks-per-shard must be >= 1.", file=sys.stderr)
        return 2
    problem = check_runner_arguments(args)
    if problem is None and args.runner == "beam" and args.workers is not None:
        problem = "--workers is for the local runner; on Beam use --beam-option direct_num_workers=N."
    if problem:
        print(f"kmssl prepare: {problem}", file=sys.stderr)
        return 2
    settings = dict(tracks_per_shard=args.tracks_per_shard, sample_rate=args.sample_rate,
                    min_duration=args.min_duration, max_duration=args.max_duration)
    try:
        if args.runner == "beam":
            beam = import_beam_module("keras_music_ssl.data.beam")
            if beam is None:
                print(f"kmssl prepare: {BEAM_MISSING}", file=sys.stderr)
                return 2
            report, counters = beam.prepare_shards_beam(args.sources, args.out, beam_options=args.beam_option,
                                                        **settings)
        else:
            from keras_music_ssl.data.prepare import prepare_shards

            report = prepare_shards(args.sources, args.out, workers=args.workers, progress=not args.no_progress,
                                    **settings)
    except (FileNotFoundError, ValueError) as error:
        print(f"kmssl prepare: {error}", file=sys.stderr)
        return 2
    print(f"{report['tracks']} track(s), {report['hours']:.2f} h, in {report['shards']} shard(s) -> {args.out}")
    if report["skipped"]:
        reasons = ", ".join(f"{n} {reason}" for reason, n in report["skipped_by_reason"].items())
        print(f"{report['skipped']} file(s) skipped ({reasons}): see {args.out}/skipped.csv", file=sys.stderr)
    return 0
