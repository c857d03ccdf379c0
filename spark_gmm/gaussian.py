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

import functools
import math
from dataclasses import dataclass
from typing import Any, cast

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
    "gaussian_estimates",
    "hard_assignment_statistics",
    "m_step",
    "n_parameters",
    "precision_cholesky_from_precisions",
    "predict_proba",
    "score_and_proba",
    "score_samples",
    "shifted",
]

Array = NDArray[np.float64]
# float64 or float32: the diag/spherical kernels keep a float32 block's dtype.
Floats = NDArray[np.floating[Any]]

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

    @functools.cached_property
    def diag_terms(self) -> _DiagTerms:
        """The diag/spherical GEMM coefficients of these parameters, computed on first use
        (once per iteration, not per block); the arrays are not to be changed in place."""
        return _DiagTerms.of(self)

    def __getstate__(self) -> dict[str, object]:
        # The cached terms are rebuilt where they are used, not shipped in broadcasts.
        return {key: value for key, value in self.__dict__.items() if key != "diag_terms"}

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


# Inside the E-step and the statistics, rows run along the *last* axis: X is handled as
# X.T of shape (d, n) and responsibilities as (k, n). numpy's elementwise loops then run
# over thousands of contiguous values at a time instead of d or k, which was measured
# 2-4x faster per operation at d=16, k=8 than the same arithmetic on (n, d) arrays.
# Blocks cached column-major (see spark_gmm.engine) make ``X.T`` free.


def estimate_log_gaussian_prob(
    X: Array, means: Array, precisions_chol: Array, covariance_type: str
) -> Array:
    """Log-density of every row under every component.

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
    XT = np.ascontiguousarray(X.T)
    return _log_gaussian_prob_t(XT, means, precisions_chol, covariance_type).T


def _log_gaussian_prob_t(
    XT: Array, means: Array, precisions_chol: Array, covariance_type: str
) -> Array:
    """:func:`estimate_log_gaussian_prob` on ``XT`` of shape (d, n), returning (k, n)."""
    sq = _squared_mahalanobis_t(XT, means, precisions_chol, covariance_type)
    return _log_gaussian_from_squared_t(sq, precisions_chol, covariance_type, XT.shape[0])


def _log_gaussian_from_squared_t(
    sq: Array, precisions_chol: Array, covariance_type: str, d: int
) -> Array:
    """Log-densities (k, n) from the squared Mahalanobis distances ``sq`` (overwritten)."""
    sq *= -0.5
    log_det = _log_det_cholesky(precisions_chol, covariance_type, d)
    sq += (np.asarray(log_det) - 0.5 * d * _LOG_2PI).reshape(-1, 1)
    return sq


# Rows per chunk of the E-step: a chunk's (k * d, rows) whitened residuals stay around
# 1 MB, in the L2 cache, whatever k and d.
_CHUNK_VALUES = 1 << 17


def _row_chunks(n: int, width: int) -> list[slice]:
    step = max(32, _CHUNK_VALUES // max(1, width))
    return [slice(start, min(n, start + step)) for start in range(0, n, step)]


def _squared_mahalanobis_t(
    XT: Array, means: Array, precisions_chol: Array, covariance_type: str
) -> Array:
    """``|(x_i - mu_j) U_j|^2`` for every component j and row i.

    Rows are centred on one reference point, ``ref``, the mean of the means; the whitened
    residual of component j is then ``(x - ref) U_j - (mu_j - ref) U_j``. For full and
    tied covariances all components are whitened by one GEMM: ``W' [x - ref; 1]`` with
    ``W`` the (d + 1, k * d) matrix of every ``U_j`` side by side over the row
    ``-(mu_j - ref) U_j`` (the loop over components spent most of its time in numpy
    calls on small arrays, not in arithmetic). Diagonal and spherical: two GEMMs (see
    the comment in the code).

    Centring on ``ref`` rather than on each ``mu_j`` moves the rounding error of a
    residual from ``eps |x - mu_j|`` to ``eps |x - ref|``, in units of the component's
    spread: negligible unless a mean lies ~1e6 standard deviations from the others, and,
    unlike ``X U - mu U`` (scikit-learn's form), it does not grow with the distance from
    the origin.

    Parameters
    ----------
    XT : ndarray of shape (d, n_samples)
    means : ndarray of shape (k, d)
    precisions_chol : ndarray, shape per ``covariance_type``
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    sq : ndarray of shape (k, n_samples)
    """
    d, n = XT.shape
    k = means.shape[0]
    ref = means.mean(axis=0)
    centred_means = means - ref
    sq = np.empty((k, n))
    if n == 0:
        return sq
    if covariance_type in ("full", "tied"):
        chunks = _row_chunks(n, k * d)
        factors = np.broadcast_to(precisions_chol, (k, d, d))
        W_t = np.empty((k * d, d + 1))
        W_t[:, :d] = factors.transpose(0, 2, 1).reshape(k * d, d)
        W_t[:, d] = -np.einsum("kd,kde->ke", centred_means, factors).reshape(k * d)
        A = np.empty((d + 1, chunks[0].stop))
        A[d] = 1.0
        for rows in chunks:
            a = A[:, : rows.stop - rows.start]
            np.subtract(XT[:, rows], ref[:, None], out=a[:d])
            y = W_t @ a
            y *= y
            np.add.reduce(y.reshape(k, d, -1), axis=1, out=sq[:, rows])
        return sq
    # Diagonal and spherical: the expansion around ref as one GEMM (see
    # _diag_features_t); its rounding is discussed there.
    params = MixtureParameters(np.ones(k), means, np.empty(0), precisions_chol, covariance_type)
    terms = _DiagTerms.of(params)
    return terms.squared_t(_diag_features_t(XT, terms.ref, covariance_type))
    return sq


# Diagonal and spherical covariances: the E-step and the statistics as GEMMs.
#
# With xc = x - ref (ref: the mean of the means) and mc_j = mu_j - ref,
#     |(x - mu_j) * p_j|^2 = p_j^2 . xc^2 - 2 (p_j^2 mc_j) . xc + p_j^2 . mc_j^2,
# so every squared distance of a block is one product of a (k, 2d) matrix of
# coefficients with the (2d, n) "features" [xc; xc^2] (spherical: p_j^2 is one number,
# so the features are [xc; |xc|^2], d + 1 rows). The statistics are the transposed
# product: resp (k, n) @ features' gives sum r xc and sum r xc^2 (spherical: sum r |xc|^2)
# for every component at once, recentred on each mean in a (k, d) correction. Elementwise
# residuals per component cost k * d operations per row outside BLAS; these products run
# at BLAS speed (benchmarks/bench_kernels.py).
#
# The expansion cancels: the rounding error of a squared distance is ~eps |xc * p_j|^2,
# and that of a component's scatter ~eps * sum r xc^2, i.e. relative to the scatter
# sum r (x - mu_j)^2 itself ~eps (1 + |mc_j * p_j|^2) per feature: it grows with the
# squared distance of the mean from ref in units of the component's spread. A component
# whose mean lies further than sqrt(_EXACT_RATIO[dtype]) of its standard deviations
# from ref in some feature (1000 in float64, ~1e-10 relative error left; ~32 in
# float32, ~1e-4) has its statistics recomputed from float64 residuals, so they keep
# the digits of the centred form whatever the data. The test uses the parameters, not
# the block's sums: a block where a component has one or two rows has a noisy ratio.
_EXACT_RATIO: dict[np.dtype[Any], float] = {
    np.dtype(np.float64): 1e6,
    np.dtype(np.float32): 1e3,
}


def _diag_features_t(XT: Floats, ref: Array, covariance_type: str) -> Floats:
    """``[xc; xc^2; 1]`` (diag) or ``[xc; |xc|^2; 1]`` (spherical) with ``xc = x - ref``.

    The row of ones carries each component's constant through the E-step's GEMM and
    gives ``nk`` in the statistics' GEMM, for two passes over (k, n) fewer.

    Parameters
    ----------
    XT : ndarray of shape (d, n_samples)
        float64 or float32; the features keep its dtype.
    ref : ndarray of shape (d,)

    Returns
    -------
    features : ndarray of shape (2 * d + 1, n_samples) or (d + 2, n_samples)
    """
    d, n = XT.shape
    extra = d if covariance_type == "diag" else 1
    features = np.empty((d + extra + 1, n), dtype=XT.dtype)
    xc = features[:d]
    np.subtract(XT, ref.astype(XT.dtype)[:, None], out=xc)
    if covariance_type == "diag":
        np.multiply(xc, xc, out=features[d:-1])
    else:
        np.einsum("dn,dn->n", xc, xc, out=features[d])
    features[-1] = 1.0
    return features


@dataclass(frozen=True)
class _DiagTerms:
    """What the diag and spherical GEMMs need of a set of parameters, computed once per
    parameters (see :attr:`MixtureParameters.diag_terms`), not once per block.

    Attributes
    ----------
    ref : ndarray of shape (d,)
        The mean of the means; rows and means are centred on it.
    centred_means : ndarray of shape (k, d)
    constant : ndarray of shape (k,)
        ``|mc_j p_j|^2``.
    log_coefficients : dict of dtype to ndarray of shape (k, 2d + 1) or (k, d + 2)
        ``[p_j^2 mc_j, -p_j^2 / 2, log_bias_j]`` in float64 and float32: times
        :func:`_diag_features_t`, the weighted log-probabilities (the -1/2 and the
        constants are folded into the GEMM, instead of five passes over its (k, n)
        result).
    log_bias : ndarray of shape (k,)
        ``log w_j + log det(P_j)^(1/2) - d/2 log(2 pi) - constant_j / 2``.
    far : dict of dtype to ndarray of shape (k,) of bool
        Components whose statistics are recomputed from residuals (see
        :data:`_EXACT_RATIO`), by the dtype of the features.
    """

    ref: Array
    centred_means: Array
    constant: Array
    log_coefficients: dict[np.dtype[Any], Floats]
    log_bias: Array
    far: dict[np.dtype[Any], NDArray[np.bool_]]

    @classmethod
    def of(cls, params: MixtureParameters) -> _DiagTerms:
        means, precisions_chol = params.means, params.precisions_chol
        covariance_type = params.covariance_type
        k, d = means.shape
        ref = means.mean(axis=0)
        centred_means = means - ref
        prec2 = precisions_chol**2
        if covariance_type == "spherical":
            prec2 = np.broadcast_to(prec2[:, None], means.shape)
        coefficients = np.concatenate(
            [-2.0 * prec2 * centred_means, prec2 if covariance_type == "diag" else prec2[:, :1]],
            axis=1,
        )
        distance2 = prec2 * centred_means * centred_means
        constant = distance2.sum(axis=1)
        largest = distance2.max(axis=1) if means.size else np.zeros(k)
        log_det = _log_det_cholesky(precisions_chol, covariance_type, d)
        log_bias = _log_weights(params.weights) + log_det - 0.5 * d * _LOG_2PI - 0.5 * constant
        log_coefficients = np.concatenate([-0.5 * coefficients, log_bias[:, None]], axis=1)
        return cls(
            ref,
            centred_means,
            constant,
            {np.dtype(np.float64): log_coefficients,
             np.dtype(np.float32): log_coefficients.astype(np.float32)},
            log_bias,
            {dtype: largest > ratio for dtype, ratio in _EXACT_RATIO.items()},
        )

    def squared_t(self, features: Floats) -> Array:
        """Squared distances (k, n), float64, from :func:`_diag_features_t` around
        :attr:`ref`."""
        sq = (self.log_coefficients[np.dtype(np.float64)][:, :-1] @ features[:-1]).astype(
            np.float64
        )
        sq *= -2.0
        sq += self.constant[:, None]
        # Rounding can leave a row sitting on a mean with a tiny negative distance.
        np.maximum(sq, 0.0, out=sq)
        return sq

    def weighted_log_prob_t(self, features: Floats) -> Floats:
        """``log p(x | j) + log w_j`` (k, n) from the features: one GEMM, in the
        features' dtype (so is the result)."""
        return self.log_coefficients[features.dtype] @ features


def _accumulate_diag_t(
    XT: Floats,
    features: Floats,
    centred_means: Array,
    far: NDArray[np.bool_] | None,
    weighted_resp_t: Floats,
    stats: SufficientStatistics,
) -> None:
    """Add the diag or spherical statistics of a block to ``stats`` from its features.

    Parameters
    ----------
    XT : ndarray of shape (d, n)
        The block (for the components recomputed exactly).
    features : ndarray of shape (2d + 1, n) or (d + 2, n)
        :func:`_diag_features_t` of ``XT`` around ``terms.ref``.
    centred_means : ndarray of shape (k, d)
        ``stats.centres`` less the reference point of the features.
    far : ndarray of shape (k,) of bool, or None
        The components to recompute from residuals (``_DiagTerms.far``: by the
        parameters' spreads). None when there are no parameters yet (initialisation):
        then those whose computed scatter is below ``1 / _EXACT_RATIO`` of the sums it
        came from.
    weighted_resp_t : ndarray of shape (k, n)
        ``w_i * r_ij``, in the features' dtype (or float64).
    stats : SufficientStatistics
        Updated in place, centred on its ``centres``. A spherical scatter is stored with
        each component's total spread evenly over its d entries (the M-step uses their
        mean).
    """
    d = XT.shape[0]
    spherical = stats.covariance_type == "spherical"
    sums = (weighted_resp_t.astype(features.dtype, copy=False) @ features.T).astype(
        np.float64, copy=False
    )
    s1, s2, nk = sums[:, :d], sums[:, d:-1], sums[:, -1].copy()
    mc = centred_means
    # sk = s1 - nk mc and scatter = s2 - 2 mc s1 + nk mc^2 = s2 - mc (s1 + sk), formed in
    # place: at k = 256, d = 768 each (k, d) temporary costs as much as 100 rows of GEMM.
    sk = nk[:, None] * mc
    np.subtract(s1, sk, out=sk)
    if spherical:
        scatter = s2[:, 0] - np.einsum("kd,kd->k", mc, s1 + sk)
        scatter = scatter[:, None]
    else:
        s1 += sk
        s1 *= mc
        scatter = s2
        scatter -= s1
    if far is None:
        far = np.any(s2 > _EXACT_RATIO[features.dtype] * scatter, axis=1)
    inexact = np.flatnonzero(far & (nk > 0))
    for j in inexact:
        r = weighted_resp_t[j]
        rows = np.flatnonzero(r)
        r = r[rows].astype(np.float64)
        diff = XT[:, rows].astype(np.float64) - stats.centres[j][:, None]
        sk[j] = diff @ r
        diff *= diff
        if spherical:
            scatter[j] = diff.sum(axis=0) @ r
        else:
            scatter[j] = diff @ r
    stats.nk += nk
    stats.sk += sk
    if spherical:
        scatter /= d
    stats.scatter += scatter


def _log_weights(weights: Array) -> Array:
    with np.errstate(divide="ignore"):  # a zero weight is a legitimate -inf
        return np.log(weights)


def estimate_weighted_log_prob(X: Array, params: MixtureParameters) -> Array:
    """``log p(x | j) + log weight_j`` of shape (n_samples, k)."""
    return _weighted_log_prob_t(np.ascontiguousarray(X.T), params).T


def _weighted_log_prob_t(XT: Array, params: MixtureParameters) -> Array:
    """:func:`estimate_weighted_log_prob` on ``XT`` of shape (d, n), returning (k, n)."""
    log_prob = _log_gaussian_prob_t(
        XT, params.means, params.precisions_chol, params.covariance_type
    )
    log_prob += _log_weights(params.weights)[:, None]
    return log_prob


# exp() of an argument near or below log(smallest normal float64), -708.4, leaves numpy's
# vectorised loop for a slow path: measured 15-20x slower per element than a normal
# result (benchmarks/bench_kernels.py's data: 2.6 ms against 0.14 ms for 256 x 682
# values), and in a separated mixture most elements are there. A responsibility below
# e^-700 (~1e-304) times the row's largest one is set to exactly 0 instead (what a
# flush-to-zero CPU mode does, a little earlier), and exp() only sees arguments >= -700.
# float32 (the diag/spherical float32 path): the same below e^-80 (~1.8e-35; float32's
# smallest normal is e^-87.3).
_LOG_NEGLIGIBLE = {np.dtype(np.float64): -700.0, np.dtype(np.float32): -80.0}


def _log_normalize(weighted_log_prob: Array) -> tuple[Array, Array]:
    """Per-row log-sum-exp and the responsibilities it normalises.

    Parameters
    ----------
    weighted_log_prob : ndarray of shape (n_samples, k)

    Returns
    -------
    log_prob_norm : ndarray of shape (n_samples,)
    resp : ndarray of shape (n_samples, k)
    """
    log_prob_norm, resp_t = _log_normalize_t(weighted_log_prob.T.copy())
    return log_prob_norm, resp_t.T


def _log_normalize_t(weighted_log_prob_t: Array) -> tuple[Array, Array]:
    """:func:`_log_normalize` on (k, n) values, overwritten by the responsibilities.

    float64 or float32 (the float32 compute path); the results keep the input's dtype.

    Returns
    -------
    log_prob_norm : ndarray of shape (n_samples,)
    resp_t : ndarray of shape (k, n_samples)
        The input array.
    """
    log_prob_norm, resp_t, _ = _log_normalize_counts_t(weighted_log_prob_t, counts=False)
    return cast(Array, log_prob_norm), cast(Array, resp_t)


def _log_normalize_counts_t(
    weighted_log_prob_t: Floats, counts: bool = True, exact_zeros: bool = True
) -> tuple[Floats, Floats, Array | None]:
    """:func:`_log_normalize_t`, and with ``counts`` how many rows have each component
    as their most likely one (the first on a tie, as ``argmax``).

    Without ``exact_zeros`` a negligible responsibility is ``e^-700`` (float32:
    ``e^-80``) times the row's largest instead of 0: one pass fewer, for the GEMM
    kernels (diag, spherical), which gain nothing from zeros; the loop over components
    of full and tied skips the rows whose weight is exactly 0.

    Returns
    -------
    log_prob_norm : ndarray of shape (n_samples,)
    resp_t : ndarray of shape (k, n_samples)
    counts : ndarray of shape (k,), float64, or None
    """
    shifted = weighted_log_prob_t
    negligible = _LOG_NEGLIGIBLE[shifted.dtype]
    top = np.max(shifted, axis=0)
    finite = np.isfinite(top)
    all_finite = bool(finite.all())
    if not all_finite:
        top[~finite] = 0.0
    shifted -= top
    top_counts = None
    if counts:
        # argmax along the first axis of a (k, n) array walks it with a stride of n: at
        # k = 256 it cost more than the log-sum-exp. The row maxima are the zeros here:
        # every row with a finite maximum has at least one, so n zeros in all means one
        # per row. A tie, or a row of only -inf or NaN, falls back to argmax.
        top_counts = np.count_nonzero(shifted == 0.0, axis=1).astype(np.float64)
        if not (all_finite and top_counts.sum() == shifted.shape[1]):
            k = shifted.shape[0]
            labels = np.argmax(shifted, axis=0)
            top_counts = np.bincount(labels, minlength=k).astype(np.float64)
    kept = shifted >= negligible if exact_zeros else None
    np.maximum(shifted, negligible, out=shifted)
    np.exp(shifted, out=shifted)
    if kept is not None:
        shifted *= kept  # exact zeros (a multiply by a mask beats a masked store 3x)
    total = np.sum(shifted, axis=0)
    with np.errstate(divide="ignore"):
        log_prob_norm = np.log(total)
        inverse = 1.0 / total  # one division per row, then multiplies
    log_prob_norm += top
    shifted *= inverse
    return log_prob_norm, shifted, top_counts


def score_t(XT: Array, params: MixtureParameters) -> tuple[Array, Array]:
    """:func:`score_and_proba` on rows along the last axis.

    Parameters
    ----------
    XT : ndarray of shape (d, n_samples)
        C-contiguous (the transpose of a column-major block).

    Returns
    -------
    log_prob_norm : ndarray of shape (n_samples,)
    resp_t : ndarray of shape (k, n_samples)
    """
    return _log_normalize_t(_weighted_log_prob_t(XT, params))


def score_and_proba(X: Array, params: MixtureParameters) -> tuple[Array, Array]:
    """Each row's log-likelihood (n_samples,) and responsibilities (n_samples, k)."""
    log_prob_norm, resp_t = score_t(np.ascontiguousarray(X.T), params)
    return log_prob_norm, np.ascontiguousarray(resp_t.T)


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
        components to (d, d) for tied, its diagonal (k, d) for diag and spherical. A
        spherical scatter means only its mean over the d features (its trace / d): the
        kernels may store a component's total spread evenly over its d entries.
    log_likelihood : float
        ``sum_i w_i log p(x_i)`` under the parameters (0 for hard-assignment statistics).
    total_weight : float
        ``sum_i w_i``.
    counts : ndarray of shape (k,)
        Number of rows whose most likely component is j (unweighted).
    resp_log_resp : float
        ``sum_i w_i sum_j r_ij log r_ij``, when asked for (the variational lower bound
        needs it; see :func:`block_statistics`); not part of :meth:`to_flat`.
    merge_pairs : ndarray of shape (n_pairs, 2) or None
        Pairs of components (a < b) whose merge the variational fit will weigh; with it
        come the next two attributes, also not part of :meth:`to_flat`.
    resp_log_resp_by_component : ndarray of shape (k,) or None
        ``sum_i w_i r_ij log r_ij`` for each component j (they sum to ``resp_log_resp``).
    merged_resp_log_resp : ndarray of shape (n_pairs,) or None
        ``sum_i w_i (r_ia + r_ib) log(r_ia + r_ib)`` for each pair of ``merge_pairs``:
        the entropy term of the responsibilities if a and b were one component.
    """

    covariance_type: str
    centres: Array
    nk: Array
    sk: Array
    scatter: Array
    log_likelihood: float
    total_weight: float
    counts: Array
    resp_log_resp: float = 0.0
    merge_pairs: NDArray[np.intp] | None = None
    resp_log_resp_by_component: Array | None = None
    merged_resp_log_resp: Array | None = None

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
        self.resp_log_resp += other.resp_log_resp
        if other.merged_resp_log_resp is not None:
            if self.merged_resp_log_resp is None:
                self.merge_pairs = other.merge_pairs
                self.resp_log_resp_by_component = np.zeros_like(other.nk)
                self.merged_resp_log_resp = np.zeros(len(other.merged_resp_log_resp))
            assert self.resp_log_resp_by_component is not None
            assert other.resp_log_resp_by_component is not None
            self.resp_log_resp_by_component += other.resp_log_resp_by_component
            self.merged_resp_log_resp += other.merged_resp_log_resp
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


def shifted(stats: SufficientStatistics, centres: Array) -> SufficientStatistics:
    """The same statistics centred on ``centres`` instead of ``stats.centres``.

    With ``delta = old - new`` centre: ``x - new = (x - old) + delta``, so
    ``sk' = sk + nk delta`` and ``S' = S + sk delta' + delta sk' + nk delta delta'``.
    """
    centres = np.asarray(centres, dtype=np.float64)
    delta = stats.centres - centres
    nk, sk = stats.nk, stats.sk
    cross = sk * delta  # diagonal terms of sk delta'
    ct = stats.covariance_type
    if ct in ("full", "tied"):
        out = "kij" if ct == "full" else "ij"  # tied sums the components' scatters
        scatter = (
            stats.scatter
            + np.einsum(f"ki,kj->{out}", sk, delta)
            + np.einsum(f"ki,kj->{out}", delta, sk)
            + np.einsum(f"k,ki,kj->{out}", nk, delta, delta)
        )
    else:
        scatter = stats.scatter + 2.0 * cross + nk[:, None] * delta**2
    return SufficientStatistics(
        ct,
        centres.copy(),
        nk.copy(),
        sk + nk[:, None] * delta,
        scatter,
        stats.log_likelihood,
        stats.total_weight,
        stats.counts.copy(),
        stats.resp_log_resp,
    )


# A component's rows are gathered when at most this share of them has a non-zero
# weight: the copy then costs less than the arithmetic it saves (crossover measured
# at 50-60% for d=16 and d=64, k=8).
_GATHER_SHARE = 0.5


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
    _accumulate_weighted_t(np.ascontiguousarray(X.T), np.ascontiguousarray(weighted_resp.T), stats)


def _accumulate_weighted_t(XT: Array, weighted_resp_t: Array, stats: SufficientStatistics) -> None:
    """:func:`_accumulate_weighted` on ``XT`` (d, n) and ``weighted_resp_t`` (k, n).

    Rows whose weight for a component is exactly 0 add exactly 0 to its sums, so they
    are left out of that component's work. In a separated mixture most responsibilities
    underflow to 0 (see :data:`_LOG_NEGLIGIBLE`), and skipping them is exact: no threshold.
    """
    n = XT.shape[1]
    covariance_type = stats.covariance_type
    if covariance_type in ("diag", "spherical"):
        # The GEMM form (see _accumulate_diag_t) around the centres' mean.
        ref = stats.centres.mean(axis=0)
        features = _diag_features_t(XT, ref, covariance_type)
        _accumulate_diag_t(XT, features, stats.centres - ref, None, weighted_resp_t, stats)
        return
    stats.nk += weighted_resp_t.sum(axis=1)
    if covariance_type == "tied":
        _accumulate_tied_scatter_t(XT, weighted_resp_t, stats.centres, stats.scatter)
    # One scratch array for every component's residuals: a fresh multi-MB array per
    # component costs page faults measured as slow as the arithmetic on it.
    scratch = np.empty_like(XT)
    for j in range(stats.centres.shape[0]):
        r = weighted_resp_t[j]
        rows = np.flatnonzero(r)
        if rows.size == 0:
            continue
        if rows.size <= _GATHER_SHARE * n:
            diff = scratch[:, : rows.size]
            np.take(XT, rows, axis=1, out=diff)
            r = r[rows]
            diff -= stats.centres[j][:, None]
        else:
            diff = scratch
            np.subtract(XT, stats.centres[j][:, None], out=diff)
        stats.sk[j] += diff @ r
        if covariance_type == "tied":
            continue  # scatter done above, for all components at once
        if covariance_type == "full":
            # (sqrt(r) * diff)(sqrt(r) * diff)': numpy computes A @ A.T with a symmetric
            # rank-k update (half the flops of a general product).
            diff *= np.sqrt(r)
            stats.scatter[j] += diff @ diff.T
        else:
            diff *= diff
            stats.scatter[j] += diff @ r


def _accumulate_tied_scatter_t(
    XT: Array, weighted_resp_t: Array, centres: Array, scatter: Array
) -> None:
    """Add ``sum_j sum_i w_i r_ij (x_i - c_j)(x_i - c_j)'`` to the tied ``scatter`` (d, d).

    One d x d product instead of one per component. With ``m_i = sum_j r_ij c_j`` (each
    row's responsibility-weighted centre) and ``sum_j r_ij = 1``, the cross terms vanish:

        sum_j r_ij (x_i - c_j)(x_i - c_j)' = (x_i - m_i)(x_i - m_i)'
                                           + 1/2 sum_jl r_ij r_il (c_j - c_l)(c_j - c_l)'

    Nothing is subtracted from a large sum: the first term is formed from residuals (with
    the centres taken relative to their mean, so rows far from the origin keep their
    digits), the second from the k x k non-negative overlaps ``sum_i w_i r_ij r_il`` and
    differences of centres.

    Parameters
    ----------
    XT : ndarray of shape (d, n)
    weighted_resp_t : ndarray of shape (k, n)
        ``w_i * r_ij``; each column sums to the row's weight ``w_i``.
    centres : ndarray of shape (k, d)
    scatter : ndarray of shape (d, d)
        Updated in place.
    """
    weights = weighted_resp_t.sum(axis=0)
    live = weights > 0
    if not live.all():
        XT, weighted_resp_t, weights = XT[:, live], weighted_resp_t[:, live], weights[live]
    if weights.size == 0:
        return
    ref = centres.mean(axis=0)
    offsets = centres - ref
    resp_t = weighted_resp_t / weights
    resid = XT - ref[:, None]
    resid -= offsets.T @ resp_t
    resid *= np.sqrt(weights)
    scatter += resid @ resid.T
    overlap = resp_t @ weighted_resp_t.T
    np.fill_diagonal(overlap, 0.0)
    pairs = offsets[:, None, :] - offsets[None, :, :]
    scatter += 0.5 * np.einsum("jl,jla,jlb->ab", overlap, pairs, pairs)


def block_statistics(
    X: Array,
    sample_weight: Array | None,
    params: MixtureParameters,
    resp_log_resp: bool = False,
    merge_pairs: NDArray[np.intp] | None = None,
) -> SufficientStatistics:
    """E-step on a block of rows, reduced to sufficient statistics centred on the means.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
        Column-major (``np.asfortranarray``) saves a transposed copy.
    sample_weight : ndarray of shape (n_samples,) or None
        Non-negative row weights; None means every row weighs 1.
    params : MixtureParameters
        The parameters of the current iteration.
    resp_log_resp : bool
        Also compute ``sum_i w_i sum_j r_ij log r_ij`` (one log per responsibility).
    merge_pairs : ndarray of shape (n_pairs, 2) or None
        Also compute the entropy terms of these merges (see
        :class:`SufficientStatistics`); implies ``resp_log_resp``.

    Returns
    -------
    stats : SufficientStatistics
        Centred on ``params.means``.
    """
    stats = SufficientStatistics.zeros(params.covariance_type, params.means)
    n = X.shape[0]
    if n == 0:
        if merge_pairs is not None:
            k = params.n_components
            _merge_entropies(np.zeros((k, 0)), None, merge_pairs, np.zeros(k), stats)
        return stats
    diagonal = params.covariance_type in ("diag", "spherical")
    if diagonal and X.dtype == np.float32:
        XT = np.ascontiguousarray(X.T)  # the float32 compute path: float32 GEMMs
    else:
        XT = np.ascontiguousarray(X.T, dtype=np.float64)
    if diagonal:
        # The features serve both the E-step and the statistics (two GEMMs in all).
        terms = params.diag_terms
        features = _diag_features_t(XT, terms.ref, params.covariance_type)
        weighted_log_prob = terms.weighted_log_prob_t(features)
    else:
        weighted_log_prob = _weighted_log_prob_t(XT, params)
    log_prob_norm, resp_t, counts = _log_normalize_counts_t(
        weighted_log_prob, exact_zeros=not diagonal
    )
    assert counts is not None
    stats.counts = counts
    if resp_log_resp or merge_pairs is not None:
        logs = np.zeros_like(resp_t)
        np.log(resp_t, out=logs, where=resp_t > 0.0)  # 0 log 0 = 0
        per_row = np.einsum("kn,kn->n", resp_t, logs)
        weighted = per_row.sum() if sample_weight is None else sample_weight @ per_row
        stats.resp_log_resp = float(weighted)
        if merge_pairs is not None:
            logs *= resp_t
            by_component = logs.sum(axis=1) if sample_weight is None else logs @ sample_weight
            del logs
            _merge_entropies(
                cast(Array, resp_t), sample_weight, merge_pairs, by_component, stats
            )
    if sample_weight is None:
        stats.log_likelihood = float(log_prob_norm.sum(dtype=np.float64))
        stats.total_weight = float(n)
    else:
        stats.log_likelihood = float(sample_weight @ log_prob_norm.astype(np.float64))
        stats.total_weight = float(sample_weight.sum())
        resp_t *= sample_weight
    if diagonal:
        _accumulate_diag_t(
            XT, features, terms.centred_means, terms.far[features.dtype], resp_t, stats
        )
    else:
        _accumulate_weighted_t(XT, cast(Array, resp_t), stats)
    return stats


def _x_log_x_sums(values: Array, sample_weight: Array | None) -> Array:
    """``sum_i w_i v_ji log v_ji`` for each row j of ``values`` (0 log 0 = 0); overwrites
    ``values``."""
    logs = np.zeros_like(values)
    np.log(values, out=logs, where=values > 0.0)
    values *= logs
    return values.sum(axis=1) if sample_weight is None else values @ sample_weight


def _merge_entropies(
    resp_t: Array,
    sample_weight: Array | None,
    merge_pairs: NDArray[np.intp],
    by_component: Array,
    stats: SufficientStatistics,
) -> None:
    """Set the entropy terms of :class:`SufficientStatistics` for ``merge_pairs``, with
    ``by_component`` the per-component ``sum w r log r`` already computed.

    ``resp_t`` is (k, n). The merged responsibilities are formed k pairs at a time, so
    the temporaries stay within the (n, k) work arrays the memory guard counts."""
    k = resp_t.shape[0]
    merged = np.empty(len(merge_pairs))
    for start in range(0, len(merge_pairs), k):
        pairs = merge_pairs[start : start + k]
        summed = resp_t[pairs[:, 0]] + resp_t[pairs[:, 1]]
        merged[start : start + len(pairs)] = _x_log_x_sums(summed, sample_weight)
    stats.resp_log_resp_by_component = by_component
    stats.merge_pairs = merge_pairs
    stats.merged_resp_log_resp = merged


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
    nk, means, covariances = gaussian_estimates(stats, reg_covar)
    precisions_chol = compute_precision_cholesky(covariances, stats.covariance_type)
    weights = nk / nk.sum()
    return MixtureParameters(weights, means, covariances, precisions_chol, stats.covariance_type)


def gaussian_estimates(stats: SufficientStatistics, reg_covar: float) -> tuple[Array, Array, Array]:
    """Component sizes, means and covariances from merged statistics (sklearn's
    ``_estimate_gaussian_parameters``): the common first half of the ML and the
    variational M-steps.

    Returns
    -------
    nk : ndarray of shape (k,)
        Plus ``10 * eps``, as sklearn, so that an empty component divides by no zero.
    means : ndarray of shape (k, d)
    covariances : ndarray, shape per covariance type
        With ``reg_covar`` added to the diagonal.
    """
    nk = stats.nk + _NK_EPS
    means = stats.centres + stats.sk / nk[:, None]
    covariances = _COVARIANCE_ESTIMATORS[stats.covariance_type](stats, nk, reg_covar)
    return nk, means, covariances


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
