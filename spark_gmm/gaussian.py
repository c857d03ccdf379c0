"""Gaussian-mixture maths in pure numpy: densities, sufficient statistics, M-step.

Nothing here imports Spark. The distributed engine (:mod:`spark_gmm.engine`) calls
:func:`block_statistics` on every block of rows inside the executors, adds the results
of all blocks with :meth:`SufficientStatistics.merge`, and runs :func:`m_step` on the
driver. The same functions run on a single numpy array for the driver-side helpers and
for the tests, which compare them with scikit-learn.

Conventions (as in scikit-learn's ``mixture`` module):

* ``covariances`` has shape ``(k, d, d)`` for ``full``, ``(d, d)`` for ``tied``,
  ``(k, d)`` for ``diag`` and ``(k,)`` for ``spherical``.
* ``precisions_chol`` has the same shape. For ``full``/``tied`` it is an upper
  triangular ``U`` with ``U @ U.T`` equal to the precision matrix, so that
  ``(x - mu) @ U`` is a whitened residual; for ``diag``/``spherical`` it is
  ``1 / sqrt(variance)``.

Every statistic is accumulated *centred* on a reference point per component (the
current means during EM), never as raw second moments, so the subtraction
``E[xx'] - mu mu'`` that loses all digits for data far from the origin never happens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from spark_gmm.errors import ComponentCollapseError, ComponentNotPositiveDefiniteError

__all__ = [
    "COVARIANCE_TYPES",
    "MixtureParameters",
    "SufficientStatistics",
    "block_statistics",
    "compute_precision_cholesky",
    "covariances_from_precisions_cholesky",
    "estimate_log_gaussian_prob",
    "estimate_weighted_log_prob",
    "hard_assignment_statistics",
    "m_step",
    "n_parameters",
    "precision_cholesky_from_precisions",
    "predict_proba",
    "score_and_proba",
    "score_samples",
]

Array = NDArray[np.float64]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

# Added to every nk, as scikit-learn does, so that an empty component never divides
# by zero before the collapse check below can name it.
_NK_EPS = 10.0 * np.finfo(np.float64).eps

# A component whose share of the total weight falls below this has lost all its rows:
# its mean and covariance are no longer estimated from data.
COLLAPSE_WEIGHT = 1e-12

_LOG_2PI = math.log(2.0 * math.pi)


def check_covariance_type(covariance_type: str) -> str:
    """Return ``covariance_type`` or raise a ``ValueError`` listing the valid ones."""
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covarianceType must be one of {', '.join(COVARIANCE_TYPES)}; got {covariance_type!r}."
        )
    return covariance_type


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MixtureParameters:
    """Weights, means and covariances of a mixture, with the Cholesky factors of the precisions.

    Attributes
    ----------
    weights : ndarray of shape (k,)
    means : ndarray of shape (k, d)
    covariances : ndarray, shape per ``covariance_type`` (see module docstring)
    precisions_chol : ndarray, same shape as ``covariances``
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    """

    weights: Array
    means: Array
    covariances: Array
    precisions_chol: Array
    covariance_type: str

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def from_covariances(
        cls, weights: Array, means: Array, covariances: Array, covariance_type: str
    ) -> MixtureParameters:
        """Build parameters from covariances, validating shapes and positive definiteness.

        Parameters
        ----------
        weights : array-like of shape (k,)
            Non-negative, summing to 1 (within 1e-6).
        means : array-like of shape (k, d)
        covariances : array-like, shape per ``covariance_type``
        covariance_type : {'full', 'tied', 'diag', 'spherical'}
        """
        check_covariance_type(covariance_type)
        weights = np.asarray(weights, dtype=np.float64).copy()
        means = np.asarray(means, dtype=np.float64).copy()
        covariances = np.asarray(covariances, dtype=np.float64).copy()
        if means.ndim != 2:
            raise ValueError(f"means must have shape (k, d); got shape {means.shape}.")
        k, d = means.shape
        _check_weights(weights, k)
        expected = covariance_shape(covariance_type, k, d)
        if covariances.shape != expected:
            raise ValueError(
                f"covariances for covariance_type={covariance_type!r} with k={k}, d={d} "
                f"must have shape {expected}; got {covariances.shape}."
            )
        if not (np.all(np.isfinite(means)) and np.all(np.isfinite(covariances))):
            raise ValueError("means and covariances must be finite (no NaN or Inf).")
        if covariance_type in ("full", "tied"):
            mats = covariances.reshape(-1, d, d)
            if not np.allclose(mats, np.swapaxes(mats, 1, 2), rtol=1e-10, atol=0.0):
                raise ValueError("covariance matrices must be symmetric.")
        precisions_chol = compute_precision_cholesky(covariances, covariance_type)
        return cls(weights, means, covariances, precisions_chol, covariance_type)

    @classmethod
    def from_precisions(
        cls, weights: Array, means: Array, precisions: Array, covariance_type: str
    ) -> MixtureParameters:
        """Build parameters from precision matrices (inverse covariances), like sklearn's
        ``precisions_init``."""
        check_covariance_type(covariance_type)
        weights = np.asarray(weights, dtype=np.float64).copy()
        means = np.asarray(means, dtype=np.float64).copy()
        k, d = means.shape
        _check_weights(weights, k)
        precisions = np.asarray(precisions, dtype=np.float64)
        if precisions.shape != covariance_shape(covariance_type, k, d):
            raise ValueError(
                f"precisions must have shape {covariance_shape(covariance_type, k, d)}; "
                f"got {precisions.shape}."
            )
        precisions_chol = precision_cholesky_from_precisions(precisions, covariance_type)
        covariances = covariances_from_precisions_cholesky(precisions_chol, covariance_type)
        return cls(weights, means, covariances, precisions_chol, covariance_type)


def _check_weights(weights: Array, k: int) -> None:
    if weights.shape != (k,):
        raise ValueError(f"weights must have shape ({k},) to match means; got {weights.shape}.")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("weights must be finite and non-negative.")
    total = float(weights.sum())
    # Kept as given (no renormalisation), so that saved and loaded models score alike
    # to the last bit.
    if not abs(total - 1.0) <= 1e-6:
        raise ValueError(f"weights must sum to 1; they sum to {total!r}.")


def covariance_shape(covariance_type: str, k: int, d: int) -> tuple[int, ...]:
    """Shape of ``covariances`` (and ``precisions_chol``) for a covariance type."""
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]


def n_parameters(covariance_type: str, k: int, d: int) -> int:
    """Number of free parameters of the mixture (scikit-learn's count, used by BIC/AIC)."""
    cov_params = {
        "full": k * d * (d + 1) / 2.0,
        "tied": d * (d + 1) / 2.0,
        "diag": float(k * d),
        "spherical": float(k),
    }[covariance_type]
    return int(cov_params + k * d + k - 1)


def compute_precision_cholesky(covariances: Array, covariance_type: str) -> Array:
    """Cholesky factors of the precision matrices from the covariances.

    Parameters
    ----------
    covariances : ndarray, shape per ``covariance_type``
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    precisions_chol : ndarray, same shape as ``covariances``

    Raises
    ------
    ComponentNotPositiveDefiniteError
        Naming the first component whose covariance is not positive definite.
    """
    if covariance_type in ("full", "tied"):
        d = covariances.shape[-1]
        mats = covariances.reshape(-1, d, d)
        out = np.empty_like(mats)
        eye = np.eye(d)
        for i, cov in enumerate(mats):
            try:
                cov_chol = np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                raise ComponentNotPositiveDefiniteError(
                    None if covariance_type == "tied" else i, len(mats)
                ) from None
            # cov = L L'  =>  precision = L^-T L^-1, whose upper factor is L^-T. numpy has
            # no triangular solver (scipy is not a dependency); LU on a d x d triangular
            # matrix once per M-step is as accurate and costs nothing next to a data pass.
            out[i] = np.linalg.solve(cov_chol, eye).T
        return out.reshape(covariances.shape)
    bad = np.flatnonzero(~(np.asarray(covariances) > 0.0).reshape(len(covariances), -1).all(1))
    if bad.size:
        raise ComponentNotPositiveDefiniteError(int(bad[0]), covariances.shape[0])
    return np.asarray(1.0 / np.sqrt(covariances), dtype=np.float64)


def precision_cholesky_from_precisions(precisions: Array, covariance_type: str) -> Array:
    """Upper-triangular Cholesky factors ``U`` with ``U @ U.T == precision``.

    Parameters
    ----------
    precisions : ndarray, shape per ``covariance_type``
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    """
    if covariance_type in ("full", "tied"):
        d = precisions.shape[-1]
        mats = precisions.reshape(-1, d, d)
        out = np.empty_like(mats)
        for i, prec in enumerate(mats):
            # Reversing rows and columns turns the lower Cholesky factor of the flipped
            # matrix into the upper factor of the original one.
            try:
                lower = np.linalg.cholesky(prec[::-1, ::-1])
            except np.linalg.LinAlgError:
                raise ComponentNotPositiveDefiniteError(
                    None if covariance_type == "tied" else i, len(mats), what="precision"
                ) from None
            out[i] = lower[::-1, ::-1]
        return out.reshape(precisions.shape)
    if np.any(~(precisions > 0)):
        raise ValueError("diag/spherical precisions must be strictly positive.")
    return np.sqrt(precisions)


def covariances_from_precisions_cholesky(precisions_chol: Array, covariance_type: str) -> Array:
    """Covariances from the Cholesky factors of the precisions (inverse of
    :func:`compute_precision_cholesky`)."""
    if covariance_type in ("full", "tied"):
        d = precisions_chol.shape[-1]
        mats = precisions_chol.reshape(-1, d, d)
        out = np.empty_like(mats)
        for i, upper in enumerate(mats):
            inv = np.linalg.solve(upper, np.eye(d))  # U^-1; covariance = U^-T U^-1
            out[i] = inv.T @ inv
        return out.reshape(precisions_chol.shape)
    return np.asarray(1.0 / precisions_chol**2, dtype=np.float64)


# ---------------------------------------------------------------------------
# Log-probabilities (E-step)
# ---------------------------------------------------------------------------


def _log_det_cholesky(precisions_chol: Array, covariance_type: str, d: int) -> Array | float:
    """log det of the precision Cholesky factor: ``sum(log(diag(U)))`` per component."""
    if covariance_type == "full":
        k = precisions_chol.shape[0]
        return np.sum(np.log(precisions_chol.reshape(k, -1)[:, :: d + 1]), axis=1)
    if covariance_type == "tied":
        return float(np.sum(np.log(np.diag(precisions_chol))))
    if covariance_type == "diag":
        return np.sum(np.log(precisions_chol), axis=1)
    return d * np.log(precisions_chol)


def estimate_log_gaussian_prob(
    X: Array, means: Array, precisions_chol: Array, covariance_type: str
) -> Array:
    """Log-density of every row under every component.

    The residuals ``X - means[j]`` are formed before whitening, so rows far from the
    origin keep their precision.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
    means : ndarray of shape (k, d)
    precisions_chol : ndarray, shape per ``covariance_type``
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    log_prob : ndarray of shape (n_samples, k)
    """
    n, d = X.shape
    k = means.shape[0]
    log_det = _log_det_cholesky(precisions_chol, covariance_type, d)
    sq = np.empty((n, k))
    for j in range(k):
        diff = X - means[j]
        if covariance_type == "full":
            y = diff @ precisions_chol[j]
        elif covariance_type == "tied":
            y = diff @ precisions_chol
        elif covariance_type == "diag":
            y = diff * precisions_chol[j]
        else:
            y = diff * precisions_chol[j]
        sq[:, j] = np.einsum("ij,ij->i", y, y)
    return -0.5 * (d * _LOG_2PI + sq) + log_det


def estimate_weighted_log_prob(X: Array, params: MixtureParameters) -> Array:
    """``log p(x | j) + log weight_j`` of shape (n_samples, k)."""
    with np.errstate(divide="ignore"):  # a zero weight is a legitimate -inf
        log_weights = np.log(params.weights)
    return (
        estimate_log_gaussian_prob(X, params.means, params.precisions_chol, params.covariance_type)
        + log_weights
    )


def _log_normalize(weighted_log_prob: Array) -> tuple[Array, Array]:
    """Per-row log-sum-exp and the responsibilities it normalises.

    Returns
    -------
    log_prob_norm : ndarray of shape (n_samples,)
    resp : ndarray of shape (n_samples, k)
    """
    top = np.max(weighted_log_prob, axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    shifted = np.exp(weighted_log_prob - top)
    total = shifted.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        log_prob_norm = np.log(total) + top
    resp = shifted / total
    return log_prob_norm[:, 0], resp


def score_and_proba(X: Array, params: MixtureParameters) -> tuple[Array, Array]:
    """Each row's log-likelihood (n_samples,) and responsibilities (n_samples, k)."""
    return _log_normalize(estimate_weighted_log_prob(X, params))


def score_samples(X: Array, params: MixtureParameters) -> Array:
    """Log-likelihood of each row, ``log sum_j weight_j p(x | j)``, shape (n_samples,)."""
    return score_and_proba(X, params)[0]


def predict_proba(X: Array, params: MixtureParameters) -> Array:
    """Responsibilities (posterior membership probabilities), shape (n_samples, k)."""
    return score_and_proba(X, params)[1]


# ---------------------------------------------------------------------------
# Sufficient statistics
# ---------------------------------------------------------------------------


@dataclass
class SufficientStatistics:
    """What one block of rows contributes to the M-step; blocks merge by addition.

    All second-order quantities are centred on ``centres`` (the means of the parameters
    the statistics were computed under), which travel with the statistics.

    Attributes
    ----------
    covariance_type : str
    centres : ndarray of shape (k, d)
        Reference points the sums are centred on.
    nk : ndarray of shape (k,)
        Sum of weighted responsibilities.
    sk : ndarray of shape (k, d)
        ``sum_i w_i r_ij (x_i - centres[j])``.
    scatter : ndarray
        ``sum_i w_i r_ij (x_i - c_j)(x_i - c_j)'``: shape (k, d, d) for full, summed over
        components to (d, d) for tied, its diagonal (k, d) for diag and spherical.
    log_likelihood : float
        ``sum_i w_i log p(x_i)`` under the parameters (0 for hard-assignment statistics).
    total_weight : float
        ``sum_i w_i``.
    counts : ndarray of shape (k,)
        Number of rows whose most likely component is j (unweighted).
    """

    covariance_type: str
    centres: Array
    nk: Array
    sk: Array
    scatter: Array
    log_likelihood: float
    total_weight: float
    counts: Array

    @classmethod
    def zeros(cls, covariance_type: str, centres: Array) -> SufficientStatistics:
        k, d = centres.shape
        scatter_shape = {"full": (k, d, d), "tied": (d, d)}.get(covariance_type, (k, d))
        return cls(
            covariance_type,
            centres,
            np.zeros(k),
            np.zeros((k, d)),
            np.zeros(scatter_shape),
            0.0,
            0.0,
            np.zeros(k),
        )

    def merge(self, other: SufficientStatistics) -> SufficientStatistics:
        """Add another block's statistics in place and return ``self``."""
        self.nk += other.nk
        self.sk += other.sk
        self.scatter += other.scatter
        self.log_likelihood += other.log_likelihood
        self.total_weight += other.total_weight
        self.counts += other.counts
        return self

    # Serialisation: a flat float64 vector. For full covariances only the upper triangle
    # of each scatter matrix is shipped, which halves what travels back to the driver.

    def to_flat(self) -> Array:
        """Pack into a 1-D float64 array (see :meth:`from_flat`)."""
        scatter = self.scatter
        if self.covariance_type in ("full", "tied"):
            d = self.centres.shape[1]
            iu = np.triu_indices(d)
            scatter = scatter.reshape(-1, d, d)[:, iu[0], iu[1]]
        return np.concatenate(
            [
                [self.log_likelihood, self.total_weight],
                self.nk,
                self.counts,
                self.sk.ravel(),
                scatter.ravel(),
            ]
        )

    @classmethod
    def flat_size(cls, covariance_type: str, k: int, d: int) -> int:
        tri = d * (d + 1) // 2
        scatter = {"full": k * tri, "tied": tri}.get(covariance_type, k * d)
        return 2 + 2 * k + k * d + scatter

    @classmethod
    def from_flat(cls, flat: Array, covariance_type: str, centres: Array) -> SufficientStatistics:
        """Inverse of :meth:`to_flat`; ``centres`` are those the statistics were built on."""
        k, d = centres.shape
        if flat.shape != (cls.flat_size(covariance_type, k, d),):
            raise ValueError(
                f"statistics vector has {flat.shape[0]} values; expected "
                f"{cls.flat_size(covariance_type, k, d)} for k={k}, d={d}, {covariance_type}."
            )
        pos = 2
        nk = flat[pos : pos + k].copy()
        pos += k
        counts = flat[pos : pos + k].copy()
        pos += k
        sk = flat[pos : pos + k * d].reshape(k, d).copy()
        pos += k * d
        rest = flat[pos:]
        if covariance_type in ("full", "tied"):
            iu = np.triu_indices(d)
            m = k if covariance_type == "full" else 1
            packed = rest.reshape(m, -1)
            scatter = np.zeros((m, d, d))
            scatter[:, iu[0], iu[1]] = packed
            scatter[:, iu[1], iu[0]] = packed
            if covariance_type == "tied":
                scatter = scatter[0]
        else:
            scatter = rest.reshape(k, d).copy()
        return cls(
            covariance_type,
            centres,
            nk,
            sk,
            scatter,
            float(flat[0]),
            float(flat[1]),
            counts,
        )


def _accumulate_weighted(
    X: Array,
    weighted_resp: Array,
    stats: SufficientStatistics,
) -> None:
    """Add ``weighted_resp``-weighted, centred first and second sums of ``X`` to ``stats``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
    weighted_resp : ndarray of shape (n_samples, k)
        ``w_i * r_ij``; must be non-negative.
    stats : SufficientStatistics
        Updated in place; its ``centres`` are the reference points.
    """
    covariance_type = stats.covariance_type
    stats.nk += weighted_resp.sum(axis=0)
    for j in range(stats.centres.shape[0]):
        r = weighted_resp[:, j]
        diff = X - stats.centres[j]
        stats.sk[j] += r @ diff
        if covariance_type in ("full", "tied"):
            # (sqrt(r) * diff)' (sqrt(r) * diff): numpy computes A.T @ A with a symmetric
            # rank-k update (half the flops of a general product).
            scaled = diff * np.sqrt(r)[:, None]
            outer = scaled.T @ scaled
            if covariance_type == "full":
                stats.scatter[j] += outer
            else:
                stats.scatter += outer
        else:
            stats.scatter[j] += r @ (diff * diff)


def block_statistics(
    X: Array,
    sample_weight: Array | None,
    params: MixtureParameters,
) -> SufficientStatistics:
    """E-step on a block of rows, reduced to sufficient statistics centred on the means.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
    sample_weight : ndarray of shape (n_samples,) or None
        Non-negative row weights; None means every row weighs 1.
    params : MixtureParameters
        The parameters of the current iteration.

    Returns
    -------
    stats : SufficientStatistics
        Centred on ``params.means``.
    """
    stats = SufficientStatistics.zeros(params.covariance_type, params.means)
    if X.shape[0] == 0:
        return stats
    log_prob_norm, resp = _log_normalize(estimate_weighted_log_prob(X, params))
    weights = np.ones(X.shape[0]) if sample_weight is None else sample_weight
    stats.log_likelihood = float(weights @ log_prob_norm)
    stats.total_weight = float(weights.sum())
    stats.counts = np.bincount(np.argmax(resp, axis=1), minlength=params.n_components).astype(
        np.float64
    )
    _accumulate_weighted(X, resp * weights[:, None], stats)
    return stats


def nearest_centre(X: Array, centres: Array) -> NDArray[np.intp]:
    """Index of the nearest centre (squared Euclidean distance) for every row.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
    centres : ndarray of shape (k, d)

    Returns
    -------
    labels : ndarray of shape (n_samples,)
    """
    # |c|^2 - 2 x.c ranks the centres for a row exactly as |x - c|^2 does.
    scores = np.einsum("ij,ij->i", centres, centres)[None, :] - 2.0 * (X @ centres.T)
    return np.argmin(scores, axis=1)


def hard_assignment_statistics(
    X: Array,
    sample_weight: Array | None,
    centres: Array,
    covariance_type: str,
    resp: Array | None = None,
) -> SufficientStatistics:
    """Statistics of a fixed assignment: nearest centre, or given responsibilities.

    This is how EM is initialised: the first M-step runs on the hard labels of k-means
    (or on ``resp`` given by the caller, e.g. random responsibilities).

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
    sample_weight : ndarray of shape (n_samples,) or None
    centres : ndarray of shape (k, d)
        Reference points the statistics are centred on; rows go to the nearest one
        unless ``resp`` is given.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    resp : ndarray of shape (n_samples, k), optional

    Returns
    -------
    stats : SufficientStatistics
        With ``log_likelihood`` 0 (no model yet).
    """
    k = centres.shape[0]
    stats = SufficientStatistics.zeros(covariance_type, centres)
    n = X.shape[0]
    if n == 0:
        return stats
    weights = np.ones(n) if sample_weight is None else sample_weight
    if resp is None:
        labels = nearest_centre(X, centres)
        resp = np.zeros((n, k))
        resp[np.arange(n), labels] = 1.0
    else:
        labels = np.argmax(resp, axis=1)
    stats.total_weight = float(weights.sum())
    stats.counts = np.bincount(labels, minlength=k).astype(np.float64)
    _accumulate_weighted(X, resp * weights[:, None], stats)
    return stats


# ---------------------------------------------------------------------------
# M-step
# ---------------------------------------------------------------------------


def _covariances_full(stats: SufficientStatistics, nk: Array, reg_covar: float) -> Array:
    # sum_i r (x - m)(x - m)' = S - s s'/nk   with s centred on the old mean, m the new.
    k, d = stats.sk.shape
    cov = stats.scatter - np.einsum("ki,kj->kij", stats.sk, stats.sk) / nk[:, None, None]
    cov /= nk[:, None, None]
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    cov.reshape(k, -1)[:, :: d + 1] += reg_covar
    return cov


def _covariances_tied(stats: SufficientStatistics, nk: Array, reg_covar: float) -> Array:
    d = stats.sk.shape[1]
    cov = stats.scatter - np.einsum("ki,kj->ij", stats.sk / nk[:, None], stats.sk)
    cov /= nk.sum()
    cov = 0.5 * (cov + cov.T)
    cov.flat[:: d + 1] += reg_covar
    return cov


def _covariances_diag(stats: SufficientStatistics, nk: Array, reg_covar: float) -> Array:
    return (stats.scatter - stats.sk**2 / nk[:, None]) / nk[:, None] + reg_covar


def _covariances_spherical(stats: SufficientStatistics, nk: Array, reg_covar: float) -> Array:
    return _covariances_diag(stats, nk, reg_covar).mean(axis=1)


_COVARIANCE_ESTIMATORS = {
    "full": _covariances_full,
    "tied": _covariances_tied,
    "diag": _covariances_diag,
    "spherical": _covariances_spherical,
}


def m_step(stats: SufficientStatistics, reg_covar: float) -> MixtureParameters:
    """New weights, means and covariances from merged statistics.

    Parameters
    ----------
    stats : SufficientStatistics
        Merged over all rows.
    reg_covar : float
        Added to the diagonal of every covariance.

    Returns
    -------
    params : MixtureParameters

    Raises
    ------
    ComponentCollapseError
        A component's weight fell to ~0: no row is assigned to it any more.
    ComponentNotPositiveDefiniteError
        A covariance is not positive definite even with ``reg_covar``.
    """
    raw_nk = stats.nk
    if not (np.all(np.isfinite(raw_nk)) and np.all(np.isfinite(stats.scatter))):
        raise FloatingPointError(
            "EM statistics are not finite; the features probably overflow float64 when "
            "squared. Scale the features (e.g. StandardScaler) and fit again."
        )
    total = raw_nk.sum()
    share = raw_nk / total if total > 0 else np.zeros_like(raw_nk)
    collapsed = np.flatnonzero(share < COLLAPSE_WEIGHT)
    if collapsed.size:
        j = int(collapsed[0])
        raise ComponentCollapseError(j, raw_nk.shape[0], float(share[j]))
    nk = raw_nk + _NK_EPS
    means = stats.centres + stats.sk / nk[:, None]
    covariances = _COVARIANCE_ESTIMATORS[stats.covariance_type](stats, nk, reg_covar)
    precisions_chol = compute_precision_cholesky(covariances, stats.covariance_type)
    weights = nk / nk.sum()
    return MixtureParameters(weights, means, covariances, precisions_chol, stats.covariance_type)


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------


def sample(
    params: MixtureParameters, n: int, rng: np.random.Generator
) -> tuple[Array, NDArray[np.int64]]:
    """Draw ``n`` rows from the mixture.

    Parameters
    ----------
    params : MixtureParameters
    n : int
    rng : numpy Generator

    Returns
    -------
    X : ndarray of shape (n, d)
    labels : ndarray of shape (n,)
    """
    k, d = params.n_components, params.n_features
    counts = rng.multinomial(n, params.weights)
    labels = np.repeat(np.arange(k), counts)
    z = rng.standard_normal((n, d))
    X = np.empty((n, d))
    start = 0
    for j, count in enumerate(counts):
        rows = slice(start, start + count)
        start += count
        if params.covariance_type in ("full", "tied"):
            cov = params.covariances[j] if params.covariance_type == "full" else params.covariances
            X[rows] = params.means[j] + z[rows] @ np.linalg.cholesky(cov).T
        else:
            X[rows] = params.means[j] + z[rows] * np.sqrt(params.covariances[j])
    return X, labels
