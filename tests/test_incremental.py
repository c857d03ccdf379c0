"""Incremental EM (spark_gmm.incremental), numpy only: the statistics algebra against
direct sums, the schedules against closed forms, and the behaviour the issue asks for
(stationary source ~ batch fit, drift tracked, a dying component re-seeded, never NaN)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from helpers import make_mixture

from spark_gmm.em import InMemoryData, fit_em
from spark_gmm.errors import InvalidInputError
from spark_gmm.gaussian import (
    COVARIANCE_TYPES,
    MixtureParameters,
    block_statistics,
    m_step,
    predict_proba,
    score_samples,
    shifted,
)
from spark_gmm.incremental import (
    REBORN_WEIGHT,
    Schedule,
    blend,
    from_parameters,
    recentred,
    update_parameters,
)

REG = 1e-6


CENTRES = np.array([[0.0, 0.0], [2.0, 0.5], [0.5, 2.5]])


def _overlapping(
    n: int, seed: int, shift: np.ndarray | None = None, spread: float = 1.0
) -> np.ndarray:
    """Three overlapping 2-D Gaussians (so responsibilities are soft), optionally moved
    (``shift``) or pulled apart (``spread`` times the distances between centres)."""
    rng = np.random.default_rng(seed)
    means = spread * CENTRES
    if shift is not None:
        means = means + shift
    covs = np.array(
        [[[1.0, 0.3], [0.3, 0.6]], [[0.5, -0.2], [-0.2, 0.8]], [[0.7, 0.0], [0.0, 0.4]]]
    )
    z = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    X = np.empty((n, 2))
    for j in range(3):
        rows = z == j
        X[rows] = rng.multivariate_normal(means[j], covs[j], size=int(rows.sum()))
    return X


def _fit(X: np.ndarray, ct: str, seed: int = 0) -> MixtureParameters:
    return fit_em(InMemoryData(X), 3, ct, max_iter=3000, tol=1e-10, seed=seed).params


def _matched(params: MixtureParameters, reference: MixtureParameters) -> np.ndarray:
    """Index of the reference component nearest to each of ``params``' components."""
    d2 = ((params.means[:, None, :] - reference.means[None, :, :]) ** 2).sum(-1)
    order = np.argmin(d2, axis=1)
    assert len(set(order.tolist())) == len(order), "components do not pair up"
    return order


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_shifted_statistics_equal_direct_sums_around_the_new_centres(ct):
    X = _overlapping(500, seed=1)
    params = _fit(X, ct)
    stats = block_statistics(X, None, params)
    centres = params.means + np.random.default_rng(2).normal(size=params.means.shape)
    got = shifted(stats, centres)
    resp = predict_proba(X, params)
    diff = X[None, :, :] - centres[:, None, :]  # (k, n, d)
    np.testing.assert_allclose(got.sk, np.einsum("nk,knd->kd", resp, diff), rtol=1e-10)
    full = np.einsum("nk,kni,knj->kij", resp, diff, diff)
    want = {
        "full": full,
        "tied": full.sum(axis=0),
        "diag": np.einsum("kii->ki", full),
        "spherical": np.einsum("kii->ki", full).mean(axis=1),  # only the mean counts
    }[ct]
    scatter = got.scatter.mean(axis=1) if ct == "spherical" else got.scatter
    np.testing.assert_allclose(scatter, want, rtol=1e-10, atol=1e-9)
    # ... and the M-step does not care where the statistics are centred.
    a, b = m_step(stats, REG), m_step(got, REG)
    np.testing.assert_allclose(b.means, a.means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.covariances, a.covariances, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(recentred(got).sk, 0.0, atol=1e-9)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_statistics_implied_by_parameters_give_them_back(ct):
    params = _fit(_overlapping(400, seed=3), ct)
    back = m_step(from_parameters(params, 1234.0, REG), REG)
    np.testing.assert_allclose(back.weights, params.weights, rtol=1e-12)
    np.testing.assert_allclose(back.means, params.means, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(back.covariances, params.covariances, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_blending_statistics_of_two_halves_equals_the_whole(ct):
    X = _overlapping(600, seed=4)
    params = _fit(X, ct)
    first, second = block_statistics(X[:250], None, params), block_statistics(X[250:], None, params)
    moved = shifted(second, params.means + 0.7)  # another centring must not matter
    both = blend(1.0, first, 1.0, moved)
    whole = block_statistics(X, None, params)
    np.testing.assert_allclose(both.nk, whole.nk, rtol=1e-12)
    np.testing.assert_allclose(both.sk, whole.sk, atol=1e-9)
    np.testing.assert_allclose(both.scatter, whole.scatter, rtol=1e-10)


def test_schedules_and_their_errors():
    assert Schedule.from_params(decay_factor=0.5).coefficients(3, 10.0, 4.0) == (0.5, 1.0)
    half = Schedule.from_params(half_life=2.0)
    assert half.decay_factor == pytest.approx(0.5**0.5)
    points = Schedule.from_params(decay_factor=0.9, time_unit="points")
    assert points.coefficients(1, 10.0, 3.0) == (pytest.approx(0.9**3), 1.0)
    step = Schedule.from_params(step_size_offset=1.0, step_size_exponent=0.75)
    a, b = step.coefficients(2, 5.0, 8.0)
    gamma = 3.0**-0.75
    assert (a, b) == (pytest.approx((1 - gamma) / 5.0), pytest.approx(gamma / 8.0))
    for kwargs, message in [
        ({"decay_factor": 1.5}, "decayFactor must be in"),
        ({"half_life": 0.0}, "halfLife must be > 0"),
        ({"decay_factor": 0.5, "half_life": 2.0}, "not both"),
        ({"decay_factor": 0.5, "step_size_exponent": 0.7}, "not both"),
        ({"step_size_exponent": 0.5}, r"stepSizeExponent must be in \(0.5, 1\]"),
        ({"step_size_offset": -1.0}, "stepSizeOffset must be >= 0"),
        ({"time_unit": "days"}, "timeUnit must be"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            Schedule.from_params(**kwargs)


def _run(batches, params, schedule, initial_weight, passes=1):
    running = from_parameters(params, initial_weight, REG)
    for t, B in enumerate(batches):
        result = update_parameters(InMemoryData(B), params, running, t, schedule, REG, passes)
        params, running = result.params, result.running
    return params, running


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_stationary_source_in_20_batches_ends_near_the_batch_fit(ct):
    """decay 1, one pass per batch, started from the first batch's fit (counted as its
    rows). Stated tolerances: on separated clusters the parameters are within 1e-3 of the
    batch fit on all rows; on overlapping ones (a flat likelihood: parameters 0.1 apart
    score alike) the mean log-likelihood of all rows is within 2e-3 of the batch fit's."""
    schedule = Schedule.from_params(decay_factor=1.0)
    X, _ = make_mixture(n=40_000, d=3, k=3, seed=5)
    X = X[np.random.default_rng(5).permutation(len(X))]
    batches = np.array_split(X, 20)
    final, running = _run(batches[1:], _fit(batches[0], ct, seed=1), schedule, 2000.0)
    whole = _fit(X, ct, seed=1)
    order = _matched(final, whole)
    assert np.abs(final.weights - whole.weights[order]).max() < 1e-3
    assert np.abs(final.means - whole.means[order]).max() < 1e-3
    cov_whole = whole.covariances if ct == "tied" else whole.covariances[order]
    assert np.abs(final.covariances - cov_whole).max() < 1e-3
    assert running.total_weight == pytest.approx(len(X))

    X = _overlapping(40_000, seed=5)
    batches = np.array_split(X, 20)
    final, _ = _run(batches[1:], _fit(batches[0], ct, seed=1), schedule, 2000.0)
    whole = _fit(X, ct, seed=1)
    gap = score_samples(X, whole).mean() - score_samples(X, final).mean()
    assert 0.0 <= gap < 2e-3, gap


def test_stepwise_with_step_1_over_t_equals_plain_accumulation():
    """Cappe-Moulines with g_t = 1/t (offset 0, exponent 1) averages the per-row batch
    statistics; with equal batches that is the forgetting schedule with decay 1 started
    from (almost) no weight: the same parameters after every batch."""
    X = _overlapping(6_000, seed=6)
    batches = np.array_split(X, 6)
    start = _fit(batches[0], "full", seed=2)
    step = Schedule.from_params(step_size_offset=0.0, step_size_exponent=1.0)
    a, _ = _run(batches, start, step, 1.0)
    b, _ = _run(batches, start, Schedule.from_params(decay_factor=1.0), 1e-12)
    np.testing.assert_allclose(a.means, b.means, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.covariances, b.covariances, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-9)


def test_forgetting_tracks_drifting_means_better_than_a_batch_fit():
    """Every component moves by (0.15, 0.1) per batch for 20 batches: a model with a
    half-life of 2 batches ends nearer the last batch's truth than a fit on all rows (by
    a factor of 3 at least; it lags by about two batches' drift)."""
    step = np.array([0.15, 0.1])
    batches = [_overlapping(3_000, 100 + t, shift=t * step, spread=3.0) for t in range(20)]
    start = _fit(batches[0], "full", seed=3)
    tracked, _ = _run(batches[1:], start, Schedule.from_params(half_life=2.0), 3_000.0)
    whole = _fit(np.vstack(batches), "full", seed=3)
    truth = 3.0 * CENTRES + 19 * step

    def error(params):
        d2 = ((params.means[:, None, :] - truth[None]) ** 2).sum(-1)
        return float(np.sqrt(d2.min(axis=0)).max())

    # Exponential forgetting lags a linear drift by decay / (1 - decay) steps.
    decay = 0.5**0.5
    lag = decay / (1 - decay) * float(np.hypot(*step))
    assert error(tracked) < 1.5 * lag, (error(tracked), lag)
    assert error(tracked) < error(whole) / 3, (error(tracked), error(whole))


def test_a_component_without_rows_is_reseeded_never_nan(caplog):
    """Batches from two of the three clusters only, forgetting half of the past per batch:
    the third component's weight falls below REBORN_WEIGHT, it is re-seeded by splitting
    the heaviest one (a warning says so), and every parameter stays finite."""
    rng = np.random.default_rng(7)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = np.repeat([0, 1, 2], 2_000)
    X = centres[labels] + rng.normal(size=(6_000, 2))
    start = _fit(X, "full")
    two = X[labels != 2]
    batches = [two[i::30] for i in range(30)]
    with caplog.at_level(logging.WARNING, logger="spark_gmm"):
        final, running = _run(batches, start, Schedule.from_params(decay_factor=0.5), 6_000.0)
    messages = [r.getMessage() for r in caplog.records if "re-seeded" in r.getMessage()]
    assert messages, "no re-seeding was logged"
    assert "weight" in messages[0] and "splitting component" in messages[0]
    for arr in (final.weights, final.means, final.covariances, running.nk, running.scatter):
        assert np.all(np.isfinite(arr))
    assert final.weights.min() > REBORN_WEIGHT
    # Every component now sits on one of the two clusters that still send rows.
    nearest = np.sqrt(((final.means[:, None] - centres[None, :2]) ** 2).sum(-1)).min(axis=1)
    assert nearest.max() < 2.0  # two standard deviations


def test_more_passes_move_further_towards_the_batch_optimum():
    X = _overlapping(4_000, seed=8)
    start = _fit(X[:500], "full", seed=4)
    schedule = Schedule.from_params(decay_factor=0.0)  # forget everything: plain EM steps
    one, _ = _run([X], start, schedule, 500.0, passes=1)
    five, _ = _run([X], start, schedule, 500.0, passes=5)
    direct = start
    for _ in range(5):
        direct = m_step(block_statistics(X, None, direct), REG)
    # With nothing kept from the past, P passes are P EM iterations on the batch.
    np.testing.assert_allclose(five.means, direct.means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        one.means, m_step(block_statistics(X, None, start), REG).means, rtol=1e-10, atol=1e-12
    )
