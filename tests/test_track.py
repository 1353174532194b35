"""The one definition of how a track becomes encoder inputs (keras_music_ssl/track.py), against
plain numpy written here and the in-graph form used by the tf.data segment pipeline."""

import numpy as np
import pytest

from keras_music_ssl.data.segments import chunk_track, track_segments
from keras_music_ssl.embed import chunk_waveform as embed_chunk_waveform
from keras_music_ssl.track import (UnusableTrack, chunk_waveform, evaluation_chunks, peak_normalize,
                                   segment_keep_mask, training_segments)

pytestmark = pytest.mark.backend_independent
L = 64000


@pytest.mark.parametrize("samples,chunks", [(1, 1), (L - 1, 1), (L, 1), (L + 1, 2), (3 * L + 5, 4)])
def test_track_chunks_cover_the_track_and_zero_pad_only_the_end(samples, chunks):
    x = np.arange(1, samples + 1, dtype=np.float32)
    got = chunk_waveform(x)
    assert got.shape == (chunks, L)
    np.testing.assert_array_equal(got.reshape(-1)[:samples], x)
    assert not got.reshape(-1)[samples:].any()
    # embed, the segment datasets and the probe share the same function
    np.testing.assert_array_equal(embed_chunk_waveform(x), got)
    np.testing.assert_array_equal(chunk_track(x), got)


def test_an_empty_track_is_an_error_everywhere():
    for chunker in (chunk_waveform, chunk_track, evaluation_chunks):
        with pytest.raises(ValueError, match="empty"):
            chunker(np.zeros(0, np.float32))


@pytest.mark.parametrize("samples,count", [(L - 1, 1), (L, 1), (L + 1, 1), (2 * L + 7, 2)])
def test_evaluation_segments_are_whole_segments_unless_shorter_than_one(samples, count):
    x = np.arange(samples, dtype=np.float32)
    got = evaluation_chunks(x, mode="segments")
    assert got.shape == (count, L)
    if samples >= L:  # no padding: exactly the first count * L samples
        np.testing.assert_array_equal(got.reshape(-1), x[:count * L])
    np.testing.assert_array_equal(evaluation_chunks(x, mode="padded"), chunk_waveform(x))


def test_peak_normalize_leaves_silence_alone():
    np.testing.assert_array_equal(peak_normalize(np.zeros(5)), np.zeros(5))
    np.testing.assert_allclose(peak_normalize(np.array([0.5, -2.0, 1.0])), [0.25, -1.0, 0.5])


def _numpy_keep(x, threshold=-7.5):
    """The authors' rule written out: 10 * ln(rms_seg / rms_track) > -7.5 on whole segments."""
    n = len(x) // L
    rms_track = np.sqrt(np.mean(x.astype(np.float64) ** 2))
    with np.errstate(divide="ignore"):  # the all-zero segment: ln 0 = -inf, dropped
        return np.array([10 * np.log(np.sqrt(np.mean(x[i * L:(i + 1) * L].astype(np.float64) ** 2)) / rms_track)
                         > threshold for i in range(n)])


def _track_with_quiet_parts(rng):
    levels = np.array([1.0, 0.01, 0.6, 0.2, 0.0, 0.9])  # segment gains; rms_track ~ 0.6, so 0.2 fails
    x = np.concatenate([g * rng.standard_normal(L) for g in levels] + [rng.standard_normal(1000)])
    return x.astype(np.float32)


def test_silence_rule_matches_the_formula_and_the_tf_pipeline(rng):
    x = _track_with_quiet_parts(rng)
    keep = segment_keep_mask(x)
    np.testing.assert_array_equal(keep, _numpy_keep(x))
    assert keep.tolist() == [True, False, True, False, False, True]
    graph = track_segments(x, seed=[0, 1])["index"].numpy()
    assert sorted(graph.tolist()) == np.flatnonzero(keep).tolist()


def test_training_segments_are_seeded_capped_and_cut_at_their_index(rng):
    x = rng.standard_normal(40 * L + 10).astype(np.float32)
    a, index = training_segments(x, np.random.default_rng(7))
    b, again = training_segments(x, np.random.default_rng(7))
    _, other = training_segments(x, np.random.default_rng(8))
    assert a.shape == (25, L) and len(set(index.tolist())) == 25
    np.testing.assert_array_equal(index, again)
    np.testing.assert_array_equal(a, b)
    assert index.tolist() != other.tolist()
    for segment, i in zip(a, index):
        np.testing.assert_array_equal(segment, x[i * L:(i + 1) * L])


@pytest.mark.parametrize("x,reason", [(np.zeros(3 * L, np.float32), "silent"),
                                      (np.ones(L - 1, np.float32), "too_short")])
def test_tracks_without_a_training_segment_say_why(x, reason):
    with pytest.raises(UnusableTrack) as error:
        training_segments(x, np.random.default_rng(0))
    assert error.value.reason == reason
