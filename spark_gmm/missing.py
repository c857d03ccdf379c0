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

No row is handled alone. In each block, rows with nothing missing go through
:func:`spark_gmm.gaussian.block_statistics` unchanged (so on complete data the result is
today's, bit for bit). An incomplete row's *missingness pattern* (which coordinates are
NaN) decides the rest (full and tied covariances):

* a pattern shared by many rows (``SHARED_PATTERN_ROWS``) gets one factorisation of
  ``S_oo`` per component, for all its rows;
* each other incomplete row, often in a pattern of its own when several columns are
  sometimes empty, solves a ``c`` x ``c`` system in the precision matrix (``c``: its
  number of missing values), all rows and components in one batched call: rows with up to
  ``_ELEMENTWISE_SIZE`` missing values together (padded to one size), the rare rows with
  more in one batch per ``c`` (the Schur-complement identities are in
  :func:`_precision_group`).

Diagonal and spherical covariances need no solve at all: all incomplete rows of a block
are one group (:func:`_diagonal_group`).

As in :mod:`spark_gmm.gaussian`, every statistic is centred on the current means: the
deviation of a completed row from ``mu`` is ``(x_o - mu_o, S_mo S_oo^-1 (x_o - mu_o))``,
formed without ever subtracting two large numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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
    estimate_weighted_log_prob,
)

__all__ = [
    "block_statistics_missing",
    "impute",
    "missing_patterns",
    "relative_cost",
    "score_and_impute",
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
    missing = np.isnan(X)
    if d <= 63:
        # One integer per row (bit j: feature j missing): a 1-D unique, ~10x faster than
        # comparing rows of packed bytes. Sorted by key, so the complete pattern is first.
        keys = missing @ (np.int64(1) << np.arange(d, dtype=np.int64))
        unique_keys, inverse = np.unique(keys, return_inverse=True)
        patterns = (unique_keys[:, None] >> np.arange(d, dtype=np.int64)) & 1
        return patterns.astype(bool), np.asarray(inverse, dtype=np.intp).reshape(-1)
    packed = np.packbits(missing, axis=1)
    unique, inverse = np.unique(packed, axis=0, return_inverse=True)
    unpacked = np.unpackbits(unique, axis=1, count=d).astype(bool)
    return unpacked, np.asarray(inverse, dtype=np.intp).reshape(-1)


def relative_cost(X: Array) -> float:
    """Arithmetic of an E-step on these rows, relative to the same rows complete.

    A complete row costs ``2 d^2`` flops per component (its whitening). An incomplete
    row with ``c`` missing values costs at most ``2 (d + c)^2 + 2 d^2 + c^3``: a product
    with the precision matrix (padded, see :func:`_precision_group`), the whitening of
    the completed row, and a ``c`` x ``c`` inverse. That is ``(1 + c/d)^2 + 1 +
    c^3 / (2 d^2)`` times a complete row, between about 2 (one value missing) and
    ``5 + d/2`` (all but one), whatever the patterns: no pattern is factorised for
    fewer than ``SHARED_PATTERN_ROWS`` rows.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
        NaN for missing values.

    Returns
    -------
    cost : float
        The mean over the rows of that ratio (1 for complete rows); 1.0 when empty.
    """
    n, d = X.shape
    if n == 0:
        return 1.0
    c = _missing_counts(X).astype(np.float64)
    ratio = (1.0 + c / d) ** 2 + 1.0 + c**3 / (2.0 * d * d)
    return float(np.mean(np.where(c > 0, ratio, 1.0)))


# A pattern shared by at least this many rows of a block gets its own factorisation of
# S_oo per component (the cost is shared by its rows); the block's other incomplete rows
# are solved together, a small system per row (see _precision_group). A factorisation
# costs ~o^3/3 flops, a row ~o^2: the shared form wins once a pattern has ~o/3 rows, and
# it costs Python calls per pattern, which is what the threshold mostly guards against.
SHARED_PATTERN_ROWS = 32


@dataclass(frozen=True)
class _Marginal:
    """One missingness pattern's per-component factors.

    Attributes
    ----------
    observed, missing : ndarray of int
        Coordinates present / absent in the pattern.
    whiten : ndarray of shape (k, o, o)
        ``L^-1`` with ``L L' = S_oo``: ``||whiten (x_o - mu_o)||^2`` is the marginal
        Mahalanobis distance.
    log_det : ndarray of shape (k,)
        ``-0.5 log det S_oo``.
    regression : ndarray of shape (k, m, o)
        ``S_mo S_oo^-1``.
    conditional : ndarray of shape (k, m, m)
        Conditional covariance of the missing coordinates.
    """

    observed: NDArray[np.intp]
    missing: NDArray[np.intp]
    whiten: Array
    log_det: Array
    regression: Array
    conditional: Array


def _marginal(covariances: Array, missing_mask: NDArray[np.bool_]) -> _Marginal:
    """The factors of one pattern, from full covariances of shape (k, d, d)."""
    observed = np.flatnonzero(~missing_mask)
    missing = np.flatnonzero(missing_mask)
    cov = covariances
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


@dataclass(frozen=True)
class _Group:
    """E-step terms of some incomplete rows of a block.

    Attributes
    ----------
    rows : ndarray of int
        The rows (indices into the block).
    weighted_log_prob : ndarray of shape (n_rows, k)
        ``log weight_j + log N(x_o; mu_jo, S_joo)``.
    deviation : ndarray of shape (k, n_rows, d)
        Completed row minus ``mu_j``: ``x_o - mu_jo`` on the observed coordinates and
        ``E[x_m | x_o, j] - mu_jm`` on the missing ones.
    conditional : callable
        Given the rows' (weighted) responsibilities of shape (n_rows, k), the sum of
        their conditional covariances of the missing coordinates, as the scatter's
        correction: shape (k, d, d) (full and tied) or (k, d) (diag and spherical).
    """

    rows: NDArray[np.intp]
    weighted_log_prob: Array
    deviation: Array
    conditional: Callable[[Array], Array]


class _Factors:
    """What every group needs from the parameters, computed once per parameters (a data
    pass calls the kernel on many blocks with the same ones, see :func:`_factors_of`).
    """

    def __init__(self, params: MixtureParameters) -> None:
        k, d = params.means.shape
        self.params = params
        self.log_weights: Array = _log_weights(params.weights)
        self.precisions: Array | None = None  # (k, d, d) precision matrices (full, tied)
        self.log_det_chol: Array = np.zeros(k)  # (k,) 0.5 log det of each precision
        if params.covariance_type in ("full", "tied"):
            chol = np.broadcast_to(params.precisions_chol, (k, d, d))
            self.precisions = chol @ np.swapaxes(chol, 1, 2)
            self.log_det_chol = np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)

    @functools.cached_property
    def covariances(self) -> Array:
        """(k, d, d) covariances (full and tied), for the patterns factorised whole."""
        params = self.params
        k, d = params.means.shape
        covariances = params.covariances
        if covariances.size == 0:  # stripped for the trip to the executors (kernels.py)
            covariances = covariances_from_precisions_cholesky(
                params.precisions_chol, params.covariance_type
            )
        return np.broadcast_to(covariances, (k, d, d))


# The factors of the last few parameters seen, by identity: a pass runs the kernel on
# every block of a partition with the same parameters (one per candidate).
_FACTORS: dict[int, _Factors] = {}
_FACTORS_KEPT = 16


def _factors_of(params: MixtureParameters) -> _Factors:
    found = _FACTORS.get(id(params))
    if found is not None and found.params is params:
        return found
    if len(_FACTORS) >= _FACTORS_KEPT:
        _FACTORS.clear()
    _FACTORS[id(params)] = made = _Factors(params)
    return made


def _pattern_group(
    X: Array, rows: NDArray[np.intp], f: _Factors, pattern: NDArray[np.bool_]
) -> _Group:
    """Rows sharing one pattern (full and tied): one factorisation of S_oo per component."""
    marg = _marginal(f.covariances, pattern)
    o, m = marg.observed, marg.missing
    params = f.params
    k, d = params.means.shape
    delta = X[rows][:, o][None, :, :] - params.means[:, None, o]  # (k, n, o)
    z = delta @ np.swapaxes(marg.whiten, 1, 2)
    log_prob = -0.5 * (np.sum(z * z, axis=2) + o.size * _LOG_2PI)
    log_prob += (marg.log_det + f.log_weights)[:, None]
    deviation = np.zeros((k, rows.size, d))
    deviation[:, :, o] = delta
    deviation[:, :, m] = delta @ np.swapaxes(marg.regression, 1, 2)

    def conditional(weighted_resp: Array) -> Array:
        out = np.zeros((k, d, d))
        out[:, m[:, None], m[None, :]] = weighted_resp.sum(axis=0)[:, None, None] * marg.conditional
        return out

    return _Group(rows, log_prob.T, deviation, conditional)


def _precision_group(
    X: Array, rows: NDArray[np.intp], f: _Factors, n_missing: NDArray[np.intp]
) -> _Group:
    """Incomplete rows in any patterns (full and tied covariances).

    Each row solves its own small system in the precision matrix ``P = S^-1`` instead
    of factorising ``S_oo``: with ``e`` the row's deviation from ``mu`` completed by
    ``e_m = -P_mm^-1 P_mo e_o`` (the conditional mean, as ``S_mo S_oo^-1 = -P_mm^-1
    P_mo``), the marginal Mahalanobis distance is ``e' P e``, ``log det S_oo = log det S
    + log det P_mm``, and the conditional covariance is ``P_mm^-1`` (Schur complements).

    The systems of all rows and components are solved in one batched call, so they
    must have one size ``c``, the largest count of missing values of the rows: a row
    with fewer is padded with *virtual* coordinates ``d, d + 1, ...``, independent of the
    others with unit precision and a zero deviation, which change none of its terms.

    Parameters
    ----------
    n_missing : ndarray of shape (len(rows),)
        The number of missing values of each row.
    """
    assert f.precisions is not None
    params = f.params
    k, d = params.means.shape
    n, c = rows.size, int(n_missing.max())
    width = d + c  # the real coordinates, then c virtual ones
    Xg = X[rows]
    missing = np.isnan(Xg)
    # Each row's missing coordinates in order, then virtual ones up to c: (n, c).
    index = np.broadcast_to(d + np.arange(c), (n, c)).copy()
    at_row, at_col = np.nonzero(missing)
    first = np.cumsum(n_missing) - n_missing
    index[at_row, np.arange(at_row.size) - first[at_row]] = at_col
    precisions = np.zeros((k, width, width))
    precisions[:, :d, :d] = f.precisions
    precisions[:, np.arange(d, width), np.arange(d, width)] = 1.0
    deviation = np.subtract(np.where(missing, 0.0, Xg), ~missing * params.means[:, None, :])
    # P_mo e_o, as (P e)_m with e_m = 0: (k, n, c); zero for the virtual coordinates.
    real = index < d
    p_e = deviation @ f.precisions
    p_mo_e = np.take_along_axis(p_e, np.broadcast_to(np.where(real, index, 0), (k, n, c)), axis=2)
    p_mo_e *= real
    p_mm = precisions[:, index[:, :, None], index[:, None, :]]  # (k, n, c, c)
    p_mm_inv, log_det_p_mm = _spd_inverse(p_mm)
    # p_mm_inv: the conditional covariances of the missing coordinates.
    # A tiny matrix product per row and component, entry by entry over the whole batch
    # (numpy's matmul, or a sum over an axis of length c, would loop over the rows).
    shift = np.empty((k, n, c))
    for a in range(c):
        shift[..., a] = -sum(p_mm_inv[..., a, b] * p_mo_e[..., b] for b in range(c))
    # The virtual coordinates' shifts are zero: only the real ones are written.
    real_row, real_slot = np.nonzero(real)
    deviation[:, real_row, index[real_row, real_slot]] = shift[:, real_row, real_slot]
    z = deviation @ np.broadcast_to(params.precisions_chol, (k, d, d))
    log_prob = -0.5 * (np.einsum("knd,knd->kn", z, z) + (d - n_missing) * _LOG_2PI)
    log_prob += (f.log_det_chol + f.log_weights)[:, None] - 0.5 * log_det_p_mm
    # Where each entry of each row's P_mm^-1 lands in a flat (k, width, width) array.
    cells = (index[:, :, None] * width + index[:, None, :]).reshape(n, -1)  # (n, c*c)
    cells = (cells[None, :, :] + (width * width) * np.arange(k)[:, None, None]).ravel()

    def conditional(weighted_resp: Array) -> Array:
        weights = weighted_resp.T[:, :, None] * p_mm_inv.reshape(k, n, -1)
        flat = np.bincount(cells, weights=weights.ravel(), minlength=k * width * width)
        return np.asarray(flat, dtype=np.float64).reshape(k, width, width)[:, :d, :d]

    return _Group(rows, log_prob.T, deviation, conditional)


# Up to this size, the batched inverses of _precision_group are computed elementwise
# across the batch (a Cholesky factorisation written out); larger ones call LAPACK, whose
# per-matrix overhead dominates on 2 x 2 and 3 x 3 matrices (measured ~8x slower).
_ELEMENTWISE_SIZE = 4


def _spd_inverse(A: Array) -> tuple[Array, Array]:
    """Inverses and log-determinants of symmetric positive definite matrices.

    Parameters
    ----------
    A : ndarray of shape (..., c, c)

    Returns
    -------
    inverse : ndarray of shape (..., c, c)
    log_det : ndarray of shape (...)
    """
    c = A.shape[-1]
    if c > _ELEMENTWISE_SIZE:
        return np.asarray(np.linalg.inv(A), dtype=np.float64), np.linalg.slogdet(A)[1]
    # A = L L' (Cholesky, column by column), then A^-1 = L^-T L^-1 with L^-1 by forward
    # substitution: backward stable for positive definite A, like LAPACK's potrf/potri.
    # Entry by entry, each a vector operation over the whole batch.
    a = [[A[..., i, j] for j in range(c)] for i in range(c)]
    low: list[list[Array]] = [[np.zeros(0)] * c for _ in range(c)]
    for j in range(c):
        pivot = a[j][j] - sum((low[j][m] ** 2 for m in range(j)), np.zeros_like(a[j][j]))
        low[j][j] = np.sqrt(pivot)
        for i in range(j + 1, c):
            dot = sum((low[i][m] * low[j][m] for m in range(j)), np.zeros_like(a[i][j]))
            low[i][j] = (a[i][j] - dot) / low[j][j]
    inv_low: list[list[Array]] = [[np.zeros(0)] * c for _ in range(c)]
    for i in range(c):
        inv_low[i][i] = 1.0 / low[i][i]
        for j in range(i):
            dot = sum((low[i][m] * inv_low[m][j] for m in range(j, i)), np.zeros_like(a[i][j]))
            inv_low[i][j] = -dot * inv_low[i][i]
    inverse = np.empty_like(A)
    for i in range(c):
        for j in range(i + 1):
            # (L^-T L^-1)_ij = sum over m >= i of (L^-1)_mi (L^-1)_mj, for j <= i.
            entry = sum(inv_low[m][i] * inv_low[m][j] for m in range(i, c))
            inverse[..., i, j] = inverse[..., j, i] = entry
    log_det = 2.0 * sum(np.log(low[j][j]) for j in range(c))
    return inverse, np.asarray(log_det)


def _diagonal_group(X: Array, rows: NDArray[np.intp], f: _Factors) -> _Group:
    """All incomplete rows at once (diag and spherical): the missing coordinates are
    independent of the observed ones, so the conditional mean is ``mu_m`` and the
    marginal density drops the missing coordinates' factors."""
    params = f.params
    k, d = params.means.shape
    Xg = X[rows]
    missing = np.isnan(Xg)
    observed = (~missing).astype(np.float64)
    prec = np.broadcast_to(
        params.precisions_chol
        if params.covariance_type == "diag"
        else params.precisions_chol[:, None],
        (k, d),
    )
    deviation = (np.where(missing, 0.0, Xg)[None, :, :] - params.means[:, None, :]) * observed
    maha = np.einsum("knd,kd->kn", deviation**2, prec**2)
    log_prob = -0.5 * (maha + observed.sum(axis=1) * _LOG_2PI)
    log_prob += (observed @ np.log(prec).T).T + f.log_weights[:, None]
    variances = 1.0 / prec**2

    def conditional(weighted_resp: Array) -> Array:
        return (weighted_resp.T @ missing.astype(np.float64)) * variances

    return _Group(rows, log_prob.T, deviation, conditional)


def _missing_counts(X: Array) -> NDArray[np.intp]:
    """The number of missing values (NaN) of each row."""
    # Counted feature by feature: X is column-major in the engine, so X.T is contiguous.
    return np.count_nonzero(np.isnan(X.T), axis=0)


def _rows_of(X: Array, rows: NDArray[np.intp]) -> Array:
    """``X[rows]``, column-major like the kernels' blocks (no second copy in them)."""
    return np.take(X.T, rows, axis=1).T


def _incomplete_groups(X: Array, f: _Factors, n_missing: NDArray[np.intp]) -> list[_Group]:
    """The block's incomplete rows (at least one NaN, at least one value), in groups."""
    incomplete = np.flatnonzero(n_missing)
    if incomplete.size == 0:
        return []
    if (n_missing[incomplete] == X.shape[1]).any():
        raise ValueError("a row with every feature missing carries no information.")
    if f.params.covariance_type in ("diag", "spherical"):
        return [_diagonal_group(X, incomplete, f)]
    patterns, inverse = missing_patterns(X[incomplete])
    sizes = np.bincount(inverse, minlength=patterns.shape[0])
    groups = []
    for p in np.flatnonzero(sizes >= SHARED_PATTERN_ROWS):
        groups.append(_pattern_group(X, incomplete[inverse == p], f, patterns[p]))
    rest = incomplete[sizes[inverse] < SHARED_PATTERN_ROWS]
    # One batch for the rows with few missing values (padded to the largest count), one
    # per count beyond: a row with 2 missing values need not solve a 12 x 12 system.
    few = n_missing[rest] <= _ELEMENTWISE_SIZE
    if few.any():
        groups.append(_precision_group(X, rest[few], f, n_missing[rest[few]]))
    for c in np.unique(n_missing[rest[~few]]):
        chosen = rest[n_missing[rest] == c]
        groups.append(_precision_group(X, chosen, f, n_missing[chosen]))
    return groups


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
    stats = SufficientStatistics.zeros(params.covariance_type, params.means)
    n_missing = _missing_counts(X)
    complete = np.flatnonzero(n_missing == 0)
    if complete.size == X.shape[0]:
        return block_statistics(X, sample_weight, params)
    if complete.size:
        w = None if sample_weight is None else sample_weight[complete]
        stats.merge(block_statistics(_rows_of(X, complete), w, params))
    groups = _incomplete_groups(X, _factors_of(params), n_missing)
    if not groups:
        return stats
    # All incomplete rows at once, in group order; only the conditional covariances are
    # added group by group.
    rows = np.concatenate([g.rows for g in groups])
    log_prob_norm, resp = _log_normalize(np.concatenate([g.weighted_log_prob for g in groups]))
    dev = np.concatenate([g.deviation for g in groups], axis=1)  # (k, n, d)
    stats.counts += np.bincount(np.argmax(resp, axis=1), minlength=params.n_components)
    if sample_weight is None:
        stats.log_likelihood += float(log_prob_norm.sum())
        stats.total_weight += float(rows.size)
    else:
        w = sample_weight[rows]
        stats.log_likelihood += float(w @ log_prob_norm)
        stats.total_weight += float(w.sum())
        resp = resp * w[:, None]
    weighted = dev * resp.T[:, :, None]  # (k, n, d)
    stats.nk += resp.sum(axis=0)
    stats.sk += weighted.sum(axis=1)
    if params.covariance_type in ("full", "tied"):
        scatter = np.swapaxes(weighted, 1, 2) @ dev
    else:
        scatter = np.sum(weighted * dev, axis=1)
    start = 0
    for g in groups:
        scatter += g.conditional(resp[start : start + g.rows.size])
        start += g.rows.size
    stats.scatter += scatter if params.covariance_type != "tied" else scatter.sum(axis=0)
    return stats


def score_and_proba_missing(X: Array, params: MixtureParameters) -> tuple[Array, Array]:
    """Each row's log-likelihood of its observed values and its responsibilities.

    Returns
    -------
    log_prob_norm : ndarray of shape (n_samples,)
    resp : ndarray of shape (n_samples, k)
    """
    weighted_log_prob, _ = _weighted_log_prob_and_deviations(X, params, deviations=False)
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
    return score_and_impute(X, params)[2]


def score_and_impute(X: Array, params: MixtureParameters) -> tuple[Array, Array, Array]:
    """:func:`score_and_proba_missing` and :func:`impute` from one E-step.

    Returns
    -------
    log_prob_norm : ndarray of shape (n_samples,)
    resp : ndarray of shape (n_samples, k)
    X_imputed : ndarray of shape (n_samples, d)
    """
    weighted_log_prob, deviation = _weighted_log_prob_and_deviations(X, params)
    assert deviation is not None
    log_prob_norm, resp = _log_normalize(weighted_log_prob)
    out = np.array(X, dtype=np.float64, copy=True)
    missing = np.isnan(out)
    filled = np.einsum("nk,knd->nd", resp, deviation + params.means[:, None, :])
    out[missing] = filled[missing]
    return log_prob_norm, resp, out


def _weighted_log_prob_and_deviations(
    X: Array, params: MixtureParameters, deviations: bool = True
) -> tuple[Array, Array | None]:
    """(n, k) weighted log-densities of the observed values, and (if asked for) the
    (k, n, d) deviations of the completed rows from each mean."""
    n, d = X.shape
    k = params.n_components
    weighted_log_prob = np.empty((n, k))
    deviation = np.empty((k, n, d)) if deviations else None
    complete = np.flatnonzero(~np.isnan(X).any(axis=1))
    if complete.size:
        weighted_log_prob[complete] = estimate_weighted_log_prob(X[complete], params)
        if deviation is not None:
            deviation[:, complete] = X[complete][None, :, :] - params.means[:, None, :]
    for group in _incomplete_groups(X, _factors_of(params), _missing_counts(X)):
        weighted_log_prob[group.rows] = group.weighted_log_prob
        if deviation is not None:
            deviation[:, group.rows] = group.deviation
    return weighted_log_prob, deviation
