"""Build the offline labeled music dataset: music21's scores rendered with a General MIDI SoundFont.

    python recipes/build_dataset.py --size small --out data/rendered_small --seed 0 --workers 2

Sizes: tiny (24 clips of 8 s, seconds to build: unit tests), small (~540 clips of 10 s, 1.5 h of
audio, a few minutes: the quickstart), full (up to 300 works in each of 11 styles, ~20 h: hours).
No network: everything comes from the music21, pretty_midi and tinysoundfont packages. The output
is the labeled format the probes read (metadata.csv + tags.txt); see keras_music_ssl/data/rendered.py.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "small", "medium", "full"), default="small")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--cache", default=None, help="stage-1 score cache (default: OUT/.cache)")
    args = parser.parse_args()

    from keras_music_ssl.data.rendered import build_rendered_dataset

    start = time.time()
    dataset = build_rendered_dataset(args.out, size=args.size, seed=args.seed, workers=args.workers,
                                     cache_dir=args.cache)
    with open(os.path.join(args.out, "build.json")) as f:
        summary = json.load(f)
    print(f"{len(dataset)} clips ({summary['hours']} h, {summary['works']} works) in {time.time() - start:.0f} s "
          f"-> {args.out}/metadata.csv; per split: {summary['clips_per_split']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
