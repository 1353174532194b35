"""Several devices train the same objective as one, and the backends train alike.

Each run is a subprocess (a process has one backend, and the virtual CPU devices must exist
before the backend starts) that runs this file as a script: every method on the tiny encoder,
the same seeded weights, two ``fit`` steps on one global batch of 8 tracks x 2 views,
then every variable (encoder, heads, teacher, centre, BatchNorm statistics, step counter) and
the two step losses (two epochs of one step) written to an .npz. Under ``tf.distribute`` each variable is written once
per replica, so replicas that drift apart show too.

- ``mirrored`` (TF, 2 replicas of 4 tracks) and ``data_parallel`` (JAX, 2 devices) against
  ``single`` on the same backend;
- ``processes``: two JAX processes on localhost (gloo collectives), one device each;
- ``single`` on TensorFlow, JAX and PyTorch against each other.

Adam's epsilon is 1e-3 here: the attention pool's key bias has an exactly zero gradient,
whose round-off Adam would blow up to full-size steps of random sign.
"""

import argparse
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD_NAMES = ("barlow_twins", "byol", "clustering", "contrastive", "vicreg")
BATCH = 8
TOLERANCE = 1e-4  # relative to each variable's largest magnitude


def _train(mode, methods, out, process_id=0, port=None):
    backend = os.environ["KERAS_BACKEND"]
    if backend == "tensorflow" and mode == "mirrored":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    if mode == "processes":
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras

    if mode == "processes":
        keras.distribution.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

    from test_pretext_cross_backend import seeded_weights
    from test_pretext_methods import ENCODER, draw_views, synthetic_tracks

    from keras_music_ssl import MusicEncoder
    from keras_music_ssl.pretext import METHODS, ScheduledAdamW
    from keras_music_ssl.pretext.distribute import Distribution
    from keras_music_ssl.schedules import CosineSchedule, WarmupCosine

    views = draw_views(synthetic_tracks(n_tracks=BATCH), 1)  # one global batch of 8 tracks
    if mode == "processes":  # each process feeds its half
        views = views[process_id * BATCH // 2:(process_id + 1) * BATCH // 2]
    distribution = Distribution(None if mode == "single" else
                                "mirrored" if mode == "mirrored" else "data_parallel")
    arrays = {}
    for name in methods:
        with distribution.scope():
            options = {"momentum": 0.9} if name in ("byol", "clustering") else {}
            model = METHODS[name](MusicEncoder(**ENCODER), **options)
            seeded_weights(model)
            model.compile(optimizer=ScheduledAdamW(
                learning_rate=WarmupCosine(2e-3), epsilon=1e-3,
                weight_decay=CosineSchedule(0.04, 0.4)))
        history = model.fit(views, batch_size=len(views), epochs=2, shuffle=False, verbose=0)
        arrays[f"{name}/losses"] = np.asarray(history.history["loss"], "float64")
        for i, variable in enumerate(model.weights):
            replicas = getattr(variable.value, "values", None)  # a MirroredVariable's copies
            values = ([np.asarray(v) for v in replicas] if isinstance(replicas, tuple)
                      else [keras.ops.convert_to_numpy(variable)])
            arrays[f"{name}/{i}"] = np.stack(values).astype("float64")
    np.savez(out, **arrays)


def run(backend, mode, tmp_path, methods=METHOD_NAMES, env=None):
    """Start the runs of ``mode`` on ``backend``; returns a function that waits and loads them."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}),
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.path.join(ROOT, "tests"),
                                                        os.environ.get("PYTHONPATH")])))
    if mode == "data_parallel":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    ranks = (0, 1) if mode == "processes" else (0,)
    port = _free_port()
    processes = []
    for rank in ranks:
        out = tmp_path / f"{backend}-{mode}-{rank}.npz"
        log = open(tmp_path / f"{backend}-{mode}-{rank}.log", "w+")
        command = [sys.executable, os.path.abspath(__file__), mode, str(out), "--process-id", str(rank),
                   "--port", str(port), "--methods", *methods]
        processes.append((subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log), out, log))

    def wait():
        for process, _, log in processes:
            try:
                process.wait(timeout=900)
            except subprocess.TimeoutExpired:
                process.kill()
            log.seek(0)
            assert process.returncode == 0, f"{backend} {mode}:\n{log.read()[-4000:]}"
        return [dict(np.load(out)) for _, out, _ in processes]

    return wait


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_training(reference, other, methods=METHOD_NAMES, what=""):
    """Same step losses and, on every replica, the same value of every variable."""
    assert set(reference) == set(other)
    for name in methods:
        np.testing.assert_allclose(other[f"{name}/losses"], reference[f"{name}/losses"], rtol=TOLERANCE,
                                   err_msg=f"{what} {name} losses")
        for key in sorted(k for k in reference if k.startswith(name + "/") and k != f"{name}/losses"):
            expected = reference[key][0]
            scale = max(float(np.max(np.abs(expected))), 1e-3)
            for replica in other[key]:
                error = float(np.max(np.abs(replica - expected)))
                assert error <= TOLERANCE * scale, f"{what} {name} variable {key}: {error:.2e} (scale {scale:.2e})"


@pytest.mark.tf_only
def test_mirrored_strategy_trains_like_one_device(tmp_path):
    single, mirrored = run("tensorflow", "single", tmp_path), run("tensorflow", "mirrored", tmp_path)
    single, mirrored = single()[0], mirrored()[0]
    assert all(mirrored[k].shape[0] == 2 for k in mirrored if not k.endswith("losses"))  # two replicas
    assert_same_training(single, mirrored, what="mirrored")


@pytest.mark.tf_only
def test_jax_data_parallel_trains_like_one_device(tmp_path):
    single, parallel = run("jax", "single", tmp_path), run("jax", "data_parallel", tmp_path)
    assert_same_training(single()[0], parallel()[0], what="data_parallel")


@pytest.mark.slow
@pytest.mark.tf_only
def test_two_jax_processes_train_like_one_device(tmp_path):
    methods = ("byol", "contrastive")
    single, processes = run("jax", "single", tmp_path, methods), run("jax", "processes", tmp_path, methods)
    single, (first, second) = single(), processes()
    assert_same_training(single[0], first, methods, "process 0")
    assert_same_training(single[0], second, methods, "process 1")


@pytest.mark.tf_only
def test_two_training_steps_agree_across_backends(tmp_path):
    waits = {backend: run(backend, "single", tmp_path) for backend in ("tensorflow", "jax", "torch")}
    results = {backend: wait()[0] for backend, wait in waits.items()}
    for backend in ("jax", "torch"):
        assert_same_training(results["tensorflow"], results[backend], what=backend)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("single", "mirrored", "data_parallel", "processes"))
    parser.add_argument("out")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES))
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    _train(args.mode, args.methods, args.out, args.process_id, args.port)
    print(json.dumps({"ok": args.out}))
