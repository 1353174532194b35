"""keras_music_ssl.pretext.distribute on one device: which strategy each backend gets, the
errors for the ones it cannot have, and helpers that leave a one-device step unchanged. The
multi-device behaviour is in test_pretext_distributed.py (virtual devices, subprocesses)."""

import keras
import numpy as np
import pytest
from conftest import BACKEND, TINY_ENCODER

from keras_music_ssl import MusicEncoder, cli
from keras_music_ssl.pretext import Contrastive, distribute
from keras_music_ssl.pretext.distribute import Distribution

OWN = {"tensorflow": "mirrored", "jax": "data_parallel"}


def test_one_device_gets_no_strategy_and_unknown_names_are_refused():
    assert Distribution(None).engine is None and Distribution(None).num_devices == 1
    assert Distribution("auto", devices=1).name is None  # auto with one device: no strategy
    with pytest.raises(ValueError, match="without a strategy"):
        Distribution(None, devices=["a", "b"])
    with pytest.raises(ValueError, match="strategy must be one of"):
        Distribution("horovod")


@pytest.mark.skipif(BACKEND == "torch", reason="PyTorch has no strategy")
def test_each_backend_refuses_the_other_backends_strategy():
    other = "data_parallel" if BACKEND == "tensorflow" else "mirrored"
    with pytest.raises(ValueError, match=f"strategy {other!r} needs the"):
        Distribution(other)
    assert Distribution(OWN[BACKEND], devices=1).engine is not None


@pytest.mark.skipif(BACKEND != "torch", reason="the PyTorch backend's rule")
def test_pytorch_refuses_several_devices_and_strategies_with_a_way_out():
    for strategy in ("mirrored", "data_parallel"):
        with pytest.raises(ValueError, match="one device with the PyTorch backend.*KERAS_BACKEND=jax"):
            Distribution(strategy)
    with pytest.raises(ValueError, match="2 device"):
        Distribution("auto", devices=["cuda:0", "cuda:1"])
    assert Distribution("auto").name is None


@pytest.mark.skipif(BACKEND == "jax", reason="JAX can join processes")
def test_processes_need_jax():
    with pytest.raises(ValueError, match="need the JAX backend"):
        distribute.initialize("127.0.0.1:1234", 2, 0)


def test_helpers_leave_a_one_device_step_alone(rng):
    x = keras.ops.convert_to_tensor(rng.normal(size=(4, 2, 8)).astype("float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(distribute.gather(x)), keras.ops.convert_to_numpy(x))
    assert float(distribute.scale_loss(keras.ops.convert_to_tensor(3.0))) == 3.0
    assert distribute.num_replicas() == 1 and distribute.process_index() == 0 and distribute.process_count() == 1
    model = Contrastive(MusicEncoder(**TINY_ENCODER), sync_batchnorm=False)
    with distribute.sync_batchnorm(model):  # no replicas: nothing is switched
        assert not any(getattr(layer, "synchronized", False) for layer in model._flatten_layers())
    assert Contrastive.from_config(model.get_config()).sync_batchnorm is False


def test_kmssl_pretrain_reports_a_strategy_this_backend_cannot_have(tmp_path, capsys):
    strategy = "mirrored" if BACKEND != "tensorflow" else "data-parallel"
    code = cli.main(["pretrain", "--out", str(tmp_path / "run"), "--distribute", strategy, "--quiet"])
    assert code == 2
    assert "kmssl pretrain:" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything is written
