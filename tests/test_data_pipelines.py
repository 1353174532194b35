"""Pretraining datasets from prepared shards and from an audio folder: batch shape, views drawn per track,
determinism from the seed, skipped files reported, and ``model.fit`` on the views with this Keras backend."""

import os

import keras
import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf
from keras import ops

from keras_music_ssl.data.audio_dataset import SkipReport
from keras_music_ssl.data.pipelines import ViewSamplerCounts, pretraining_dataset
from keras_music_ssl.data.prepare import prepare_shards
from keras_music_ssl.data.views import ViewSampler

FREQUENCIES = (250.0, 500.0, 1000.0, 2000.0, 3000.0)  # one tone per track, to tell tracks apart


def tone_track(frequency, seconds, sample_rate=22050):
    """A tone that fades in over the whole track, so that crops at different starts differ."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return ((0.2 + 0.6 * t / seconds) * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(view, sample_rate=16000):
    spectrum = np.abs(np.fft.rfft(view))
    return np.argmax(spectrum) * sample_rate / len(view)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tones")
    for i, frequency in enumerate(FREQUENCIES):
        sf.write(folder / f"tone{i}.flac", tone_track(frequency, 9.0 + 3 * i), 22050)
    prepared = tmp_path_factory.mktemp("prepared")
    prepare_shards([folder], prepared, tracks_per_shard=2, workers=0, progress=False)
    return folder, prepared


def first_batches(dataset, count):
    return [batch.numpy() for batch in dataset.take(count)]


@pytest.mark.backend_independent
@pytest.mark.parametrize("source", ["prepared", "folder"])
def test_batches_are_views_of_one_track_each(corpus, source):
    folder, prepared = corpus
    sampler = ViewSampler()
    batches = first_batches(pretraining_dataset(prepared if source == "prepared" else folder, batch_size=4,
                                                sampler=sampler, seed=1, shuffle_buffer=8), 5)
    for batch in batches:
        assert batch.shape == (4, 2, 64000) and batch.dtype == np.float32 and np.all(np.isfinite(batch))
        for first, second in batch:
            assert dominant_frequency(first) == pytest.approx(dominant_frequency(second), abs=0.5)
            assert dominant_frequency(first) == pytest.approx(min(FREQUENCIES, key=lambda f: abs(
                f - dominant_frequency(first))), abs=1.0)
    seen = {round(dominant_frequency(view[0])) for batch in batches for view in batch}
    assert len(seen) == len(FREQUENCIES)  # every track is drawn
    assert sampler.counts()["tracks"] >= 20 and sampler.counts()["reduced_gap"] == 0  # tracks are >= 9 s


@pytest.mark.backend_independent
def test_same_seed_same_batches_and_another_seed_other_batches(corpus):
    _, prepared = corpus
    make = lambda seed: first_batches(pretraining_dataset(prepared, 4, seed=seed, shuffle_buffer=8), 3)  # noqa: E731
    first, again, other = make(7), make(7), make(8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.backend_independent
def test_each_pass_over_a_track_draws_new_views(corpus):
    folder, _ = corpus
    sets = first_batches(pretraining_dataset(folder, batch_size=5, seed=0, shuffle_buffer=0), 4)
    flat = np.concatenate(sets)  # 20 view sets over 5 tracks: each track 4 times
    for frequency in FREQUENCIES:
        mine = [v for v in flat if abs(dominant_frequency(v[0]) - frequency) < 1.0]
        assert len(mine) == 4
        assert len({v[0, :100].tobytes() for v in mine}) == 4  # four different crops


@pytest.mark.backend_independent
def test_folder_pipeline_skips_broken_files_and_reports_them(corpus, tmp_path):
    folder, _ = corpus
    for name in ("tone0.flac", "tone1.flac"):
        os.symlink(folder / name, tmp_path / name)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "noise.mp3").write_bytes(np.random.default_rng(0).bytes(4000))
    report = SkipReport()
    batches = first_batches(pretraining_dataset(tmp_path, batch_size=2, seed=0, shuffle_buffer=4, report=report), 3)
    assert all(b.shape == (2, 2, 64000) for b in batches)
    assert {os.path.basename(p): reason for p, (reason, _) in report.skipped.items()} == {
        "empty.wav": "empty", "noise.mp3": "undecodable"}


@pytest.mark.backend_independent
def test_a_folder_with_no_usable_file_raises_instead_of_looping(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "noise.flac").write_bytes(b"not audio at all")
    with pytest.raises(tf.errors.OpError, match="none of the 2 audio files"):
        first_batches(pretraining_dataset(tmp_path, batch_size=2), 1)


class TinyMultiView(keras.Model):
    """A small encoder applied to each view; loss = invariance + variance (VICReg-like), enough to train."""

    def __init__(self):
        super().__init__()
        self.encoder = keras.Sequential([
            keras.layers.Reshape((-1, 1)), keras.layers.Conv1D(4, 256, strides=128, activation="relu"),
            keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(8)])

    def call(self, views):  # (batch, V, samples) -> (batch, V, 8): fit calls this before compute_loss
        batch, num_views, samples = ops.shape(views)
        return ops.reshape(self.encoder(ops.reshape(views, (-1, samples))), (batch, num_views, 8))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        invariance = ops.mean(ops.square(y_pred[:, 0] - y_pred[:, 1]))
        variance = ops.mean(ops.relu(1.0 - ops.std(y_pred[:, 0], axis=0)))
        return invariance + variance


def test_views_dataset_feeds_fit_on_this_backend(corpus):
    _, prepared = corpus
    sampler = ViewSampler()
    dataset = pretraining_dataset(prepared, batch_size=4, sampler=sampler, seed=0, shuffle_buffer=8)
    keras.utils.set_random_seed(0)
    model = TinyMultiView()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model(np.zeros((1, 2, 64000), np.float32))
    before = [np.array(w) for w in model.get_weights()]
    history = model.fit(dataset, epochs=2, steps_per_epoch=3, shuffle=False, verbose=0,
                        callbacks=[ViewSamplerCounts(sampler)])
    losses = history.history["loss"]
    assert history.history["views_reduced_gap"] == [0, 0] and history.history["views_padded"] == [0, 0]
    assert 12 <= history.history["views_tracks"][0] <= history.history["views_tracks"][1]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[0] > 0
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
    assert sampler.counts()["tracks"] >= 2 * 3 * 4
    batch = next(iter(dataset)).numpy()
    assert tuple(ops.shape(model(batch))) == (4, 2, 8)
