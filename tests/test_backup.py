"""keras_music_ssl.backup: training states written whole or not at all, the newest two kept, a
damaged newest one falling back to the one before (a small Keras model with an optimizer)."""

import json
import os

import keras
import numpy as np
import pytest

from keras_music_ssl import backup, storage


def model_and_data(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    x = np.random.default_rng(seed).normal(size=(16, 3)).astype("float32")
    return model, x, x.sum(axis=1, keepdims=True)


def weights(model):
    return [np.array(w) for w in model.get_weights()] + [
        np.array(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables]


def test_states_are_kept_two_deep_and_restore_equals_the_trained_model(tmp_path):
    model, x, y = model_and_data()
    folder = tmp_path / "backup"
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[backup.Backup(folder)])
    assert [p.name for p in backup.states(folder)] == ["epoch-0002", "epoch-0003"]
    assert not [p for p in os.listdir(folder) if p.startswith(".")]  # no temporaries left

    fresh, _, _ = model_and_data(seed=1)
    assert backup.restore(fresh, folder) == 3
    for a, b in zip(weights(fresh), weights(model)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage", ["truncate", "flip", "state"])
def test_a_damaged_newest_state_falls_back_to_the_previous_one(damage, tmp_path):
    model, x, y = model_and_data()
    folder = tmp_path / "backup"
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    backup.save_state(model, folder, 1)
    after_one = weights(model)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    backup.save_state(model, folder, 2)
    newest = folder / "epoch-0002"
    data = (newest / backup.WEIGHTS).read_bytes()
    if damage == "truncate":
        (newest / backup.WEIGHTS).write_bytes(data[:len(data) // 2])
    elif damage == "flip":  # same size, one byte changed: only the checksum sees it
        (newest / backup.WEIGHTS).write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    else:
        (newest / backup.STATE).write_text('{"epoch": 2, "sha')

    fresh, _, _ = model_and_data(seed=1)
    with pytest.warns(UserWarning, match="epoch-0002"):
        assert backup.restore(fresh, folder) == 1
    for a, b in zip(weights(fresh), after_one):
        np.testing.assert_array_equal(a, b)


def test_no_usable_state_is_an_error_and_an_empty_folder_is_epoch_zero(tmp_path):
    model, x, y = model_and_data()
    assert backup.restore(model, tmp_path / "none") == 0
    backup.save_state(model, tmp_path / "b", 1)
    (tmp_path / "b" / "epoch-0001" / backup.WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(storage.StorageError, match="no usable training state"):
        backup.restore(model, tmp_path / "b")


def test_a_nan_epoch_is_neither_backed_up_nor_checkpointed(tmp_path):
    model, x, y = model_and_data()
    y[0, 0] = np.nan
    model.fit(x, y, epochs=2, batch_size=8, verbose=0,
              callbacks=[keras.callbacks.TerminateOnNaN(), backup.Checkpoint(tmp_path / "ckpt"),
                         backup.Backup(tmp_path / "backup")])
    assert backup.states(tmp_path / "backup") == [] and not (tmp_path / "ckpt").exists()


def test_a_backup_written_by_keras_backup_and_restore_still_resumes(tmp_path):
    """Run folders of keras-music-ssl <= 0.4.3 hold Keras' own latest.weights.h5 + training_metadata.json."""
    model, x, y = model_and_data()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path), delete_checkpoint=False)])
    assert json.loads((tmp_path / "training_metadata.json").read_text())["epoch"] == 2
    fresh, _, _ = model_and_data(seed=1)
    assert backup.restore(fresh, tmp_path) == 2
    np.testing.assert_array_equal(fresh.get_weights()[0], model.get_weights()[0])
    backup.save_state(fresh, tmp_path, 3)  # our first state replaces the legacy files
    assert sorted(os.listdir(tmp_path)) == ["epoch-0003"]
