"""Limited-data subsets (poster Fig. 2): a fraction of the training tracks, in seeded draws.

The paper draws 1, 5, 10 and 20 % of the training tracks four times (plus the full set), with
validation and test unchanged; its draws used the unseeded Python ``random``. Here draw ``d`` of
fraction ``p`` is ``floor(p * N)`` (at least 1) track indices drawn without replacement by a
generator seeded with ``(seed, d, round(p * 1e6))``: reproducible, and independent of the
other fractions and draws. Only indices into the training tracks are drawn, so validation and
test tracks can never enter a subset.
"""

DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.2, 1.0)
DRAWS = 4


def fraction_key(fraction):
    """The ``results.json`` key of a fraction: ``"0.01"``, ..., ``"1.0"``."""
    return str(float(fraction))


def training_subset(num_tracks, fraction, draw, seed=0):
    """Sorted indices of the training tracks in draw ``draw`` of ``fraction``."""
    import numpy as np  # here: `kmssl probe --help` reads DEFAULT_FRACTIONS without numpy

    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"a training fraction must be in (0, 1], got {fraction}")
    if num_tracks < 1:
        raise ValueError("no training track to subsample")
    size = max(1, int(np.floor(fraction * num_tracks + 1e-9)))
    rng = np.random.default_rng([int(seed), int(draw), int(round(fraction * 1e6))])
    return np.sort(rng.choice(num_tracks, size, replace=False))
