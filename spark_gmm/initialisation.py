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

EM does not depend on the units of the columns; distances do. k-means, k-means++ and
nearest-row starts in the data's units are led by the column of widest spread (raw
wine: proline, in the hundreds), so some of them are drawn on standardised columns
(:class:`Start`), the way mclust draws its hierarchical start on scaled data; the
others stay in the data's units, where the scale may be meaningful (principal
components).

A table of :data:`SHORT_EM_ROWS` rows or more runs one round of :data:`STARTS`, each
for :data:`SHORT_EM_ITERATIONS` iterations on a subsample of :data:`SHORT_EM_ROWS` rows.
A smaller subsample (a table of fewer rows) has a fixed budget of row-iterations, that
of :data:`BUDGET_ROUNDS` such rounds, and spends it on more starts, drawn in turn from
random responsibilities, random rows and single k-means runs, up to :data:`MAX_STARTS`,
in rounds of successive halving: after each round of :data:`SHORT_EM_ITERATIONS`
iterations the better half goes on. The promising basins get the long runs that the
best optimum of a small real table often needs (``benchmarks/init_quality.py``: breast
cancer, digits), and what is left of the budget takes the last run towards convergence.

Runs are ranked by mean log-likelihood, except that a run with a component at the
covariance floor (smallest variance at most :data:`FLOOR_FACTOR` x ``reg_covar``) ranks
below every run without one. Such a component sits on rows that lie in a subspace
(repeated or rounded values); its likelihood grows without bound as ``reg_covar``
shrinks, so it measures the regulariser, not the fit (a "spurious maximiser", McLachlan
& Peel 2000, section 3.10). When every run has one, the best of them is kept.

Pure numpy: the sample is the partition-independent hash sample of
:meth:`spark_gmm.engine.PreparedData.sample`, ordered by hash, and every random draw
comes from the seed, so the chosen start does not depend on the partitioning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from spark_gmm.errors import GaussianMixtureError
from spark_gmm.gaussian import (
    MixtureParameters,
    SufficientStatistics,
    block_statistics,
    hard_assignment_statistics,
    m_step,
    nearest_centre,
)
from spark_gmm.kernels import kernel_rows
from spark_gmm.kmeans import kmeans, kmeans_plusplus

__all__ = [
    "BUDGET_ROUNDS",
    "FLOOR_FACTOR",
    "MAX_STARTS",
    "SHORT_EM_ITERATIONS",
    "SHORT_EM_ROWS",
    "STARTS",
    "Start",
    "short_em",
    "short_em_schedule",
    "smallest_variance",
]

log = logging.getLogger("spark_gmm")

Array = NDArray[np.float64]

# Rows of the hash-ordered sample the short runs use (its first rows: a uniform subsample)
# and iterations per round; chosen with benchmarks/init_quality.py.
SHORT_EM_ROWS = 20_000
SHORT_EM_ITERATIONS = 15
# A short run stops early when its mean log-likelihood changes by less.
SHORT_EM_TOL = 1e-5


class Start(NamedTuple):
    """A kind of start; the distance-based ones measure distances in the data's units or
    on standardised columns (``standardised``)."""

    kind: str
    kmeans_restarts: int = 0
    standardised: bool = False

    def __str__(self) -> str:
        return self.kind + (" (standardised)" if self.standardised else "")


# The starts, in the order they are drawn from the seed.
STARTS = (
    # best of 3 weighted k-means runs on the whole sample, on standardised columns:
    # in the data's units k-means is led by the column of widest spread (a table in
    # mixed units, benchmarks/init_quality.py)
    Start("kmeans", 3, standardised=True),
    Start("k-means++"),  # k-means++ seeds in the data's units, no Lloyd iterations
    Start("random rows"),  # k rows of the sample as centres
    Start("random responsibilities"),  # sklearn's init_params="random"
    Start("random responsibilities"),
)
# The starts added, in turn, when a small subsample leaves budget (single k-means runs:
# on digits the best basins are k-means ones, on breast cancer random ones; each
# distance-based kind in the data's units and standardised: raw wine's best basin is
# found from standardised starts only); and their cap.
EXTRA_STARTS = (
    Start("random responsibilities"),
    Start("random rows"),
    Start("kmeans", 1),
    Start("random responsibilities"),
    Start("random rows", standardised=True),
    Start("kmeans", 1, standardised=True),
)
MAX_STARTS = 100
# A small table's budget, in rounds of STARTS at SHORT_EM_ROWS rows. With one round (and
# 50 starts at most), breast cancer and digits PCA 20 met init_quality.py's targets in
# seeds 0-4 but not in every five seeds of 0-19 (benchmarks/init_robustness.py).
BUDGET_ROUNDS = 2
# A component whose smallest variance is at most this many times reg_covar is "at the
# floor": more than half of that variance is the regulariser.
FLOOR_FACTOR = 2.0


def short_em_schedule(n_rows: int) -> tuple[int, int]:
    """Number of starts and the budget in row-iterations for ``n_rows`` rows.

    The budget is :data:`BUDGET_ROUNDS` rounds of :data:`STARTS` at :data:`SHORT_EM_ROWS`
    rows. Rounds of successive halving cost less than twice their first round, so a
    subsample of fewer rows affords ``budget / (2 x SHORT_EM_ITERATIONS x n_rows)``
    starts, at least as many as :data:`STARTS` and at most :data:`MAX_STARTS`. From
    :data:`SHORT_EM_ROWS` rows on (as long as ``BUDGET_ROUNDS <= 2``) that is the five
    starts, and :func:`short_em` runs their first round only.
    """
    budget = BUDGET_ROUNDS * SHORT_EM_ROWS * SHORT_EM_ITERATIONS * len(STARTS)
    affordable = budget // (2 * SHORT_EM_ITERATIONS * max(1, n_rows))
    return int(min(MAX_STARTS, max(len(STARTS), affordable))), budget


def smallest_variance(params: MixtureParameters) -> float:
    """The smallest eigenvalue of any component's covariance."""
    if params.covariance_type in ("full", "tied"):
        return float(np.linalg.eigvalsh(params.covariances).min())
    return float(np.min(params.covariances))


@dataclass(eq=False)
class ShortRun:
    """One start's short run: where it is, how good it is, how far it went."""

    kind: str
    params: MixtureParameters | None
    mean_log_likelihood: float = float("-inf")
    iterations: int = 0
    error: str | None = None
    converged: bool = False
    at_floor: bool = False

    def rank(self) -> tuple[bool, float]:
        """Sort key, higher is better: off the covariance floor first, then likelihood."""
        return (self.params is not None and not self.at_floor, self.mean_log_likelihood)


def short_em(
    X: Array,
    w: Array,
    k: int,
    covariance_type: str,
    rng: np.random.Generator,
    reg_covar: float,
    rows: int = SHORT_EM_ROWS,
) -> tuple[MixtureParameters, list[ShortRun]]:
    """Short EM runs from the starts of :func:`short_em_schedule`, in rounds of
    successive halving; the best run's parameters.

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
        The end of the best run (:meth:`ShortRun.rank`) on the subsample.
    runs : list of ShortRun
        Every run, in the order of its start, for the log and the tests.

    Raises
    ------
    GaussianMixtureError
        When every run failed (the first error).
    """
    Xs = np.asfortranarray(X[:rows])
    ws = w[:rows]
    n = Xs.shape[0]
    n_starts, budget = short_em_schedule(n)
    columns = _Columns(X, w, rows)
    runs: list[ShortRun] = []
    errors: list[GaussianMixtureError] = []
    for i in range(n_starts):
        if i < len(STARTS):
            start = STARTS[i]
        else:
            start = EXTRA_STARTS[(i - len(STARTS)) % len(EXTRA_STARTS)]
        try:
            params = _start(start, columns, X, w, Xs, ws, k, covariance_type, rng, reg_covar)
            runs.append(ShortRun(str(start), params))
        except GaussianMixtureError as exc:
            errors.append(exc)
            runs.append(ShortRun(str(start), None, error=str(exc)))

    spent = 0
    rounds = 0
    live = [r for r in runs if r.params is not None]
    while live:
        # The first round always runs; a later one on a small subsample only, and only
        # if it fits in what is left of the budget.
        pending = sum(not r.converged for r in live) * SHORT_EM_ITERATIONS * n
        if rounds and (n >= SHORT_EM_ROWS or pending > budget - spent):
            break
        spent += _advance_all(live, Xs, ws, reg_covar, SHORT_EM_ITERATIONS, errors)
        rounds += 1
        live = sorted((r for r in live if r.params is not None), key=ShortRun.rank, reverse=True)
        live = live[: (len(live) + 1) // 2]
        if len(live) == 1 and n < SHORT_EM_ROWS:
            # What is left of the budget takes the last run towards convergence.
            _advance_all(live, Xs, ws, reg_covar, (budget - spent) // n, errors)
            break
    best_index = max(range(len(runs)), key=lambda i: runs[i].rank())
    best = runs[best_index]
    if best.params is None:
        raise errors[0]
    log.info(
        "short EM on %d rows, %d starts, %d round(s) of %d iterations: %s; continuing from %s",
        n,
        len(runs),
        rounds,
        SHORT_EM_ITERATIONS,
        ", ".join(
            f"{r.kind} {r.mean_log_likelihood:.5g}" if r.error is None else f"{r.kind} failed"
            for r in runs[: len(STARTS)]
        )
        + (f", {len(runs) - len(STARTS)} more" if len(runs) > len(STARTS) else ""),
        f"{best.kind} (start {best_index + 1}, {best.iterations} iterations"
        + (", a component at the covariance floor" if best.at_floor else "")
        + ")",
    )
    return best.params, runs


class _Columns:
    """The sample and its first ``rows`` rows on standardised columns (each column less
    its mean, divided by its standard deviation on the sample), computed once for every
    standardised start.

    EM does not depend on the units of the columns (rescaling a column rescales the
    fitted means and covariances alike, up to ``reg_covar``), but distances do: in the
    data's units, k-means and nearest-row assignments are led by the column of widest
    spread. A start drawn on standardised columns does not depend on the units either.
    """

    def __init__(self, X: Array, w: Array, rows: int) -> None:
        total = w.sum()
        self.mean = (w @ X) / total
        centred = X - self.mean
        scale = np.sqrt((w @ np.square(centred)) / total)
        # A constant column stays as it is (there is nothing to scale).
        self.scale = np.where(scale > 0, scale, 1.0)
        self.sample = np.asfortranarray(centred / self.scale)
        self.subsample = np.asfortranarray(self.sample[:rows])


def _start(
    start: Start,
    columns: _Columns,
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
    if start.kind == "random responsibilities":
        resp = rng.uniform(size=(Xs.shape[0], k))
        resp /= resp.sum(axis=1, keepdims=True)
        centre = np.repeat(((ws @ Xs) / ws.sum())[None, :], k, axis=0)
        stats = hard_assignment_statistics(Xs, ws, centre, covariance_type, resp=resp)
        return m_step(stats, reg_covar)
    if not start.standardised:
        centres = _centres(start, X, w, k, rng)
        stats = hard_assignment_statistics(Xs, ws, centres, covariance_type)
        return m_step(stats, reg_covar)
    # Centres and the nearest-centre assignment on standardised columns; the M-step on
    # the data in its units, so the start is the same model whatever the units.
    centres = _centres(start, columns.sample, w, k, rng)
    labels = nearest_centre(columns.subsample, centres)
    resp = np.zeros((Xs.shape[0], k))
    resp[np.arange(Xs.shape[0]), labels] = 1.0
    stats = hard_assignment_statistics(
        Xs, ws, columns.mean + centres * columns.scale, covariance_type, resp=resp
    )
    return m_step(stats, reg_covar)


def _centres(start: Start, X: Array, w: Array, k: int, rng: np.random.Generator) -> Array:
    """k centres for a distance-based start."""
    if start.kind == "kmeans":
        return np.array(kmeans(X, w, k, rng, n_restarts=start.kmeans_restarts))
    if start.kind == "k-means++":
        return np.array(kmeans_plusplus(X, w, k, rng))
    return X[rng.choice(X.shape[0], size=k, replace=False)]  # random rows


def _advance_all(
    live: list[ShortRun],
    Xs: Array,
    ws: Array,
    reg_covar: float,
    iterations: int,
    errors: list[GaussianMixtureError],
) -> int:
    """Up to ``iterations`` more EM steps for each run, stopping each at convergence;
    the row-iterations spent. A run that fails is dropped (its error kept)."""
    spent = 0
    for run in live:
        if run.converged or run.params is None:
            continue
        before = run.iterations
        try:
            _advance(run, Xs, ws, reg_covar, iterations)
        except GaussianMixtureError as exc:
            errors.append(exc)
            run.params, run.error, run.mean_log_likelihood = None, str(exc), float("-inf")
        spent += max(1, run.iterations - before) * Xs.shape[0]
    return spent


def _advance(run: ShortRun, Xs: Array, ws: Array, reg_covar: float, iterations: int) -> None:
    """Up to ``iterations`` EM steps on the subsample from where ``run`` is.

    ``run.mean_log_likelihood`` is that of the last E-step (the parameters before the
    last M-step); the covariance floor is judged on the parameters the run ends at.
    """
    assert run.params is not None
    params = run.params
    last = run.mean_log_likelihood
    # Kernel-sized blocks, as on the executors: at d = 768 one (2d + 1, n) block of
    # features for all 20,000 rows would be 246 MB on the driver.
    step = kernel_rows(Xs.shape[1])
    for _ in range(iterations):
        stats = SufficientStatistics.zeros(params.covariance_type, params.means)
        for start in range(0, Xs.shape[0], step):
            rows = slice(start, start + step)
            stats.merge(block_statistics(Xs[rows], ws[rows], params))
        current = stats.log_likelihood / stats.total_weight
        params = m_step(stats, reg_covar)
        run.iterations += 1
        run.converged = abs(current - last) < SHORT_EM_TOL
        last = current
        if run.converged:
            break
    run.params, run.mean_log_likelihood = params, last
    run.at_floor = smallest_variance(params) <= FLOOR_FACTOR * reg_covar
