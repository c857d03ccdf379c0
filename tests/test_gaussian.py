"""The numpy core against scikit-learn and closed forms (no Spark)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import make_mixture, rel_err
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from spark_gmm import gaussian
from spark_gmm.errors import ComponentCollapseError, ComponentNotPositiveDefiniteError
from spark_gmm.gaussian import COVARIANCE_TYPES, MixtureParameters, SufficientStatistics


def _sklearn_start(X, k, covariance_type, seed=0):
    """A reasonable, non-converged starting point: sklearn after 2 iterations."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = SkGaussianMixture(
            k, covariance_type=covariance_type, max_iter=2, random_state=seed
        ).fit(X)
    return gm.weights_, gm.means_, gm.precisions_


def _em_numpy(X, params, iterations, reg_covar=1e-6, n_blocks=1, weights=None):
    bounds = np.linspace(0, len(X), n_blocks + 1).astype(int)
    history = []
    for _ in range(iterations):
        stats = SufficientStatistics.zeros(params.covariance_type, params.means)
        for a, b in zip(bounds[:-1], bounds[1:]):
            w = None if weights is None else weights[a:b]
            stats.merge(gaussian.block_statistics(X[a:b], w, params))
        history.append(stats.log_likelihood / stats.total_weight)
        params = gaussian.m_step(stats, reg_covar)
    return params, history


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("n_blocks", [1, 7])
def test_em_iterations_equal_sklearn(covariance_type, n_blocks):
    """T iterations from the same weights/means/precisions equal sklearn to 1e-8."""
    X, _ = make_mixture(n=900, d=4, k=3, seed=1)
    w0, m0, p0 = _sklearn_start(X, 3, covariance_type)
    T = 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = SkGaussianMixture(
            3,
            covariance_type=covariance_type,
            weights_init=w0,
            means_init=m0,
            precisions_init=p0,
            max_iter=T,
            tol=0,
        ).fit(X)
    assert ref.n_iter_ == T
    start = MixtureParameters.from_precisions(w0, m0, p0, covariance_type)
    params, history = _em_numpy(X, start, T, n_blocks=n_blocks)
    for ours, theirs in [
        (params.weights, ref.weights_),
        (params.means, ref.means_),
        (params.covariances, ref.covariances_),
        (params.precisions_chol, ref.precisions_cholesky_),
    ]:
        assert rel_err(ours, theirs) < 1e-8, rel_err(ours, theirs)
    # sklearn's lower_bound_ is the log-likelihood computed in its last E-step.
    assert abs(history[-1] - ref.lower_bound_) < 1e-10 * abs(ref.lower_bound_)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_prob_and_scores_equal_sklearn(covariance_type):
    X, _ = make_mixture(n=400, d=3, k=2, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = SkGaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X)
    params = MixtureParameters.from_covariances(
        gm.weights_, gm.means_, gm.covariances_, covariance_type
    )
    assert rel_err(params.precisions_chol, gm.precisions_cholesky_) < 1e-10
    assert rel_err(gaussian.score_samples(X, params), gm.score_samples(X)) < 1e-12
    assert rel_err(gaussian.predict_proba(X, params), gm.predict_proba(X)) < 1e-10


def test_integer_weights_equal_repeated_rows():
    """Weighting a row by 3 is the same as repeating it three times (closed form)."""
    X, _ = make_mixture(n=300, d=3, k=2, seed=3)
    w = np.random.default_rng(0).integers(0, 4, size=len(X)).astype(float)
    repeated = np.repeat(X, w.astype(int), axis=0)
    w0, m0, p0 = _sklearn_start(X, 2, "full")
    start = MixtureParameters.from_precisions(w0, m0, p0, "full")
    weighted, hist_w = _em_numpy(X, start, 4, weights=w)
    plain, hist_p = _em_numpy(repeated, start, 4)
    assert rel_err(weighted.means, plain.means) < 1e-12
    assert rel_err(weighted.covariances, plain.covariances) < 1e-12
    assert rel_err(weighted.weights, plain.weights) < 1e-12
    assert rel_err(hist_w, hist_p) < 1e-12


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_statistics_merge_and_flat_round_trip(covariance_type):
    X, _ = make_mixture(n=500, d=4, k=3, seed=4)
    w0, m0, p0 = _sklearn_start(X, 3, covariance_type)
    # Means moved off sklearn's M-step so the centred first moments are not ~0.
    params = MixtureParameters.from_precisions(w0, m0 + 0.3, p0, covariance_type)
    whole = gaussian.block_statistics(X, None, params)
    parts = SufficientStatistics.zeros(covariance_type, params.means)
    for chunk in np.array_split(X, 5):
        flat = gaussian.block_statistics(chunk, None, params).to_flat()
        parts.merge(SufficientStatistics.from_flat(flat, covariance_type, params.means))
    for name in ("nk", "sk", "scatter", "counts"):
        assert rel_err(getattr(parts, name), getattr(whole, name)) < 1e-12, name
    assert abs(parts.log_likelihood - whole.log_likelihood) < 1e-9 * abs(whole.log_likelihood)
    assert parts.total_weight == whole.total_weight == len(X)
    assert parts.counts.sum() == len(X)


def test_statistics_far_from_origin_keep_their_digits():
    """Data offset by 1e8 with unit spread: centred sums keep the covariance exact.

    Raw moments (E[xx'] - mu mu') would lose ~16 digits here and return garbage."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(2000, 2)) @ np.array([[1.0, 0.3], [0.0, 0.5]])
    offset = np.array([1e8, -3e8])
    X = base + offset
    params = MixtureParameters.from_covariances(
        np.array([1.0]), X.mean(axis=0, keepdims=True) + 0.5, np.cov(base.T)[None], "full"
    )
    new = gaussian.m_step(gaussian.block_statistics(X, None, params), reg_covar=0.0)
    expected_cov = np.cov(base.T, bias=True)
    # The input itself only carries ~1e-8 absolute precision at 1e8 magnitude.
    assert rel_err(new.covariances[0], expected_cov) < 1e-6
    assert rel_err(new.means[0] - offset, base.mean(axis=0)) < 1e-6


def test_collapsed_component_is_named():
    X = np.random.default_rng(6).normal(size=(200, 2))
    # Component 1 sits absurdly far away: it receives no responsibility at all.
    params = MixtureParameters.from_covariances(
        np.array([0.5, 0.5]), np.array([[0.0, 0.0], [1e6, 1e6]]), np.array([np.eye(2)] * 2), "full"
    )
    with pytest.raises(ComponentCollapseError, match=r"Component 1 \(of 2\).*regCovar.*fewer"):
        gaussian.m_step(gaussian.block_statistics(X, None, params), 1e-6)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_singular_covariance_is_named(covariance_type):
    """All rows identical in component 0 with regCovar=0: not positive definite."""
    X = np.vstack([np.zeros((50, 2)), np.random.default_rng(7).normal(size=(50, 2)) + 10])
    stats = gaussian.hard_assignment_statistics(
        X, None, np.array([[0.0, 0.0], [10.0, 10.0]]), covariance_type
    )
    with pytest.raises(ComponentNotPositiveDefiniteError, match=r"component 0 .*regCovar"):
        gaussian.m_step(stats, reg_covar=0.0)
    # The same statistics are fine once regCovar is added.
    params = gaussian.m_step(stats, reg_covar=1e-6)
    assert np.all(np.isfinite(params.precisions_chol))


def test_from_covariances_validates():
    with pytest.raises(ValueError, match="sum to 1"):
        MixtureParameters.from_covariances([0.5, 0.6], np.zeros((2, 2)), np.ones((2, 2)), "diag")
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        MixtureParameters.from_covariances([0.5, 0.5], np.zeros((2, 2)), np.ones(2), "diag")
    with pytest.raises(ComponentNotPositiveDefiniteError):
        MixtureParameters.from_covariances(
            [1.0], np.zeros((1, 2)), np.array([[[1.0, 2.0], [2.0, 1.0]]]), "full"
        )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_precision_round_trip(covariance_type):
    X, _ = make_mixture(n=300, d=3, k=2, seed=8)
    w0, m0, p0 = _sklearn_start(X, 2, covariance_type)
    params = MixtureParameters.from_precisions(w0, m0, p0, covariance_type)
    again = MixtureParameters.from_covariances(w0, m0, params.covariances, covariance_type)
    assert rel_err(again.precisions_chol, params.precisions_chol) < 1e-10


def test_n_parameters_matches_sklearn():
    X, _ = make_mixture(n=200, d=3, k=2, seed=9)
    for covariance_type in COVARIANCE_TYPES:
        gm = SkGaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X)
        assert gaussian.n_parameters(covariance_type, 2, 3) == gm._n_parameters()


# ---------------------------------------------------------------------------
# The fast kernel paths against direct, per-component computations
# ---------------------------------------------------------------------------


def _direct_log_prob(X, params):
    """log N(x | mu_j, Sigma_j) one component at a time, residuals centred on mu_j."""
    k, d = params.means.shape
    cov = params.covariances
    out = np.empty((len(X), k))
    kind = params.covariance_type
    for j in range(k):
        if kind == "full":
            sigma = cov[j]
        elif kind == "tied":
            sigma = cov
        else:
            sigma = np.diag(cov[j]) if kind == "diag" else cov[j] * np.eye(d)
        diff = X - params.means[j]
        maha = np.einsum("ij,ij->i", diff, np.linalg.solve(sigma, diff.T).T)
        out[:, j] = -0.5 * (d * np.log(2 * np.pi) + np.linalg.slogdet(sigma)[1] + maha)
    return out


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_batched_log_prob_equals_direct_over_several_chunks(covariance_type, monkeypatch):
    """The one-GEMM (full/tied) and elementwise (diag/spherical) whitening, cut into
    chunks of 32 rows here, equal a per-component computation."""
    monkeypatch.setattr(gaussian, "_CHUNK_VALUES", 1)
    X, _ = make_mixture(n=203, d=5, k=4, seed=10)
    w0, m0, p0 = _sklearn_start(X, 4, covariance_type)
    params = MixtureParameters.from_precisions(w0, m0, p0, covariance_type)
    ours = gaussian.estimate_log_gaussian_prob(
        X, params.means, params.precisions_chol, covariance_type
    )
    assert ours.shape == (203, 4)
    assert rel_err(ours, _direct_log_prob(X, params)) < 1e-12


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_log_prob_far_from_origin_keeps_its_digits(covariance_type):
    """Rows and means offset by 1e8 with unit spread: centring on the mean of the means
    keeps the log-densities of the (rounded) rows to 1e-9. Whitening the raw rows,
    ``X U - mu U``, would be off by ~1e-7 here."""
    rng = np.random.default_rng(11)
    offset = np.array([1e8, -2e8, 3e8])
    base = rng.normal(size=(500, 3))
    means = np.array([[0.0, 0.0, 0.0], [3.0, -1.0, 2.0]])
    variances = np.array([[1.0, 1.0, 1.0], [0.5, 2.0, 1.0]])
    cov = variances if covariance_type == "diag" else np.stack([np.diag(v) for v in variances])
    weights = np.array([0.4, 0.6])
    params = MixtureParameters.from_covariances(weights, means, cov, covariance_type)
    shifted = MixtureParameters.from_covariances(weights, means + offset, cov, covariance_type)
    X = base + offset
    # What the rows really are after rounding to float64, relative to the offset.
    exact = _direct_log_prob(X - offset, params)
    ours = gaussian.estimate_log_gaussian_prob(
        X, shifted.means, shifted.precisions_chol, covariance_type
    )
    assert np.max(np.abs(ours - exact)) < 1e-9, np.max(np.abs(ours - exact))


def test_negligible_responsibilities_are_exactly_zero():
    """A responsibility below e^-700 times the row's largest is flushed to 0 (exp() of
    arguments near the smallest normal float64 leaves numpy's fast loop); everything
    else is exp(wlp - logsumexp) to rounding."""
    wlp = np.array(
        [
            [0.0, -1.0, -700.0, -720.0, -800.0, -np.inf],
            [-5.0, -5.0, -5.0, -5.0, -5.0, -5.0],
            [1e3, 1e3 - 707.0, 1e3 - 709.0, -1e300, 1e3 - 2.0, 1e3 - 3.0],
        ]
    )
    lpn, resp = gaussian._log_normalize(wlp)
    top = wlp.max(axis=1, keepdims=True)
    expected_lpn = top[:, 0] + np.log(np.exp(wlp - top).sum(axis=1))
    assert rel_err(lpn, expected_lpn) < 1e-15
    expected = np.exp(wlp - expected_lpn[:, None])
    normal = wlp - top >= -700.0
    assert np.count_nonzero(~normal) == 6  # -720, -800, -inf, 1e3 - 707 and 709, -1e300
    assert np.all(resp[~normal] == 0.0)
    assert np.max(np.abs(resp[normal] - expected[normal]) / expected[normal]) < 1e-13
    assert rel_err(resp.sum(axis=1), np.ones(3)) < 1e-15


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_statistics_skip_zero_weights_exactly(covariance_type, monkeypatch):
    """Gathering the non-zero rows of a component, or not, gives the same sums, equal
    to weighted sums computed directly; C- and Fortran-ordered blocks agree bit for bit."""
    rng = np.random.default_rng(12)
    X = rng.normal(size=(300, 4)) * [1.0, 2.0, 0.5, 3.0] + 5.0
    resp = rng.random((300, 3)) * (rng.random((300, 3)) < [0.2, 0.6, 1.0])
    centres = rng.normal(size=(3, 4)) + 5.0
    results = []
    for share in (1.0, 0.0):
        monkeypatch.setattr(gaussian, "_GATHER_SHARE", share)
        stats = SufficientStatistics.zeros(covariance_type, centres)
        gaussian._accumulate_weighted(X, resp, stats)
        results.append(stats)
    gathered, dense = results
    scatter = np.stack(
        [(resp[:, j, None] * (X - centres[j])).T @ (X - centres[j]) for j in range(3)]
    )
    scatter = {
        "full": scatter,
        "tied": scatter.sum(axis=0),
        "diag": np.stack([np.diag(s) for s in scatter]),
        # Only the mean over the features counts for spherical (see SufficientStatistics).
        "spherical": np.stack([np.diag(s) for s in scatter]).mean(axis=1),
    }[covariance_type]
    for stats in (gathered, dense):
        assert rel_err(stats.nk, resp.sum(axis=0)) < 1e-14
        sk = np.stack([resp[:, j] @ (X - centres[j]) for j in range(3)])
        assert rel_err(stats.sk, sk) < 1e-13
        got = stats.scatter.mean(axis=1) if covariance_type == "spherical" else stats.scatter
        assert rel_err(got, scatter) < 1e-13
    params = MixtureParameters.from_covariances(
        np.full(3, 1 / 3), centres, np.broadcast_to(np.eye(4), (3, 4, 4)).copy(), "full"
    )
    c_order = gaussian.block_statistics(X, None, params)
    f_order = gaussian.block_statistics(np.asfortranarray(X), None, params)
    for name in ("nk", "sk", "scatter", "counts"):
        assert np.array_equal(getattr(c_order, name), getattr(f_order, name)), name


@pytest.mark.parametrize("offset", [0.0, 1e8])
@pytest.mark.parametrize("hard", [False, True])
def test_tied_scatter_identity_equals_per_component_sums(offset, hard):
    """The tied scatter (one d x d product) equals the sum of the per-component centred
    outer products, also far from the origin, with row weights and zero-weight rows."""
    from spark_gmm.gaussian import _accumulate_tied_scatter_t

    rng = np.random.default_rng(4)
    n, d, k = 500, 5, 4
    centres = rng.normal(scale=5.0, size=(k, d)) + offset
    X = centres[rng.integers(k, size=n)] + rng.normal(size=(n, d))
    if hard:
        resp = np.eye(k)[rng.integers(k, size=n)]
    else:
        resp = rng.dirichlet(np.full(k, 0.3), size=n)
    w = rng.uniform(0.0, 3.0, size=n)
    w[:7] = 0.0
    wr = resp * w[:, None]
    expected = np.zeros((d, d))
    for j in range(k):
        diff = X - centres[j]
        expected += (diff * wr[:, j : j + 1]).T @ diff
    got = np.zeros((d, d))
    _accumulate_tied_scatter_t(np.ascontiguousarray(X.T), np.ascontiguousarray(wr.T), centres, got)
    # Both ways are within ~5e-16 of an extended-precision sum, at either offset.
    assert rel_err(got, expected) < 1e-12
    np.testing.assert_allclose(got, got.T, rtol=0, atol=1e-12 * np.abs(got).max())
