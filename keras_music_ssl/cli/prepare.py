"""kmssl prepare: audio folders / manifests -> sharded TFRecords of 16 kHz int16 for pretraining.

Exit status: 0 when the run finished (skipped files are listed in OUT/skipped.csv and counted
on stderr); 2, with one line on stderr, when it could not run: an option out of range (checked
before anything is read or written), a missing source, a malformed CSV manifest, an OUT that is a
file, a folder of other files or one made with other settings/inputs, another run writing OUT,
--runner beam without Apache Beam installed, a bad --beam-option, a full disk (rerun when there is
space: the run resumes).
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
                        help="decode at most this many seconds per track (default 600, as the paper; "
                             "0: whole files)")
    parser.add_argument("--sample-rate", type=int, default=16000,
                        help="output rate in Hz (default 16000; 1000 to 384000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runner_arguments(parser)


def run(args):
    from keras_music_ssl.data.audio import shown_path
    from keras_music_ssl.data.prepare import check_options

    settings = dict(tracks_per_shard=args.tracks_per_shard, sample_rate=args.sample_rate,
                    min_duration=args.min_duration, max_duration=args.max_duration)
    check_options(**settings, workers=args.workers, flags=True)  # OptionError: one line, exit 2
    problem = check_runner_arguments(args)
    if problem is None and args.runner == "beam" and args.workers is not None:
        problem = "--workers is for the local runner; on Beam use --beam-option direct_num_workers=N."
    if problem:
        print(f"kmssl prepare: {problem}", file=sys.stderr)
        return 2
    # The failures a user can fix (a missing source, a bad manifest, OUT refused or busy, a full
    # disk) are KmsslError/OSError lines printed by the kmssl error boundary (cli/__init__.py).
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
    except FileNotFoundError as error:
        print(f"kmssl prepare: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # Beam's option parser; a UnicodeError is a bug and keeps its traceback
        if isinstance(error, UnicodeError):
            raise
        print(f"kmssl prepare: {error}", file=sys.stderr)
        return 2
    out = shown_path(args.out)
    print(f"{report['tracks']} track(s), {report['hours']:.2f} h, in {report['shards']} shard(s) -> {out}")
    if report["skipped"]:
        reasons = ", ".join(f"{n} {reason}" for reason, n in report["skipped_by_reason"].items())
        print(f"{report['skipped']} file(s) skipped ({reasons}): see {out}/skipped.csv", file=sys.stderr)
    return 0
