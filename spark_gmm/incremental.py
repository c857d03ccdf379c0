"""Incremental (online) EM: fold a batch's sufficient statistics into running statistics.

A model that is updated keeps *running statistics*: per component the weight ``nk``, and
the scatter of its rows centred on its mean (the same :class:`SufficientStatistics` one
EM pass produces, re-centred so that ``sk = 0``). An update runs the E-step of the current
parameters over a batch, blends the batch's statistics into the running ones and takes
the M-step of the blend (:func:`update_parameters`):

    s_t = a_t * s_(t-1) + b_t * s_batch,        theta_t = M(s_t)

Two schedules choose ``(a_t, b_t)`` (:class:`Schedule`):

* **forgetting** (MLlib ``StreamingKMeans``' convention): ``a = decayFactor`` per batch, or
  ``decayFactor ** rows`` with ``timeUnit="points"``, and ``b = 1``; ``halfLife`` h gives
  ``decayFactor = 0.5 ** (1 / h)``. With ``decayFactor = 1`` nothing is forgotten and the
  running statistics are counts of every row seen.
* **stepwise** (Cappe & Moulines 2009, "On-line expectation-maximization algorithm for
  latent data models", JRSS-B; Liang & Klein 2009): per-row statistics
  ``s_t = (1 - g_t) s_(t-1) + g_t s_batch / W_batch`` with ``g_t = (t + stepSizeOffset) **
  -stepSizeExponent``, ``0.5 < stepSizeExponent <= 1``. The running statistics then sum
  to 1; the M-step does not depend on their scale.

Statistics computed around different centres are blended after shifting one onto the
other's centres (exact algebra, :func:`spark_gmm.gaussian.shifted`): no
``E[x^2] - mu^2`` cancellation.

A component whose share of the running weight falls below :data:`REBORN_WEIGHT` (it
has had no rows for a long time) is re-seeded by splitting the heaviest component in
two along its principal axis, as ``StreamingKMeans`` splits its largest cluster; the log
says so. Parameters never become NaN.

A model without running statistics (fitted, loaded from an older save, or built from
numbers) starts from statistics implied by its parameters, weighted by the rows of its
training summary (``numRows``; 1 without a summary): :func:`from_parameters`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from spark_gmm import kernels
from spark_gmm.errors import InvalidInputError
from spark_gmm.gaussian import (
    MixtureParameters,
    SufficientStatistics,
    compute_precision_cholesky,
    gaussian_estimates,
    shifted,
)

__all__ = [
    "REBORN_WEIGHT",
    "Schedule",
    "UpdateResult",
    "blend",
    "from_parameters",
    "recentred",
    "update_parameters",
]

log = logging.getLogger("spark_gmm")

Array = NDArray[np.float64]

# A component with less than this share of the running weight is re-seeded.
REBORN_WEIGHT = 1e-6
# How far the two halves of a split component move apart: this many standard deviations
# along its principal axis, each way.
SPLIT_SIGMAS = 0.5


@dataclass(frozen=True)
class Schedule:
    """How much of the past a new batch keeps: ``(a, b)`` of ``a * running + b * batch``.

    Parameters
    ----------
    kind : {'forgetting', 'stepwise'}
    decay_factor : float
        Forgetting: the weight left to the past per batch (or per row), in [0, 1].
    time_unit : {'batches', 'points'}
        Forgetting: whether ``decay_factor`` applies once per batch or once per row.
    step_size_offset, step_size_exponent : float
        Stepwise: ``g_t = (t + offset) ** -exponent`` for the t-th update (t = 1, 2, ...).
    """

    kind: str = "forgetting"
    decay_factor: float = 1.0
    time_unit: str = "batches"
    step_size_offset: float = 2.0
    step_size_exponent: float = 0.6

    @classmethod
    def from_params(
        cls,
        decay_factor: float | None = None,
        half_life: float | None = None,
        time_unit: str = "batches",
        step_size_offset: float | None = None,
        step_size_exponent: float | None = None,
    ) -> Schedule:
        """The schedule the user's arguments describe, checked (one error naming them)."""
        stepwise = step_size_offset is not None or step_size_exponent is not None
        forgetting = decay_factor is not None or half_life is not None
        if stepwise and forgetting:
            raise InvalidInputError(
                "give decayFactor/halfLife (forgetting) or stepSizeOffset/stepSizeExponent "
                "(stepwise), not both."
            )
        if time_unit not in ("batches", "points"):
            raise InvalidInputError(f"timeUnit must be 'batches' or 'points'; got {time_unit!r}.")
        if stepwise:
            offset = 2.0 if step_size_offset is None else float(step_size_offset)
            exponent = 0.6 if step_size_exponent is None else float(step_size_exponent)
            if not (0.5 < exponent <= 1.0):
                raise InvalidInputError(
                    f"stepSizeExponent must be in (0.5, 1] (Cappe & Moulines); got {exponent}."
                )
            if not (offset >= 0.0 and math.isfinite(offset)):
                raise InvalidInputError(f"stepSizeOffset must be >= 0; got {offset}.")
            return cls("stepwise", step_size_offset=offset, step_size_exponent=exponent)
        if decay_factor is not None and half_life is not None:
            raise InvalidInputError("give decayFactor or halfLife, not both.")
        if half_life is not None:
            if not (half_life > 0 and math.isfinite(half_life)):
                raise InvalidInputError(f"halfLife must be > 0; got {half_life}.")
            decay_factor = 0.5 ** (1.0 / float(half_life))
        decay = 1.0 if decay_factor is None else float(decay_factor)
        if not (0.0 <= decay <= 1.0):
            raise InvalidInputError(f"decayFactor must be in [0, 1]; got {decay}.")
        return cls("forgetting", decay_factor=decay, time_unit=time_unit)

    def coefficients(
        self, t: int, running_weight: float, batch_weight: float
    ) -> tuple[float, float]:
        """``(a, b)`` for the t-th update (t >= 1) of running statistics of total weight
        ``running_weight`` by a batch of total weight ``batch_weight``."""
        if self.kind == "stepwise":
            gamma = min(1.0, (t + self.step_size_offset) ** -self.step_size_exponent)
            past = (1.0 - gamma) / running_weight if running_weight > 0 else 0.0
            return past, gamma / batch_weight
        if self.time_unit == "points":
            return self.decay_factor**batch_weight, 1.0
        return self.decay_factor, 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "decayFactor": self.decay_factor,
            "timeUnit": self.time_unit,
            "stepSizeOffset": self.step_size_offset,
            "stepSizeExponent": self.step_size_exponent,
        }


# ---------------------------------------------------------------------------
# Statistics algebra
# ---------------------------------------------------------------------------


def recentred(stats: SufficientStatistics) -> SufficientStatistics:
    """Centred on each component's own mean (``sk = 0``), where it has any weight."""
    nk = stats.nk
    safe = np.where(nk > 0, nk, 1.0)
    means = np.where((nk > 0)[:, None], stats.centres + stats.sk / safe[:, None], stats.centres)
    out = shifted(stats, means)
    out.sk[:] = 0.0
    return out


def blend(
    a: float, running: SufficientStatistics, b: float, batch: SufficientStatistics
) -> SufficientStatistics:
    """``a * running + b * batch``, centred on ``running``'s centres."""
    batch = shifted(batch, running.centres)
    return SufficientStatistics(
        running.covariance_type,
        running.centres.copy(),
        a * running.nk + b * batch.nk,
        a * running.sk + b * batch.sk,
        a * running.scatter + b * batch.scatter,
        a * running.log_likelihood + b * batch.log_likelihood,
        a * running.total_weight + b * batch.total_weight,
        a * running.counts + b * batch.counts,
    )


def from_parameters(
    params: MixtureParameters, total_weight: float, reg_covar: float
) -> SufficientStatistics:
    """The statistics of ``total_weight`` rows distributed exactly as ``params``.

    ``nk = weights * W`` and the scatter ``nk (covariance - regCovar I)``: the M-step of
    these statistics gives ``params`` back (the regularisation is added again there).
    """
    k, d = params.means.shape
    nk = params.weights * total_weight
    cov = np.array(params.covariances, dtype=np.float64, copy=True)
    ct = params.covariance_type
    if ct == "full":
        cov.reshape(k, -1)[:, :: d + 1] -= reg_covar
        scatter = cov * nk[:, None, None]
    elif ct == "tied":
        cov.flat[:: d + 1] -= reg_covar
        scatter = cov * total_weight
    elif ct == "diag":
        scatter = (cov - reg_covar) * nk[:, None]
    else:
        scatter = np.repeat(((cov - reg_covar) * nk)[:, None], d, axis=1)
    return SufficientStatistics(
        ct,
        params.means.copy(),
        nk,
        np.zeros((k, d)),
        scatter,
        0.0,
        float(total_weight),
        nk.copy(),
    )


def _parameters(stats: SufficientStatistics, reg_covar: float) -> MixtureParameters:
    nk, means, covariances = gaussian_estimates(stats, reg_covar)
    precisions_chol = compute_precision_cholesky(covariances, stats.covariance_type)
    return MixtureParameters(
        nk / nk.sum(), means, covariances, precisions_chol, stats.covariance_type
    )


def _principal_axis(params: MixtureParameters, h: int) -> Array:
    """Standard deviation times unit vector of component h's widest direction."""
    d = params.n_features
    cov = params.covariances
    ct = params.covariance_type
    if ct in ("full", "tied"):
        c = cov[h] if ct == "full" else cov
        values, vectors = np.linalg.eigh(c)
        return math.sqrt(max(values[-1], 0.0)) * vectors[:, -1]
    var = cov[h] if ct == "diag" else np.full(d, cov[h])
    j = int(np.argmax(var))
    axis = np.zeros(d)
    axis[j] = math.sqrt(var[j])
    return axis


def _reseed(
    stats: SufficientStatistics, params: MixtureParameters, dead: NDArray[np.intp], reg_covar: float
) -> tuple[SufficientStatistics, MixtureParameters]:
    """Split the heaviest component in two for every dead one (each split moves its two
    halves ``SPLIT_SIGMAS`` standard deviations apart along its principal axis).

    ``stats`` are centred on ``params.means``. The components involved take the
    statistics their new parameters imply; every other component keeps its own.
    """
    weights = params.weights.copy()
    means = params.means.copy()
    covariances = np.array(params.covariances, copy=True)
    ct = params.covariance_type
    touched = np.zeros(weights.shape[0], dtype=bool)
    for j in (int(j) for j in dead):
        h = int(np.argmax(weights))
        current = MixtureParameters(weights, means, covariances, params.precisions_chol, ct)
        axis = SPLIT_SIGMAS * _principal_axis(current, h)
        log.warning(
            "incremental update: component %d has weight %.3g < %.0e (no rows for a long "
            "time): re-seeded by splitting component %d (weight %.3g) along its widest axis",
            j,
            weights[j],
            REBORN_WEIGHT,
            h,
            weights[h],
        )
        weights[j] = weights[h] = weights[h] / 2.0
        means[j], means[h] = means[h] + axis, means[h] - axis
        if ct != "tied":
            covariances[j] = covariances[h]
        touched[[j, h]] = True
    precisions_chol = compute_precision_cholesky(covariances, ct)
    new = MixtureParameters(weights, means, covariances, precisions_chol, ct)
    implied = from_parameters(new, stats.nk.sum(), reg_covar)
    mask = touched.reshape((-1,) + (1,) * (stats.scatter.ndim - 1))
    out = SufficientStatistics(
        ct,
        np.where(touched[:, None], implied.centres, stats.centres),
        np.where(touched, implied.nk, stats.nk),
        np.zeros_like(stats.sk),
        stats.scatter if ct == "tied" else np.where(mask, implied.scatter, stats.scatter),
        stats.log_likelihood,
        stats.total_weight,
        np.where(touched, implied.counts, stats.counts),
    )
    return out, _parameters(out, reg_covar)


def _m_step(
    stats: SufficientStatistics, reg_covar: float
) -> tuple[SufficientStatistics, MixtureParameters]:
    """Running statistics (re-centred) and their parameters, dead components re-seeded."""
    if not (np.all(np.isfinite(stats.nk)) and np.all(np.isfinite(stats.scatter))):
        raise FloatingPointError(
            "incremental statistics are not finite; the features probably overflow float64 "
            "when squared. Scale the features and update again."
        )
    stats = recentred(stats)
    params = _parameters(stats, reg_covar)
    total = stats.nk.sum()
    dead = np.flatnonzero(stats.nk < REBORN_WEIGHT * total)
    if dead.size and dead.size < stats.nk.size:
        stats, params = _reseed(stats, params, dead, reg_covar)
    return stats, params


# ---------------------------------------------------------------------------
# One update
# ---------------------------------------------------------------------------


@dataclass
class UpdateResult:
    """What :func:`update_parameters` returns.

    Attributes
    ----------
    params : MixtureParameters
    running : SufficientStatistics
        The new running statistics (centred on ``params.means``).
    batch_weight : float
        Total weight of the batch's rows.
    batch_log_likelihood : float
        Mean log-likelihood of the batch under the parameters of the last E-step.
    """

    params: MixtureParameters
    running: SufficientStatistics
    batch_weight: float
    batch_log_likelihood: float


def update_parameters(
    data: Any,
    params: MixtureParameters,
    running: SufficientStatistics,
    update_count: int,
    schedule: Schedule,
    reg_covar: float,
    passes: int = 1,
    missing: bool = False,
) -> UpdateResult:
    """Fold one batch into running statistics; ``passes`` E-steps over the batch.

    Parameters
    ----------
    data : DataSource
        The batch (:class:`spark_gmm.em.InMemoryData` or a Spark ``PreparedData``).
    params : MixtureParameters
        The model before this batch.
    running : SufficientStatistics
        Its running statistics.
    update_count : int
        Updates already folded in (this one is ``update_count + 1``).
    schedule : Schedule
    reg_covar : float
    passes : int
        E-steps over the batch: each uses the parameters of the previous one's blend with
        the same ``running``.
    missing : bool
        Marginalise missing (NaN) features.
    """
    if passes < 1:
        raise InvalidInputError(f"passes must be >= 1; got {passes}.")
    current = params
    stats = batch = None
    for i in range(passes):
        task = kernels.EMTask(current, missing)
        flat = data.statistics([task], f"spark_gmm: update pass {i + 1}/{passes}")
        batch = kernels.split_statistics(flat, [task])[0]
        if batch.total_weight <= 0:
            raise InvalidInputError("The batch has no rows (or no weight) to update with.")
        a, b = schedule.coefficients(update_count + 1, running.total_weight, batch.total_weight)
        stats, current = _m_step(blend(a, running, b, batch), reg_covar)
    assert stats is not None and batch is not None
    return UpdateResult(
        current, stats, batch.total_weight, batch.log_likelihood / batch.total_weight
    )
