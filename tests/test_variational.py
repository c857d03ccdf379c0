"""The variational (Bayesian) mixture's numpy core against scikit-learn's
BayesianGaussianMixture: from the same starting responsibilities, T iterations give the
same posterior and lower bound, for every covariance type and both weight priors; a
merge move's bound is sklearn's bound of the merged responsibilities."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
from helpers import make_mixture, rel_err
from sklearn.mixture import BayesianGaussianMixture

from spark_gmm.em import InMemoryData, Variational, fit_em
from spark_gmm.gaussian import COVARIANCE_TYPES, block_statistics, hard_assignment_statistics
from spark_gmm.variational import (
    PRIOR_TYPES,
    default_priors,
    digamma,
    effective_components,
    gammaln,
    lower_bound,
    m_step,
    merge_candidates,
    merged_bound,
    scoring_parameters,
)

T = 6
REG = 1e-6


def test_special_functions_against_closed_forms():
    # psi(1) = -gamma, psi(1/2) = -gamma - 2 ln 2, psi(x + 1) = psi(x) + 1/x.
    euler = 0.57721566490153286061
    assert abs(digamma(1.0) + euler) < 5e-15
    assert abs(digamma(0.5) + euler + 2 * math.log(2)) < 5e-15
    x = np.array([0.01, 0.3, 2.5, 9.99, 10.0, 55.5, 1e6])
    np.testing.assert_allclose(digamma(x + 1), digamma(x) + 1 / x, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(gammaln(np.array([1.0, 2.0, 5.0])), np.log([1, 1, 24]), atol=1e-14)


def _sklearn_run(X, resp, k, ct, prior_type):
    bgm = BayesianGaussianMixture(
        n_components=k,
        covariance_type=ct,
        weight_concentration_prior_type=prior_type,
        reg_covar=REG,
    )
    bgm._check_parameters(X)
    bgm._initialize(X, resp)
    bounds = []
    for _ in range(T):
        log_prob_norm, log_resp = bgm._e_step(X)
        bgm._m_step(X, log_resp)
        bounds.append(float(np.squeeze(bgm._compute_lower_bound(log_resp, log_prob_norm))))
    bgm._set_parameters(bgm._get_parameters())  # weights_, precisions_, as fit() ends
    return bgm, bounds


def _our_run(X, resp, k, ct, prior_type):
    priors = default_priors(
        k, ct, X.mean(axis=0), np.cov(X.T), weight_concentration_prior_type=prior_type
    )
    centre = np.repeat(X.mean(axis=0)[None], k, axis=0)
    vp = m_step(hard_assignment_statistics(X, None, centre, ct, resp=resp), priors, REG)
    bounds = []
    Xf = np.asfortranarray(X)
    for _ in range(T):
        stats = block_statistics(Xf, None, scoring_parameters(vp), resp_log_resp=True)
        vp = m_step(stats, priors, REG)
        bounds.append(lower_bound(vp, stats.resp_log_resp))
    return vp, bounds


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_iterations_equal_sklearn_from_the_same_responsibilities(ct, prior_type):
    X, _ = make_mixture(n=800, d=3, k=3, seed=4)
    k = 5  # more components than the data need: the prior empties some
    rng = np.random.default_rng(1)
    resp = rng.uniform(size=(len(X), k))
    resp /= resp.sum(axis=1, keepdims=True)
    bgm, their_bounds = _sklearn_run(X, resp, k, ct, prior_type)
    vp, our_bounds = _our_run(X, resp, k, ct, prior_type)
    assert rel_err(vp.weights, bgm.weights_) < 1e-8
    assert rel_err(vp.means, bgm.means_) < 1e-8
    assert rel_err(vp.covariances, bgm.covariances_) < 1e-8
    assert rel_err(vp.precisions_chol, bgm.precisions_cholesky_) < 1e-8
    assert rel_err(vp.mean_precision, bgm.mean_precision_) < 1e-8
    assert rel_err(vp.degrees_of_freedom, np.broadcast_to(bgm.degrees_of_freedom_, k)) < 1e-8
    assert rel_err(vp.weight_concentration, np.asarray(bgm.weight_concentration_)) < 1e-8
    assert rel_err(our_bounds, their_bounds) < 1e-8
    # The scoring parameters reproduce sklearn's variational predictions and scores.
    params = scoring_parameters(vp)
    from spark_gmm.gaussian import predict_proba, score_samples

    assert rel_err(predict_proba(X, params), bgm.predict_proba(X), floor=1e-12) < 1e-8
    assert rel_err(score_samples(X, params), bgm.score_samples(X)) < 1e-8


def test_weighted_rows_equal_repeated_rows():
    X, _ = make_mixture(n=300, d=2, k=2, seed=3)
    counts = np.random.default_rng(0).integers(1, 4, size=len(X))
    repeated = np.repeat(X, counts, axis=0)
    priors = default_priors(3, "full", repeated.mean(axis=0), np.cov(repeated.T))
    params = scoring_parameters(
        m_step(hard_assignment_statistics(X, counts.astype(float), X[:3], "full"), priors, REG)
    )
    a = block_statistics(np.asfortranarray(X), counts.astype(float), params, resp_log_resp=True)
    b = block_statistics(np.asfortranarray(repeated), None, params, resp_log_resp=True)
    assert abs(a.resp_log_resp - b.resp_log_resp) < 1e-9 * abs(b.resp_log_resp)
    assert rel_err(a.nk, b.nk) < 1e-12


def test_bad_priors_are_refused_with_the_param_name():
    X, _ = make_mixture(n=100, d=3, k=2, seed=1)
    mean, cov = X.mean(axis=0), np.cov(X.T)
    with pytest.raises(ValueError, match="degreesOfFreedomPrior must be > 2"):
        default_priors(2, "full", mean, cov, degrees_of_freedom_prior=1.5)
    with pytest.raises(ValueError, match="weightConcentrationPriorType"):
        default_priors(2, "full", mean, cov, weight_concentration_prior_type="pitman_yor")
    with pytest.raises(ValueError, match=r"covariancePrior .* shape"):
        default_priors(2, "diag", mean, cov, covariance_prior=np.ones(2))
    with pytest.raises(ValueError, match="meanPrior must have 3 values"):
        default_priors(2, "full", mean, cov, mean_prior=[0.0, 1.0])


# ---------------------------------------------------------------------------
# Merge moves
# ---------------------------------------------------------------------------


def _start(X, k, ct, prior_type, seed):
    """sklearn's model and ours after one M-step from the same random responsibilities."""
    rng = np.random.default_rng(seed)
    resp = rng.uniform(size=(len(X), k))
    resp /= resp.sum(axis=1, keepdims=True)
    bgm = BayesianGaussianMixture(
        n_components=k, covariance_type=ct, weight_concentration_prior_type=prior_type,
        reg_covar=REG,
    )
    bgm._check_parameters(X)
    bgm._initialize(X, resp)
    priors = default_priors(
        k, ct, X.mean(axis=0), np.cov(X.T), weight_concentration_prior_type=prior_type
    )
    centre = np.repeat(X.mean(axis=0)[None], k, axis=0)
    vp = m_step(hard_assignment_statistics(X, None, centre, ct, resp=resp), priors, REG)
    return bgm, priors, vp


def _xlogx(values):
    out = np.zeros_like(values)
    np.multiply(values, np.log(values, where=values > 0, out=np.zeros_like(values)), out=out)
    return out


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_merge_entropy_terms_equal_direct_sums_over_sklearns_responsibilities(ct):
    X, _ = make_mixture(n=600, d=3, k=3, seed=5)
    k = 4
    bgm, priors, vp = _start(X, k, ct, "dirichlet_process", seed=3)
    pairs = merge_candidates(vp, priors)
    assert pairs is not None and len(pairs) == k * (k - 1) // 2  # every pair at small k
    resp = np.exp(bgm._estimate_log_prob_resp(X)[1])
    w = np.random.default_rng(0).uniform(0.5, 2.0, size=len(X))
    # Two blocks merged, as the engine reduces partitions.
    params = scoring_parameters(vp)
    stats = block_statistics(np.asfortranarray(X[:250]), w[:250], params, merge_pairs=pairs)
    stats.merge(block_statistics(np.asfortranarray(X[250:]), w[250:], params, merge_pairs=pairs))
    by_component = w @ _xlogx(resp)
    merged = np.array([w @ _xlogx(resp[:, a] + resp[:, b]) for a, b in pairs])
    assert rel_err(stats.resp_log_resp_by_component, by_component) < 1e-9
    assert rel_err(stats.merged_resp_log_resp, merged) < 1e-9
    assert rel_err(stats.resp_log_resp, by_component.sum()) < 1e-9


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_a_merge_bound_equals_sklearns_bound_of_the_merged_responsibilities(ct, prior_type):
    X, _ = make_mixture(n=500, d=3, k=3, seed=6)
    k = 4
    bgm, priors, vp = _start(X, k, ct, prior_type, seed=4)
    pairs = merge_candidates(vp, priors)
    stats = block_statistics(np.asfortranarray(X), None, scoring_parameters(vp), merge_pairs=pairs)
    resp = np.exp(bgm._estimate_log_prob_resp(X)[1])
    for p, (a, b) in enumerate(pairs):
        merged_resp = resp.copy()
        merged_resp[:, a] += merged_resp[:, b]
        merged_resp[:, b] = 0.0
        theirs = copy.deepcopy(bgm)
        with warnings.catch_warnings(), np.errstate(divide="ignore"):
            warnings.simplefilter("ignore")
            theirs._m_step(X, np.log(merged_resp))
        # sklearn's bound without its entropy term (log_resp = 0), then that term.
        their_bound = float(
            np.squeeze(theirs._compute_lower_bound(np.zeros_like(resp), None))
        ) - float(_xlogx(merged_resp).sum())
        _, _, posterior, bound = merged_bound(stats, p, priors, REG)
        assert abs(bound - their_bound) < 1e-9 * abs(their_bound), (a, b)
        theirs._set_parameters(theirs._get_parameters())
        assert rel_err(posterior.weights, theirs.weights_, floor=1e-12) < 1e-8
        assert rel_err(posterior.means, theirs.means_) < 1e-8
        assert rel_err(posterior.covariances, theirs.covariances_) < 1e-8


def _fit(X, k, ct, merges, tol, max_iter=100, seed=0):
    priors = default_priors(k, ct, X.mean(axis=0), np.cov(X.T))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_em(
            InMemoryData(X, n_blocks=3), k, ct, max_iter=max_iter, tol=tol, reg_covar=REG,
            init_mode="kmeans", n_init=1, seed=seed,
            variant=Variational(priors, REG, merges=merges),
        )


def _isotropic_mixture(n, d, k, seed):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=8.0, size=(k, d))
    labels = rng.integers(k, size=n)
    scales = rng.uniform(0.5, 2.0, size=k)
    return means[labels] + scales[labels, None] * rng.normal(size=(n, d)), labels


@pytest.mark.parametrize("ct", ["full", "spherical"])
def test_merges_find_the_true_components_and_only_raise_the_bound(ct):
    # Data of the fitted type: elliptical clusters for full, round ones for spherical.
    make = make_mixture if ct == "full" else _isotropic_mixture
    X, labels = make(4000, 3, 3, 7)
    merged = _fit(X, 8, ct, merges=True, tol=1e-3)
    plain = _fit(X, 8, ct, merges=False, tol=0.0, max_iter=60)
    assert merged.converged
    assert effective_components(merged.params.weights, 0.01) == 3
    # Plain coordinate ascent keeps the components k-means cut out of a cluster.
    assert effective_components(plain.params.weights, 0.01) > 3
    assert merged.history[-1] > plain.history[-1]
    hist = np.array(merged.history)
    assert np.all(np.diff(hist) >= -1e-9 * np.abs(hist[1:]))
    from sklearn.metrics import adjusted_rand_score

    proba = __import__("spark_gmm.gaussian", fromlist=["predict_proba"]).predict_proba(
        X, scoring_parameters(merged.params)
    )
    assert adjusted_rand_score(labels, proba.argmax(axis=1)) > 0.95


def test_tol_applies_to_the_total_bound_as_sklearns():
    X, _ = make_mixture(n=1000, d=2, k=3, seed=8)
    free = _fit(X, 5, "diag", merges=False, tol=0.0, max_iter=40)
    change = np.abs(np.diff(free.history))
    for tol in (10.0, 0.1):
        first = int(np.argmax(change < tol))  # history[first + 1] is the first small step
        assert change[first] < tol
        stopped = _fit(X, 5, "diag", merges=False, tol=tol)
        assert stopped.converged and stopped.n_iter == first + 2
