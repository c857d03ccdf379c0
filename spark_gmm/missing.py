"""EM over incomplete rows: missing features are marginalised, not dropped.

Pure numpy, like :mod:`spark_gmm.gaussian`, whose statistics and M-step it reuses. The
method is Ghahramani & Jordan (1994), "Supervised learning from incomplete data via an
EM approach". A row ``x`` with observed coordinates ``o`` and missing ones ``m`` (NaN)
contributes, for each component ``j`` with mean ``mu`` and covariance ``S``:

* to the responsibilities, through the marginal density ``N(x_o; mu_o, S_oo)``;
* to the first-order sums, through the completed row ``(x_o, xhat_m)`` with the
  conditional mean ``xhat_m = mu_m + S_mo S_oo^-1 (x_o - mu_o)``;
* to the scatter, through the completed row's outer product *plus* the conditional
  covariance ``S_mm - S_mo S_oo^-1 S_om`` in the (m, m) block (leaving it out biases the
  covariances low: the completed values are less spread than the values they stand for).

The M-step is then exactly :func:`spark_gmm.gaussian.m_step`, and the log-likelihood
reported is that of the observed values, which EM never decreases.

Rows are grouped by *missingness pattern* (which coordinates are NaN), and the factor of
``S_oo`` is computed once per (pattern, component) per block, not once per row. Rows with
nothing missing go through :func:`spark_gmm.gaussian.block_statistics` unchanged, so on
complete data the result is today's, bit for bit.

As in :mod:`spark_gmm.gaussian`, every statistic is centred on the current means: the
deviation of a completed row from ``mu`` is ``(x_o - mu_o, S_mo S_oo^-1 (x_o - mu_o))``,
formed without ever subtracting two large numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from spark_gmm.gaussian import (
    _LOG_2PI,
    MixtureParameters,
    SufficientStatistics,
    _log_normalize,
    _log_weights,
    block_statistics,
    covariances_from_precisions_cholesky,
)

__all__ = [
    "block_statistics_missing",
    "impute",
    "missing_patterns",
    "score_and_proba_missing",
]

Array = NDArray[np.float64]


def missing_patterns(X: Array) -> tuple[NDArray[np.bool_], NDArray[np.intp]]:
    """The distinct missingness patterns of a block and each row's pattern.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
        NaN marks a missing value.

    Returns
    -------
    patterns : ndarray of bool of shape (n_patterns, d)
        True where the coordinate is missing; rows sorted (the complete pattern, if any,
        is first).
    inverse : ndarray of shape (n_samples,)
        Index into ``patterns`` of each row.
    """
    n, d = X.shape
    if n == 0:
        return np.zeros((0, d), dtype=bool), np.zeros(0, dtype=np.intp)
    packed = np.packbits(np.isnan(X), axis=1)
    unique, inverse = np.unique(packed, axis=0, return_inverse=True)
    patterns = np.unpackbits(unique, axis=1, count=d).astype(bool)
    return patterns, np.asarray(inverse, dtype=np.intp).reshape(-1)


@dataclass(frozen=True)
class _Marginal:
    """One missingness pattern's per-component factors.

    Attributes
    ----------
    observed, missing : ndarray of int
        Coordinates present / absent in the pattern.
    whiten : ndarray of shape (k, o, o) or (k, o)
        ``L^-1`` with ``L L' = S_oo`` (full and tied), or ``1 / sqrt(variance_o)`` (diag
        and spherical): ``||whiten (x_o - mu_o)||^2`` is the marginal Mahalanobis distance.
    log_det : ndarray of shape (k,)
        ``-0.5 log det S_oo``.
    regression : ndarray of shape (k, m, o) or None
        ``S_mo S_oo^-1``; None where it is zero (diag and spherical).
    conditional : ndarray of shape (k, m, m) or (k, m)
        Conditional covariance of the missing coordinates (its diagonal for diag and
        spherical, where it is diagonal).
    """

    observed: NDArray[np.intp]
    missing: NDArray[np.intp]
    whiten: Array
    log_det: Array
    regression: Array | None
    conditional: Array


def _marginal(params: MixtureParameters, missing_mask: NDArray[np.bool_]) -> _Marginal:
    observed = np.flatnonzero(~missing_mask)
    missing = np.flatnonzero(missing_mask)
    if observed.size == 0:
        raise ValueError("a row with every feature missing carries no information.")
    k, d = params.means.shape
    ct = params.covariance_type
    covariances = params.covariances
    if covariances.size == 0:  # stripped for the trip to the executors (kernels.py)
        covariances = covariances_from_precisions_cholesky(params.precisions_chol, ct)
    if ct in ("diag", "spherical"):
        variances = covariances
        if ct == "spherical":
            variances = np.repeat(variances[:, None], d, axis=1)
        var_o = variances[:, observed]
        return _Marginal(
            observed,
            missing,
            1.0 / np.sqrt(var_o),
            -0.5 * np.sum(np.log(var_o), axis=1),
            None,
            variances[:, missing],
        )
    cov = covariances
    if ct == "tied":
        cov = np.broadcast_to(cov, (k, d, d))
    s_oo = cov[:, observed][:, :, observed]
    # S is positive definite, so is each of its principal sub-matrices: the Cholesky
    # factor exists. Its inverse whitens; W = L^-1 S_om gives both the regression
    # (W' L^-1 = S_mo S_oo^-1) and the conditional covariance S_mm - W'W, which is
    # then symmetric and positive semi-definite by construction.
    chol = np.linalg.cholesky(s_oo)
    whiten = np.linalg.inv(chol)
    w = whiten @ cov[:, observed][:, :, missing]
    regression = np.swapaxes(w, 1, 2) @ whiten
    conditional = cov[:, missing][:, :, missing] - np.swapaxes(w, 1, 2) @ w
    log_det = -np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)
    return _Marginal(observed, missing, whiten, log_det, regression, conditional)


def _pattern_terms(
    X_rows: Array, params: MixtureParameters, marg: _Marginal
) -> tuple[Array, Array]:
    """Weighted log-densities and completed deviations of the rows of one pattern.

    Parameters
    ----------
    X_rows : ndarray of shape (n_rows, d)
        Rows sharing the pattern (their missing values are ignored).

    Returns
    -------
    weighted_log_prob : ndarray of shape (n_rows, k)
        ``log weight_j + log N(x_o; mu_jo, S_joo)``.
    deviation : ndarray of shape (k, n_rows, d)
        Completed row minus ``mu_j``: ``x_o - mu_jo`` on the observed coordinates and
        ``S_mo S_oo^-1 (x_o - mu_jo)`` on the missing ones.
    """
    o, m = marg.observed, marg.missing
    k, d = params.means.shape
    delta = X_rows[:, o][None, :, :] - params.means[:, None, o]  # (k, n, o)
    if marg.regression is None:
        z = delta * marg.whiten[:, None, :]
    else:
        z = delta @ np.swapaxes(marg.whiten, 1, 2)
    log_prob = -0.5 * (np.einsum("kno,kno->kn", z, z) + o.size * _LOG_2PI)
    log_prob += (marg.log_det + _log_weights(params.weights))[:, None]
    deviation = np.zeros((k, X_rows.shape[0], d))
    deviation[:, :, o] = delta
    if marg.regression is not None and m.size:
        deviation[:, :, m] = delta @ np.swapaxes(marg.regression, 1, 2)
    return log_prob.T, deviation


def _accumulate_pattern(
    stats: SufficientStatistics, weighted_resp: Array, deviation: Array, marg: _Marginal
) -> None:
    """Add one pattern's centred sums, and its conditional covariance, to ``stats``."""
    m = marg.missing
    nk = weighted_resp.sum(axis=0)  # (k,)
    stats.nk += nk
    stats.sk += np.einsum("nk,knd->kd", weighted_resp, deviation)
    ct = stats.covariance_type
    if ct in ("full", "tied"):
        scatter = np.einsum("knd,nk,kne->kde", deviation, weighted_resp, deviation)
        if m.size:
            assert marg.conditional.ndim == 3
            scatter[:, m[:, None], m[None, :]] += nk[:, None, None] * marg.conditional
        stats.scatter += scatter if ct == "full" else scatter.sum(axis=0)
    else:
        scatter = np.einsum("nk,knd->kd", weighted_resp, deviation**2)
        if m.size:
            scatter[:, m] += nk[:, None] * marg.conditional
        stats.scatter += scatter


def _split(X: Array) -> tuple[NDArray[np.bool_], NDArray[np.intp], list[NDArray[np.intp]]]:
    patterns, inverse = missing_patterns(X)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(patterns.shape[0] + 1))
    groups = [order[bounds[p] : bounds[p + 1]] for p in range(patterns.shape[0])]
    return patterns, inverse, groups


def block_statistics_missing(
    X: Array, sample_weight: Array | None, params: MixtureParameters
) -> SufficientStatistics:
    """:func:`spark_gmm.gaussian.block_statistics` for rows with NaN for missing values.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
        NaN marks a missing value; every row has at least one observed value.
    sample_weight : ndarray of shape (n_samples,) or None
    params : MixtureParameters

    Returns
    -------
    stats : SufficientStatistics
        Centred on ``params.means``; ``log_likelihood`` is that of the observed values.
    """
    patterns, _, groups = _split(X)
    stats = SufficientStatistics.zeros(params.covariance_type, params.means)
    for pattern, rows in zip(patterns, groups):
        w = None if sample_weight is None else sample_weight[rows]
        if not pattern.any():
            stats.merge(block_statistics(X[rows], w, params))
            continue
        marg = _marginal(params, pattern)
        weighted_log_prob, deviation = _pattern_terms(X[rows], params, marg)
        log_prob_norm, resp = _log_normalize(weighted_log_prob)
        stats.counts += np.bincount(np.argmax(resp, axis=1), minlength=params.n_components)
        if w is None:
            stats.log_likelihood += float(log_prob_norm.sum())
            stats.total_weight += float(rows.size)
        else:
            stats.log_likelihood += float(w @ log_prob_norm)
            stats.total_weight += float(w.sum())
            resp = resp * w[:, None]
        _accumulate_pattern(stats, resp, deviation, marg)
    return stats


def score_and_proba_missing(X: Array, params: MixtureParameters) -> tuple[Array, Array]:
    """Each row's log-likelihood of its observed values and its responsibilities.

    Returns
    -------
    log_prob_norm : ndarray of shape (n_samples,)
    resp : ndarray of shape (n_samples, k)
    """
    weighted_log_prob, _ = _weighted_log_prob_and_completions(X, params, completions=False)
    return _log_normalize(weighted_log_prob)


def impute(X: Array, params: MixtureParameters) -> Array:
    """The rows with each missing value replaced by its conditional expectation.

    ``E[x_m | x_o] = sum_j r_j (mu_jm + S_jmo S_joo^-1 (x_o - mu_jo))``, with ``r`` the
    responsibilities from the observed values: the mixture's best guess (in squared
    error) of what is missing. Observed values are returned unchanged.

    Returns
    -------
    X_imputed : ndarray of shape (n_samples, d)
    """
    weighted_log_prob, completed = _weighted_log_prob_and_completions(X, params)
    assert completed is not None
    _, resp = _log_normalize(weighted_log_prob)
    out = np.array(X, dtype=np.float64, copy=True)
    missing = np.isnan(out)
    filled = np.einsum("nk,knd->nd", resp, completed)
    out[missing] = filled[missing]
    return out


def _weighted_log_prob_and_completions(
    X: Array, params: MixtureParameters, completions: bool = True
) -> tuple[Array, Array | None]:
    """(n, k) weighted log-densities and, if asked for, (k, n, d) completed rows."""
    n, d = X.shape
    k = params.n_components
    weighted_log_prob = np.empty((n, k))
    completed = np.empty((k, n, d)) if completions else None
    patterns, _, groups = _split(X)
    for pattern, rows in zip(patterns, groups):
        marg = _marginal(params, pattern)
        weighted_log_prob[rows], deviation = _pattern_terms(X[rows], params, marg)
        if completed is not None:
            completed[:, rows] = deviation + params.means[:, None, :]
    return weighted_log_prob, completed
