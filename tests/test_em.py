"""The driver-side EM loop on in-memory blocks (no Spark): sklearn parity, restarts, init."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import make_mixture, rel_err
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from spark_gmm import kernels
from spark_gmm.em import INIT_MODES, ConvergenceWarning, InMemoryData, fit_em
from spark_gmm.errors import InvalidInputError
from spark_gmm.gaussian import COVARIANCE_TYPES, MixtureParameters, predict_proba
from spark_gmm.kmeans import kmeans


def _start(X, k, covariance_type):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = SkGaussianMixture(k, covariance_type=covariance_type, max_iter=1, random_state=3).fit(
            X
        )
    return gm.weights_, gm.means_, gm.precisions_


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_fit_em_with_tol_stops_where_sklearn_stops(covariance_type):
    """Same start, tol=1e-3 on the mean log-likelihood: same iterations, same model."""
    X, _ = make_mixture(n=800, d=3, k=3, seed=11)
    w0, m0, p0 = _start(X, 3, covariance_type)
    ref = SkGaussianMixture(
        3,
        covariance_type=covariance_type,
        weights_init=w0,
        means_init=m0,
        precisions_init=p0,
        tol=1e-3,
        max_iter=200,
    ).fit(X)
    result = fit_em(
        InMemoryData(X, n_blocks=4),
        3,
        covariance_type,
        tol=1e-3,
        max_iter=200,
        initial_params=MixtureParameters.from_precisions(w0, m0, p0, covariance_type),
    )
    assert result.converged and ref.converged_
    assert result.n_iter == ref.n_iter_
    assert rel_err(result.params.means, ref.means_) < 1e-8
    assert rel_err(result.params.covariances, ref.covariances_) < 1e-8
    assert rel_err(result.params.weights, ref.weights_) < 1e-8
    # The last entry of the history scores the final parameters, like sklearn's score().
    assert abs(result.history[-1] - ref.score(X)) < 1e-10
    assert abs(result.history[-2] - ref.lower_bound_) < 1e-10
    assert len(result.history) == result.n_iter + 1
    assert abs(result.log_likelihood - ref.score(X) * len(X)) < 1e-8 * len(X)


def test_non_convergence_warns():
    X, _ = make_mixture(n=500, d=2, k=3, seed=12)
    with pytest.warns(ConvergenceWarning, match="maxIter=2"):
        result = fit_em(InMemoryData(X), 3, "full", max_iter=2, tol=0.0)
    assert result.n_iter == 2 and not result.converged


def test_n_init_keeps_the_best_candidate():
    X, _ = make_mixture(n=1200, d=2, k=5, seed=13, separation=3.0)
    result = fit_em(InMemoryData(X), 5, "full", n_init=4, init_mode="random", seed=5, max_iter=30)
    lls = result.candidate_log_likelihoods
    assert len(lls) == 4
    assert result.best_index == int(np.nanargmax(lls))
    assert abs(result.history[-1] - max(lls)) < 1e-12
    # Candidates really differ (otherwise "best of 4" tests nothing).
    assert max(lls) - min(lls) > 1e-6
    # Each candidate equals the same candidate fitted alone: sharing passes changes nothing.
    alone = fit_em(InMemoryData(X), 5, "full", n_init=1, init_mode="random", seed=5, max_iter=30)
    assert abs(alone.history[-1] - lls[0]) < 1e-10


@pytest.mark.parametrize("init_mode", INIT_MODES)
def test_result_does_not_depend_on_blocking(init_mode):
    """The initial sample is chosen by content hash, so blocking cannot change the model."""
    X, _ = make_mixture(n=1000, d=3, k=3, seed=14)
    results = [
        fit_em(
            InMemoryData(X, n_blocks=b),
            3,
            "full",
            init_mode=init_mode,
            seed=2,
            init_sample_size=300,
        )
        for b in (1, 3, 16)
    ]
    for other in results[1:]:
        assert rel_err(other.params.means, results[0].params.means) < 1e-9
        assert other.n_iter == results[0].n_iter


def test_sample_is_independent_of_row_order():
    X, _ = make_mixture(n=2000, d=3, k=2, seed=15)
    perm = np.random.default_rng(0).permutation(len(X))
    a = InMemoryData(X, n_blocks=3).sample(500, seed=9)
    b = InMemoryData(X[perm], n_blocks=7).sample(500, seed=9)
    assert np.array_equal(a[0], b[0])
    assert 350 < len(a[0]) < 650  # ~500 expected


def test_random_responsibilities_depend_on_content_only():
    X, _ = make_mixture(n=50, d=2, k=2, seed=16)
    task = kernels.RandomTask(X.mean(axis=0), 3, 42, "full")
    whole = task.statistics(X, None)
    split = task.statistics(X[:20], None).merge(task.statistics(X[20:], None))
    assert rel_err(split.nk, whole.nk) < 1e-12


def test_default_init_recovers_known_clusters():
    X, labels = make_mixture(n=1500, d=3, k=4, seed=17, separation=8.0)
    result = fit_em(InMemoryData(X), 4, "full", seed=0)
    pred = np.argmax(predict_proba(X, result.params), axis=1)
    assert adjusted_rand_score(labels, pred) > 0.99


def test_fewer_distinct_rows_than_k():
    X = np.repeat(np.array([[0.0, 1.0], [2.0, 3.0]]), 50, axis=0)
    with pytest.raises(InvalidInputError, match=r"k=3 .*only 2 distinct"):
        fit_em(InMemoryData(X), 3, "full")


def test_kmeans_finds_separated_centres():
    rng = np.random.default_rng(18)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    X = np.vstack([c + rng.normal(size=(100, 2)) for c in centres])
    found = kmeans(X, np.ones(len(X)), 3, np.random.default_rng(0))
    order = np.argsort(found[:, 0] * 100 + found[:, 1])
    expected_order = np.argsort(centres[:, 0] * 100 + centres[:, 1])
    assert np.max(np.abs(found[order] - centres[expected_order])) < 0.5


def test_zero_weights_and_single_component():
    X, _ = make_mixture(n=200, d=2, k=2, seed=19)
    with pytest.raises(InvalidInputError, match="weights sum to 0"):
        fit_em(InMemoryData(X, np.zeros(len(X))), 2, "full")
    one = fit_em(InMemoryData(X), 1, "full")
    assert np.allclose(one.params.means[0], X.mean(axis=0))
    assert np.allclose(one.params.covariances[0], np.cov(X.T, bias=True) + 1e-6 * np.eye(2))
