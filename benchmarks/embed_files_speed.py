"""Track-embedding throughput (``embed_files``) and checkpoint conversion time, per backend.

    python benchmarks/embed_files_speed.py [--files 6] [--seconds 30] [--batch 32]

Writes ``--files`` synthetic tracks (stereo 44.1 kHz FLAC and mono 22.05 kHz MP3, alternating)
to a temporary folder, then, in one subprocess per Keras backend with the paper-size encoder:

- decode: ``load_audio`` alone over all files (the decoding share of the run);
- per file: ``embed_waveform`` file by file (the authors' usage/sample.py loop);
- batched: ``embed_files`` (chunks of consecutive files share encoder batches);
- PyTorch peer: a plain loop of ``load_audio`` + ``track.chunk_waveform`` + the PyTorch reference
  model (eval, ``inference_mode``, 2 threads) in batches of ``--batch``, in the same process,
  interleaved with ``embed_files`` repeat by repeat (median of ``--repeats``; the ratio is per pair);
- convert: ``convert_checkpoint`` of a paper-size checkpoint written from tests/torch_reference.

Each is run once untimed first, so that compiling the encoder (TF graph / JAX jit) is excluded.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_tracks(folder, count, seconds):
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        sr, channels, ext, subtype = ((44100, 2, "flac", "PCM_16") if i % 2 == 0
                                      else (22050, 1, "mp3", "MPEG_LAYER_III"))
        t = np.arange(int(seconds * sr)) / sr
        tone = np.sin(2 * np.pi * rng.uniform(100, 1000) * t)[:, None]
        data = 0.3 * tone + 0.05 * rng.standard_normal((len(t), channels))
        path = os.path.join(folder, f"track{i}.{ext}")
        sf.write(path, data.astype("float32"), sr, subtype=subtype)
        paths.append(path)
    return paths


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def torch_peer(paths, batch):
    """A plain PyTorch loop: decode, chunk, the reference model in batches, mean per track."""
    import numpy as np
    import torch

    import torch_reference
    from keras_music_ssl.data import load_audio
    from keras_music_ssl.track import chunk_waveform

    torch.set_num_threads(2)
    model = torch_reference.Backbone().eval()

    def run():
        out = []
        with torch.inference_mode():
            for path in paths:
                chunks = torch.from_numpy(chunk_waveform(load_audio(path), 64000))[..., None]
                out.append(np.concatenate([model(chunks[i:i + batch]).numpy()
                                           for i in range(0, len(chunks), batch)]).mean(0))
        return out

    return run


def run_backend(paths, batch, folder, repeats):
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from keras_music_ssl import MusicEncoder
    from keras_music_ssl.convert import convert_checkpoint
    from keras_music_ssl.data import load_audio
    from keras_music_ssl.embed import embed_files, embed_waveform

    encoder = MusicEncoder()
    decode, waves = _timed(lambda: [load_audio(p) for p in paths])
    loop = lambda: [embed_waveform(encoder, w, batch) for w in waves]  # noqa: E731
    files = lambda: embed_files(encoder, paths, batch, progress=False)  # noqa: E731
    peer = torch_peer(paths, batch)
    loop(), files(), peer()  # compile every batch shape first (TF graph, JAX jit)
    per_file, _ = _timed(loop)
    pairs = []
    for _ in range(repeats):
        batched, result = _timed(files)
        pairs.append((batched, _timed(peer)[0]))
    batched = statistics.median(b for b, _ in pairs)
    reference = statistics.median(r for _, r in pairs)
    ratio = statistics.median(r / b for b, r in pairs)
    chunks = sum(-(-len(w) // 64000) for w in waves)

    from released_checkpoints import reference_backbone, write_released_checkpoint

    checkpoint = os.path.join(folder, "contrastive.pt")
    if not os.path.exists(checkpoint):
        write_released_checkpoint(checkpoint, "contrastive", reference_backbone({}, seed=0))
    out = os.path.join(folder, f"preset_{os.environ['KERAS_BACKEND']}")
    convert, _ = _timed(lambda: convert_checkpoint(checkpoint, out, overwrite=True))
    return {"decode": decode, "per_file": per_file, "batched": batched, "convert": convert,
            "reference": reference, "ratio": ratio,
            "chunks": chunks, "audio_seconds": sum(len(w) for w in waves) / 16000,
            "embedded": len(result.paths)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        paths = sorted(os.path.join(args.folder, f) for f in os.listdir(args.folder)
                       if f.startswith("track"))
        print("RESULT " + json.dumps(run_backend(paths, args.batch, args.folder, args.repeats)))
        return 0

    with tempfile.TemporaryDirectory() as folder:
        write_tracks(folder, args.files, args.seconds)
        rows = []
        for backend in args.backends:
            cmd = [sys.executable, __file__, "--worker", backend, "--folder", folder,
                   "--batch", str(args.batch), "--repeats", str(args.repeats)]
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                print(f"{backend}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append((backend, json.loads(line[-1][7:])))

    print(f"\nembed_files, paper encoder, {args.files} files x {args.seconds:g} s "
          f"(FLAC 44.1 kHz stereo / MP3 22.05 kHz mono), batch {args.batch}, "
          f"{os.cpu_count()} CPU cores\n")
    print("| backend    | chunks | decode s | per-file loop s | embed_files s | segments/s "
          "| PyTorch loop s | speed vs PyTorch | real-time x | convert s |")
    print("|------------|-------:|---------:|----------------:|--------------:|-----------:"
          "|---------------:|-----------------:|------------:|----------:|")
    for backend, r in rows:
        print(f"| {backend:<10} | {r['chunks']:6d} | {r['decode']:8.2f} | {r['per_file']:15.2f} | "
              f"{r['batched']:13.2f} | {r['chunks'] / r['batched']:10.1f} | {r['reference']:14.2f} | "
              f"{r['ratio']:15.2f}x | {r['audio_seconds'] / r['batched']:11.0f} | {r['convert']:9.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
