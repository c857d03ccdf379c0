"""The EM loop on the driver: initialisation, iterations, convergence, restarts.

Spark-agnostic: it talks to the data only through ``data.statistics(tasks, description)``
(one pass computing the statistics of a list of tasks) and ``data.sample(size, seed)``.
:class:`spark_gmm.engine.PreparedData` implements them on Spark, :class:`InMemoryData`
on a numpy array (tests, small data on the driver).

All candidates advance together: each pass computes the statistics of every candidate
still running, so restarts (``nInit``) and model selection (:func:`fit_grid`, a grid of
k and covariance types) cost CPU in the executors but no extra data scans.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from spark_gmm import kernels
from spark_gmm.checkpoint import Checkpointer
from spark_gmm.errors import GaussianMixtureError, InvalidInputError
from spark_gmm.gaussian import MixtureParameters, SufficientStatistics, m_step
from spark_gmm.initialisation import short_em
from spark_gmm.kmeans import kmeans, kmeans_plusplus

__all__ = [
    "INIT_MODES",
    "ConvergenceWarning",
    "EMResult",
    "GridCell",
    "InMemoryData",
    "fit_em",
    "fit_grid",
]

log = logging.getLogger("spark_gmm")

Array = NDArray[np.float64]

INIT_MODES = ("short-em", "kmeans", "k-means++", "random_from_data", "random")

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

    def fingerprint(self) -> dict[str, Any]:
        return kernels.combine_fingerprints(
            [kernels.fingerprint_bytes([block]) for block in self._blocks()]
        )


@dataclass
class Candidate:
    """One EM run: a (k, covariance type) of the grid and one of its ``nInit`` starts."""

    index: int
    k: int
    covariance_type: str
    init_index: int = 0
    params: Any = None  # MixtureParameters, or the variant's own parameters
    history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    error: Exception | None = None
    final_log_likelihood: float = float("nan")
    final_counts: Array | None = None
    final_total_weight: float = float("nan")
    seconds: float = 0.0

    @property
    def running(self) -> bool:
        return self.error is None and not self.converged

    @property
    def label(self) -> str:
        return f"k={self.k} {self.covariance_type} start {self.init_index}"


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
    best_index : int
        Which of the ``nInit`` starts won.
    seconds : float
        Compute time charged to this fit's candidates: executor seconds of their
        statistics plus driver seconds of their M-steps.
    """

    params: Any  # MixtureParameters, or the variant's own (VariationalParameters)
    n_iter: int
    converged: bool
    log_likelihood: float
    total_weight: float
    history: list[float]
    iteration_seconds: list[float]
    cluster_sizes: Array
    candidate_log_likelihoods: list[float]
    best_index: int
    seconds: float = 0.0


# ---------------------------------------------------------------------------
# Variants: what an E-step pass computes, what the M-step does, what EM climbs
# ---------------------------------------------------------------------------


class Variant(Protocol):
    """The parts of EM that differ between maximum likelihood and the variational
    (Bayesian) mixture; the loop below is the same for both."""

    @property
    def objective_name(self) -> str: ...

    def task(self, params: Any) -> kernels.Task: ...

    def m_step(self, stats: SufficientStatistics) -> Any: ...

    def objective(self, stats: SufficientStatistics, params: Any) -> float: ...

    def score_task(self, params: Any) -> kernels.Task: ...

    def final_objective(self, stats: SufficientStatistics) -> float | None: ...

    def rank(self, candidate: Candidate) -> float: ...

    def refine(
        self, stats: SufficientStatistics, params: Any, objective: float
    ) -> tuple[Any, float, bool]:
        """A move after the M-step (the variational merges): the parameters, their
        objective, and whether they changed."""
        ...


@dataclass(frozen=True)
class MaximumLikelihood:
    """Plain EM: the objective is the mean log-likelihood of the parameters the E-step
    used; the best start has the highest final log-likelihood. With ``missing``, NaN
    features are marginalised and the objective is the log-likelihood of the observed
    values."""

    reg_covar: float
    objective_name: str = "mean log-likelihood"
    missing: bool = False

    def task(self, params: MixtureParameters) -> kernels.Task:
        return kernels.EMTask(params, self.missing)

    def m_step(self, stats: SufficientStatistics) -> MixtureParameters:
        return m_step(stats, self.reg_covar)

    def objective(self, stats: SufficientStatistics, params: Any) -> float:
        return stats.log_likelihood / stats.total_weight

    def score_task(self, params: MixtureParameters) -> kernels.Task:
        return kernels.ScoreTask(params, self.missing)

    def final_objective(self, stats: SufficientStatistics) -> float | None:
        return stats.log_likelihood / stats.total_weight

    def rank(self, candidate: Candidate) -> float:
        return candidate.final_log_likelihood

    def refine(
        self, stats: SufficientStatistics, params: Any, objective: float
    ) -> tuple[Any, float, bool]:
        return params, objective, False


@dataclass(frozen=True)
class Variational:
    """Variational Bayes (:mod:`spark_gmm.variational`): the objective is sklearn's
    lower bound after each M-step (a total, not a mean, as sklearn's ``tol`` applies to
    it); the best start has the highest lower bound. With ``merges``, every pass also
    weighs merging pairs of components (:func:`spark_gmm.variational.merge_components`)."""

    priors: Any  # spark_gmm.variational.Priors
    reg_covar: float
    objective_name: str = "lower bound"
    merges: bool = False

    def task(self, params: Any) -> kernels.Task:
        from spark_gmm.variational import merge_candidates, scoring_parameters

        pairs = merge_candidates(params, self.priors) if self.merges else None
        return kernels.VariationalTask(scoring_parameters(params), pairs)

    def m_step(self, stats: SufficientStatistics) -> Any:
        from spark_gmm import variational

        return variational.m_step(stats, self.priors, self.reg_covar)

    def objective(self, stats: SufficientStatistics, params: Any) -> float:
        from spark_gmm.variational import lower_bound

        return lower_bound(params, stats.resp_log_resp)

    def score_task(self, params: Any) -> kernels.Task:
        from spark_gmm.variational import scoring_parameters

        return kernels.ScoreTask(scoring_parameters(params))

    def final_objective(self, stats: SufficientStatistics) -> float | None:
        return None

    def rank(self, candidate: Candidate) -> float:
        return candidate.history[-1] if candidate.history else float("-inf")

    def refine(
        self, stats: SufficientStatistics, params: Any, objective: float
    ) -> tuple[Any, float, bool]:
        from spark_gmm.variational import merge_components

        merged_params, bound, merged = merge_components(
            stats, self.priors, self.reg_covar, objective
        )
        if merged_params is None:
            return params, objective, False
        log.info(
            "merged components %s: lower bound %.10g -> %.10g",
            ", ".join(f"{b} into {a}" for a, b in merged),
            objective,
            bound,
        )
        return merged_params, bound, True


@dataclass
class GridCell:
    """One (k, covariance type) of :func:`fit_grid`: its best start, or why all failed."""

    k: int
    covariance_type: str
    result: EMResult | None
    error: Exception | None


def _checked_sample(
    data: DataSource, grid: Sequence[tuple[int, str]], init_mode: str, seed: int, size: int
) -> tuple[Array, Array]:
    """The initialisation sample, refused when it cannot give k components.

    Missing values (NaN, ``handleMissing="marginalize"``) are filled with their
    feature's mean over the sample: the initialisation only needs a start, and the EM
    iterations marginalise them.
    """
    X, w = data.sample(size, seed)
    missing = np.isnan(X)
    if missing.any():
        _warn_of_missing_cost(X)
        observed_weight = w @ ~missing
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (w @ np.where(missing, 0.0, X)) / observed_weight
        means[~(observed_weight > 0)] = 0.0  # a feature no sampled row has
        X = np.where(missing, means, X)
    if X.shape[0] and not w.sum() > 0:
        raise InvalidInputError(_ZERO_WEIGHT)
    k_max = max(k for k, _ in grid)
    if X.shape[0] < k_max:
        raise InvalidInputError(
            f"k={k_max} is larger than the number of rows available to initialise from "
            f"({X.shape[0]} of {data.n_rows} rows). Use a smaller k."
        )
    if init_mode != "random":
        n_distinct = np.unique(X, axis=0).shape[0]
        if n_distinct < k_max:
            raise InvalidInputError(
                f"k={k_max} but the rows have only {n_distinct} distinct values "
                "(in the initialisation sample). Use a smaller k."
            )
    return X, w


# Warn when the missing values at least double the E-step's arithmetic.
_MISSING_COST_WARNING = 2.0


def _warn_of_missing_cost(X: Array) -> None:
    """A warning when the sample's missing values make the E-step's arithmetic at least
    ``_MISSING_COST_WARNING`` times that of complete rows (:func:`relative_cost`)."""
    from spark_gmm.missing import relative_cost

    cost = relative_cost(X)
    if cost >= _MISSING_COST_WARNING:
        share = float(np.isnan(X).any(axis=1).mean())
        log.warning(
            "%.0f%% of the sampled rows have missing features: marginalising them costs "
            "about %.1fx the arithmetic of a complete-data EM iteration. If that is too "
            "slow, drop the features that are most often missing, or impute them before "
            "the fit.",
            100.0 * share,
            cost,
        )


def _short_em_candidates(
    data: DataSource,
    grid: Sequence[tuple[int, str]],
    n_init: int,
    seed: int,
    sample_size: int,
    reg_covar: float,
) -> list[Candidate]:
    """``initMode="short-em"``: every candidate starts where the best of its short EM
    runs on the sample ended (:mod:`spark_gmm.initialisation`); no pass over the data.

    Candidate ``i`` of every (k, type) draws from the same child seed as candidate ``i``
    of a single fit with that k and type, so grid cells equal the separate fits.
    """
    X, w = _checked_sample(data, grid, "short-em", seed, sample_size)
    seeds = np.random.SeedSequence(seed).spawn(n_init)
    out: list[Candidate] = []
    quiet = len(grid) * n_init == 1
    for k in dict.fromkeys(k for k, _ in grid):
        for i, seq in enumerate(seeds):
            for t in (t for kk, t in grid if kk == k):
                cand = Candidate(len(out), k, t, i)
                start = time.perf_counter()
                try:
                    cand.params, _ = short_em(X, w, k, t, np.random.default_rng(seq), reg_covar)
                except GaussianMixtureError as exc:
                    _fail(cand, exc, quiet, "at initialisation")
                cand.seconds += time.perf_counter() - start
                out.append(cand)
    return out


def _initial_tasks(
    data: DataSource,
    grid: Sequence[tuple[int, str]],
    init_mode: str,
    n_init: int,
    seed: int,
    sample_size: int,
) -> list[tuple[int, str, int, kernels.Task]]:
    """``(k, covariance_type, start, task)`` for every candidate of the grid.

    One partition-independent sample serves every k. The starting centres depend on k
    and the start only, so they are computed once per k and shared by all covariance
    types; with the seeds below, the candidates of any (k, type) are exactly those of a
    single fit with that k and type.
    """
    X, w = _checked_sample(data, grid, init_mode, seed, sample_size)
    out: list[tuple[int, str, int, kernels.Task]] = []
    for k in dict.fromkeys(k for k, _ in grid):
        types = [t for kk, t in grid if kk == k]
        for i, seq in enumerate(np.random.SeedSequence(seed).spawn(n_init)):
            # Child seeds do not depend on n_init, so candidate 0 is the nInit=1 fit and
            # more candidates can only raise the final log-likelihood.
            rng = np.random.default_rng(seq)
            if init_mode == "random":
                centre = (w @ X) / w.sum()
                task_seed = int(rng.integers(2**63))
                for t in types:
                    out.append((k, t, i, kernels.RandomTask(centre, k, task_seed, t)))
                continue
            if init_mode == "kmeans":
                # Candidate 0 is the robust start (best k-means of 3); the others are
                # single k-means runs, which differ more and explore other optima.
                centres = kmeans(X, w, k, rng, n_restarts=3 if i == 0 else 1)
            elif init_mode == "k-means++":
                centres = kmeans_plusplus(X, w, k, rng)
            else:  # random_from_data
                centres = X[rng.choice(X.shape[0], size=k, replace=False)]
            for t in types:
                out.append((k, t, i, kernels.HardTask(np.array(centres), t)))
    return out


def _fail(candidate: Candidate, error: Exception, quiet: bool, when: str) -> None:
    candidate.error = error
    if not quiet:
        log.warning("candidate %s dropped %s: %s", candidate.label, when, error)


def _m_step(candidate: Candidate, stats: SufficientStatistics, variant: Variant) -> bool:
    """Run the M-step into ``candidate``; False (and the error recorded) if it failed."""
    start = time.perf_counter()
    try:
        candidate.params = variant.m_step(stats)
        return True
    except GaussianMixtureError as exc:
        candidate.error = exc
        return False
    finally:
        candidate.seconds += time.perf_counter() - start


def _pass(
    data: DataSource, candidates: Sequence[Candidate], tasks: Sequence[kernels.Task], what: str
) -> list[SufficientStatistics]:
    """One data pass for ``tasks`` (one per candidate); charges each its executor time."""
    flat = data.statistics(tasks, what)
    for cand, sec in zip(candidates, kernels.task_seconds(flat, tasks)):
        cand.seconds += float(sec)
    return kernels.split_statistics(flat, tasks)


def _initialise(
    data: DataSource,
    grid: Sequence[tuple[int, str]],
    *,
    variant: Variant,
    reg_covar: float,
    init_mode: str,
    n_init: int,
    seed: int,
    init_sample_size: int,
) -> list[Candidate]:
    start = time.perf_counter()
    quiet = len(grid) * n_init == 1
    if init_mode == "short-em":
        candidates = _short_em_candidates(data, grid, n_init, seed, init_sample_size, reg_covar)
        live = [c for c in candidates if c.error is None]
        if live and not isinstance(variant, MaximumLikelihood):
            # The short runs give ML parameters: one pass of their E-step gives the
            # responsibilities the variant's first M-step starts from.
            tasks: list[kernels.Task] = [kernels.EMTask(c.params) for c in live]
            what = f"initial M-step (short-em, {len(live)} candidate(s))"
            for cand, stats in zip(live, _pass(data, live, tasks, what)):
                if not _m_step(cand, stats, variant):
                    _fail(cand, cand.error, quiet, "at initialisation")  # type: ignore[arg-type]
        log.info(
            "initialised %d candidate(s) in %.2f s", len(candidates), time.perf_counter() - start
        )
        return candidates
    specs = _initial_tasks(data, grid, init_mode, n_init, seed, init_sample_size)
    candidates = [Candidate(i, k, t, s) for i, (k, t, s, _) in enumerate(specs)]
    tasks = [task for *_, task in specs]
    quiet = len(candidates) == 1
    what = f"initial M-step ({init_mode}, {len(candidates)} candidate(s))"
    for cand, stats in zip(candidates, _pass(data, candidates, tasks, what)):
        if not _m_step(cand, stats, variant):
            assert cand.error is not None
            _fail(cand, cand.error, quiet, "at initialisation")
    log.info("initialised %d candidate(s) in %.2f s", len(tasks), time.perf_counter() - start)
    return candidates


def _iterate(
    data: DataSource,
    candidates: list[Candidate],
    *,
    max_iter: int,
    tol: float,
    variant: Variant,
    done_iterations: int = 0,
    seconds: list[float] | None = None,
    checkpoint: Checkpointer | None = None,
) -> list[float]:
    """Advance every live candidate by EM until it converges, fails or hits ``max_iter``,
    all in shared passes; then score the final parameters. Returns the pass times.

    ``done_iterations`` and ``seconds`` continue a resumed fit; ``checkpoint`` saves the
    state after every ``checkpoint.interval``-th iteration."""
    n_cand = len(candidates)
    quiet = n_cand == 1
    seconds = list(seconds or [])
    last = done_iterations
    for iteration in range(done_iterations + 1, max_iter + 1):
        live = [c for c in candidates if c.running]
        if not live:
            break
        t0 = time.perf_counter()
        tasks = [variant.task(c.params) for c in live]
        stats_list = _pass(data, live, tasks, f"EM iteration {iteration}/{max_iter}")
        for cand, stats in zip(live, stats_list):
            if not stats.total_weight > 0:
                raise InvalidInputError(_ZERO_WEIGHT)
            if not _m_step(cand, stats, variant):
                assert cand.error is not None
                _fail(cand, cand.error, quiet, f"at iteration {iteration}")
                continue
            objective = variant.objective(stats, cand.params)
            cand.params, objective, moved = variant.refine(stats, cand.params, objective)
            cand.history.append(objective)
            cand.n_iter = iteration
            change = abs(cand.history[-1] - cand.history[-2]) if len(cand.history) > 1 else None
            if not moved and change is not None and change < tol:
                cand.converged = True
        seconds.append(time.perf_counter() - t0)
        ran = [c for c in live if c.error is None]
        if not ran:
            continue
        best = max(ran, key=lambda c: c.history[-1])
        change = best.history[-1] - best.history[-2] if len(best.history) > 1 else float("nan")
        log.info(
            "EM iteration %d/%d: %s %.10g, change %.3g, %.2f s%s",
            iteration,
            max_iter,
            variant.objective_name,
            best.history[-1],
            change,
            seconds[-1],
            f" ({len(live)} of {n_cand} candidates in this pass)" if n_cand > 1 else "",
        )
        if checkpoint is not None:
            checkpoint.maybe_save(iteration, candidates, seconds)
        last = iteration
    if checkpoint is not None and last % checkpoint.interval:
        # The final state too, so that a job that dies before saving its model resumes
        # straight to the final scoring pass.
        checkpoint.save(last, candidates, seconds)
    # A final pass scores the final parameters: their log-likelihood (sklearn's score,
    # used by BIC/AIC) and the cluster sizes; the best start is chosen on it.
    done = [c for c in candidates if c.error is None]
    if done:
        final = [variant.score_task(c.params) for c in done]
        what = f"score the final model{'s' if len(done) > 1 else ''}"
        for cand, stats in zip(done, _pass(data, done, final, what)):
            cand.final_log_likelihood = stats.log_likelihood
            cand.final_counts = stats.counts
            cand.final_total_weight = stats.total_weight
            final_objective = variant.final_objective(stats)
            if final_objective is not None:
                cand.history.append(final_objective)
    return seconds


def _start(
    data: DataSource,
    grid: Sequence[tuple[int, str]],
    checkpoint: Checkpointer | None,
    resume: bool,
    initial_params: MixtureParameters | None = None,
    **init: Any,
) -> tuple[list[Candidate], int, list[float]]:
    """Candidates to iterate, iterations already done and their pass times: from the
    checkpoint when resuming, else freshly initialised (and checkpointed)."""
    if checkpoint is not None and resume:
        state = checkpoint.load()
        if state is not None:
            candidates = Checkpointer.restore_candidates(state, Candidate)
            log.info(
                "resuming from %s after EM iteration %d (%d candidate(s))",
                checkpoint.path,
                state["iteration"],
                len(candidates),
            )
            return candidates, int(state["iteration"]), list(state["pass_seconds"])
        log.info("no checkpoint in %s: starting from scratch", checkpoint.directory)
    if initial_params is not None:
        k, covariance_type = grid[0]
        candidates = [Candidate(0, k, covariance_type, params=initial_params)]
    else:
        candidates = _initialise(data, grid, **init)
    if checkpoint is not None:
        checkpoint.save(0, candidates, [])
    return candidates, 0, []


def _run(
    data: DataSource,
    grid: Sequence[tuple[int, str]],
    *,
    max_iter: int,
    tol: float,
    reg_covar: float,
    checkpoint: Checkpointer | None,
    resume: bool,
    initial_params: MixtureParameters | None = None,
    variant: Variant | None = None,
    **init: Any,
) -> tuple[list[Candidate], list[float]]:
    """Start (or resume) the candidates of ``grid`` and run EM on all of them together.

    Returns the candidates in their final state and the wall time of every EM pass.
    """
    chosen: Variant = variant if variant is not None else MaximumLikelihood(reg_covar)
    candidates, done, seconds = _start(
        data,
        grid,
        checkpoint,
        resume,
        initial_params,
        variant=chosen,
        reg_covar=reg_covar,
        **init,
    )
    seconds = _iterate(
        data,
        candidates,
        max_iter=max_iter,
        tol=tol,
        variant=chosen,
        done_iterations=done,
        seconds=seconds,
        checkpoint=checkpoint,
    )
    return candidates, seconds


def _best_result(
    starts: Sequence[Candidate], iteration_seconds: list[float], variant: Variant | None = None
) -> EMResult:
    """The result of one (k, type): its best start (the highest final log-likelihood, or
    the variant's own ranking)."""
    done = [c for c in starts if c.error is None]
    rank = variant.rank if variant is not None else (lambda c: c.final_log_likelihood)
    best = max(done, key=rank)
    assert best.params is not None and best.final_counts is not None
    total_weight = best.final_total_weight
    return EMResult(
        params=best.params,
        n_iter=best.n_iter,
        converged=best.converged,
        log_likelihood=best.final_log_likelihood,
        total_weight=total_weight,
        history=best.history,
        iteration_seconds=iteration_seconds,
        cluster_sizes=best.final_counts,
        candidate_log_likelihoods=[
            c.final_log_likelihood / total_weight if c.error is None else float("nan")
            for c in starts
        ],
        best_index=best.init_index,
        seconds=sum(c.seconds for c in starts),
    )


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
    checkpoint: Checkpointer | None = None,
    resume: bool = False,
    variant: Variant | None = None,
    missing: bool = False,
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
    init_mode : {'short-em', 'kmeans', 'k-means++', 'random_from_data', 'random'}
    n_init : int
    seed : int
    initial_params : MixtureParameters, optional
        Start from these parameters (one candidate, no initialisation pass).
    init_sample_size : int
        Rows sampled (by content hash) for the driver-side initialisation.
    checkpoint : Checkpointer, optional
        Save the state of every candidate after the initialisation and every
        ``checkpoint.interval`` iterations.
    resume : bool
        Continue from ``checkpoint``'s saved state when there is one.
    variant : Variant, optional
        What EM computes: :class:`MaximumLikelihood` (default) or :class:`Variational`.
    missing : bool
        Marginalise missing values (NaN) in the data (the default variant only).

    Returns
    -------
    result : EMResult
    """
    start = time.perf_counter()
    chosen: Variant = (
        variant if variant is not None else MaximumLikelihood(reg_covar, missing=missing)
    )
    candidates, seconds = _run(
        data,
        [(k, covariance_type)],
        max_iter=max_iter,
        tol=tol,
        reg_covar=reg_covar,
        checkpoint=checkpoint,
        resume=resume,
        initial_params=initial_params,
        variant=chosen,
        init_mode=init_mode,
        n_init=n_init,
        seed=seed,
        init_sample_size=init_sample_size,
    )
    if all(c.error is not None for c in candidates):
        first = candidates[0].error
        assert first is not None
        raise first
    result = _best_result(candidates, seconds, chosen)
    if not result.converged:
        steps = result.history[-2:]
        change = steps[-1] - steps[0] if len(steps) == 2 else float("nan")
        msg = (
            f"EM did not converge in maxIter={max_iter} iterations (last change of the "
            f"{chosen.objective_name} {change:.3g} > tol={tol}). "
            "Increase maxIter or tol, or check the data scaling."
        )
        log.warning("%s", msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    log.info(
        "done in %.2f s: %d iterations, converged=%s, %s %.10g",
        time.perf_counter() - start,
        result.n_iter,
        result.converged,
        chosen.objective_name,
        result.history[-1],
    )
    return result


def fit_grid(
    data: DataSource,
    grid: Sequence[tuple[int, str]],
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    init_mode: str = "kmeans",
    n_init: int = 1,
    seed: int = 0,
    init_sample_size: int = 100_000,
    checkpoint: Checkpointer | None = None,
    resume: bool = False,
    missing: bool = False,
) -> list[GridCell]:
    """Fit every (k, covariance type) of ``grid`` by EM, all sharing each data pass.

    Each cell is the fit that :func:`fit_em` would make with the same arguments, start
    for start: same sample, same starting centres (computed once per k), same
    statistics. A candidate that converges or fails leaves the passes; a cell fails
    (``error`` set) only if all its ``n_init`` starts fail.

    Parameters
    ----------
    data : DataSource
    grid : sequence of (k, covariance_type)
        Distinct pairs.
    max_iter, tol, reg_covar, init_mode, n_init, seed, init_sample_size :
        As in :func:`fit_em`, applied to every cell.
    checkpoint, resume, missing :
        As in :func:`fit_em`.

    Returns
    -------
    cells : list of GridCell
        In the order of ``grid``.
    """
    start = time.perf_counter()
    candidates, seconds = _run(
        data,
        grid,
        max_iter=max_iter,
        tol=tol,
        reg_covar=reg_covar,
        checkpoint=checkpoint,
        resume=resume,
        variant=MaximumLikelihood(reg_covar, missing=missing),
        init_mode=init_mode,
        n_init=n_init,
        seed=seed,
        init_sample_size=init_sample_size,
    )
    cells = []
    for k, covariance_type in grid:
        starts = [c for c in candidates if (c.k, c.covariance_type) == (k, covariance_type)]
        if all(c.error is not None for c in starts):
            cells.append(GridCell(k, covariance_type, None, starts[0].error))
        else:
            cells.append(GridCell(k, covariance_type, _best_result(starts, seconds), None))
    log.info(
        "grid of %d fits (%d candidates) done in %.2f s, %d data passes",
        len(grid),
        len(candidates),
        time.perf_counter() - start,
        len(seconds) + 2,
    )
    return cells
