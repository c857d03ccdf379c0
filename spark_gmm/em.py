"""The EM loop on the driver: initialisation, iterations, convergence, restarts.

Spark-agnostic: it talks to the data only through ``data.statistics(tasks, description)``
(one pass computing the statistics of a list of tasks) and ``data.sample(size, seed)``.
:class:`spark_gmm.engine.PreparedData` implements them on Spark, :class:`InMemoryData`
on a numpy array (tests, small data on the driver).

All ``nInit`` candidates advance together: each pass computes the statistics of every
candidate still running, so restarts cost CPU in the executors but no extra data scans.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from spark_gmm import kernels
from spark_gmm.errors import GaussianMixtureError, InvalidInputError
from spark_gmm.gaussian import MixtureParameters, m_step
from spark_gmm.kmeans import kmeans, kmeans_plusplus

__all__ = ["INIT_MODES", "ConvergenceWarning", "EMResult", "InMemoryData", "fit_em"]

log = logging.getLogger("spark_gmm")

Array = NDArray[np.float64]

INIT_MODES = ("kmeans", "k-means++", "random_from_data", "random")

_ZERO_WEIGHT = (
    "The row weights sum to 0 (in weightCol): no row carries weight. Check the weight "
    "column, or drop weightCol."
)


class ConvergenceWarning(UserWarning):
    """EM stopped at ``maxIter`` before the log-likelihood settled within ``tol``."""


class DataSource(Protocol):
    n_rows: int

    def statistics(self, tasks: Sequence[kernels.Task], description: str) -> Array: ...

    def sample(self, size: int, seed: int) -> tuple[Array, Array]: ...


@dataclass
class InMemoryData:
    """A numpy array split into blocks, with the same interface as the Spark cache.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
    sample_weight : ndarray of shape (n_samples,) or None
    n_blocks : int
        How many blocks the rows are cut into (to exercise the merging of statistics).
    """

    X: Array
    sample_weight: Array | None = None
    n_blocks: int = 1

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    def _blocks(self) -> list[tuple[Array, Array | None]]:
        bounds = np.linspace(0, self.n_rows, self.n_blocks + 1).astype(int)
        w = self.sample_weight
        return [
            (self.X[a:b], None if w is None else w[a:b]) for a, b in zip(bounds[:-1], bounds[1:])
        ]

    def statistics(self, tasks: Sequence[kernels.Task], description: str) -> Array:
        return kernels.tasks_statistics(self._blocks(), tasks)

    def sample(self, size: int, seed: int) -> tuple[Array, Array]:
        fraction = min(1.0, size / max(1, self.n_rows))
        X, w, u = kernels.sample_rows(self._blocks(), seed, fraction)
        return kernels.order_sample(X, w, u)


@dataclass
class Candidate:
    """One EM run (of ``nInit``) and its history."""

    index: int
    params: MixtureParameters | None = None
    history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    error: Exception | None = None
    final_log_likelihood: float = float("nan")
    final_counts: Array | None = None

    @property
    def running(self) -> bool:
        return self.error is None and not self.converged


@dataclass
class EMResult:
    """Outcome of :func:`fit_em` (the best candidate).

    Attributes
    ----------
    params : MixtureParameters
    n_iter : int
        EM iterations (M-steps) of the best candidate.
    converged : bool
    log_likelihood : float
        Total weighted log-likelihood of the data under ``params``.
    total_weight : float
    history : list of float
        Mean log-likelihood after 0, 1, ..., n_iter iterations.
    iteration_seconds : list of float
        Wall time of each data pass of the EM loop.
    cluster_sizes : ndarray of shape (k,)
        Rows whose most likely component is j.
    candidate_log_likelihoods : list of float
        Final mean log-likelihood of every candidate (NaN for a failed one).
    """

    params: MixtureParameters
    n_iter: int
    converged: bool
    log_likelihood: float
    total_weight: float
    history: list[float]
    iteration_seconds: list[float]
    cluster_sizes: Array
    candidate_log_likelihoods: list[float]
    best_index: int


def _initial_tasks(
    data: DataSource,
    k: int,
    covariance_type: str,
    init_mode: str,
    n_init: int,
    seed: int,
    sample_size: int,
) -> list[kernels.Task]:
    """One initialisation task per candidate, from a partition-independent sample."""
    X, w = data.sample(sample_size, seed)
    if X.shape[0] and not w.sum() > 0:
        raise InvalidInputError(_ZERO_WEIGHT)
    if X.shape[0] < k:
        raise InvalidInputError(
            f"k={k} is larger than the number of rows available to initialise from "
            f"({X.shape[0]} of {data.n_rows} rows). Use a smaller k."
        )
    if init_mode != "random" and np.unique(X, axis=0).shape[0] < k:
        raise InvalidInputError(
            f"k={k} but the rows have only {np.unique(X, axis=0).shape[0]} distinct values "
            "(in the initialisation sample). Use a smaller k."
        )
    tasks: list[kernels.Task] = []
    for i, seq in enumerate(np.random.SeedSequence(seed).spawn(n_init)):
        # Child seeds do not depend on n_init, so candidate 0 is the nInit=1 fit and more
        # candidates can only raise the final log-likelihood.
        rng = np.random.default_rng(seq)
        if init_mode == "kmeans":
            # Candidate 0 is the robust start (best k-means of 3); the others are single
            # k-means runs, which differ more from each other and explore other optima.
            centres = kmeans(X, w, k, rng, n_restarts=3 if i == 0 else 1)
        elif init_mode == "k-means++":
            centres = kmeans_plusplus(X, w, k, rng)
        elif init_mode == "random_from_data":
            centres = X[rng.choice(X.shape[0], size=k, replace=False)]
        else:
            centre = (w @ X) / w.sum()
            tasks.append(kernels.RandomTask(centre, k, int(rng.integers(2**63)), covariance_type))
            continue
        tasks.append(kernels.HardTask(np.array(centres), covariance_type))
    return tasks


def _fail(candidate: Candidate, error: Exception, n_init: int, when: str) -> None:
    candidate.error = error
    if n_init > 1:
        log.warning("candidate %d dropped %s: %s", candidate.index, when, error)


def fit_em(
    data: DataSource,
    k: int,
    covariance_type: str,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    init_mode: str = "kmeans",
    n_init: int = 1,
    seed: int = 0,
    initial_params: MixtureParameters | None = None,
    init_sample_size: int = 100_000,
) -> EMResult:
    """Fit a Gaussian mixture by EM, all candidates sharing each data pass.

    Parameters
    ----------
    data : DataSource
    k : int
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    max_iter : int
        Maximum number of EM iterations (M-steps) per candidate.
    tol : float
        Stop a candidate when its mean (per-row) log-likelihood changes by less.
    reg_covar : float
    init_mode : {'kmeans', 'k-means++', 'random_from_data', 'random'}
    n_init : int
    seed : int
    initial_params : MixtureParameters, optional
        Start from these parameters (one candidate, no initialisation pass).
    init_sample_size : int
        Rows sampled (by content hash) for the driver-side initialisation.

    Returns
    -------
    result : EMResult
    """
    start = time.perf_counter()
    if initial_params is not None:
        candidates = [Candidate(0, params=initial_params)]
    else:
        tasks = _initial_tasks(data, k, covariance_type, init_mode, n_init, seed, init_sample_size)
        flat = data.statistics(tasks, f"initial M-step ({init_mode}, {n_init} candidate(s))")
        candidates = [Candidate(i) for i in range(len(tasks))]
        for cand, stats in zip(candidates, kernels.split_statistics(flat, tasks)):
            try:
                cand.params = m_step(stats, reg_covar)
            except GaussianMixtureError as exc:
                _fail(cand, exc, n_init, "at initialisation")
        log.info("initialised %d candidate(s) in %.2f s", len(tasks), time.perf_counter() - start)
    n_cand = len(candidates)
    seconds: list[float] = []
    for iteration in range(1, max_iter + 1):
        live = [c for c in candidates if c.running]
        if not live:
            break
        t0 = time.perf_counter()
        tasks = [kernels.EMTask(c.params) for c in live]  # type: ignore[arg-type]
        flat = data.statistics(tasks, f"EM iteration {iteration}/{max_iter}")
        for cand, stats in zip(live, kernels.split_statistics(flat, tasks)):
            if not stats.total_weight > 0:
                raise InvalidInputError(_ZERO_WEIGHT)
            mean_ll = stats.log_likelihood / stats.total_weight
            cand.history.append(mean_ll)
            try:
                cand.params = m_step(stats, reg_covar)
            except GaussianMixtureError as exc:
                _fail(cand, exc, n_init, f"at iteration {iteration}")
                continue
            cand.n_iter = iteration
            if len(cand.history) > 1 and abs(cand.history[-1] - cand.history[-2]) < tol:
                cand.converged = True
        seconds.append(time.perf_counter() - t0)
        best = max(live, key=lambda c: c.history[-1])
        change = best.history[-1] - best.history[-2] if len(best.history) > 1 else float("nan")
        log.info(
            "EM iteration %d/%d: mean log-likelihood %.10g, change %.3g, %.2f s%s",
            iteration,
            max_iter,
            best.history[-1],
            change,
            seconds[-1],
            f" ({len(live)} of {n_cand} candidates in this pass)" if n_cand > 1 else "",
        )
    done = [c for c in candidates if c.error is None]
    if not done:
        first = candidates[0].error
        assert first is not None
        raise first
    # A final pass scores the final parameters: their log-likelihood (sklearn's score,
    # used by BIC/AIC) and the cluster sizes; the best candidate is chosen on it.
    tasks = [kernels.EMTask(c.params) for c in done]  # type: ignore[arg-type]
    flat = data.statistics(tasks, "score the final model(s)")
    total_weight = 0.0
    for cand, stats in zip(done, kernels.split_statistics(flat, tasks)):
        total_weight = stats.total_weight
        cand.final_log_likelihood = stats.log_likelihood
        cand.final_counts = stats.counts
        cand.history.append(stats.log_likelihood / stats.total_weight)
    best = max(done, key=lambda c: c.final_log_likelihood)
    if not best.converged:
        msg = (
            f"EM did not converge in maxIter={max_iter} iterations (last change of the mean "
            f"log-likelihood {best.history[-1] - best.history[-2]:.3g} > tol={tol}). "
            "Increase maxIter or tol, or check the data scaling."
        )
        log.warning("%s", msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    log.info(
        "done in %.2f s: %d iterations, converged=%s, mean log-likelihood %.10g",
        time.perf_counter() - start,
        best.n_iter,
        best.converged,
        best.history[-1],
    )
    assert best.params is not None and best.final_counts is not None
    return EMResult(
        params=best.params,
        n_iter=best.n_iter,
        converged=best.converged,
        log_likelihood=best.final_log_likelihood,
        total_weight=total_weight,
        history=best.history,
        iteration_seconds=seconds,
        cluster_sizes=best.final_counts,
        candidate_log_likelihoods=[
            c.final_log_likelihood / total_weight if c.error is None else float("nan")
            for c in candidates
        ],
        best_index=best.index,
    )
