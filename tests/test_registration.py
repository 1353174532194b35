"""``import keras_music_ssl`` registers every serializable class of the package.

So a ``.keras`` file of any of its models loads in a fresh process that only imported the
package, with the same outputs. Each check runs in a subprocess on the current backend.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import TINY_ENCODER
from test_pretext_fit import dense_encoder

from keras_music_ssl.backbone import MusicEncoder
from keras_music_ssl.pretext import BYOL, Contrastive
from keras_music_ssl.probe.baselines import LogMelStats
from keras_music_ssl.tagger import MusicTagger, TagHead

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = 4096
FRONTEND = dict(n_mels=32, n_fft=256, hop_length=128, f_max=8000.0)


def run_fresh(code, cwd):
    """Run ``code`` in a new Python process on this backend; return its last stdout line."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.slow  # a fresh process that loads five models: 16-42 s
def test_saved_models_load_in_a_process_that_only_imported_the_package(tmp_path, rng):
    waveforms = rng.uniform(-1, 1, size=(4, SAMPLES)).astype("float32")
    views = rng.normal(size=(4, 2, 64)).astype("float32")
    models = {"tagger": (MusicTagger(MusicEncoder(**TINY_ENCODER, num_samples=SAMPLES, frontend=FRONTEND),
                                     TagHead(["rock", "piano"], hidden_units=(8,))), waveforms),
              "logmel_stats": (LogMelStats(num_samples=SAMPLES, frontend=FRONTEND), waveforms)}
    for name, method in (("contrastive", Contrastive), ("byol", BYOL)):
        extra = dict(predictor_dims=(4, 16)) if method is BYOL else {}
        model = method(dense_encoder(), projector_dims=(8, 16), **extra)
        model.compile()
        model.fit(views, batch_size=4, epochs=1, verbose=0)  # one step: the optimizer has its state
        models[name] = (model, views)
    iterations = {}
    for name, (model, inputs) in models.items():
        model.save(tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}_input.npy", inputs)
        np.save(tmp_path / f"{name}_expected.npy", _numpy(model(inputs, training=False)))
        if getattr(model, "optimizer", None) is not None:
            iterations[name] = int(_numpy(model.optimizer.iterations))
    loaded = json.loads(run_fresh(f"""
        import json
        import keras, keras_music_ssl
        import numpy as np
        out = {{}}
        for name in {sorted(models)!r}:
            model = keras.saving.load_model(name + ".keras")
            np.save(name + "_got.npy", keras.ops.convert_to_numpy(model(np.load(name + "_input.npy"))))
            optimizer = getattr(model, "optimizer", None)
            out[name] = [type(model).__name__,
                         None if optimizer is None else int(keras.ops.convert_to_numpy(optimizer.iterations))]
        print(json.dumps(out))
    """, cwd=tmp_path))
    for name, (model, _) in models.items():
        assert loaded[name][0] == type(model).__name__
        np.testing.assert_allclose(np.load(tmp_path / f"{name}_got.npy"), np.load(tmp_path / f"{name}_expected.npy"),
                                   rtol=1e-6, atol=1e-6, err_msg=name)
        if name in iterations:
            assert loaded[name][1] == iterations[name] == 1


def test_import_registers_every_class_that_any_submodule_registers(tmp_path):
    """Registered names right after ``import keras_music_ssl``, then after importing every
    submodule (those needing a missing optional dependency skipped): nothing new may appear."""
    result = json.loads(run_fresh("""
        import importlib, json, pkgutil
        import keras, keras_music_ssl

        def ours():
            return sorted(k for k in keras.saving.get_custom_objects() if k.startswith("keras_music_ssl>"))

        at_import = ours()
        for module in pkgutil.walk_packages(keras_music_ssl.__path__, "keras_music_ssl."):
            if module.name.endswith("__main__"):  # runs the command line
                continue
            try:
                importlib.import_module(module.name)
            except ImportError:
                pass
        print(json.dumps({"at_import": at_import, "all": ours()}))
    """, cwd=tmp_path))
    assert set(result["all"]) - set(result["at_import"]) == set()
    expected = {"MusicEncoder", "LogMelSpectrogram", "Head", "TagHead", "MusicTagger", "BYOL", "Clustering",
                "ScheduledAdamW", "WarmupCosine", "CosineSchedule", "LogMelStats"}
    assert {f"keras_music_ssl>{name}" for name in expected} <= set(result["all"])
