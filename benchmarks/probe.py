"""The probe harness as a user runs it: extraction throughput beside PyTorch, probe fit time, results.

    python benchmarks/probe.py [--data DIR] [--preset outputs/pretrain/preset] [--backends tensorflow jax torch]

On the rendered ``small`` set (built into ``--data`` if missing: 540 clips of 10 s, 11
instrument tags), in one subprocess per Keras backend:

- extraction: ``extract_split`` of train / valid / test for the paper-size encoder (``random``),
  cold (empty cache, compile included) and warm (the cache hit of a second run), beside the
  PyTorch reference model (tests/torch_reference.py, eval, ``inference_mode``) fed the same
  segments by the same decoding and ``track.py`` rules;
- probes (TensorFlow only): ``run_probe`` of ``random``, ``logmel-stats`` and ``--preset`` with the
  paper and MARBLE protocols: test macro ROC-AUC / PR-AUC with the bootstrap interval, fit seconds.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def extraction(data_dir, folder):
    from keras_music_ssl.probe.datasets import load_probe_dataset
    from keras_music_ssl.probe.extract import extract_split
    from keras_music_ssl.probe.models import resolve_model

    data = load_probe_dataset(data_dir).dataset
    probed = resolve_model("random")
    timings = {}
    for label in ("cold", "warm"):
        start = time.perf_counter()
        parts = [extract_split(probed, data, split, folder, progress=False) for split in ("train", "valid", "test")]
        timings[label] = time.perf_counter() - start
    segments = len(parts[0].features) + sum(int(round(_segments(p.paths))) for p in parts[1:])
    return {**timings, "segments": segments, "tracks": sum(len(p.paths) for p in parts)}


def _segments(paths):
    import soundfile as sf

    return sum(max(1, int(sf.info(p).duration * 16000) // 64000) for p in paths)


def torch_reference(data_dir, batch=32):
    """The same segments through the PyTorch model: decode, cut by track.py, embed, average."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import numpy as np
    import torch

    import torch_reference as ref
    from keras_music_ssl.data.audio import load_audio
    from keras_music_ssl.probe.datasets import load_probe_dataset
    from keras_music_ssl.track import evaluation_chunks, training_segments

    torch.set_num_threads(os.cpu_count())
    data = load_probe_dataset(data_dir).dataset
    model = ref.Backbone().eval()
    start, segments = time.perf_counter(), 0
    for split in ("train", "valid", "test"):
        for i, path in enumerate(data.split(split).paths):
            x = load_audio(path)
            chunks = (training_segments(x, np.random.default_rng([0, i]))[0] if split == "train"
                      else evaluation_chunks(x))
            with torch.inference_mode():
                for j in range(0, len(chunks), batch):
                    model(torch.from_numpy(chunks[j:j + batch])[..., None]).mean(0)
            segments += len(chunks)
    return {"cold": time.perf_counter() - start, "segments": segments}


def probes(data_dir, preset, folder):
    from keras_music_ssl.probe.harness import run_probe

    models = ["random"] + ([preset] if preset else [])
    rows = {}
    for protocol in ("paper", "marble"):
        results = run_probe(data_dir, models, os.path.join(folder, protocol), protocol=protocol,
                            cache_dir=os.path.join(folder, "cache"), progress=False)
        for name, r in results["models"].items():
            rows[f"{name}|{protocol}"] = {"roc": r["test"]["roc_auc_macro"], "pr": r["test"]["pr_auc_macro"],
                                          "fit": r["seconds"]["fit"], "epoch": r["best_epoch"],
                                          "tags": r["test"]["tags_scored"]}
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(ROOT, "outputs", "rendered_small"))
    parser.add_argument("--preset", default=None, help="an encoder preset to probe beside the floors")
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = {"extraction": torch_reference(args.data) if args.worker == "pytorch"
                  else extraction(args.data, os.path.join(args.folder, args.worker))}
        if args.worker == "tensorflow":
            result["probes"] = probes(args.data, args.preset, os.path.join(args.folder, "probes"))
        print("RESULT " + json.dumps(result))
        return 0

    if not os.path.isfile(os.path.join(args.data, "build.json")):
        from keras_music_ssl.data.rendered import build_rendered_dataset

        build_rendered_dataset(args.data, size="small", seed=0)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for worker in ["pytorch", *args.backends]:
            cmd = [sys.executable, __file__, "--worker", worker, "--folder", folder, "--data", args.data]
            cmd += ["--preset", args.preset] if args.preset else []
            env = dict(os.environ, KERAS_BACKEND=worker if worker != "pytorch" else "torch", TF_CPP_MIN_LOG_LEVEL="3")
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                print(f"{worker}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            results[worker] = json.loads(line[-1][7:])

    print(f"\nProbe extraction on {args.data} (paper encoder, train segments + valid/test track means), "
          f"{os.cpu_count()} CPU cores\n")
    print("| run | segments | cold s | segments/s | vs PyTorch | warm (cache) s |")
    print("|---|---:|---:|---:|---:|---:|")
    ref = results.get("pytorch", {}).get("extraction")
    for worker, r in results.items():
        e = r["extraction"]
        speed = e["segments"] / e["cold"]
        ratio = f"{speed / (ref['segments'] / ref['cold']):.2f}x" if ref else "-"
        name = "PyTorch reference (eager, decode + track.py)" if worker == "pytorch" else f"Keras / {worker}"
        warm = f"{e['warm']:.2f}" if "warm" in e else "-"
        print(f"| {name} | {e['segments']} | {e['cold']:.1f} | {speed:.0f} | {ratio} | {warm} |")
    if "probes" in results.get("tensorflow", {}):
        print("\nProbes (TensorFlow), test split: point estimate [95 % bootstrap interval]\n")
        print("| model | protocol | ROC-AUC macro | PR-AUC macro | best epoch | fit s |")
        print("|---|---|---:|---:|---:|---:|")
        for key, r in results["tensorflow"]["probes"].items():
            name, protocol = key.split("|")
            print(f"| {name} | {protocol} | {r['roc']['point']:.3f} [{r['roc']['ci95'][0]:.3f}, {r['roc']['ci95'][1]:.3f}] "
                  f"| {r['pr']['point']:.3f} [{r['pr']['ci95'][0]:.3f}, {r['pr']['ci95'][1]:.3f}] "
                  f"| {r['epoch']} | {r['fit']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
