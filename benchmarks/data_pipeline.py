"""Data pipeline throughput beside a training step's consumption rate.

    python benchmarks/data_pipeline.py [--tracks 24] [--seconds 60] [--batches 20] [--backend tensorflow]
    python benchmarks/data_pipeline.py --prepare-only    # only the two `kmssl prepare` rows

Makes a temporary corpus of music-like tracks (44.1 kHz stereo) as FLAC and MP3, prepares TFRecord
shards from it (`kmssl prepare`, timed, locally and with `--runner beam` on Beam's DirectRunner when
apache-beam is installed; the same output), then times `pretraining_dataset` (2 views of 4 s per
track, batch 16) from the shards, straight from each audio folder and through the decoded-audio
cache (`--audio-cache`: first pass and later passes), and a training step of the
paper's encoder (`MusicEncoder()`, 2.8 M parameters) with a small two-view loss on a
(16, 2, 64000) batch (`train_on_batch`, median after warm-up). A pipeline keeps up with training
when its views/s exceed the step's consumption.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, VIEWS = 16, 2
# Beam's unit of work is a whole shard: 4 tracks per shard make 6 shards of the default 24 tracks
# for 2 workers, as a real catalog makes thousands (with 8, one of 3 shards runs alone at the end).
TRACKS_PER_SHARD = 4


def make_corpus(folder, tracks, seconds, sample_rate=44100):
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    for fmt in ("flac", "mp3"):
        os.makedirs(os.path.join(folder, fmt), exist_ok=True)
    for i in range(tracks):
        notes = rng.uniform(110, 880, size=3)
        tone = sum(np.sin(2 * np.pi * f * t) for f in notes) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.25 * t))
        audio = 0.2 * np.stack([tone, np.roll(tone, 100)], axis=1) + 0.01 * rng.standard_normal((len(t), 2))
        for fmt in ("flac", "mp3"):
            sf.write(os.path.join(folder, fmt, f"track{i:03d}.{fmt}"), audio.astype("float32"), sample_rate)


def views_per_second(dataset, batches):
    iterator = iter(dataset)
    next(iterator)  # warm-up: tracing, first files, shuffle buffer
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH * VIEWS / (time.perf_counter() - start)


def training_step_seconds(repeats=3):
    import keras
    import numpy as np
    from keras import ops

    from keras_music_ssl import MusicEncoder

    class TwoViews(keras.Model):
        def __init__(self):
            super().__init__()
            self.encoder = MusicEncoder()

        def call(self, views, training=False):
            flat = self.encoder(ops.reshape(views, (-1, 64000)), training=training)
            return ops.reshape(flat, (-1, VIEWS, self.encoder.output_dim))

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            z = y_pred / ops.norm(y_pred, axis=-1, keepdims=True)
            return 2.0 - 2.0 * ops.mean(ops.sum(z[:, 0] * z[:, 1], axis=-1))

    model = TwoViews()
    model.compile(optimizer="adam")
    batch = np.random.default_rng(0).standard_normal((BATCH, VIEWS, 64000)).astype("float32")
    model.train_on_batch(batch)  # build + trace
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.train_on_batch(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def prepare_on_beam(tmp, tracks):
    """The Beam row: `kmssl prepare --runner beam` with its local defaults (DirectRunner), start-up
    included; checks that it wrote the local path's files. None without apache-beam."""
    import filecmp

    try:
        from keras_music_ssl.data.beam import LOCAL_DEFAULTS, prepare_shards_beam
    except ImportError:
        print("apache-beam is not installed (pip install 'keras-music-ssl[beam]'): no Beam row")
        return None
    local, out = os.path.join(tmp, "shards"), os.path.join(tmp, "shards-beam")
    start = time.perf_counter()
    prepare_shards_beam([os.path.join(tmp, "flac")], out, tracks_per_shard=TRACKS_PER_SHARD)
    rate = tracks / (time.perf_counter() - start)
    names = sorted(os.listdir(local))
    _, mismatch, errors = filecmp.cmpfiles(local, out, names, shallow=False)
    if mismatch or errors or names != sorted(os.listdir(out)):
        raise SystemExit(f"the Beam run wrote other files than the local one: {mismatch + errors}")
    mode = {"multi_threading": "threads", "multi_processing": "processes"}.get(
        LOCAL_DEFAULTS["direct_running_mode"], LOCAL_DEFAULTS["direct_running_mode"])
    return f"Beam {LOCAL_DEFAULTS['runner']} ({LOCAL_DEFAULTS['direct_num_workers']} {mode})", rate


def print_prepare(rows, args):
    print(f"\nkmssl prepare, FLAC 44.1 kHz stereo -> 16 kHz shards ({TRACKS_PER_SHARD} tracks per shard); "
          f"{args.tracks} tracks of {args.seconds:g} s; {os.cpu_count()} CPU cores\n")
    print(f"| {'runner':<46} | files/s | min of audio/s |")
    print(f"|{'-' * 48}|--------:|---------------:|")
    for label, rate in rows:
        print(f"| {label:<46} | {rate:7.1f} | {rate * args.seconds / 60:14.1f} |")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each track")
    parser.add_argument("--batches", type=int, default=10, help="batches timed per pipeline")
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    parser.add_argument("--skip-training", action="store_true", help="only the pipelines")
    parser.add_argument("--prepare-only", action="store_true", help="only the prepare rows")
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, ROOT)
    from keras_music_ssl.data.pipelines import pretraining_dataset, track_dataset
    from keras_music_ssl.data.parallel import default_workers
    from keras_music_ssl.data.prepare import prepare_shards

    rows, prepare_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        make_corpus(tmp, args.tracks, args.seconds)
        start = time.perf_counter()
        prepare_shards([os.path.join(tmp, "flac")], os.path.join(tmp, "shards"), tracks_per_shard=TRACKS_PER_SHARD,
                       progress=False)
        prepare_rows.append((f"local (`kmssl prepare`, {default_workers()} processes)",
                             args.tracks / (time.perf_counter() - start)))
        beam_row = prepare_on_beam(tmp, args.tracks)
        if beam_row:
            prepare_rows.append(beam_row)
        if args.prepare_only:
            print_prepare(prepare_rows, args)
            return 0
        for label, source, per_track in [("prepared shards (TFRecord int16)", "shards", 1),
                                         ("FLAC folder (decode + resample)", "flac", 1),
                                         ("MP3 folder (decode + resample)", "mp3", 1),
                                         ("MP3 folder, 4 view sets per decode", "mp3", 4)]:
            dataset = pretraining_dataset(os.path.join(tmp, source), BATCH, seed=0, views_per_track=per_track)
            rows.append((label, views_per_second(dataset, args.batches)))
        for fmt in ("flac", "mp3"):  # --audio-cache: the first pass decodes and writes, later ones read
            folder, cache = os.path.join(tmp, fmt), os.path.join(tmp, f"cache-{fmt}")
            start = time.perf_counter()
            tracks = sum(1 for _ in track_dataset(folder, repeat=False, cache_dir=cache))
            rows.append((f"{fmt.upper()} folder, audio cache, first pass", VIEWS * tracks / (time.perf_counter() - start)))
            dataset = pretraining_dataset(folder, BATCH, seed=0, cache_dir=cache)
            rows.append((f"{fmt.upper()} folder, audio cache, later passes", views_per_second(dataset, args.batches)))
    step = None if args.skip_training else training_step_seconds()

    print(f"\nData pipeline, batches of ({BATCH}, {VIEWS}, 64000); {args.tracks} tracks of {args.seconds:g} s, "
          f"44.1 kHz stereo; {os.cpu_count()} CPU cores; backend {args.backend}\n")
    print_prepare(prepare_rows, args)
    print(f"| {'source':<46} | views/s | batches/s | x training step |")
    print(f"|{'-' * 48}|--------:|----------:|----------------:|")
    for label, rate in rows:
        ratio = f"{rate * step / (BATCH * VIEWS):.1f}x" if step else "-"
        print(f"| {label:<46} | {rate:7.0f} | {rate / (BATCH * VIEWS):9.2f} | {ratio:>15} |")
    if step:
        consumed = BATCH * VIEWS / step
        print(f"| {'training step: MusicEncoder() train_on_batch':<46} | {consumed:7.1f} | {1 / step:9.2f} | "
              f"{'(consumption)':>15} |")


if __name__ == "__main__":
    sys.exit(main())
