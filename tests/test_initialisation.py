"""The default initialisation, short EM runs from diverse starts (no Spark)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import make_mixture

from spark_gmm.em import InMemoryData, fit_em
from spark_gmm.initialisation import STARTS, short_em


def _scale_mixture(n, d, spreads, weights, seed=7):
    rng = np.random.default_rng(seed)
    y = rng.choice(len(spreads), size=n, p=weights)
    return rng.normal(size=(n, d)) * np.asarray(spreads)[y][:, None], y


def _fit(X, k, mode, n_init=1, seed=0, n_blocks=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_em(
            InMemoryData(X, n_blocks=n_blocks),
            k,
            "full",
            init_mode=mode,
            n_init=n_init,
            seed=seed,
        )


def test_short_em_keeps_the_run_with_the_highest_log_likelihood():
    X, _ = _scale_mixture(3000, 2, [1.0, 3.0, 10.0], [0.5, 0.3, 0.2])
    w = np.ones(len(X))
    params, runs = short_em(X, w, 3, "full", np.random.default_rng(0), 1e-6)
    assert [r.kind for r in runs] == [kind for kind, _ in STARTS]
    best = max(runs, key=lambda r: r.mean_log_likelihood)
    assert best.params is params
    assert all(r.iterations >= 1 for r in runs if r.error is None)


@pytest.mark.parametrize(
    "spreads, weights, d",
    [
        ([1.0, 3.0], [0.6, 0.4], 2),
        ([1.0, 3.0, 10.0], [0.5, 0.3, 0.2], 2),
        ([1.0, 5.0], [0.7, 0.3], 10),
        ([1.0, 3.0, 10.0], [0.4, 0.35, 0.25], 10),
    ],
)
def test_short_em_reaches_at_least_the_kmeans_optimum_on_scale_mixtures(spreads, weights, d):
    X, _ = _scale_mixture(4000, d, spreads, weights)
    k = len(spreads)
    for seed in range(3):
        default = _fit(X, k, "short-em", seed=seed)
        kmeans = _fit(X, k, "kmeans", seed=seed)
        assert default.history[-1] >= kmeans.history[-1] - 1e-3, (
            seed,
            default.history[-1],
            kmeans.history[-1],
        )


def test_short_em_on_separated_clusters_matches_kmeans_and_does_not_depend_on_blocks():
    X, _ = make_mixture(n=3000, d=3, k=4, seed=5)
    default = _fit(X, 4, "short-em", seed=2)
    kmeans4 = _fit(X, 4, "kmeans", n_init=4, seed=2)
    assert default.history[-1] >= kmeans4.history[-1] - 1e-3
    # The sample is chosen by content and ordered by hash: the blocks do not matter.
    other = _fit(X, 4, "short-em", seed=2, n_blocks=7)
    np.testing.assert_allclose(other.params.means, default.params.means, rtol=1e-9, atol=1e-12)
    assert other.n_iter == default.n_iter
