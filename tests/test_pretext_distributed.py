"""Several devices train the same objective as one, and the backends train alike.

Each run is a subprocess (a process has one backend, and the virtual CPU devices must exist
before the backend starts) that runs this file as a script: every method on the tiny encoder,
the same seeded weights, two ``fit`` steps (two epochs of one step) on one global batch of
8 tracks x 2 views, then every variable (encoder, heads, teacher, centre, BatchNorm
statistics, step counter) and the two step losses written to an .npz. Under ``tf.distribute``
each variable is written once per replica, so replicas that drift apart show too.

- ``mirrored`` (TF, 2 replicas of 4 tracks) and ``data_parallel`` (JAX, 2 devices) against
  ``single`` on the same backend;
- ``processes``: two JAX processes on localhost (gloo collectives), one device each;
- ``single`` on TensorFlow, JAX and PyTorch against each other;
- ``nt_xent``: the gathered loss of 2 TF replicas against the loss of the whole batch;
- ``kmssl pretrain`` on 2 devices (TF mirrored, two JAX processes) against one (slow).

Adam's epsilon is 1e-3 here: the attention pool's key bias has an exactly zero gradient,
whose round-off Adam would blow up to full-size steps of random sign.

Plain SGD runs at 1e-4: its first step already takes the loss from 0.81 to 0.48. At 0.05 the
steps overshoot (the loss rises) and amplify float32 round-off so much that one device
disagrees with itself by 2e-3 (loss) and 1e-2 (weights) when the batch is merely reordered;
at 1e-4 that floor is 2e-5 / 2e-6, and a gradient off by a factor of 2 moves the loss by 28 %.
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
# A teacher temperature of 0.02 multiplies the round-off of synchronised BatchNorm's one-pass
# variance by 50 in the clustering loss; 0.1 tests the same mechanics.
CLUSTERING = dict(momentum=0.9, teacher_temperature_start=0.1, teacher_temperature=0.1)
OPTIMIZERS = ("adamw", "sgd")


def _optimizer(name):
    import keras

    from keras_music_ssl.pretext import ScheduledAdamW
    from keras_music_ssl.schedules import CosineSchedule, WarmupCosine

    if name == "sgd":
        return keras.optimizers.SGD(1e-4)
    return ScheduledAdamW(learning_rate=WarmupCosine(5e-4), epsilon=1e-3, weight_decay=CosineSchedule(0.04, 0.4))


def _replica_values(variable):
    import keras

    replicas = getattr(variable.value, "values", None)  # a MirroredVariable's copies
    if isinstance(replicas, tuple):
        return np.stack([np.asarray(v) for v in replicas]).astype("float64")
    return keras.ops.convert_to_numpy(variable)[None].astype("float64")


def _distribution(mode):
    from keras_music_ssl.pretext.distribute import Distribution

    return Distribution(None if mode == "single" else "mirrored" if mode == "mirrored" else "data_parallel")


def _setup(mode, process_id=0, port=None):
    """Virtual devices and processes, before anything else starts the backend."""
    from keras_music_ssl.pretext import distribute

    if mode == "mirrored":
        distribute.virtual_cpu_devices(2)
    elif mode == "processes":
        distribute.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)


def _load(mode, path, out):
    """Load a saved method under ``mode`` and write its variables, one copy per replica."""
    import keras

    with _distribution(mode).scope():
        model = keras.saving.load_model(path)
    np.savez(out, **{f"loaded/{i}": _replica_values(v) for i, v in enumerate(model.weights)})


def _nt_xent(out):
    """NT-Xent of 2 replicas' projections: gathered, local, and of the whole batch on one device."""
    import tensorflow as tf

    from keras_music_ssl.pretext import distribute, nt_xent_loss

    z = np.random.default_rng(0).normal(size=(BATCH, 2, 16)).astype("float32")
    strategy = _distribution("mirrored").engine
    halves = strategy.experimental_distribute_values_from_function(
        lambda context: z[context.replica_id_in_sync_group * BATCH // 2:][:BATCH // 2])

    def losses(local):
        return nt_xent_loss(distribute.gather(local)), nt_xent_loss(local)

    gathered, local = strategy.run(tf.function(losses), args=(halves,))
    np.savez(out, gathered=np.stack([np.asarray(v) for v in strategy.experimental_local_results(gathered)]),
             local=np.stack([np.asarray(v) for v in strategy.experimental_local_results(local)]),
             whole=np.asarray(nt_xent_loss(z)))


def _train(mode, methods, out, optimizers=("adamw",)):
    """Each optimizer under a Distribution of its own: after the first, a second strategy in the
    same process (what a notebook or a sweep does)."""
    from test_pretext_cross_backend import seeded_weights
    from test_pretext_methods import ENCODER, draw_views, synthetic_tracks

    from keras_music_ssl import MusicEncoder
    from keras_music_ssl.pretext import METHODS

    views = draw_views(synthetic_tracks(n_tracks=BATCH), 1)  # one global batch of 8 tracks
    if mode == "processes":  # Keras gives each process its half of every global batch of a tf.data.Dataset
        import tensorflow as tf

        views = tf.data.Dataset.from_tensors(views)
    arrays = {}
    for optimizer in optimizers:
        distribution = _distribution(mode)
        for name in methods:
            key = name if optimizer == "adamw" else f"{name}-{optimizer}"
            with distribution.scope():
                options = {"byol": dict(momentum=0.9), "clustering": CLUSTERING}.get(name, {})
                model = METHODS[name](MusicEncoder(**ENCODER), **options)
                seeded_weights(model)
                start = [_replica_values(v)[0] for v in model.trainable_weights]
                model.compile(optimizer=_optimizer(optimizer))
                history = model.fit(views, batch_size=None if mode == "processes" else BATCH, epochs=2,
                                    shuffle=False, verbose=0)
            arrays[f"{key}/losses"] = np.asarray(history.history["loss"], "float64")
            # How far the two steps moved the weights, relative to their scale as in
            # assert_same_training: what a wrong gradient scale would change.
            arrays[f"{key}/moved"] = np.asarray(max(
                float(np.max(np.abs(_replica_values(v)[0] - w))) / max(float(np.max(np.abs(w))), 1e-3)
                for v, w in zip(model.trainable_weights, start)))
            for i, variable in enumerate(model.weights):
                arrays[f"{key}/{i}"] = _replica_values(variable)
            if name == "byol" and optimizer == "adamw":  # the method with the most state: teacher, BatchNorm statistics
                model.save(str(out).replace(".npz", ".keras"))
    np.savez(out, **arrays)


def run(backend, mode, tmp_path, methods=METHOD_NAMES, env=None, load=None, optimizers=("adamw",)):
    """Start the runs of ``mode`` on ``backend`` (or, with ``load``, the loading of that saved
    model); returns a function that waits for them and returns what they wrote."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}),
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.path.join(ROOT, "tests"),
                                                        os.environ.get("PYTHONPATH")])))
    if mode == "data_parallel":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    ranks = (0, 1) if mode == "processes" else (0,)
    port = _free_port()
    processes = []
    for rank in ranks:
        stem = tmp_path / f"{backend}-{mode}-{rank}{'-loaded' if load else ''}-{'-'.join(optimizers)}"
        out, log = f"{stem}.npz", open(f"{stem}.log", "w+")
        command = [sys.executable, os.path.abspath(__file__), mode, out, "--process-id", str(rank),
                   "--port", str(port), "--methods", *methods, "--optimizers", *optimizers]
        command += ["--load", str(load)] if load else []
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
                                   atol=TOLERANCE, err_msg=f"{what} {name} losses")  # losses near 0 too
        for key in sorted(k for k in reference if k.startswith(name + "/") and k.split("/")[1] not in ("losses", "moved")):
            expected = reference[key][0]
            scale = max(float(np.max(np.abs(expected))), 1e-3)
            for replica in other[key]:
                error = float(np.max(np.abs(replica - expected)))
                assert error <= TOLERANCE * scale, f"{what} {name} variable {key}: {error:.2e} (scale {scale:.2e})"


def _byol(arrays):
    return {f"loaded/{k.split('/')[1]}": v for k, v in arrays.items()
            if k.startswith("byol/") and k.split("/")[1] not in ("losses", "moved")}


@pytest.mark.slow
@pytest.mark.tf_only
def test_mirrored_strategy_trains_like_one_device_and_checkpoints_move_between_them(tmp_path):
    single, mirrored = run("tensorflow", "single", tmp_path), run("tensorflow", "mirrored", tmp_path)
    single, mirrored = single()[0], mirrored()[0]
    assert all(mirrored[k].shape[0] == 2 for k in mirrored if not k.endswith(("losses", "moved")))  # two replicas
    assert_same_training(single, mirrored, what="mirrored")

    # A model saved under the strategy loads on one device, and the reverse, variables unchanged.
    on_one = run("tensorflow", "single", tmp_path, load=tmp_path / "tensorflow-mirrored-0-adamw.keras")
    on_two = run("tensorflow", "mirrored", tmp_path, load=tmp_path / "tensorflow-single-0-adamw.keras")
    on_one, on_two = on_one()[0], on_two()[0]
    for loaded, saved, replicas in ((on_one, _byol(mirrored), 1), (on_two, _byol(single), 2)):
        assert set(loaded) == set(saved)
        for key, value in saved.items():
            assert loaded[key].shape[0] == replicas
            np.testing.assert_array_equal(loaded[key], np.repeat(value[:1], replicas, axis=0), key)


@pytest.mark.slow
@pytest.mark.tf_only
@pytest.mark.parametrize("backend,mode", [("tensorflow", "mirrored"), ("jax", "data_parallel")])
def test_plain_sgd_and_adamw_train_like_one_device_and_a_second_strategy_too(backend, mode, tmp_path):
    """Plain SGD shows a wrong gradient scale or statistic that Adam's normalisation hides.
    The distributed process trains under a MirroredStrategy / DataParallel for SGD, then under
    a second one for AdamW: a second strategy in one process trains alike too."""
    methods = ("contrastive",)
    single = run(backend, "single", tmp_path, methods, optimizers=OPTIMIZERS)
    several = run(backend, mode, tmp_path, methods, optimizers=OPTIMIZERS)
    single, several = single()[0], several()[0]
    assert_same_training(single, several, ("contrastive", "contrastive-sgd"), mode)
    # SGD's steps are large enough to show an error: a gradient 2x off (a loss divided by N
    # twice, or not at all) changes the step by all of it, 10x the tolerance or more (4.6e-3).
    assert single["contrastive-sgd/moved"] > 10 * TOLERANCE, single["contrastive-sgd/moved"]
    assert single["contrastive-sgd/losses"][1] < 0.9 * single["contrastive-sgd/losses"][0]  # a real descent step


@pytest.mark.tf_only
def test_gathered_nt_xent_is_the_loss_of_the_whole_batch(tmp_path):
    result = run("tensorflow", "nt_xent", tmp_path)()[0]
    np.testing.assert_allclose(result["gathered"], np.full(2, result["whole"]), rtol=1e-6)
    # without the gather, each replica would see 3 negatives instead of 7: another loss
    assert abs(result["local"].mean() - result["whole"]) > 1e-2 * result["whole"], result


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.tf_only
def test_two_training_steps_agree_across_backends(tmp_path):
    waits = {backend: run(backend, "single", tmp_path) for backend in ("tensorflow", "jax", "torch")}
    results = {backend: wait()[0] for backend, wait in waits.items()}
    for backend in ("jax", "torch"):
        assert_same_training(results["tensorflow"], results[backend], what=backend)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("single", "mirrored", "data_parallel", "processes", "nt_xent"))
    parser.add_argument("out")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES))
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=["adamw"])
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--port", type=int)
    parser.add_argument("--load", help="a saved model to load and write instead of training")
    args = parser.parse_args()
    _setup("mirrored" if args.mode == "nt_xent" else args.mode, args.process_id, args.port)
    if args.mode == "nt_xent":
        _nt_xent(args.out)
    elif args.load:
        _load(args.mode, args.load, args.out)
    else:
        _train(args.mode, args.methods, args.out, args.optimizers)
    print(json.dumps({"ok": args.out}))


PRETRAIN = ["pretrain", "--dataset-size", "tiny", "--encoder", "tiny", "--batch-size", "4", "--epochs", "2",
            "--steps-per-epoch", "2", "--quiet"]
# TensorFlow needs its virtual devices before it starts, so the CLI is called from a script.
MIRRORED_CLI = ("import sys; from keras_music_ssl.pretext.distribute import virtual_cpu_devices; "
                "virtual_cpu_devices(2); from keras_music_ssl import cli; sys.exit(cli.main(sys.argv[1:]))")


def _kmssl(backend, out, data_dir, *extra, prefix=("-m", "keras_music_ssl")):
    env = dict(os.environ, KERAS_BACKEND=backend, KMSSL_DATA_DIR=data_dir, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, *prefix, *PRETRAIN, "--out", str(out), *extra], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(run_dir):
    from keras_music_ssl.train import read_history

    return [row["loss"] for row in read_history(os.path.join(run_dir, "history.csv"))]


@pytest.mark.slow
@pytest.mark.tf_only
@pytest.mark.parametrize("engine", ["mirrored", "processes"])
def test_kmssl_pretrain_on_two_devices_equals_one(engine, tmp_path):
    import tempfile

    from keras_music_ssl import MusicEncoder
    from keras_music_ssl.data.embedded import embedded_dataset, split_shards

    data_dir = os.path.join(tempfile.gettempdir(), "kmssl-tests-datasets")
    split_shards(embedded_dataset("tiny", 0, data_dir, progress=False), "train", progress=False)
    backend = "tensorflow" if engine == "mirrored" else "jax"
    single = _kmssl(backend, tmp_path / "single", data_dir)
    if engine == "mirrored":
        runs = [_kmssl(backend, tmp_path / "two", data_dir, "--distribute", "mirrored",
                       prefix=("-c", MIRRORED_CLI))]
    else:
        port = str(_free_port())
        runs = [_kmssl(backend, tmp_path / "two", data_dir, "--distribute", "data-parallel", "--coordinator",
                       f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(rank)) for rank in (0, 1)]
    for process in [single, *runs]:
        log = process.communicate(timeout=600)[0]
        assert process.returncode == 0, log[-3000:]
    summary = json.load(open(tmp_path / "two" / "summary.json"))
    assert summary["devices"] == 2 and summary["distribute"] == ("mirrored" if engine == "mirrored" else "data_parallel")
    # Same data stream and the same first epoch (its first step has the warm-up's 1e-7 learning
    # rate). Then the runs drift apart a little: with the default Adam epsilon (1e-7) the early
    # steps are sign-like, and TF's synchronised BatchNorm (a one-pass variance) is 3e-5 off one
    # device's; the exact equality of the steps is tested above with epsilon 1e-3.
    two, single = _losses(tmp_path / "two"), _losses(tmp_path / "single")
    np.testing.assert_allclose(two[0], single[0], rtol=1e-4)
    np.testing.assert_allclose(two, single, rtol=5e-2)
    if engine == "processes":  # process 1 keeps its own state beside process 0's run folder
        assert _losses(tmp_path / "two" / "process-1") == _losses(tmp_path / "two")
    assert MusicEncoder.from_preset(str(tmp_path / "two" / "preset")).count_params() > 0
