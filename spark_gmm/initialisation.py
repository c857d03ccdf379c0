"""The default initialisation, ``initMode="short-em"``: short EM runs from diverse starts
on the driver's sample; the best one starts the full EM.

This is the "small EM" / em-EM strategy (Biernacki, Celeux & Govaert 2003, "Choosing
starting values for the EM algorithm for getting the highest likelihood in multivariate
Gaussian mixture models", CSDA 41; Rmixmod's default). k-means-based starts split the
data by location, so when components share a centre and differ in spread (a tight core
inside a wide halo) they all land in the same basin; starts from random
responsibilities put every component near the overall mean and let EM separate them by
spread. A few EM iterations are enough to tell the basins apart, so each start gets a
short run on a subsample of the sample and only the best continues on all the rows.

Pure numpy: the sample is the partition-independent hash sample of
:meth:`spark_gmm.engine.PreparedData.sample`, ordered by hash, and every random draw
comes from the seed, so the chosen start does not depend on the partitioning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from spark_gmm.errors import GaussianMixtureError
from spark_gmm.gaussian import (
    MixtureParameters,
    block_statistics,
    hard_assignment_statistics,
    m_step,
)
from spark_gmm.kmeans import kmeans, kmeans_plusplus

__all__ = ["SHORT_EM_ITERATIONS", "SHORT_EM_ROWS", "STARTS", "short_em"]

log = logging.getLogger("spark_gmm")

Array = NDArray[np.float64]

# Rows of the hash-ordered sample the short runs use (its first rows: a uniform subsample)
# and iterations per short run; chosen with benchmarks/init_quality.py.
SHORT_EM_ROWS = 20_000
SHORT_EM_ITERATIONS = 15
# A short run stops early when its mean log-likelihood changes by less.
SHORT_EM_TOL = 1e-5
# The starts, in the order they are drawn from the seed: (kind, k-means restarts).
STARTS = (
    ("kmeans", 3),  # best of 3 weighted k-means runs on the whole sample (initMode="kmeans")
    ("kmeans", 1),  # one more k-means run
    ("k-means++", 0),  # k-means++ seeds, no Lloyd iterations
    ("random rows", 0),  # k rows of the sample as centres
    ("random responsibilities", 0),  # sklearn's init_params="random"
    ("random responsibilities", 0),
)


@dataclass
class ShortRun:
    """One start's short run: where it began, where it ended, how good it is."""

    kind: str
    params: MixtureParameters | None
    mean_log_likelihood: float
    iterations: int
    error: str | None = None


def short_em(
    X: Array,
    w: Array,
    k: int,
    covariance_type: str,
    rng: np.random.Generator,
    reg_covar: float,
    rows: int = SHORT_EM_ROWS,
    iterations: int = SHORT_EM_ITERATIONS,
) -> tuple[MixtureParameters, list[ShortRun]]:
    """Short EM runs from every start of :data:`STARTS`; the best run's parameters.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
        The initialisation sample (hash-ordered).
    w : ndarray of shape (n_samples,)
    k : int
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    rng : numpy Generator
    reg_covar : float
    rows : int
        Rows of the sample (its first ones) the short runs use; the k-means starts see
        the whole sample.
    iterations : int
        EM iterations per short run.

    Returns
    -------
    params : MixtureParameters
        The end of the run with the highest mean log-likelihood on the subsample.
    runs : list of ShortRun
        Every run, for the log and the tests.

    Raises
    ------
    GaussianMixtureError
        When every run failed (the first run's error).
    """
    Xs = np.asfortranarray(X[:rows])
    ws = w[:rows]
    runs = []
    first_error: GaussianMixtureError | None = None
    for kind, restarts in STARTS:
        try:
            params = _start(kind, restarts, X, w, Xs, ws, k, covariance_type, rng, reg_covar)
            runs.append(_run(kind, params, Xs, ws, reg_covar, iterations))
        except GaussianMixtureError as exc:
            first_error = first_error or exc
            runs.append(ShortRun(kind, None, float("-inf"), 0, str(exc)))
    best = max(runs, key=lambda r: r.mean_log_likelihood)
    if best.params is None:
        assert first_error is not None
        raise first_error
    log.info(
        "short EM on %d rows: %s; continuing from %s",
        Xs.shape[0],
        ", ".join(
            f"{r.kind} {r.mean_log_likelihood:.5g}" if r.error is None else f"{r.kind} failed"
            for r in runs
        ),
        best.kind,
    )
    return best.params, runs


def _start(
    kind: str,
    restarts: int,
    X: Array,
    w: Array,
    Xs: Array,
    ws: Array,
    k: int,
    covariance_type: str,
    rng: np.random.Generator,
    reg_covar: float,
) -> MixtureParameters:
    """The parameters a start begins from: an M-step on the subsample's assignment."""
    if kind == "random responsibilities":
        resp = rng.uniform(size=(Xs.shape[0], k))
        resp /= resp.sum(axis=1, keepdims=True)
        centre = np.repeat(((ws @ Xs) / ws.sum())[None, :], k, axis=0)
        stats = hard_assignment_statistics(Xs, ws, centre, covariance_type, resp=resp)
        return m_step(stats, reg_covar)
    if kind == "kmeans":
        centres = kmeans(X, w, k, rng, n_restarts=restarts)
    elif kind == "k-means++":
        centres = kmeans_plusplus(X, w, k, rng)
    else:  # random rows
        centres = X[rng.choice(X.shape[0], size=k, replace=False)]
    stats = hard_assignment_statistics(Xs, ws, np.array(centres), covariance_type)
    return m_step(stats, reg_covar)


def _run(
    kind: str, params: MixtureParameters, Xs: Array, ws: Array, reg_covar: float, iterations: int
) -> ShortRun:
    """``iterations`` EM steps on the subsample; the mean log-likelihood of the last
    E-step (that of the parameters before the last M-step)."""
    history: list[float] = []
    for _ in range(iterations):
        stats = block_statistics(Xs, ws, params)
        history.append(stats.log_likelihood / stats.total_weight)
        params = m_step(stats, reg_covar)
        if len(history) > 1 and abs(history[-1] - history[-2]) < SHORT_EM_TOL:
            break
    return ShortRun(kind, params, history[-1], len(history))
