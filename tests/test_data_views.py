"""The multi-view sampler: property tests of the gap rule, bounds, seeding and shapes; the short-track
rule and its counts; silence-aware cropping against a numpy RMS reference; augmentations."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_music_ssl.data.views import ViewSampler
from keras_music_ssl.errors import OptionError

pytestmark = pytest.mark.backend_independent


@st.composite
def sampler_cases(draw):
    length = draw(st.sampled_from([64, 1000, 8000, 64000]))
    views = draw(st.integers(2, 4))
    min_gap = draw(st.integers(0, 2 * length))
    max_gap = draw(st.one_of(st.none(), st.integers((views - 1) * min_gap, (views - 1) * min_gap + 4 * length)))
    n = draw(st.integers(1, length + views * (min_gap + length) + 2 * length))
    seed = draw(st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)))
    return length, views, min_gap, max_gap, n, seed


def sample(sampler, x, seed, compiled=False):
    """Run the sampler eagerly, or as one traced function (faster for many calls on one sampler)."""
    fn = sampler.sample
    if compiled:
        if not hasattr(sampler, "_test_fn"):
            signature = [tf.TensorSpec([None], tf.float32), tf.TensorSpec([2], tf.int64)]
            sampler._test_fn = tf.function(sampler.sample, input_signature=signature)
        fn = sampler._test_fn
    return {k: v.numpy() for k, v in fn(tf.constant(x), tf.constant(seed, tf.int64)).items()}


@settings(max_examples=80, deadline=None)
@given(sampler_cases())
def test_views_obey_the_gap_rule_stay_in_bounds_and_are_exact_crops(case):
    length, num_views, min_gap, max_gap, n, seed = case
    sampler = ViewSampler(num_views=num_views, segment_samples=length, min_gap=min_gap, max_gap=max_gap)
    x = np.random.default_rng(seed[0]).standard_normal(n).astype(np.float32)
    out = sample(sampler, x, seed)
    starts, views = out["starts"], out["views"]
    assert views.shape == (num_views, length) and views.dtype == np.float32
    padded_x = np.pad(x, (0, max(length - n, 0)))
    assert np.all(starts >= 0) and np.all(starts + length <= len(padded_x))
    for start, view in zip(starts, views):
        np.testing.assert_array_equal(view, padded_x[start:start + length])
    distances = np.abs(starts[:, None] - starts[None, :])[np.triu_indices(num_views, 1)]
    if n >= length + (num_views - 1) * min_gap:  # long enough: the paper's rule, exactly
        assert not out["reduced_gap"] and not out["padded"]
        assert np.all(distances >= min_gap)
        if max_gap is not None:
            assert np.all(distances <= max_gap)
    elif n >= length:  # documented fallback: the largest feasible gap, flagged
        assert out["reduced_gap"] and not out["padded"]
        assert out["gap"] == (n - length) // (num_views - 1)
        assert np.all(distances >= out["gap"])
    else:  # shorter than one view: zero-padded, flagged
        assert out["padded"] and np.all(starts == 0)


@settings(max_examples=25, deadline=None)
@given(sampler_cases())
def test_same_seed_gives_the_same_views(case):
    length, num_views, min_gap, max_gap, n, seed = case
    sampler = ViewSampler(num_views=num_views, segment_samples=length, min_gap=min_gap, max_gap=max_gap)
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    first, second = sample(sampler, x, seed), sample(sampler, x, seed)
    np.testing.assert_array_equal(first["views"], second["views"])
    np.testing.assert_array_equal(first["starts"], second["starts"])


def test_different_seeds_spread_the_views_over_the_track():
    sampler = ViewSampler()
    x = np.zeros(16000 * 60, np.float32)
    starts = np.stack([sample(sampler, x, (1, i), compiled=True)["starts"] for i in range(200)])
    assert len({tuple(s) for s in starts}) == 200
    # Every start position is reachable: both ends of the track get used.
    assert starts.min() < 16000 * 5 and starts.max() > 16000 * 50
    # Either view is the earlier one about half of the time (the order is shuffled).
    assert 60 < np.sum(starts[:, 0] < starts[:, 1]) < 140


def test_batched_views_have_shape_batch_views_samples():
    sampler = ViewSampler(num_views=3)
    tracks = tf.data.Dataset.from_tensor_slices(np.random.default_rng(0).standard_normal((5, 16000 * 14), np.float32))
    batch = next(iter(tracks.enumerate().map(lambda i, x: sampler(x, tf.stack([tf.constant(3, tf.int64), i])))
                      .batch(5)))
    assert batch.shape == (5, 3, 64000) and batch.dtype == tf.float32


def test_short_tracks_follow_the_rule_and_are_counted_inside_tf_data():
    sampler = ViewSampler()  # 2 views of 64000, 64000 apart: needs 128000 samples
    lengths = [200000, 127999, 64000, 100000, 63999, 1000, 500000]
    expected = {"tracks": 7, "reduced_gap": 3, "padded": 2, "silent_views": 0}
    ds = tf.data.Dataset.from_generator(lambda: (np.ones(n, np.float32) for n in lengths),
                                        output_signature=tf.TensorSpec([None], tf.float32))
    ds = ds.enumerate().map(lambda i, x: sampler(x, tf.stack([tf.constant(0, tf.int64), i])), num_parallel_calls=4)
    assert [v.shape for v in ds] == [(2, 64000)] * 7
    assert sampler.counts() == expected
    sampler.reset_counts()
    assert sampler.counts() == {name: 0 for name in expected}


def rms_rule_passes(view, track, threshold=-7.5):
    rms = lambda a: np.sqrt(np.mean(np.square(a.astype(np.float64))))  # noqa: E731
    return 10.0 * np.log(rms(view) / rms(track)) > threshold


def test_silence_aware_cropping_keeps_views_that_pass_the_rms_rule():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(16000 * 40).astype(np.float32)
    x[: 16000 * 20] *= 1e-3  # the first half is near-silent
    plain, aware = ViewSampler(), ViewSampler(silence_aware=True, silence_attempts=16)
    plain_out = [sample(plain, x, (5, i), compiled=True) for i in range(40)]
    aware_out = [sample(aware, x, (5, i), compiled=True) for i in range(40)]
    plain_passing = sum(all(rms_rule_passes(v, x) for v in out["views"]) for out in plain_out)
    aware_passing = sum(all(rms_rule_passes(v, x) for v in out["views"]) for out in aware_out)
    assert plain_passing <= 10 and aware_passing >= 30  # (4 and 33 with these seeds)
    for out in aware_out:  # every view set passes, or is flagged and counted
        assert out["silent"] != all(rms_rule_passes(v, x) for v in out["views"])
    assert sum(out["silent"] for out in aware_out) == aware.counts()["silent_views"] == 40 - aware_passing


def test_silence_aware_cropping_counts_tracks_with_no_passing_views():
    x = np.zeros(16000 * 20, np.float32)
    x[:16000] = 1.0  # only the first second is loud: no 4-s pair can pass
    aware = ViewSampler(silence_aware=True)
    out = sample(aware, x, (0, 0))
    assert out["silent"] and aware.counts()["silent_views"] == 1
    assert out["views"].shape == (2, 64000)


def test_augmentations_are_off_by_default_and_bounded_when_on():
    x = np.random.default_rng(1).standard_normal(16000 * 20).astype(np.float32)
    gain = ViewSampler(gain_db=6.0)
    out = sample(gain, x, (2, 9))
    crops = np.stack([x[s:s + 64000] for s in out["starts"]])
    ratio = out["views"] / crops
    for r in ratio:  # one gain per view, within +-6 dB
        assert np.allclose(r, r[0], rtol=1e-5) and 10 ** (-6 / 20) - 1e-6 <= r[0] <= 10 ** (6 / 20) + 1e-6
    flipped = sample(ViewSampler(polarity=1.0), x, (2, 9))
    np.testing.assert_array_equal(flipped["views"], -np.stack([x[s:s + 64000] for s in flipped["starts"]]))
    noisy = sample(ViewSampler(noise_snr_db=20.0), x, (2, 9))
    clean = np.stack([x[s:s + 64000] for s in noisy["starts"]])
    snr = 20 * np.log10(np.sqrt(np.mean(clean**2, axis=1)) / np.sqrt(np.mean((noisy["views"] - clean) ** 2, axis=1)))
    np.testing.assert_allclose(snr, 20.0, atol=0.2)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="num_views"):
        ViewSampler(num_views=1)
    with pytest.raises(ValueError, match="max_gap"):
        ViewSampler(num_views=3, min_gap=64000, max_gap=100000)


@pytest.mark.parametrize("option,value", [
    ("gain_db", float("nan")), ("gain_db", float("inf")), ("gain_db", -1.0), ("gain_db", 1000.0),
    ("noise_snr_db", float("nan")), ("noise_snr_db", float("-inf")), ("noise_snr_db", -1000.0),
    ("polarity", float("nan")), ("polarity", 1.5), ("silence_threshold", float("nan")),
    ("num_views", 2.5), ("segment_samples", 0), ("min_gap", -1), ("silence_attempts", 0), ("max_gap", float("nan")),
])
def test_a_setting_that_is_not_finite_or_out_of_range_is_refused_by_name(option, value):
    """Before: gain_db=nan or noise_snr_db=nan were accepted and every view came out all NaN."""
    with pytest.raises(OptionError, match=option):
        ViewSampler(**{option: value})


def test_the_finite_extremes_of_the_augmentations_give_finite_views():
    x = np.random.default_rng(2).standard_normal(16000 * 10).astype(np.float32)
    out = sample(ViewSampler(gain_db=100.0, noise_snr_db=-100.0, polarity=1.0), x, (1, 2))
    assert np.all(np.isfinite(out["views"]))
