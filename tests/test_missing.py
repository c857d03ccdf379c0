"""EM with missing features by marginalisation (spark_gmm.missing), numpy only.

The references here are written independently of the module: one row at a time, with
matrix inverses and log-determinants from numpy.linalg, and the textbook formulas of
Ghahramani & Jordan (1994).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import make_mixture, rel_err
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from spark_gmm import gaussian, missing
from spark_gmm.gaussian import COVARIANCE_TYPES, MixtureParameters


def _params(X, k, covariance_type, seed=0):
    """A non-converged mixture fitted to X (sklearn, 2 iterations)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = SkGaussianMixture(
            k, covariance_type=covariance_type, max_iter=2, random_state=seed
        ).fit(X)
    return MixtureParameters.from_covariances(
        gm.weights_, gm.means_, gm.covariances_, covariance_type
    )


def _full_covariances(params):
    k, d = params.means.shape
    cov = params.covariances
    if params.covariance_type == "tied":
        return np.repeat(cov[None], k, axis=0)
    if params.covariance_type == "diag":
        return np.stack([np.diag(c) for c in cov])
    if params.covariance_type == "spherical":
        return np.stack([c * np.eye(d) for c in cov])
    return cov


def _knock_out(X, share, seed):
    """X with about ``share`` of its cells set to NaN, at least one value kept per row."""
    rng = np.random.default_rng(seed)
    out = X.copy()
    holes = rng.uniform(size=X.shape) < share
    holes[np.arange(len(X)), rng.integers(0, X.shape[1], len(X))] = False
    out[holes] = np.nan
    return out


def _reference_statistics(X, weights, params):
    """Per-row E-step and sufficient statistics, returned as full (k, d, d) scatter."""
    k, d = params.means.shape
    covs = _full_covariances(params)
    nk, sk, scatter = np.zeros(k), np.zeros((k, d)), np.zeros((k, d, d))
    loglik = 0.0
    for i, x in enumerate(X):
        o, m = ~np.isnan(x), np.isnan(x)
        log_dens, completed, cond = np.empty(k), np.empty((k, d)), np.zeros((k, d, d))
        for j in range(k):
            mu, cov = params.means[j], covs[j]
            inv_oo = np.linalg.inv(cov[np.ix_(o, o)])
            diff = x[o] - mu[o]
            _, logdet = np.linalg.slogdet(cov[np.ix_(o, o)])
            log_dens[j] = np.log(params.weights[j]) - 0.5 * (
                o.sum() * np.log(2 * np.pi) + logdet + diff @ inv_oo @ diff
            )
            completed[j] = x
            completed[j, m] = mu[m] + cov[np.ix_(m, o)] @ inv_oo @ diff
            cond[j][np.ix_(m, m)] = (
                cov[np.ix_(m, m)] - cov[np.ix_(m, o)] @ inv_oo @ cov[np.ix_(o, m)]
            )
        top = log_dens.max()
        lse = top + np.log(np.exp(log_dens - top).sum())
        r = np.exp(log_dens - lse) * weights[i]
        loglik += weights[i] * lse
        for j in range(k):
            e = completed[j] - params.means[j]
            nk[j] += r[j]
            sk[j] += r[j] * e
            scatter[j] += r[j] * (np.outer(e, e) + cond[j])
    return nk, sk, scatter, loglik


@pytest.mark.parametrize("shared_rows", [1, 32, 10**9], ids=["by-pattern", "mixed", "by-row"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_statistics_equal_a_per_row_reference_on_random_patterns(
    covariance_type, shared_rows, monkeypatch
):
    # Rows of a pattern shared by >= shared_rows rows get one factorisation of S_oo; the
    # others each solve a small system in the precision matrix: both must be exact.
    monkeypatch.setattr(missing, "SHARED_PATTERN_ROWS", shared_rows)
    X, _ = make_mixture(n=400, d=5, k=3, seed=4)
    params = _params(X, 3, covariance_type)
    Xm = _knock_out(X, 0.3, seed=1)
    patterns, _ = missing.missing_patterns(Xm)
    assert len(patterns) > 10 and not patterns.all(axis=1).any()
    w = np.random.default_rng(2).uniform(0.5, 2.0, len(X))
    stats = missing.block_statistics_missing(Xm, w, params)
    nk, sk, scatter, loglik = _reference_statistics(Xm, w, params)
    assert rel_err(stats.nk, nk, floor=1e-12) < 1e-10
    assert rel_err(stats.sk, sk, floor=1e-9) < 1e-10
    expected = {
        "full": scatter,
        "tied": scatter.sum(axis=0),
        "diag": np.diagonal(scatter, axis1=1, axis2=2),
        # A spherical scatter means its mean over the features (the complete rows' part
        # is stored spread evenly over them).
        "spherical": np.diagonal(scatter, axis1=1, axis2=2).mean(axis=1),
    }[covariance_type]
    got = stats.scatter.mean(axis=1) if covariance_type == "spherical" else stats.scatter
    assert rel_err(got, expected, floor=1e-9) < 1e-10
    assert stats.log_likelihood == pytest.approx(loglik, rel=1e-12)
    assert stats.total_weight == pytest.approx(w.sum(), rel=1e-14)
    # And the log-likelihood and responsibilities the scorer gives are the same ones.
    log_prob, resp = missing.score_and_proba_missing(Xm, params)
    assert w @ log_prob == pytest.approx(loglik, rel=1e-12)
    assert rel_err(w @ resp, nk, floor=1e-12) < 1e-10


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_complete_rows_give_todays_statistics(covariance_type):
    X, _ = make_mixture(n=300, d=4, k=3, seed=8)
    params = _params(X, 3, covariance_type)
    Xm = X.copy()
    Xm[::3, 1] = np.nan
    stats = missing.block_statistics_missing(Xm, None, params)
    # The complete rows go through gaussian.block_statistics: bit for bit.
    complete = ~np.isnan(Xm).any(axis=1)
    stats_complete = missing.block_statistics_missing(Xm[complete], None, params)
    today = gaussian.block_statistics(X[complete], None, params)
    for name in ("nk", "sk", "scatter", "counts"):
        np.testing.assert_array_equal(getattr(stats_complete, name), getattr(today, name))
    assert stats_complete.log_likelihood == today.log_likelihood
    assert stats.total_weight == len(X)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_observed_data_log_likelihood_never_decreases(covariance_type):
    X, _ = make_mixture(n=600, d=4, k=3, seed=10)
    params = _params(X, 3, covariance_type, seed=1)
    Xm = _knock_out(X, 0.2, seed=3)
    history = []
    for _ in range(25):
        stats = missing.block_statistics_missing(Xm, None, params)
        history.append(stats.log_likelihood)
        params = gaussian.m_step(stats, 1e-6)
    steps = np.diff(history)
    assert np.all(steps > -1e-9 * np.abs(history[1:])), steps
    assert history[-1] > history[0]


def _em(X, params, iterations=200, tol=1e-10):
    previous = -np.inf
    for _ in range(iterations):
        stats = missing.block_statistics_missing(X, None, params)
        params = gaussian.m_step(stats, 1e-6)
        if stats.log_likelihood - previous < tol * abs(stats.log_likelihood):
            break
        previous = stats.log_likelihood
    return params


def _matched_errors(params, true_means, true_covs):
    """Largest mean and covariance error after matching components to the truth."""
    order = [int(np.argmin(np.linalg.norm(params.means - mu, axis=1))) for mu in true_means]
    assert sorted(order) == list(range(len(true_means)))
    covs = _full_covariances(params)[order]
    return (
        float(np.max(np.abs(params.means[order] - true_means))),
        float(np.max(np.abs(covs - true_covs))),
    )


@pytest.mark.parametrize("mechanism", ["MCAR", "MAR"])
def test_recovers_the_truth_better_than_dropping_or_mean_imputing(mechanism):
    """5-D mixture with known parameters, 20% of cells missing: marginalising EM is closer
    to the truth than EM on the complete rows only and EM on mean-imputed rows."""
    rng = np.random.default_rng(21)
    d, k, n = 5, 2, 6000
    true_means = np.array([np.zeros(d), np.full(d, 3.0)])
    base = 0.6 * np.ones((d, d)) + 0.4 * np.eye(d)  # correlated features
    true_covs = np.stack([base, 0.5 * base])
    labels = rng.choice(k, n, p=[0.6, 0.4])
    X = np.stack([rng.multivariate_normal(true_means[j], true_covs[j]) for j in labels])
    Xm = X.copy()
    if mechanism == "MCAR":
        Xm = _knock_out(X, 0.2, seed=5)
    else:  # missing at random: whether x1..x4 go missing depends on the observed x0
        p = np.where(X[:, 0] > 1.5, 0.35, 0.08)
        holes = rng.uniform(size=(n, d - 1)) < p[:, None]
        Xm[:, 1:][holes] = np.nan
    start = MixtureParameters.from_covariances(
        [0.5, 0.5], [np.full(d, -0.5), np.full(d, 3.5)], np.stack([np.eye(d)] * 2), "full"
    )
    marginalised = _em(Xm, start)
    complete = ~np.isnan(Xm).any(axis=1)
    dropped = _em(Xm[complete], start)
    imputed_rows = np.where(np.isnan(Xm), np.nanmean(Xm, axis=0), Xm)
    imputed = _em(imputed_rows, start)
    errors = {
        name: _matched_errors(p, true_means, true_covs)
        for name, p in (("marginalise", marginalised), ("drop", dropped), ("mean-impute", imputed))
    }
    ours = errors["marginalise"]
    for other in ("drop", "mean-impute"):
        assert ours[0] < errors[other][0] and ours[1] < errors[other][1], errors
    assert complete.mean() < 0.6  # dropping incomplete rows throws away over 40% of them


def test_impute_fills_with_the_conditional_expectation():
    X, _ = make_mixture(n=200, d=3, k=2, seed=6)
    params = _params(X, 2, "full")
    Xm = X.copy()
    Xm[:50, 2] = np.nan
    out = missing.impute(Xm, params)
    np.testing.assert_array_equal(out[50:], X[50:])
    np.testing.assert_array_equal(out[:50, :2], X[:50, :2])
    covs = _full_covariances(params)
    for i in range(50):
        x = Xm[i]
        dens = np.array(
            [
                params.weights[j]
                * np.exp(
                    -0.5
                    * (x[:2] - params.means[j, :2])
                    @ np.linalg.inv(covs[j][:2, :2])
                    @ (x[:2] - params.means[j, :2])
                )
                / np.sqrt(np.linalg.det(2 * np.pi * covs[j][:2, :2]))
                for j in range(2)
            ]
        )
        r = dens / dens.sum()
        cond = [
            params.means[j, 2]
            + covs[j][2, :2] @ np.linalg.solve(covs[j][:2, :2], x[:2] - params.means[j, :2])
            for j in range(2)
        ]
        assert out[i, 2] == pytest.approx(r @ cond, rel=1e-10)


def test_parameters_without_covariances_give_the_same_statistics():
    """Executors get weights, means and precision factors only (kernels.py strips the
    covariances); the statistics are then rebuilt from the factors."""
    from dataclasses import replace

    X, _ = make_mixture(n=300, d=4, k=3, seed=2)
    Xm = _knock_out(X, 0.25, seed=9)
    for covariance_type in COVARIANCE_TYPES:
        params = _params(X, 3, covariance_type)
        full = missing.block_statistics_missing(Xm, None, params)
        slim = missing.block_statistics_missing(Xm, None, replace(params, covariances=np.empty(0)))
        assert rel_err(slim.scatter, full.scatter, floor=1e-9) < 1e-10
        assert slim.log_likelihood == pytest.approx(full.log_likelihood, rel=1e-12)


def test_a_row_with_nothing_observed_is_refused():
    X, _ = make_mixture(n=50, d=3, k=2, seed=1)
    params = _params(X, 2, "diag")
    X[7] = np.nan
    with pytest.raises(ValueError, match="every feature missing"):
        missing.block_statistics_missing(X, None, params)


# ---------------------------------------------------------------------------
# The engine's parts around the core: validation of input batches, the tasks
# ---------------------------------------------------------------------------


def _batch(columns):
    import pyarrow as pa

    return pa.RecordBatch.from_arrays(
        [pa.array(c, pa.float64()) for c in columns], names=[f"f{j}" for j in range(len(columns))]
    )


def test_validation_keeps_missing_values_and_refuses_empty_or_infinite_rows():
    import pyarrow as pa

    from spark_gmm.data import batch_to_rows, make_spec

    a = [1.0, None, float("nan"), None, 5.0]
    b = [2.0, 3.0, 4.0, None, float("inf")]
    spec = make_spec("columns", ["a", "b"], 2, None, allow_missing=True)
    X, _, bad, counts = batch_to_rows(_batch([a, b]), spec)
    # Row 3 has nothing observed, row 4 an infinity; rows 1 and 2 miss 'a'.
    assert list(bad) == [False, False, False, True, True]
    assert spec.problem_labels == [
        "column 'a': infinite values",
        "column 'b': infinite values",
        "rows with every feature null or NaN",
    ]
    assert counts == [0, 1, 1, 2, 0]  # problems, then missing values of a and b
    assert np.isnan(X[1, 0]) and np.isnan(X[2, 0]) and X[2, 1] == 4.0
    # Without allow_missing, null and NaN make the row invalid, as before.
    plain = make_spec("columns", ["a", "b"], 2, None)
    _, _, bad, counts = batch_to_rows(_batch([a, b]), plain)
    assert list(bad) == [False, True, True, True, True] and counts == [3, 2]
    # A vector column: NaN and null entries are missing; a null vector is invalid.
    vectors = pa.array([[1.0, None], [float("nan"), float("nan")], None, [1.0, 2.0]])
    spec = make_spec("vector", ["v"], 2, None, allow_missing=True)
    X, _, bad, counts = batch_to_rows(pa.RecordBatch.from_arrays([vectors], ["f0"]), spec)
    assert list(bad) == [False, True, True, False]
    assert counts == [1, 0, 0, 1, 0, 1]
    assert X[0, 0] == 1.0 and np.isnan(X[0, 1])


def test_summary_names_a_feature_missing_everywhere():
    from spark_gmm.data import iter_blocks, make_spec, summarize_blocks, unobserved_features_message

    spec = make_spec("columns", ["a", "b"], 2, None, allow_missing=True)
    batches = [_batch([[1.0, 2.0], [None, None]]), _batch([[3.0], [float("nan")]])]
    summary = summarize_blocks(
        [raw for *_, raw, _ in iter_blocks(batches, spec, False, summaries_only=True)], spec
    )
    assert summary.rows_read == 3 and list(summary.missing) == [0, 3]
    assert summary.col_min[0] == 1.0 and summary.col_max[0] == 3.0
    message = unobserved_features_message(spec, summary)
    assert message is not None and "'b'" in message and "'a'" not in message


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_in_memory_fit_climbs_the_observed_likelihood(covariance_type):
    from spark_gmm.em import InMemoryData, fit_em

    X, _ = make_mixture(n=600, d=4, k=3, seed=12)
    Xm = _knock_out(X, 0.2, seed=13)
    result = fit_em(
        InMemoryData(Xm, n_blocks=4), 3, covariance_type, init_mode="kmeans", seed=1, missing=True
    )
    history = np.array(result.history)
    assert np.all(np.isfinite(history)) and np.all(np.diff(history) >= -1e-12), history
    # The final log-likelihood is the observed-data one of the returned parameters.
    ll = missing.score_and_proba_missing(Xm, result.params)[0].mean()
    assert result.log_likelihood / result.total_weight == pytest.approx(ll, rel=1e-12)


def test_initialisation_tasks_complete_rows_with_the_nearest_centre():
    from spark_gmm.kernels import HardTask

    centres = np.array([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]])
    X = np.array([[9.0, np.nan, 11.0], [np.nan, 1.0, -1.0], [0.5, 0.5, np.nan]])
    stats = HardTask(centres, "full").statistics(X, None)
    completed = np.array([[9.0, 10.0, 11.0], [0.0, 1.0, -1.0], [0.5, 0.5, 0.0]])
    expected = HardTask(centres, "full").statistics(completed, None)
    np.testing.assert_array_equal(stats.nk, [2.0, 1.0])
    np.testing.assert_allclose(stats.sk, expected.sk)
    np.testing.assert_allclose(stats.scatter, expected.scatter)


def test_cost_of_missing_values_is_bounded_and_announced(caplog):
    import logging

    from spark_gmm.em import _warn_of_missing_cost

    rng = np.random.default_rng(3)
    d = 12
    X = rng.normal(size=(400, d))
    # 10% of the rows miss one value: about 2x a complete row each, 1.1x over all.
    few = X.copy()
    few[::10, 3] = np.nan
    one = (1 + 1 / d) ** 2 + 1 + 1 / (2 * d * d)
    assert missing.relative_cost(few) == pytest.approx(0.9 + 0.1 * one)
    # Every row its own pattern, half the values missing: the bound is per row, not per
    # pattern, so it stays that of c = 6 missing values out of 12.
    many = X.copy()
    for row in many:
        row[rng.choice(d, 6, replace=False)] = np.nan
    assert missing.missing_patterns(many)[0].shape[0] > 300
    six = (1 + 6 / d) ** 2 + 1 + 6**3 / (2 * d * d)
    assert missing.relative_cost(many) == pytest.approx(six)
    with caplog.at_level(logging.WARNING, logger="spark_gmm"):
        _warn_of_missing_cost(few)
        assert not caplog.records
        _warn_of_missing_cost(many)
    assert "100% of the sampled rows have missing features" in caplog.text
    assert f"{six:.1f}x" in caplog.text
