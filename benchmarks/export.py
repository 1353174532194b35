"""Exported tagger size and latency per 4 s clip, frontend included, beside the PyTorch reference.

    python benchmarks/export.py [--repeats 20] [--preset DIR --head PROBE] [--tiny]

One run on one machine: the paper-size tagger (MusicEncoder() + a 50-tag head, random
weights unless --preset/--head are given) as Keras on TensorFlow with jit_compile,
as a SavedModel, as TFLite float32 / float16 / dynamic-range int8 / full int8 run
by ai_edge_litert with 1 and 2 threads, and as ONNX (``clips.onnx``) run by onnxruntime
with 1 and 2 threads; then the PyTorch reference encoder
(tests/torch_reference.py ``Backbone``, frontend included, no tag head) with 1 and 2
threads, in a subprocess. Latency = median over ``--repeats`` single-clip calls
after warm-up (batch 1, 64,000 samples); real-time factor = latency / 4 s (lower is
faster). Prints a markdown table.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import timeit

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLIP_SECONDS = 4.0
TFLITE_FORMATS = ("tflite", "tflite-fp16", "tflite-int8", "tflite-int8-full")


def timed(fn, repeats, warmup=3):
    """Median seconds of one call, after ``warmup`` untimed calls."""
    timeit.repeat(fn, number=1, repeat=warmup)
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeats))


def size_of(path):
    path = pathlib.Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def build_tagger(args):
    import keras

    from keras_music_ssl.backbone import MusicEncoder
    from keras_music_ssl.tagger import MusicTagger, TagHead, load_tag_head

    keras.utils.set_random_seed(0)
    if args.preset:
        encoder = MusicEncoder.from_preset(args.preset)
    else:
        encoder = MusicEncoder(**(dict(width=4, layers=(1, 1, 1, 1), heads=2, output_dim=32)
                                  if args.tiny else {}))
    head = load_tag_head(args.head) if args.head else TagHead([f"tag{i}" for i in range(50)])
    return MusicTagger(encoder, head)


def torch_worker(threads, repeats):
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import torch_reference

    torch.set_num_threads(threads)
    model = torch_reference.Backbone().eval()
    x = torch.randn(1, 64000, 1)

    def step():
        with torch.inference_mode():
            model(x)

    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), os.path.join(tmp, "backbone.pt"))
        size = os.path.getsize(os.path.join(tmp, "backbone.pt"))
    print("RESULT " + json.dumps({"seconds": timed(step, repeats), "size": size, "params": params}))


def run_torch(threads, repeats):
    done = subprocess.run([sys.executable, __file__, "--torch-worker", str(threads), "--repeats", str(repeats)],
                          capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return None, done.stderr[-500:]
    return json.loads(lines[-1][len("RESULT "):]), None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--preset", help="encoder preset (default: random paper-size weights)")
    parser.add_argument("--head", help="probe head .keras (default: a random 50-tag head)")
    parser.add_argument("--tiny", action="store_true", help="a tiny encoder, to check the script quickly")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--torch-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        return torch_worker(args.torch_worker, args.repeats)

    os.environ["KERAS_BACKEND"] = "tensorflow"
    sys.path.insert(0, str(ROOT))
    import tensorflow as tf

    import onnxruntime

    from keras_music_ssl.export import export, load_exported, synthetic_clips
    from ai_edge_litert.interpreter import Interpreter

    tagger = build_tagger(args)
    clip = synthetic_clips(2, seed=1)[1:]  # (1, 64000): a chord
    rows = []  # (runtime, threads, size bytes or None, seconds, note)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        tagger.save(tmp / "tagger.keras")
        tagger.compile(jit_compile=True)
        rows.append(("Keras 3 / TF, jit_compile", "default", size_of(tmp / "tagger.keras"),
                     timed(lambda: tagger.predict_on_batch(clip), args.repeats), ".keras file size"))
        paths = {}
        for fmt in ("savedmodel", "onnx") + TFLITE_FORMATS:
            start = time.perf_counter()
            paths[fmt] = export(tagger, tmp / (fmt if fmt in ("savedmodel", "onnx") else f"{fmt}.tflite"), fmt)
            print(f"exported {fmt} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        serving = tf.saved_model.load(str(paths["savedmodel"])).signatures["tag"]
        waveform = tf.constant(clip)
        rows.append(("SavedModel (tf.saved_model.load)", "default", size_of(paths["savedmodel"]),
                     timed(lambda: serving(waveform=waveform), args.repeats), ""))
        for fmt in TFLITE_FORMATS:
            for threads in (1, 2):
                runner = Interpreter(model_path=str(paths[fmt]), num_threads=threads).get_signature_runner("tag")
                rows.append((f"TFLite {fmt.removeprefix('tflite').lstrip('-') or 'fp32'} (ai_edge_litert)",
                             threads, size_of(paths[fmt]), timed(lambda: runner(waveform=clip), args.repeats), ""))
        for threads in (1, 2):
            onnx_model = load_exported(paths["onnx"], num_threads=threads)
            rows.append((f"ONNX fp32 (onnxruntime {onnxruntime.__version__})", threads,
                         size_of(paths["onnx"] / "clips.onnx"),
                         timed(lambda: onnx_model.run("tag", waveform=clip), args.repeats),
                         "clips.onnx (track.onnx is the same size)"))
    if not args.skip_torch:
        for threads in (1, 2):
            result, error = run_torch(threads, args.repeats)
            if result is None:
                rows.append(("PyTorch reference (eager)", threads, None, float("nan"), f"failed: {error}"))
            else:
                rows.append(("PyTorch reference (eager)", threads, result["size"], result["seconds"],
                             "encoder only (no tag head), state_dict size"))

    print(f"\nTagger: {tagger.encoder.count_params():,} encoder parameters, {len(tagger.tags)} tags; "
          f"batch 1 x 4 s clip; median of {args.repeats} calls; {os.cpu_count()} CPU cores.\n")
    print("| runtime | threads | size (MB) | latency per 4 s clip (ms) | real-time factor | note |")
    print("|---|---|---|---|---|---|")
    for name, threads, size, seconds, note in rows:
        size_text = f"{size / 1e6:.2f}" if size else "-"
        print(f"| {name} | {threads} | {size_text} | {seconds * 1e3:.1f} | {seconds / CLIP_SECONDS:.4f} | {note} |")


if __name__ == "__main__":
    sys.exit(main())
