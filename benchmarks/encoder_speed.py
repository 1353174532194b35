"""Encoder inference speed: Keras MusicEncoder on each backend beside the PyTorch reference.

    python benchmarks/encoder_speed.py [--batch 16] [--repeats 5] [--torch-compile]

Same batch (16 x 4 s of 16 kHz audio), same machine, one run: each Keras backend runs in its own
subprocess (a process has one backend); the PyTorch reference is tests/torch_reference.py.
Prints segments/s (median over repeats after warm-up), real-time factor (audio seconds per
second) and the ratio to the PyTorch reference.

Two tables:

- model level: Keras' own ``predict_on_batch`` after ``compile(jit_compile=...)`` (bypassing
  ``keras_music_ssl.inference``), against the reference timed in its own process;
- public paths, as a user calls them on a fresh ``MusicEncoder()`` (no ``compile``):
  ``predict(x)``, ``predict(x, batch_size=16)`` on 10 batches, ``model(x)``, timed in the same
  process as the PyTorch reference (eval, ``inference_mode``, 2 threads) and interleaved with
  it, repeat by repeat, so both see the same machine load; the ratio is per repeat pair.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGMENT_SECONDS = 4.0
GFLOP_PER_SEGMENT = 0.23  # the paper's encoder on one 4 s segment (multiply-adds x 2)


def sgemm_gflops():
    """float32 matmul speed of this CPU on 2 threads (PyTorch, 2048^2): the compute ceiling."""
    import torch

    torch.set_num_threads(2)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    seconds = _timeit(lambda: a @ b, 5)
    return 2 * 2048 ** 3 / seconds / 1e9


def _timeit(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_keras(backend, batch, repeats, jit):
    os.environ["KERAS_BACKEND"] = backend
    sys.path.insert(0, ROOT)
    import numpy as np

    from keras_music_ssl import MusicEncoder

    x = np.random.default_rng(0).standard_normal((batch, 64000)).astype("float32")
    import keras

    model = MusicEncoder()
    model.compile(jit_compile=jit)
    # Keras' own predict_on_batch (the trainer's), not the library's compiled-inference path
    seconds = _timeit(lambda: keras.Model.predict_on_batch(model, x), repeats)
    return seconds


def run_torch_reference(batch, repeats, compiled):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import torch

    import torch_reference

    model = torch_reference.Backbone().eval()
    if compiled:
        model = torch.compile(model)
    x = torch.randn(batch, 64000, 1)

    def step():
        with torch.inference_mode():
            model(x)

    return _timeit(step, repeats)


def run_public_paths(backend, batch, repeats):
    """{path: (keras seconds, reference seconds)}: medians of interleaved repeats, one process."""
    os.environ["KERAS_BACKEND"] = backend
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import numpy as np
    import torch

    import torch_reference
    from keras_music_ssl import MusicEncoder

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((batch, 64000)).astype("float32")
    many = rng.standard_normal((10 * batch, 64000)).astype("float32")
    model = MusicEncoder()
    reference = torch_reference.Backbone().eval()

    def torch_batches(x):
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                reference(torch.from_numpy(x[i:i + batch])[..., None])

    paths = {f"predict(x), {batch} clips": (lambda: model.predict(clips, verbose=0), lambda: torch_batches(clips)),
             f"predict(x, batch_size={batch}), {10 * batch} clips":
                 (lambda: model.predict(many, batch_size=batch, verbose=0), lambda: torch_batches(many)),
             f"model(x), {batch} clips": (lambda: model(clips), lambda: torch_batches(clips))}
    results = {}
    for name, (keras_fn, torch_fn) in paths.items():
        for fn in (keras_fn, keras_fn, torch_fn):  # warm-up: tracing, first allocations
            fn()
        pairs = []
        for _ in range(repeats):
            pairs.append([])
            for fn in (keras_fn, torch_fn):
                start = time.perf_counter()
                fn()
                pairs[-1].append(time.perf_counter() - start)
        size = 10 * batch if "batch_size" in name else batch
        results[name] = {"segments": size,
                         "keras": statistics.median(p[0] for p in pairs),
                         "reference": statistics.median(p[1] for p in pairs),
                         "ratio": statistics.median(p[1] / p[0] for p in pairs)}
    return results


def _worker(args):
    if args.public:
        print("RESULT " + json.dumps(run_public_paths(args.worker, args.batch, args.repeats)))
        return
    if args.worker == "sgemm":
        print("RESULT " + json.dumps({"gflops": sgemm_gflops()}))
        return
    if args.worker == "pytorch":
        seconds = run_torch_reference(args.batch, args.repeats, args.jit)
    else:
        seconds = run_keras(args.worker, args.batch, args.repeats, args.jit)
    print("RESULT " + json.dumps({"seconds": seconds}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-compile", action="store_true",
                        help="also time torch.compile for the PyTorch reference and the Keras torch backend")
    parser.add_argument("--public-only", action="store_true", help="only the public-path table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--public", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)

    runs = [("PyTorch reference (eager)", "pytorch", False),
            ("Keras / TensorFlow (XLA jit)", "tensorflow", True),
            ("Keras / TensorFlow (graph, no jit)", "tensorflow", False),
            ("Keras / JAX (jit)", "jax", True),
            ("Keras / PyTorch (eager)", "torch", False)]
    if args.torch_compile:
        runs += [("PyTorch reference (torch.compile)", "pytorch", True),
                 ("Keras / PyTorch (torch.compile)", "torch", True)]
    results = []
    for label, worker, jit in [] if args.public_only else runs:
        result = _run_worker(label, ["--worker", worker, "--batch", str(args.batch),
                                     "--repeats", str(args.repeats)] + (["--jit"] if jit else []))
        results.append((label, result and result["seconds"]))

    reference = results[0][1] if results else None
    print(f"\nEncoder inference, batch {args.batch} x 4 s, median of {args.repeats} "
          f"({os.cpu_count()} CPU cores)\n")
    print(f"| {'run':<36} | ms/batch | segments/s | real-time x | speed vs ref   |")
    print(f"|{'-' * 38}|---------:|-----------:|------------:|---------------:|")
    for label, seconds in results:
        if seconds is None:
            print(f"| {label:<36} | failed | | | |")
            continue
        rate = args.batch / seconds
        ratio = f"{reference / seconds:.2f}x" if reference else "-"
        print(f"| {label:<36} | {seconds * 1e3:8.0f} | {rate:10.1f} | "
              f"{rate * SEGMENT_SECONDS:11.0f} | {ratio:>14} |")

    sgemm = (_run_worker("sgemm", ["--worker", "sgemm"]) or {}).get("gflops")
    ceiling = sgemm / GFLOP_PER_SEGMENT if sgemm else float("nan")
    print(f"\nPublic paths on a fresh MusicEncoder(), interleaved with the PyTorch reference in the "
          f"same process, median of {args.repeats}; ceiling: {ceiling:.0f} segments/s "
          f"({GFLOP_PER_SEGMENT} GFLOP per segment at {sgemm or float('nan'):.0f} GFLOP/s sgemm)\n")
    print("| backend | path | segments/s | % of ceiling | reference segments/s | speed vs ref |")
    print("|---|---|---:|---:|---:|---:|")
    for backend in ("tensorflow", "jax", "torch"):
        result = _run_worker(f"public paths on {backend}", ["--worker", backend, "--public",
                                                            "--batch", str(args.batch), "--repeats", str(args.repeats)])
        for path, row in (result or {}).items():
            rate = row['segments'] / row['keras']
            print(f"| {backend} | `{path}` | {rate:.1f} | {100 * rate / ceiling:.0f} % | "
                  f"{row['segments'] / row['reference']:.1f} | {row['ratio']:.2f}x |")


def _run_worker(label, worker_args):
    """The worker's RESULT json, or None (its stderr is printed)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, __file__, *worker_args], capture_output=True, text=True, env=env)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if not line:
        print(f"{label}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(line[-1][7:])


if __name__ == "__main__":
    sys.exit(main())
