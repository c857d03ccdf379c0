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

The short runs have a fixed budget of row-iterations: what :data:`STARTS` cost on a
subsample of :data:`SHORT_EM_ROWS` rows at :data:`SHORT_EM_ITERATIONS` iterations each. A
smaller subsample (a table of fewer rows) spends the same budget on longer runs and on more
starts drawn from random responsibilities and random rows, up to :data:`MAX_STARTS`. On
small real data sets, the best optimum is often reached only from such a start run
for tens of iterations (``benchmarks/init_quality.py``: wine, breast cancer). The extra
runs cost at most the driver time of a large table's start with the same k and d:
fractions of a second on iris, seconds on 1797 x 20 with k=10.

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

__all__ = [
    "MAX_SHORT_EM_ITERATIONS",
    "MAX_STARTS",
    "SHORT_EM_ITERATIONS",
    "SHORT_EM_ROWS",
    "STARTS",
    "short_em",
]

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
    ("k-means++", 0),  # k-means++ seeds, no Lloyd iterations
    ("random rows", 0),  # k rows of the sample as centres
    ("random responsibilities", 0),  # sklearn's init_params="random"
    ("random responsibilities", 0),
)
# The starts added, in turn, while a small subsample leaves budget; and the caps on the
# number of starts and on the iterations of one run.
EXTRA_STARTS = ("random responsibilities", "random rows")
MAX_STARTS = 50
MAX_SHORT_EM_ITERATIONS = 100


def short_em_schedule(n_rows: int) -> tuple[int, int]:
    """Iterations per short run and the budget in row-iterations for ``n_rows`` rows.

    The budget is what :data:`STARTS` cost at :data:`SHORT_EM_ROWS` rows. A run on
    fewer rows may be longer, by the square root of the ratio (capped): longer runs let
    the random starts separate into their basins, more starts explore more basins, and
    the square root shares the budget between the two.
    """
    budget = SHORT_EM_ROWS * SHORT_EM_ITERATIONS * len(STARTS)
    ratio = SHORT_EM_ROWS / max(1, n_rows)
    iterations = int(min(MAX_SHORT_EM_ITERATIONS, SHORT_EM_ITERATIONS * max(1.0, ratio) ** 0.5))
    return iterations, budget


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
) -> tuple[MixtureParameters, list[ShortRun]]:
    """Short EM runs from every start of :data:`STARTS`, then from :data:`EXTRA_STARTS`
    while the budget of :func:`short_em_schedule` lasts; the best run's parameters.

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
    iterations, budget = short_em_schedule(Xs.shape[0])
    runs: list[ShortRun] = []
    first_error: GaussianMixtureError | None = None
    spent = 0
    while len(runs) < MAX_STARTS:
        if len(runs) < len(STARTS):
            kind, restarts = STARTS[len(runs)]
        elif Xs.shape[0] < SHORT_EM_ROWS and spent + iterations * Xs.shape[0] <= budget:
            kind, restarts = EXTRA_STARTS[(len(runs) - len(STARTS)) % len(EXTRA_STARTS)], 0
        else:
            break
        try:
            params = _start(kind, restarts, X, w, Xs, ws, k, covariance_type, rng, reg_covar)
            runs.append(_run(kind, params, Xs, ws, reg_covar, iterations))
        except GaussianMixtureError as exc:
            first_error = first_error or exc
            runs.append(ShortRun(kind, None, float("-inf"), 0, str(exc)))
        spent += max(1, runs[-1].iterations) * Xs.shape[0]
    best_index = max(range(len(runs)), key=lambda i: runs[i].mean_log_likelihood)
    best = runs[best_index]
    if best.params is None:
        assert first_error is not None
        raise first_error
    log.info(
        "short EM on %d rows, %d starts, up to %d iterations each: %s; continuing from %s",
        Xs.shape[0],
        len(runs),
        iterations,
        ", ".join(
            f"{r.kind} {r.mean_log_likelihood:.5g}" if r.error is None else f"{r.kind} failed"
            for r in runs[: len(STARTS)]
        )
        + (f", {len(runs) - len(STARTS)} more" if len(runs) > len(STARTS) else ""),
        f"{best.kind} (start {best_index + 1})",
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
