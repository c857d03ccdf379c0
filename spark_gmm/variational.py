"""Variational Bayesian Gaussian mixture in pure numpy: the M-step (posterior
hyper-parameters), the E-step's expected log-weights and log-determinants, and the
lower bound, as scikit-learn's ``BayesianGaussianMixture`` defines them.

The data enter only through the same sufficient statistics the maximum-likelihood fit
uses (:class:`spark_gmm.gaussian.SufficientStatistics`: ``nk``, responsibility-weighted
sums and scatters centred on the current means), plus one number per pass, the sum of
``r log r`` over rows and components, for the lower bound. So a distributed pass is the
ML pass with other per-component constants in the E-step.

The E-step of the variational posterior is the ML E-step with per-component offsets in
place of the log-weights: ``log rho_ik = E[log pi_k] + E[log N(x_i | mu_k, Lambda_k)]``,
which for sklearn's normalised precisions is ``log N(x_i; m_k, Lambda_k) + c_k`` with a
constant ``c_k`` (:func:`log_offsets`). :func:`scoring_parameters` packs ``exp(c_k)`` as
the "weights" of :class:`~spark_gmm.gaussian.MixtureParameters`, so every kernel, the
transform and the model's numpy helpers apply unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from spark_gmm.errors import GaussianMixtureError
from spark_gmm.gaussian import (
    MixtureParameters,
    SufficientStatistics,
    compute_precision_cholesky,
    gaussian_estimates,
    shifted,
)

__all__ = [
    "PRIOR_TYPES",
    "Priors",
    "VariationalParameters",
    "default_priors",
    "digamma",
    "gammaln",
    "log_offsets",
    "lower_bound",
    "m_step",
    "merge_candidates",
    "merge_components",
    "merged_bound",
    "merged_statistics",
    "scoring_parameters",
]

Array = NDArray[np.float64]

PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")


# ---------------------------------------------------------------------------
# Special functions (scipy is not a dependency)
# ---------------------------------------------------------------------------


def gammaln(x: Array | float) -> Array:
    """log Gamma(x) for x > 0, element-wise."""
    return np.vectorize(math.lgamma, otypes=[np.float64])(np.asarray(x, dtype=np.float64))


def digamma(x: Array | float) -> Array:
    """The digamma function psi(x) for x > 0, element-wise, to ~1e-15 relative.

    Recurrence psi(x) = psi(x + 1) - 1/x up to x >= 10, then the asymptotic series
    ln x - 1/(2x) - sum B_2n / (2n x^2n) to n = 7 (truncation below 1e-16 at x = 10).
    """
    x = np.array(x, dtype=np.float64, copy=True)
    result = np.zeros_like(x)
    small = x < 10.0
    while np.any(small):
        result[small] -= 1.0 / x[small]
        x[small] += 1.0
        small = x < 10.0
    inv2 = 1.0 / (x * x)
    series = inv2 * (
        1.0 / 12
        - inv2
        * (
            1.0 / 120
            - inv2
            * (
                1.0 / 252
                - inv2 * (1.0 / 240 - inv2 * (1.0 / 132 - inv2 * (691.0 / 32760 - inv2 / 12)))
            )
        )
    )
    return result + np.log(x) - 0.5 / x - series


def _betaln(a: Array, b: Array) -> Array:
    return gammaln(a) + gammaln(b) - gammaln(a + b)


# ---------------------------------------------------------------------------
# Priors and posterior parameters
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Priors:
    """The prior of the variational mixture (sklearn's ``*_prior`` parameters, resolved).

    Attributes
    ----------
    weight_concentration_prior_type : {'dirichlet_process', 'dirichlet_distribution'}
    weight_concentration_prior : float
    mean_precision_prior : float
    mean_prior : ndarray of shape (d,)
    degrees_of_freedom_prior : float
    covariance_prior : ndarray
        (d, d) for full and tied, (d,) for diag, a scalar (shape ()) for spherical.
    """

    weight_concentration_prior_type: str
    weight_concentration_prior: float
    mean_precision_prior: float
    mean_prior: Array
    degrees_of_freedom_prior: float
    covariance_prior: Array


def default_priors(
    k: int,
    covariance_type: str,
    mean: Array,
    covariance: Array,
    *,
    weight_concentration_prior_type: str = "dirichlet_process",
    weight_concentration_prior: float | None = None,
    mean_precision_prior: float | None = None,
    mean_prior: Array | None = None,
    degrees_of_freedom_prior: float | None = None,
    covariance_prior: Array | float | None = None,
) -> Priors:
    """sklearn's defaults for the priors not given, from the data's moments.

    Parameters
    ----------
    k : int
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    mean : ndarray of shape (d,)
        The data's mean.
    covariance : ndarray of shape (d, d)
        The data's covariance with ``ddof=1`` (``np.cov(X.T)``).

    Raises
    ------
    ValueError
        For a prior type that is not one of :data:`PRIOR_TYPES`, a non-positive
        concentration or mean precision, ``degrees_of_freedom_prior <= d - 1``, or a
        covariance prior of the wrong shape or not positive.
    """
    mean = np.asarray(mean, dtype=np.float64)
    covariance = np.atleast_2d(np.asarray(covariance, dtype=np.float64))
    d = mean.shape[0]
    if weight_concentration_prior_type not in PRIOR_TYPES:
        raise ValueError(
            f"weightConcentrationPriorType must be one of {', '.join(PRIOR_TYPES)}; got "
            f"{weight_concentration_prior_type!r}."
        )
    wcp = 1.0 / k if weight_concentration_prior is None else float(weight_concentration_prior)
    mpp = 1.0 if mean_precision_prior is None else float(mean_precision_prior)
    if not (wcp > 0 and mpp > 0):
        raise ValueError(
            f"weightConcentrationPrior and meanPrecisionPrior must be > 0; got {wcp} and {mpp}."
        )
    m0 = mean if mean_prior is None else np.asarray(mean_prior, dtype=np.float64)
    if m0.shape != (d,):
        raise ValueError(f"meanPrior must have {d} values; got shape {m0.shape}.")
    dof = float(d) if degrees_of_freedom_prior is None else float(degrees_of_freedom_prior)
    if not dof > d - 1.0:
        raise ValueError(f"degreesOfFreedomPrior must be > {d - 1} (d - 1); got {dof}.")
    variances = np.diag(covariance)
    default = {
        "full": covariance,
        "tied": covariance,
        "diag": variances,
        "spherical": np.asarray(variances.mean()),
    }[covariance_type]
    cov0 = default if covariance_prior is None else np.asarray(covariance_prior, dtype=np.float64)
    if cov0.shape != default.shape:
        raise ValueError(
            f"covariancePrior for covarianceType={covariance_type!r} must have shape "
            f"{default.shape}; got {cov0.shape}."
        )
    if covariance_type in ("full", "tied"):
        if not np.allclose(cov0, cov0.T) or np.any(np.linalg.eigvalsh(cov0) <= 0):
            raise ValueError("covariancePrior must be symmetric positive definite.")
    elif np.any(cov0 <= 0):
        raise ValueError("covariancePrior must be positive.")
    return Priors(weight_concentration_prior_type, wcp, mpp, m0, dof, cov0)


@dataclass
class VariationalParameters:
    """The variational posterior (sklearn's fitted attributes of the same names).

    Attributes
    ----------
    covariance_type : str
    weight_concentration : ndarray
        (2, k) for a Dirichlet process (the Beta parameters of the stick breaks), (k,)
        for a Dirichlet distribution.
    mean_precision : ndarray of shape (k,)
    means : ndarray of shape (k, d)
    degrees_of_freedom : ndarray of shape (k,)
        One value per component (tied: k copies of the one value).
    covariances : ndarray
        sklearn's ``covariances_`` (the Wishart scale normalised by the degrees of
        freedom), shape per covariance type.
    precisions_chol : ndarray
    prior_type : str
    """

    covariance_type: str
    weight_concentration: Array
    mean_precision: Array
    means: Array
    degrees_of_freedom: Array
    covariances: Array
    precisions_chol: Array
    prior_type: str

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @property
    def weights(self) -> Array:
        """The expected mixing weights (sklearn's ``weights_``)."""
        if self.prior_type == "dirichlet_process":
            a, b = self.weight_concentration
            stick = b / (a + b)
            w = a / (a + b) * np.concatenate([[1.0], np.cumprod(stick[:-1])])
        else:
            w = self.weight_concentration.copy()
        return np.asarray(w / w.sum())


def m_step(stats: SufficientStatistics, priors: Priors, reg_covar: float) -> VariationalParameters:
    """The posterior hyper-parameters from merged statistics (sklearn's ``_m_step``).

    No component is refused for losing its rows: emptying unneeded components is what
    the prior is for.
    """
    nk, xk, sk = gaussian_estimates(stats, reg_covar)
    k = xk.shape[0]
    if priors.weight_concentration_prior_type == "dirichlet_process":
        rest = np.concatenate([np.cumsum(nk[::-1])[-2::-1], [0.0]])
        concentration = np.stack([1.0 + nk, priors.weight_concentration_prior + rest])
    else:
        concentration = priors.weight_concentration_prior + nk
    beta0, m0 = priors.mean_precision_prior, priors.mean_prior
    mean_precision = beta0 + nk
    means = (beta0 * m0 + nk[:, None] * xk) / mean_precision[:, None]
    diff = xk - m0
    nu0, cov0 = priors.degrees_of_freedom_prior, priors.covariance_prior
    ct = stats.covariance_type
    if ct == "full":
        dof = nu0 + nk
        covariances = (
            cov0[None]
            + nk[:, None, None] * sk
            + (nk * beta0 / mean_precision)[:, None, None] * np.einsum("ki,kj->kij", diff, diff)
        ) / dof[:, None, None]
    elif ct == "tied":
        dof = np.full(k, nu0 + nk.sum() / k)
        covariances = (
            cov0 + sk * nk.sum() / k + beta0 / k * ((nk / mean_precision)[:, None] * diff).T @ diff
        ) / dof[0]
    elif ct == "diag":
        dof = nu0 + nk
        covariances = (
            cov0[None] + nk[:, None] * (sk + (beta0 / mean_precision)[:, None] * diff**2)
        ) / dof[:, None]
    else:
        dof = nu0 + nk
        covariances = (cov0 + nk * (sk + beta0 / mean_precision * np.mean(diff**2, axis=1))) / dof
    precisions_chol = compute_precision_cholesky(covariances, ct)
    return VariationalParameters(
        ct,
        concentration,
        mean_precision,
        means,
        dof,
        covariances,
        precisions_chol,
        priors.weight_concentration_prior_type,
    )


def expected_log_weights(vp: VariationalParameters) -> Array:
    """E[log pi_k] under the posterior (sklearn's ``_estimate_log_weights``)."""
    if vp.prior_type == "dirichlet_process":
        a, b = vp.weight_concentration
        digamma_sum = digamma(a + b)
        tail = np.concatenate([[0.0], np.cumsum(digamma(b) - digamma_sum)[:-1]])
        return np.asarray(digamma(a) - digamma_sum + tail)
    return np.asarray(digamma(vp.weight_concentration) - digamma(vp.weight_concentration.sum()))


def log_offsets(vp: VariationalParameters) -> Array:
    """Per-component constants c_k of the variational E-step, so that
    ``log rho_ik = log N(x_i; means_k, precisions_chol_k) + c_k``."""
    d = vp.n_features
    nu = vp.degrees_of_freedom
    log_lambda = d * math.log(2.0) + np.sum(
        digamma(0.5 * (nu[None, :] - np.arange(d)[:, None])), axis=0
    )
    return np.asarray(
        expected_log_weights(vp) - 0.5 * d * np.log(nu) + 0.5 * (log_lambda - d / vp.mean_precision)
    )


def scoring_parameters(vp: VariationalParameters) -> MixtureParameters:
    """The E-step of ``vp`` as :class:`MixtureParameters`: ``weights`` holds ``exp(c_k)``
    (not normalised), so the ML kernels compute the variational responsibilities, and
    their log-sum-exp is sklearn's ``score_samples`` for the Bayesian model."""
    offsets = log_offsets(vp)
    with np.errstate(under="ignore"):
        weights = np.exp(offsets)
    return MixtureParameters(
        weights,
        vp.means.copy(),
        vp.covariances.copy(),
        vp.precisions_chol.copy(),
        vp.covariance_type,
    )


def _log_wishart_norm(dof: Array, log_det_chol: Array, d: int) -> Array:
    return np.asarray(
        -(
            dof * log_det_chol
            + dof * d * 0.5 * math.log(2.0)
            + np.sum(gammaln(0.5 * (dof[None, :] - np.arange(d)[:, None])), axis=0)
        )
    )


def lower_bound(vp: VariationalParameters, resp_log_resp: float) -> float:
    """sklearn's lower bound (without its constant terms), from the posterior and
    ``sum_i sum_k r_ik log r_ik`` of the E-step that led to it."""
    d, k = vp.n_features, vp.n_components
    ct = vp.covariance_type
    pc = vp.precisions_chol
    if ct == "full":
        log_det = np.sum(np.log(pc.reshape(k, -1)[:, :: d + 1]), axis=1)
    elif ct == "tied":
        log_det = np.full(k, np.sum(np.log(np.diag(pc))))
    elif ct == "diag":
        log_det = np.sum(np.log(pc), axis=1)
    else:
        log_det = d * np.log(pc)
    log_det = log_det - 0.5 * d * np.log(vp.degrees_of_freedom)
    if ct == "tied":
        wishart = k * float(_log_wishart_norm(vp.degrees_of_freedom[:1], log_det[:1], d)[0])
    else:
        wishart = float(np.sum(_log_wishart_norm(vp.degrees_of_freedom, log_det, d)))
    if vp.prior_type == "dirichlet_process":
        a, b = vp.weight_concentration
        norm_weight = -float(np.sum(_betaln(a, b)))
    else:
        c = vp.weight_concentration
        norm_weight = float(gammaln(c.sum()) - np.sum(gammaln(c)))
    return float(
        -resp_log_resp - wishart - norm_weight - 0.5 * d * np.sum(np.log(vp.mean_precision))
    )


def effective_components(weights: Array, threshold: float) -> int:
    """Components whose expected weight exceeds ``threshold``."""
    return int(np.sum(np.asarray(weights) > threshold))


# ---------------------------------------------------------------------------
# Merge moves
# ---------------------------------------------------------------------------
#
# Coordinate ascent rarely empties a component that the initialisation cut out of a
# true cluster: each half keeps thousands of rows, so the prior's pull on it is small
# against the data's. A merge move (Hughes & Sudderth 2013, "Memoized online
# variational inference for Dirichlet process mixture models") proposes the
# responsibilities r_a + r_b for one component and nothing for the other, and keeps the
# proposal when its lower bound is higher. The bound after the M-step needs only the
# merged statistics (exact: sums add once re-centred) and the merged sum of
# r log r, which the E-step pass computes for the candidate pairs. Every accepted move
# raises the bound, so the fit still climbs it monotonically.

# Pairs among at most this many live components are all weighed (300 pairs at 25);
# beyond it, each live component with its _NEIGHBOURS nearest.
_ALL_PAIRS_UP_TO = 25
_NEIGHBOURS = 4
# A component holding less than this share of the weight is empty: no merge is weighed
# for it (it has nothing to give).
_LIVE_SHARE = 1e-9
# A merge must raise the bound by more than this times the bound's size, so that
# rounding never decides.
_MERGE_MARGIN = 1e-12


def _component_sizes(vp: VariationalParameters, priors: Priors) -> Array:
    return np.asarray(vp.mean_precision - priors.mean_precision_prior)


def merge_candidates(vp: VariationalParameters, priors: Priors) -> NDArray[np.intp] | None:
    """The pairs (a < b) of live components whose merge the next pass will weigh.

    Returns
    -------
    pairs : ndarray of shape (n_pairs, 2), or None when fewer than two components live
        Every pair when at most 25 components live; else each live component with its
        4 nearest by Mahalanobis distance between means, in the metric of the first.
    """
    nk = _component_sizes(vp, priors)
    live = np.flatnonzero(nk > _LIVE_SHARE * nk.sum())
    if len(live) < 2:
        return None
    if len(live) <= _ALL_PAIRS_UP_TO:
        a, b = np.triu_indices(len(live), 1)
        return np.stack([live[a], live[b]], axis=1).astype(np.intp)
    diff = vp.means[live][None, :, :] - vp.means[live][:, None, :]  # [a, b] = m_b - m_a
    pc, ct = vp.precisions_chol, vp.covariance_type
    if ct == "full":
        whitened = np.einsum("abi,aij->abj", diff, pc[live])
    elif ct == "tied":
        whitened = diff @ pc
    elif ct == "diag":
        whitened = diff * pc[live][:, None, :]
    else:
        whitened = diff * pc[live][:, None, None]
    dist = np.sqrt(np.einsum("abj,abj->ab", whitened, whitened))
    dist = np.minimum(dist, dist.T)
    np.fill_diagonal(dist, np.inf)
    nearest = np.argsort(dist, axis=1)[:, :_NEIGHBOURS]
    pairs = {
        (int(min(live[i], live[j])), int(max(live[i], live[j])))
        for i in range(len(live))
        for j in nearest[i]
    }
    return np.array(sorted(pairs), dtype=np.intp)


def merged_statistics(stats: SufficientStatistics, a: int, b: int) -> SufficientStatistics:
    """The statistics as if components ``a`` and ``b`` were one, kept in ``a`` and with
    ``b`` empty: ``b``'s sums are re-centred on ``a``'s centre (exact), then added.

    The entropy terms of ``stats`` are carried over unchanged: they stay valid for the
    pairs that involve neither ``a`` nor ``b``."""
    centres = stats.centres.copy()
    centres[b] = centres[a]
    out = shifted(stats, centres)
    out.merge_pairs = stats.merge_pairs
    out.resp_log_resp_by_component = stats.resp_log_resp_by_component
    out.merged_resp_log_resp = stats.merged_resp_log_resp
    for values in (out.nk, out.sk, out.counts):
        values[a] += values[b]
        values[b] = 0.0
    if out.covariance_type != "tied":  # tied sums all components into one scatter
        out.scatter[a] += out.scatter[b]
        out.scatter[b] = 0.0
    return out


def merged_bound(
    stats: SufficientStatistics,
    pair: int,
    priors: Priors,
    reg_covar: float,
    resp_log_resp: float | None = None,
) -> tuple[SufficientStatistics, float, VariationalParameters, float]:
    """The lower bound if the components of ``stats.merge_pairs[pair]`` were one.

    Parameters
    ----------
    stats : SufficientStatistics
        With the entropy terms of ``merge_pairs`` (or statistics derived from such by
        merges of other, disjoint pairs, with ``resp_log_resp`` theirs).
    pair : int
        Row of ``stats.merge_pairs``.
    priors : Priors
    reg_covar : float
    resp_log_resp : float, optional
        ``sum r log r`` of ``stats``' responsibilities; ``stats.resp_log_resp`` if None.

    Returns
    -------
    merged : SufficientStatistics
    merged_resp_log_resp : float
    posterior : VariationalParameters
        The M-step of ``merged``.
    bound : float
        Its lower bound: sklearn's for the responsibilities with ``r_a + r_b`` in ``a``
        and nothing in ``b``.
    """
    assert stats.merge_pairs is not None
    assert stats.resp_log_resp_by_component is not None
    assert stats.merged_resp_log_resp is not None
    a, b = int(stats.merge_pairs[pair, 0]), int(stats.merge_pairs[pair, 1])
    rlr = stats.resp_log_resp if resp_log_resp is None else resp_log_resp
    rlr += (
        stats.merged_resp_log_resp[pair]
        - stats.resp_log_resp_by_component[a]
        - stats.resp_log_resp_by_component[b]
    )
    merged = merged_statistics(stats, a, b)
    posterior = m_step(merged, priors, reg_covar)
    return merged, float(rlr), posterior, lower_bound(posterior, rlr)


def merge_components(
    stats: SufficientStatistics, priors: Priors, reg_covar: float, bound: float
) -> tuple[VariationalParameters | None, float, list[tuple[int, int]]]:
    """Accept the merges of ``stats.merge_pairs`` that raise the lower bound.

    Each pair's bound is computed alone; then, best first, a pair that shares no
    component with an accepted one is merged into the running statistics and kept if
    the bound of everything accepted so far rises.

    Parameters
    ----------
    stats : SufficientStatistics
        From a pass with ``merge_pairs`` (its entropy terms set).
    priors : Priors
    reg_covar : float
    bound : float
        The lower bound without any merge (of the M-step of ``stats``).

    Returns
    -------
    params : VariationalParameters or None
        The posterior after the accepted merges; None when none was accepted.
    bound : float
        Its lower bound (``bound`` when none was accepted).
    merged : list of (a, b)
        The accepted pairs; each ``b`` is now empty.
    """
    pairs = stats.merge_pairs
    if pairs is None or stats.merged_resp_log_resp is None:
        return None, bound, []
    margin = _MERGE_MARGIN * max(1.0, abs(bound))
    gains = np.full(len(pairs), -math.inf)
    for p in range(len(pairs)):
        try:
            gains[p] = merged_bound(stats, p, priors, reg_covar)[3] - bound
        except GaussianMixtureError:
            continue
    best_vp: VariationalParameters | None = None
    current, current_rlr, best_bound = stats, stats.resp_log_resp, bound
    accepted: list[tuple[int, int]] = []
    used: set[int] = set()
    for p in np.argsort(-gains, kind="stable"):
        if not gains[p] > margin:
            break
        a, b = int(pairs[p, 0]), int(pairs[p, 1])
        if a in used or b in used:
            continue
        # ``current`` carries the entropy terms of ``stats``: valid for this pair, which
        # shares no component with the merges already in it.
        try:
            candidate, rlr, vp, new_bound = merged_bound(
                current, int(p), priors, reg_covar, current_rlr
            )
        except GaussianMixtureError:
            continue
        if new_bound > best_bound + margin:
            current, current_rlr, best_bound, best_vp = candidate, rlr, new_bound, vp
            accepted.append((a, b))
            used.update((a, b))
    return best_vp, best_bound, accepted
