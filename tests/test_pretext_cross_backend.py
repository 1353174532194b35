"""The five methods give the same first-step loss on TensorFlow, JAX and PyTorch.

One process per backend (a Keras process has one backend) runs this file as a script: it
builds every method on the tiny encoder, sets the same weights from a seeded numpy state and
prints, as JSON, the training-mode loss and logs of one batch, without updating anything.
That loss is what the first train step reports (``test_pretext_methods`` checks this on
each backend), so equal values here mean equal first steps everywhere.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

BACKENDS = ("tensorflow", "jax", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def seeded_weights(model, seed=0):
    """The same weights on every backend: fan-in scaled normals, teachers copied from students."""
    rng = np.random.default_rng(seed)
    for variable in model.trainable_weights:
        shape = tuple(variable.shape)
        if len(shape) >= 2:
            value = rng.normal(0.0, 1.0 / math.sqrt(np.prod(shape[:-1])), shape)
        elif variable.name == "gamma":
            value = 1.0 + 0.1 * rng.normal(size=shape)
        else:
            value = 0.1 * rng.normal(size=shape)
        variable.assign(value.astype("float32"))
    for name in ("encoder", "projector", "head"):
        teacher = getattr(model, "teacher_" + name, None)
        if teacher is not None:
            teacher.set_weights(getattr(model, name).get_weights())


def first_step_losses():
    import keras

    from keras_music_ssl import MusicEncoder
    from keras_music_ssl.pretext import METHODS
    from test_pretext_methods import ENCODER, draw_views, synthetic_tracks

    views = draw_views(synthetic_tracks(), 1, n_views=3)  # V = 3: every pairing path
    results = {}
    for name, method in sorted(METHODS.items()):
        model = method(MusicEncoder(**ENCODER), steps_per_epoch=10, run_steps=10)
        seeded_weights(model)
        with keras.StatelessScope():
            loss, logs, _ = model.pretext_loss(views, training=True)
            embeddings = model(views)
        results[name] = {"loss": float(loss), **{k: float(v) for k, v in logs.items()},
                         "embedding_mean_abs": float(keras.ops.mean(keras.ops.abs(embeddings)))}
    return results


@pytest.mark.slow  # three backend processes: ~60 s
@pytest.mark.backend_independent
def test_first_step_losses_agree_across_backends(tmp_path):
    runs = {}
    for backend in BACKENDS:  # in parallel: JAX spends its time compiling, one core is enough
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        out, err = open(tmp_path / f"{backend}.out", "w+"), open(tmp_path / f"{backend}.err", "w+")
        runs[backend] = (subprocess.Popen([sys.executable, os.path.abspath(__file__)], env=env, cwd=ROOT,
                                          stdout=out, stderr=err), out, err)
    results = {}
    for backend, (process, out, err) in runs.items():
        process.wait(timeout=900)
        out.seek(0), err.seek(0)
        assert process.returncode == 0, f"{backend}:\n{err.read()[-3000:]}"
        results[backend] = json.loads(out.read().strip().splitlines()[-1])
        out.close(), err.close()
    reference = results["tensorflow"]
    for backend in BACKENDS[1:]:
        for method, logs in reference.items():
            for key, value in logs.items():
                other = results[backend][method][key]
                assert abs(other - value) <= 1e-4 * max(1.0, abs(value)), \
                    f"{method} {key}: tensorflow {value!r} vs {backend} {other!r}"


if __name__ == "__main__":
    print(json.dumps(first_step_losses()))
