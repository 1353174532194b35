"""Downstream segments (docs/paper.md#downstream-data) against a numpy reference of the RMS rule, the 25-segment cap, test-time
chunks, and segment datasets read from the labeled CSV format; plus that format itself."""

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from keras_music_ssl.data.audio_dataset import SkipReport
from keras_music_ssl.data.labeled_csv import read_labeled_dataset, write_labeled_dataset
from keras_music_ssl.data.segments import chunk_track, segment_dataset, track_segments

pytestmark = pytest.mark.backend_independent
L = 64000


def reference_kept(x, length=L, threshold=-7.5):
    """The authors' rule in numpy: segments i with 10 ln(rms_i / rms_track) > threshold."""
    x = x.astype(np.float64)
    rms_track = np.sqrt(np.mean(x**2))
    kept = []
    for i in range(len(x) // length):
        rms = np.sqrt(np.mean(x[i * length:(i + 1) * length] ** 2))
        if rms_track > 0 and rms > 0 and 10 * np.log(rms / rms_track) > threshold:
            kept.append(i)
    return kept


def segments_of(x, seed=(0, 0), **kwargs):
    out = track_segments(tf.constant(x), tf.constant(seed, tf.int64), **kwargs)
    return out["segments"].numpy(), out["index"].numpy()


def track_with_levels(levels, tail=12345, seed=0):
    rng = np.random.default_rng(seed)
    parts = [level * rng.standard_normal(L) for level in levels] + [rng.standard_normal(tail)]
    return np.concatenate(parts).astype(np.float32)


def test_kept_segments_follow_the_natural_log_rms_rule():
    # Levels around the threshold: rms ratio e^-0.75 = 0.472 separates kept from dropped.
    x = track_with_levels([1.0, 0.01, 0.6, 0.3, 1.2, 0.0, 0.5, 0.9, 0.45, 1.0])
    segments, index = segments_of(x)
    expected = reference_kept(x)
    assert sorted(index) == expected and 0 < len(expected) < 10
    for segment, i in zip(segments, index):
        np.testing.assert_array_equal(segment, x[i * L:(i + 1) * L])


def test_at_most_25_segments_shuffled_by_the_seed():
    x = track_with_levels([1.0] * 40, tail=0)
    _, first = segments_of(x, seed=(1, 2))
    _, again = segments_of(x, seed=(1, 2))
    _, other = segments_of(x, seed=(1, 3))
    assert len(first) == 25 and len(set(first)) == 25 and set(first) <= set(range(40))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_silent_or_short_tracks_give_no_segment():
    assert segments_of(np.zeros(5 * L, np.float32))[0].shape == (0, L)
    assert segments_of(np.ones(L - 1, np.float32))[0].shape == (0, L)


def test_chunk_track_pads_the_last_chunk_with_zeros():
    x = np.arange(2 * L + 5, dtype=np.float32)
    chunks = chunk_track(x)
    assert chunks.shape == (3, L)
    np.testing.assert_array_equal(chunks.reshape(-1)[: len(x)], x)
    assert not chunks[2, 5:].any()
    assert chunk_track(np.ones(10, np.float32)).shape == (1, L)


@pytest.fixture
def labeled(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "clips").mkdir()
    sf.write(tmp_path / "clips" / "loud.flac", 0.3 * rng.standard_normal(16000 * 13), 16000)
    sf.write(tmp_path / "clips" / "other.flac", 0.3 * rng.standard_normal(16000 * 9), 16000)
    sf.write(tmp_path / "clips" / "silent.wav", np.zeros(16000 * 9), 16000)
    sf.write(tmp_path / "clips" / "short.wav", 0.3 * rng.standard_normal(16000 * 2), 16000)
    rows = [
        {"path": "clips/loud.flac", "split": "train", "tags": "piano;drums", "style": "a", "work": "w1"},
        {"path": "clips/other.flac", "split": "valid", "tags": "strings", "style": "b", "work": "w2"},
        {"path": "clips/silent.wav", "split": "train", "tags": "strings", "work": "w3"},
        {"path": "clips/short.wav", "split": "train", "tags": "", "work": "w4", "duration": "2", "extra": "x"},
    ]
    return write_labeled_dataset(tmp_path, rows, ["piano", "strings", "drums"])


def test_segment_dataset_inherits_labels_and_reports_tracks_without_segments(labeled):
    report = SkipReport()
    ds = segment_dataset(labeled, "train", batch_size=3, seed=0, shuffle_buffer=16, repeat=False, report=report)
    segments, labels = zip(*[(s.numpy(), l.numpy()) for s, l in ds])
    segments, labels = np.concatenate(segments), np.concatenate(labels)
    assert segments.shape == (3, L)  # 13 s of loud audio -> 3 segments; the others give none
    np.testing.assert_array_equal(labels, [[1.0, 0.0, 1.0]] * 3)
    assert {p.rsplit("/", 1)[-1]: r for p, (r, _) in report.skipped.items()} == {
        "silent.wav": "silent", "short.wav": "too_short"}


def test_segment_dataset_is_deterministic_for_a_seed(labeled):
    def first(seed):
        return next(iter(segment_dataset(labeled, "train", batch_size=2, seed=seed, shuffle_buffer=8)))[0].numpy()

    np.testing.assert_array_equal(first(3), first(3))


def test_labeled_format_round_trip_and_multi_hot_labels(labeled):
    again = read_labeled_dataset(labeled.root)
    assert again.tags == ["piano", "strings", "drums"] and len(again) == 4
    assert again.split("valid").column("work") == ["w2"]
    np.testing.assert_array_equal(again.labels, [[1, 0, 1], [0, 1, 0], [0, 1, 0], [0, 0, 0]])
    assert again.paths[0] == f"{labeled.root}/clips/loud.flac"
    assert again.rows[3]["extra"] == "x" and again.rows[0]["duration"] == ""


@pytest.mark.parametrize("header,row,message", [
    ("path,split,tags", "a.wav,training,piano", "split"),
    ("path,split,tags", "a.wav,train,piano;violin", "not in tags.txt"),
    ("path,tags", "a.wav,piano", "missing column"),
])
def test_labeled_format_rejects_bad_rows(tmp_path, header, row, message):
    (tmp_path / "tags.txt").write_text("piano\nstrings\n")
    (tmp_path / "metadata.csv").write_text(f"{header}\n{row}\n")
    with pytest.raises(ValueError, match=message):
        read_labeled_dataset(tmp_path)
