"""The five pretext losses against plain numpy written from the spec's formulas (§5), V = 2 and 3.

Each reference loops over anchors and view pairs the way the authors' PyTorch code does;
the Keras versions are vectorised, so agreement checks both the formula and the indexing.
"""

import keras
import numpy as np
import pytest

from keras_music_ssl.pretext import (barlow_twins_loss, byol_loss, clustering_loss, nt_xent_loss,
                                     updated_center, vicreg_loss)

TOL = dict(rtol=1e-5, atol=1e-5)


def _np(x):
    return float(keras.ops.convert_to_numpy(x))


def _normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _bn(x):  # BatchNorm1d(affine=False), training mode
    return (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)


def ref_nt_xent(z, tau):
    b, v, _ = z.shape
    y = _normalize(z.transpose(1, 0, 2).reshape(v * b, -1).astype(np.float64))  # view-major
    s = y @ y.T / tau
    terms = []
    for i in range(v * b):
        others = [k for k in range(v * b) if k != i]
        log_denominator = np.log(np.sum(np.exp(s[i, others])))
        for p in range(v * b):
            if p != i and p % b == i % b:  # same track, another view
                terms.append(log_denominator - s[i, p])
    return np.mean(terms)


def ref_byol(p, z, released=False):
    b, v, d = p.shape
    p, z = _normalize(p.astype(np.float64)), _normalize(z.astype(np.float64))
    losses = []
    for i in range(v):
        for j in range(v):
            if i != j:
                # The released code sums over the batch axis (a D-vector); the original, features.
                losses.append(2 - 2 * (z[:, i] * p[:, j]).sum(axis=0 if released else -1))
    return np.concatenate(losses).mean()


def ref_clustering(s, t, c, tau_s, tau_t):
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    ps = softmax(s.astype(np.float64) / tau_s)
    pt = softmax((t.astype(np.float64) - c) / tau_t)
    v = s.shape[1]
    losses = [np.sum(-pt[:, i] * np.maximum(np.log(ps[:, j]), -100), axis=-1)
              for i in range(v) for j in range(v) if i != j]
    return np.concatenate(losses).mean()


def ref_barlow(z, lam, released=True):
    b, v, d = z.shape
    z = z.astype(np.float64)
    on, off = [], []
    off_mask = ~np.eye(d, dtype=bool)
    for i in range(v):
        for j in range(i + 1, v):
            c = _bn(z[:, i]).T @ _bn(z[:, j]) / (b - 1 if released else b)
            reduce = np.mean if released else np.sum
            on.append(reduce((1 - np.diag(c)) ** 2))
            off.append(reduce(c[off_mask] ** 2))
    return np.mean(on) + lam * np.mean(off)


def ref_vicreg(z, weights, released=True):
    b, v, d = z.shape
    z = z.astype(np.float64)
    off_mask = ~np.eye(d, dtype=bool)
    eps = 1e-5 if released else 1e-4
    inv, var, cov = [], [], []
    for i in range(v):
        for j in range(i + 1, v):
            x, y = z[:, i], z[:, j]
            inv.append(np.mean((x - y) ** 2))
            pair_var, pair_cov = [], []
            for a in (x, y):
                pair_var.append(np.mean(np.maximum(1 - np.sqrt(a.var(0, ddof=1) + eps), 0)))
                if released:
                    k = _bn(a).T @ _bn(a) / (b - 1)
                    pair_cov.append(np.mean(k[off_mask] ** 2))
                else:
                    ac = a - a.mean(0)
                    k = ac.T @ ac / (b - 1)
                    pair_cov.append(np.sum(k[off_mask] ** 2) / d)
            var.append(np.mean(pair_var))
            cov.append(np.mean(pair_cov) if released else np.sum(pair_cov))
    return weights[0] * np.mean(inv) + weights[1] * np.mean(var) + weights[2] * np.mean(cov)


@pytest.fixture(params=[2, 3], ids=["V2", "V3"])
def views(request, rng):
    return rng.normal(size=(6, request.param, 16)).astype("float32")


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_matches_numpy(views, tau):
    np.testing.assert_allclose(_np(nt_xent_loss(views, tau)), ref_nt_xent(views, tau), **TOL)


@pytest.mark.parametrize("form", ["original", "released"])
def test_byol_matches_numpy(views, rng, form):
    targets = rng.normal(size=views.shape).astype("float32")
    expected = ref_byol(views, targets, released=form == "released")
    np.testing.assert_allclose(_np(byol_loss(views, targets, form)), expected, **TOL)


def test_byol_released_form_is_the_original_rescaled_by_batch_over_dim(views, rng):
    targets = rng.normal(size=views.shape).astype("float32")
    b, _, d = views.shape
    original, released = _np(byol_loss(views, targets, "original")), _np(byol_loss(views, targets, "released"))
    np.testing.assert_allclose(2 - released, (2 - original) * b / d, **TOL)


def test_byol_defaults_to_the_released_form(views, rng):
    """One rule for every method: the default is the authors' released code; "original" the paper's."""
    from keras_music_ssl.pretext import BYOL

    targets = rng.normal(size=views.shape).astype("float32")
    assert _np(byol_loss(views, targets)) == _np(byol_loss(views, targets, "released"))
    inputs = keras.Input((16,))
    encoder = keras.Model(inputs, keras.layers.Dense(8)(inputs))
    fixed = dict(steps_per_epoch=1, momentum_epochs=999)  # an EMA horizon without a fit
    released, original = BYOL(encoder, **fixed), BYOL(encoder, form="original", **fixed)
    assert released.form == "released"
    original.set_weights(released.get_weights())
    with keras.StatelessScope():
        losses = [_np(model.pretext_loss(views, training=False)[0]) for model in (released, original)]
    # The model's loss is the released form: 2 - L_released = (2 - L_original) * B / D.
    projection = released.projector_dims[-1]
    np.testing.assert_allclose(2 - losses[0], (2 - losses[1]) * views.shape[0] / projection, **TOL)


@pytest.mark.parametrize("tau_t", [0.02, 0.04])
def test_clustering_matches_numpy(views, rng, tau_t):
    teacher = rng.normal(size=views.shape).astype("float32")
    center = rng.normal(size=(1, views.shape[-1])).astype("float32")
    expected = ref_clustering(views, teacher, center, 0.1, tau_t)
    np.testing.assert_allclose(_np(clustering_loss(views, teacher, center, 0.1, tau_t)), expected, **TOL)


def test_center_update_is_the_ema_of_the_mean_teacher_logit(views, rng):
    center = rng.normal(size=(1, views.shape[-1])).astype("float32")
    expected = 0.9 * center + 0.1 * views.reshape(-1, views.shape[-1]).mean(0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(updated_center(center, views, 0.9)), expected, **TOL)


@pytest.mark.parametrize("form,lam", [("released", None), ("released", 0.3), ("original", None)])
def test_barlow_twins_matches_numpy(views, form, lam):
    default = 1.0 if form == "released" else 5.1e-3
    expected = ref_barlow(views, default if lam is None else lam, released=form == "released")
    np.testing.assert_allclose(_np(barlow_twins_loss(views, lam, form)), expected, **TOL)


@pytest.mark.parametrize("form", ["released", "original"])
def test_vicreg_matches_numpy(views, form):
    weights = (1.0, 1.0, 1.0) if form == "released" else (25.0, 25.0, 1.0)
    expected = ref_vicreg(views, weights, released=form == "released")
    np.testing.assert_allclose(_np(vicreg_loss(views, form=form)), expected, rtol=1e-5, atol=1e-4)
    custom = ref_vicreg(views, (2.0, 0.5, 3.0), released=form == "released")
    np.testing.assert_allclose(_np(vicreg_loss(views, 2.0, 0.5, 3.0, form=form)), custom, rtol=1e-5, atol=1e-4)


def _all_losses(z, rng):
    other = rng.normal(size=z.shape).astype("float32")
    center = np.zeros((1, z.shape[-1]), "float32")
    return {"nt_xent": nt_xent_loss(z), "byol": byol_loss(z, z), "byol_other": byol_loss(z, other),
            "clustering": clustering_loss(z, z, center, 0.1, 0.02),
            "barlow_twins": barlow_twins_loss(z), "barlow_twins_original": barlow_twins_loss(z, form="original"),
            "vicreg": vicreg_loss(z), "vicreg_original": vicreg_loss(z, form="original")}


@pytest.mark.parametrize("case", ["identical_views", "batch_of_two", "constant", "zero", "huge"])
def test_losses_are_finite_on_degenerate_batches(rng, case):
    z = rng.normal(size=(4, 2, 8)).astype("float32")
    if case == "identical_views":
        z[:, 1] = z[:, 0]
    elif case == "batch_of_two":
        z = z[:2]
    elif case == "constant":
        z[:] = 0.7
    elif case == "zero":
        z[:] = 0.0
    elif case == "huge":
        z *= 1e4
    for name, value in _all_losses(z, rng).items():
        assert np.isfinite(_np(value)), f"{name} is not finite on {case}"


def test_collapsed_embeddings_score_worse_than_spread_ones(rng):
    """Sanity of the signs: every loss prefers distinct tracks to one collapsed point."""
    spread = rng.normal(size=(8, 2, 16)).astype("float32")
    spread[:, 1] = spread[:, 0] + 0.01 * rng.normal(size=(8, 16))
    collapsed = np.broadcast_to(spread[:1, :1], spread.shape).copy()
    assert _np(nt_xent_loss(spread)) < _np(nt_xent_loss(collapsed))
    assert _np(barlow_twins_loss(spread)) < _np(barlow_twins_loss(collapsed))
    assert _np(vicreg_loss(spread)) < _np(vicreg_loss(collapsed))


def test_losses_reject_unknown_forms():
    z = np.zeros((4, 2, 8), "float32")
    for fn in (byol_loss, barlow_twins_loss, vicreg_loss):
        with pytest.raises(ValueError, match="form"):
            fn(z, z, form="paper") if fn is byol_loss else fn(z, form="paper")
