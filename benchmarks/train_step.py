"""Training steps per second of the five pretext methods on each Keras backend, beside a
plain PyTorch step of the same contrastive model (``tests/torch_reference.py``'s Backbone,
the same MLP head, NT-Xent, AdamW).

    python benchmarks/train_step.py                  # small encoder, a few minutes on CPU
    python benchmarks/train_step.py --full           # the paper's encoder and heads
    python benchmarks/train_step.py --backends jax --methods contrastive byol --steps 10
    python benchmarks/train_step.py --devices 2      # also TF (mirrored) and JAX (data_parallel) on 2

With ``--devices N`` the TensorFlow and JAX columns are repeated on N devices (the global batch
``--batch-size`` split over them; ``keras_music_ssl.pretext.Distribution("auto")``). Without N
accelerators the N devices are virtual CPU devices that share the same cores: those numbers
only show that the distributed step runs and what its collectives cost, not a speed-up.

Each backend runs in its own process (a process has one Keras backend). The first step,
which traces and compiles, is reported apart ("first s"); steps/s is measured over the
following ``--steps`` steps, after ``--warmup`` more, from a callback that waits for each step. Input: random 4-s views at 16 kHz,
(batch, 2 views, 64000).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")
METHODS = ("contrastive", "byol", "clustering", "barlow_twins", "vicreg")
SMALL = dict(width=8, layers=(1, 1, 1, 1), heads=4, output_dim=128)
FULL = dict(width=16, layers=(3, 4, 6, 3), heads=8, output_dim=1024)
JIT = {"auto": "auto", "true": True, "false": False}  # compile(jit_compile=...): XLA / torch.compile


def views(batch, seed=0):
    return 0.1 * np.random.default_rng(seed).normal(size=(batch, 2, 64000)).astype("float32")


def keras_worker(args, config):
    import keras

    from keras_music_ssl import MusicEncoder
    from keras_music_ssl.pretext import METHODS as CLASSES
    from keras_music_ssl.pretext import Distribution
    from keras_music_ssl.pretext.distribute import virtual_cpu_devices

    if args.worker_devices > 1 and keras.backend.backend() == "tensorflow":  # JAX: XLA_FLAGS (run_worker)
        virtual_cpu_devices(args.worker_devices)

    distribution = Distribution("auto" if args.worker_devices > 1 else None, devices=args.worker_devices)

    class Clock(keras.callbacks.Callback):
        """Time at the end of each step; reading the loss waits for the step to finish."""

        def on_train_begin(self, logs=None):
            self.ends = [time.perf_counter()]

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])
            self.ends.append(time.perf_counter())

    results = {}
    for name in args.methods:
        clock = Clock()
        with distribution.scope():
            model = CLASSES[name](MusicEncoder(**config), steps_per_epoch=1000)
            model.compile(total_steps=10**6, jit_compile=JIT[args.jit_compile])
            model.fit(views(args.batch_size * (1 + args.warmup + args.steps)), batch_size=args.batch_size,
                      epochs=1, verbose=0, shuffle=False, callbacks=[clock])
        ends = clock.ends  # [start, end of step 1, ...]
        results[name] = {"steps_per_s": args.steps / (ends[-1] - ends[1 + args.warmup]),
                         "first_s": ends[1] - ends[0]}
        del model
        keras.backend.clear_session()
    return results


def torch_worker(args, config):
    """A hand-written PyTorch training step of the contrastive model, the speed peer."""
    import torch
    from torch import nn

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from torch_reference import Backbone

    d = config["output_dim"]

    def head(dims, width):
        layers = []
        for i, out in enumerate(dims):
            layers.append(nn.Linear(width, out, bias=False))
            if i < len(dims) - 1:
                layers += [nn.BatchNorm1d(out), nn.ReLU()]
            width = out
        return nn.Sequential(*layers)

    def nt_xent(z, tau=0.1):  # z: (views, batch, dim)
        v, b, _ = z.shape
        z = nn.functional.normalize(z.reshape(v * b, -1), dim=-1)
        logits = z @ z.T / tau
        logits = logits.masked_fill(torch.eye(v * b, dtype=torch.bool), float("-inf"))
        track = torch.arange(v * b) % b
        positive = (track[:, None] == track[None, :]) & ~torch.eye(v * b, dtype=torch.bool)
        return (torch.logsumexp(logits, 1, keepdim=True) - logits)[positive].mean()

    model = nn.ModuleDict({"backbone": Backbone(**config), "head": head((d, d, 2 * d), d)})
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.04)
    data = torch.from_numpy(views(args.batch_size * (1 + args.warmup + args.steps)))

    def step(batch):
        optimizer.zero_grad()
        z = torch.stack([model["head"](model["backbone"](batch[:, v, :, None])) for v in range(batch.shape[1])])
        nt_xent(z).backward()
        optimizer.step()

    batches = data.split(args.batch_size)
    start = time.perf_counter()
    step(batches[0])
    first_s = time.perf_counter() - start
    for batch in batches[1:1 + args.warmup]:
        step(batch)
    start = time.perf_counter()
    for batch in batches[1 + args.warmup:]:
        step(batch)
    return {"contrastive (plain PyTorch)": {"steps_per_s": args.steps / (time.perf_counter() - start),
                                           "first_s": first_s}}


def run_worker(kind, backend, argv, devices=1):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    if devices > 1 and backend == "jax":  # virtual CPU devices where there are no accelerators
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind, *argv,
                           "--worker-devices", str(devices)], env=env, capture_output=True, text=True)
    if done.returncode:
        print(f"{kind}/{backend} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the paper's encoder (2.8 M params) and heads")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--batch-size", type=int, default=8, help="tracks per batch (2 views each)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
    parser.add_argument("--no-torch-reference", action="store_true")
    parser.add_argument("--jit-compile", choices=JIT, default="auto",
                        help="compile(jit_compile=...) of the Keras models (auto: Keras' choice, no XLA on CPU)")
    parser.add_argument("--devices", type=int, default=1,
                        help="also time TensorFlow and JAX on this many devices (virtual CPU devices without GPUs)")
    parser.add_argument("--worker", choices=("keras", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-devices", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = FULL if args.full else SMALL

    if args.worker:
        worker = keras_worker if args.worker == "keras" else torch_worker
        print(json.dumps(worker(args, config)))
        return 0

    argv = [a for a in sys.argv[1:]]
    columns = {}
    for backend in args.backends:
        columns[backend] = run_worker("keras", backend, argv)
        if args.devices > 1 and backend != "torch":  # Keras 3 has no multi-device fit on torch
            columns[f"{backend} x{args.devices}"] = run_worker("keras", backend, argv, args.devices)
    if not args.no_torch_reference:
        columns["plain torch"] = run_worker("torch", "torch", argv)
    rows = [m for m in args.methods] + ["contrastive (plain PyTorch)"] * (not args.no_torch_reference)
    print(f"\nencoder {config}, global batch {args.batch_size} x 2 views x 64000 samples, "
          f"{args.steps} timed steps; cells: steps/s (first step incl. compile, s)")
    print(f"{'method':<30}" + "".join(f"{c:>22}" for c in columns))
    for row in rows:
        cells = []
        for column in columns.values():
            r = column.get(row)
            cells.append(f"{r['steps_per_s']:8.3f} ({r['first_s']:6.1f} s)" if r else "-")
        print(f"{row:<30}" + "".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
