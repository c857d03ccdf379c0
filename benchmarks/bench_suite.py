"""The whole performance table of issue 5, in one run: ``make bench`` (``--quick``: smaller).

Cases (sizes of the full run; ``--quick`` divides them, see ``SIZES``):

``full``      full covariances, 1M x 16, k=8: spark_gmm vs Spark MLlib vs scikit-learn, and
              the single-process numpy floor (the same E+M kernel over the same rows in
              one Python process, one BLAS thread, no Spark).
``full64``    full, 200k x 64, k=16: spark_gmm vs scikit-learn from the *same* initial
              parameters (mean log-likelihoods must agree to 1e-6); MLlib is run too and
              is expected to fail (in 64-d it collapses to identical components and stops
              early): it is then reported with its log-likelihood, not a speed.
``diag``      diagonal covariances, 2M x 32, k=32: spark_gmm vs scikit-learn (diag).
``scaling``   spark_gmm, full 16 x 8, N = 0.25M, 0.5M, 1M, 2M, 4M: s/iteration against N;
              and the peak Python-driver allocation of a fit (``tracemalloc``) for
              N >= 200k, which must not grow with N.
``overhead``  Spark + transfer share of a spark_gmm iteration at 1M x 16 x 8:
              ``1 - (numpy floor / cores) / (spark_gmm s/iteration)``.
``driver``    the share of an iteration spent on the driver splitting the merged
              statistics and running the M-step, with the input in 200 partitions
              (quick mode: 20).
``scoring``   ``transform`` + Parquet write of 1M rows: spark_gmm vs MLlib.
``nInit``     spark_gmm s/iteration with ``nInit=4`` against ``nInit=1``.

Per-iteration cost, as in ``bench_iteration.py``: ``(wall(fit capped at 11 iterations) -
wall(fit capped at 1)) / (iterations run by the first - by the second)``, ``tol=0``, cheap
``random_from_data`` initialisation (MLlib: its own random one), ``nInit=1`` set
explicitly, best of ``--repeats`` pairs with the implementations interleaved. Fixed costs
(conversion and caching, initialisation, the final scoring pass) cancel in the difference.
The quick mode caps the long fits at 6 iterations and times one pair.

Spark runs ``local[2]`` (settings in ``bench_iteration.SPARK_CONF``). Every ratio compares
numbers of the same run; absolute times on a shared machine are noisy (the 1-minute load
average is recorded at the start and end).

Usage::

    python benchmarks/bench_suite.py            # everything, full sizes (~24 min, --repeats 2)
    python benchmarks/bench_suite.py --quick    # < 3 minutes
    python benchmarks/bench_suite.py --cases full,scaling

Writes ``suite.md``, ``suite.json`` and ``suite.png`` (``suite_quick.*`` in quick mode)
to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_iteration as bi

log = logging.getLogger("bench_suite")

# In an order that reuses the cached 16 x 8 frames.
ALL_CASES = ("full", "ninit", "scoring", "scaling", "driver", "full64", "diag")
CORES = 2  # local[2]
BLOCK_ROWS = 10_000  # rows per cached block (one Arrow batch), for the numpy floor

# (N, d, k) per case, full run and quick run.
SIZES: dict[str, dict[str, Any]] = {
    "full": {"full": (1_000_000, 16, 8), "quick": (100_000, 16, 8)},
    "full64": {"full": (200_000, 64, 16), "quick": (20_000, 64, 16)},
    "diag": {"full": (2_000_000, 32, 32), "quick": (100_000, 32, 32)},
    "scaling": {
        "full": [250_000, 500_000, 1_000_000, 2_000_000, 4_000_000],
        "quick": [100_000, 200_000, 400_000],
    },
    "scoring": {"full": 1_000_000, "quick": 100_000},
    # Partitions of the merge + M-step measurement. Here every Python task of a pass
    # cost ~0.1 s under load, so the quick mode uses fewer.
    "partitions": {"full": 200, "quick": 20},
}
# Peak driver memory is measured for the scaling sizes at least this large: below
# twice initSampleSize (100,000 rows by default) the initialisation sample still grows.
DRIVER_MEMORY_MIN_N = 200_000

TARGETS = {
    "full_mllib": 3.0,
    "full_sklearn": 5.0,
    "full64_sklearn": 3.0,
    "diag_sklearn": 8.0,
    "scaling_4x": 4.4,
    "overhead": 0.35,
    "driver_share": 0.10,
    "scoring": 3.0,
    "ninit": 1.6,
}


@dataclass
class Suite:
    quick: bool
    repeats: int
    long_cap: int
    seed: int
    scratch: str
    spark: Any = None
    results: dict[str, Any] = field(default_factory=dict)
    _frames: dict[tuple[int, int, int, int], Any] = field(default_factory=dict)
    _data: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)

    def size(self, case: str) -> Any:
        return SIZES[case]["quick" if self.quick else "full"]

    def data(self, n: int, d: int, k: int) -> np.ndarray:
        key = (n, d, k)
        if key not in self._data:
            log.info("generating %d x %d rows from %d Gaussians", n, d, k)
            self._data = {key: bi.make_mixture_data(n, d, k, self.seed)}  # keep one in memory
        return self._data[key]

    def frame(self, n: int, d: int, k: int, partitions: int = bi.INPUT_PARTITIONS) -> Any:
        """The cached features DataFrame for a size (only the latest few are kept)."""
        key = (n, d, k, partitions)
        if key not in self._frames:
            for old in self._frames.values():
                old.unpersist()
            self._frames.clear()
            sub = os.path.join(self.scratch, f"{n}_{d}_{k}")
            os.makedirs(sub, exist_ok=True)
            df = bi.cached_features_frame(self.spark, self.data(n, d, k), sub)
            if partitions != bi.INPUT_PARTITIONS:
                df = df.repartition(partitions).cache()
                df.count()
            self._frames[key] = df
        return self._frames[key]


# ---------------------------------------------------------------------------
# Fitters: each returns a function of the iteration cap giving a FitResult
# ---------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def ours(df: Any, k: int, covariance_type: str, seed: int, n_init: int = 1,
         initial: Any = None) -> Callable[[int], bi.FitResult]:
    from spark_gmm import GaussianMixture

    def fit(cap: int) -> bi.FitResult:
        est = GaussianMixture(k=k, featuresCol="features", covarianceType=covariance_type,
                              initMode="random_from_data", nInit=n_init, maxIter=cap, tol=0.0,
                              seed=seed)
        if initial is not None:
            est.setInitialModel(initial)
        seconds, model = timed(lambda: est.fit(df))
        return bi.FitResult(seconds, model.summary.numIter, model.summary.meanLogLikelihood)

    return fit


def mllib(df: Any, n: int, k: int, seed: int) -> Callable[[int], bi.FitResult]:
    from pyspark.ml.clustering import GaussianMixture

    def fit(cap: int) -> bi.FitResult:
        est = GaussianMixture(k=k, featuresCol="features", maxIter=cap, tol=0.0, seed=seed)
        seconds, model = timed(lambda: est.fit(df))
        return bi.FitResult(seconds, model.summary.numIter, model.summary.logLikelihood / n)

    return fit


def sklearn(X: np.ndarray, k: int, covariance_type: str, seed: int,
            init: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
            ) -> Callable[[int], bi.FitResult]:
    from sklearn.mixture import GaussianMixture

    def fit(cap: int) -> bi.FitResult:
        kwargs: dict[str, Any] = {"init_params": "random_from_data"}
        if init is not None:
            kwargs = {"weights_init": init[0], "means_init": init[1], "precisions_init": init[2]}
        est = GaussianMixture(n_components=k, covariance_type=covariance_type, max_iter=cap,
                              tol=0.0, n_init=1, random_state=seed, **kwargs)
        seconds, _ = timed(lambda: est.fit(X))
        return bi.FitResult(seconds, int(est.n_iter_), float(est.score(X)))

    return fit


def numpy_floor(X: np.ndarray, k: int, covariance_type: str, seed: int,
                iterations: int) -> float:
    """Seconds per E+M iteration of the numpy kernel in this process, one BLAS thread.

    The rows are cut into the engine's blocks (column-major, as cached); the statistics
    of all blocks are merged and the M-step runs, exactly as one Spark pass does.
    """
    from threadpoolctl import threadpool_limits

    from spark_gmm import gaussian

    blocks = [np.asfortranarray(X[i : i + BLOCK_ROWS]) for i in range(0, len(X), BLOCK_ROWS)]
    rng = np.random.default_rng(seed)
    centres = X[rng.choice(len(X), k, replace=False)]
    params = gaussian.m_step(
        gaussian.hard_assignment_statistics(X, None, centres, covariance_type), 1e-6
    )
    best = math.inf
    with threadpool_limits(1):
        for _ in range(iterations):
            start = time.perf_counter()
            stats = gaussian.SufficientStatistics.zeros(covariance_type, params.means)
            for block in blocks:
                stats.merge(gaussian.block_statistics(block, None, params))
            params = gaussian.m_step(stats, 1e-6)
            best = min(best, time.perf_counter() - start)
    return best


def per_iteration(suite: Suite, fitters: dict[str, Callable[[int], bi.FitResult]],
                  warm_up: bool = False) -> dict[str, dict[str, Any]]:
    results = bi.run_benchmark(fitters, suite.repeats, warm_up=warm_up, long_cap=suite.long_cap)
    out = {}
    for r in results:
        out[r.name] = {
            "s_per_iter": r.best_per_iteration,
            "per_repeat": r.per_iteration,
            "iterations": r.iterations_run,
            "mean_log_likelihood": r.mean_log_likelihood,
            "failure": r.failure,
            "long_fit_seconds": min((f.seconds for f in r.long_fits), default=math.nan),
        }
    return out


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------


def case_full(suite: Suite) -> None:
    n, d, k = suite.size("full")
    X, df = suite.data(n, d, k), suite.frame(n, d, k)
    res = per_iteration(suite, {
        bi.OURS: ours(df, k, "full", suite.seed),
        bi.MLLIB: mllib(df, n, k, suite.seed),
        bi.SKLEARN: sklearn(X, k, "full", suite.seed),
    }, warm_up=True)
    floor = numpy_floor(X, k, "full", suite.seed, iterations=2 if suite.quick else 3)
    res["numpy floor (1 core)"] = {"s_per_iter": floor}
    suite.results["full"] = {"size": [n, d, k], "impl": res}


def case_full64(suite: Suite) -> None:
    from spark_gmm import GaussianMixtureModel, gaussian

    n, d, k = suite.size("full64")
    X, df = suite.data(n, d, k), suite.frame(n, d, k)
    # One starting point for both: an M-step on the nearest of k random rows.
    rng = np.random.default_rng(suite.seed)
    centres = X[rng.choice(n, k, replace=False)]
    start = gaussian.m_step(gaussian.hard_assignment_statistics(X, None, centres, "full"), 1e-6)
    precisions = np.einsum("kij,klj->kil", start.precisions_chol, start.precisions_chol)
    init = (start.weights, start.means, precisions)
    res = per_iteration(suite, {
        bi.OURS: ours(df, k, "full", suite.seed, initial=GaussianMixtureModel(start)),
        bi.SKLEARN: sklearn(X, k, "full", suite.seed, init=init),
        bi.MLLIB: mllib(df, n, k, suite.seed),
    })
    suite.results["full64"] = {"size": [n, d, k], "impl": res}


def case_diag(suite: Suite) -> None:
    n, d, k = suite.size("diag")
    X, df = suite.data(n, d, k), suite.frame(n, d, k)
    res = per_iteration(suite, {
        bi.OURS: ours(df, k, "diag", suite.seed),
        bi.SKLEARN: sklearn(X, k, "diag", suite.seed),
    })
    floor = numpy_floor(X, k, "diag", suite.seed, iterations=2)
    res["numpy floor (1 core)"] = {"s_per_iter": floor}
    suite.results["diag"] = {"size": [n, d, k], "impl": res}


def case_scaling(suite: Suite) -> None:
    """s/iteration against N; on the same frames, the Python driver's peak allocation
    during a 2-iteration fit (``tracemalloc``; the JVM is shared with the executors in
    local mode and not separable)."""
    rows, memory = [], []
    for n in suite.size("scaling"):
        df = suite.frame(n, 16, 8)
        fit = ours(df, 8, "full", suite.seed)
        res = per_iteration(suite, {bi.OURS: fit})
        rows.append({"n": n, **res[bi.OURS]})
        log.info("scaling N=%d: %.3f s/iteration", n, res[bi.OURS]["s_per_iter"])
        if n >= DRIVER_MEMORY_MIN_N:
            tracemalloc.start()
            try:
                fit(2)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            memory.append({"n": n, "peak_python_driver_mib": peak / 2**20})
            log.info("N=%d: peak Python-driver allocation %.1f MiB", n, peak / 2**20)
    suite.results["scaling"] = rows
    suite.results["driver_memory"] = memory


@contextmanager
def driver_timers() -> Iterator[dict[str, float]]:
    """Time the driver's share of each EM pass: splitting the merged statistics and the
    M-step (wrapping the functions the EM loop calls)."""
    from spark_gmm import em, kernels

    acc = {"seconds": 0.0}
    orig_m_step, orig_split = em.m_step, kernels.split_statistics

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                acc["seconds"] += time.perf_counter() - start
        return inner

    em.m_step = wrap(orig_m_step)  # type: ignore[assignment]
    kernels.split_statistics = wrap(orig_split)  # type: ignore[assignment]
    try:
        yield acc
    finally:
        em.m_step = orig_m_step  # type: ignore[assignment]
        kernels.split_statistics = orig_split  # type: ignore[assignment]


def case_driver(suite: Suite) -> None:
    """Share of an iteration spent on the driver (split + M-step), many partitions."""
    n = suite.size("full")[0]
    partitions = suite.size("partitions")
    df = suite.frame(n, 16, 8, partitions=partitions)
    fit = ours(df, 8, "full", suite.seed)
    with driver_timers() as short_acc:
        short = fit(1)
    with driver_timers() as long_acc:
        long = fit(suite.long_cap)
    iterations = long.n_iter - short.n_iter
    per_iter = (long.seconds - short.seconds) / iterations
    driver_per_iter = (long_acc["seconds"] - short_acc["seconds"]) / iterations
    suite.results["driver"] = {
        "partitions": partitions,
        "n": n,
        "s_per_iter": per_iter,
        "driver_split_and_m_step_s_per_iter": driver_per_iter,
        "share": driver_per_iter / per_iter,
    }


WRITE_FLOOR = "write only (no transform)"


def case_scoring(suite: Suite) -> None:
    from pyspark.ml.clustering import GaussianMixture as MLlibGM

    from spark_gmm import GaussianMixture

    n = suite.size("scoring")
    df = suite.frame(n, 16, 8)
    models = {
        bi.OURS: GaussianMixture(k=8, featuresCol="features", initMode="random_from_data",
                                 nInit=1, maxIter=2, tol=0.0, seed=suite.seed).fit(df),
        bi.MLLIB: MLlibGM(k=8, featuresCol="features", maxIter=2, tol=0.0,
                          seed=suite.seed).fit(df),
    }
    # The floor of any scorer on this machine: writing MLlib's own output (the same rows
    # and columns), already computed and cached, with no transform at all.
    computed = models[bi.MLLIB].transform(df).cache()
    computed.count()
    jobs = {name: (lambda m=model: m.transform(df)) for name, model in models.items()}
    jobs[WRITE_FLOOR] = lambda: computed
    best = {name: math.inf for name in jobs}
    for round_ in range(suite.repeats + 1):  # round 0 warms up
        for name, output in jobs.items():
            path = os.path.join(suite.scratch, f"scored_{name.split()[0]}")
            seconds, _ = timed(lambda o=output, p=path: o().write.mode("overwrite").parquet(p))
            shutil.rmtree(path, ignore_errors=True)
            if round_:
                best[name] = min(best[name], seconds)
            log.info("scoring round %d %s: %.2f s", round_, name, seconds)
    computed.unpersist()
    suite.results["scoring"] = {"n": n, "seconds": best}


def case_ninit(suite: Suite) -> None:
    n, d, k = suite.size("full")
    df = suite.frame(n, d, k)
    res = per_iteration(suite, {
        "nInit=1": ours(df, k, "full", suite.seed, n_init=1),
        "nInit=4": ours(df, k, "full", suite.seed, n_init=4),
    })
    suite.results["ninit"] = {"size": [n, d, k], "impl": res}


CASE_FUNCTIONS: dict[str, Callable[[Suite], None]] = {
    "full": case_full,
    "full64": case_full64,
    "diag": case_diag,
    "scaling": case_scaling,
    "driver": case_driver,
    "scoring": case_scoring,
    "ninit": case_ninit,
}


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def _valid(x: float | None) -> bool:
    """A per-iteration time is usable when positive: on a busy machine the 1-capped fit
    can take longer than the long one, and the difference is then noise."""
    return x is not None and math.isfinite(x) and x > 0


def _s(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.3f} s" if x > 0 else f"{x:.3f} s (below the noise)"


def _verdict(ok: bool | None) -> str:
    return "undetermined" if ok is None else ("met" if ok else "**not met**")


def _ratio(a: float, b: float) -> float:
    """How many times ``a`` fits in ``b`` (nan unless both are usable)."""
    return b / a if _valid(a) and _valid(b) else math.nan


def _check(value: float, limit: float, at_least: bool) -> bool | None:
    if not math.isfinite(value):
        return None
    return value >= limit if at_least else value <= limit


def _times(ratio: float, word: str) -> str:
    return f"{ratio:.2f}x {word}" if math.isfinite(ratio) else "not measurable (noise)"


def _size(size: list[int]) -> str:
    n, d, k = size
    return f"{n:,} x {d}, k={k}"


def table_rows(r: dict[str, Any], quick: bool) -> list[tuple[str, str, str, str, str]]:
    """(case, measured, reference, result, target) rows for the Markdown table."""
    rows = []
    if "full" in r:
        impl = r["full"]["impl"]
        ours_t = impl[bi.OURS]["s_per_iter"]
        for ref, key in ((bi.MLLIB, "full_mllib"), (bi.SKLEARN, "full_sklearn")):
            other = impl[ref]
            if other["failure"]:
                rows.append((f"full {_size(r['full']['size'])}", _s(ours_t),
                             f"{ref}: failed ({other['failure']})", "-", f">= {TARGETS[key]}x"))
                continue
            ratio = _ratio(ours_t, other["s_per_iter"])
            rows.append((f"full {_size(r['full']['size'])}", f"{_s(ours_t)}/iter",
                         f"{ref}: {_s(other['s_per_iter'])}/iter", _times(ratio, "faster"),
                         f">= {TARGETS[key]}x: {_verdict(_check(ratio, TARGETS[key], True))}"))
        floor = impl["numpy floor (1 core)"]["s_per_iter"]
        ideal = _ratio(ours_t, floor / CORES)
        rows.append((f"full {_size(r['full']['size'])}", f"{_s(ours_t)}/iter",
                     f"numpy floor: {_s(floor)}/iter on 1 core, {_s(floor / CORES)} on "
                     f"{CORES}", f"{ideal:.0%} of the ideal", "-"))
        share = 1.0 - ideal
        rows.append(("overhead (Spark + transfer share)", f"{share:.0%}",
                     "1 - (floor / cores) / spark_gmm", "",
                     f"<= {TARGETS['overhead']:.0%}: "
                     f"{_verdict(_check(share, TARGETS['overhead'], False))}"))
    if "full64" in r:
        impl = r["full64"]["impl"]
        o, s, m = impl[bi.OURS], impl[bi.SKLEARN], impl[bi.MLLIB]
        ratio = _ratio(o["s_per_iter"], s["s_per_iter"])
        dll = abs(o["mean_log_likelihood"] - s["mean_log_likelihood"])
        label = f"full {_size(r['full64']['size'])}"
        rows.append((label, f"{_s(o['s_per_iter'])}/iter",
                     f"{bi.SKLEARN}: {_s(s['s_per_iter'])}/iter", _times(ratio, "faster"),
                     f">= {TARGETS['full64_sklearn']}x: "
                     f"{_verdict(_check(ratio, TARGETS['full64_sklearn'], True))}"))
        rows.append((label, f"mean log-lik {o['mean_log_likelihood']:.8f}",
                     f"{bi.SKLEARN}: {s['mean_log_likelihood']:.8f}", f"abs. difference {dll:.1e}",
                     f"<= 1e-6: {_verdict(dll <= 1e-6)}"))
        mllib_text = (f"failed: {m['failure']}" if m["failure"]
                      else f"{_s(m['s_per_iter'])}/iter")
        rows.append((label, "", f"{bi.MLLIB}: {mllib_text}",
                     f"mean log-lik {m['mean_log_likelihood']:.4f}", "reported, not timed"))
    if "diag" in r:
        impl = r["diag"]["impl"]
        o, s = impl[bi.OURS], impl[bi.SKLEARN]
        ratio = _ratio(o["s_per_iter"], s["s_per_iter"])
        floor = impl["numpy floor (1 core)"]["s_per_iter"]
        rows.append((f"diag {_size(r['diag']['size'])}", f"{_s(o['s_per_iter'])}/iter",
                     f"{bi.SKLEARN} (diag): {_s(s['s_per_iter'])}/iter; numpy floor "
                     f"{_s(floor)} on 1 core", _times(ratio, "faster"),
                     f">= {TARGETS['diag_sklearn']}x: "
                     f"{_verdict(_check(ratio, TARGETS['diag_sklearn'], True))}"))
    if "scaling" in r:
        pts = r["scaling"]
        text = ", ".join(f"{p['n'] / 1e6:g}M: {_s(p['s_per_iter'])}" for p in pts)
        by_n = {p["n"]: p["s_per_iter"] for p in pts}
        base = pts[-1]["n"] // 4
        if base in by_n:
            ratio = _ratio(by_n[base], by_n[pts[-1]["n"]])
            rows.append(("scaling, full 16 x 8", text,
                         f"N={pts[-1]['n']:,} vs N={base:,}", _times(ratio, "the time"),
                         f"<= {TARGETS['scaling_4x']}x: "
                         f"{_verdict(_check(ratio, TARGETS['scaling_4x'], False))}"))
    if r.get("driver_memory"):
        memory = r["driver_memory"]
        mem = ", ".join(f"N={m['n']:,}: {m['peak_python_driver_mib']:.1f} MiB" for m in memory)
        peaks = [m["peak_python_driver_mib"] for m in memory]
        flat = max(peaks) <= 1.25 * min(peaks) if len(peaks) > 1 else None
        rows.append(("driver memory (Python driver peak allocation during a fit)", mem,
                     "tracemalloc", "", f"flat in N: {_verdict(flat)}"))
    if "driver" in r:
        drv = r["driver"]
        share = drv["share"] if _valid(drv["s_per_iter"]) else math.nan
        rows.append((f"driver, {drv['partitions']} partitions, N={drv['n']:,}",
                     f"{drv['driver_split_and_m_step_s_per_iter'] * 1e3:.1f} ms/iter on the "
                     "driver (split + M-step)", f"iteration {_s(drv['s_per_iter'])}",
                     f"{share:.1%}", f"< {TARGETS['driver_share']:.0%}: "
                     f"{_verdict(_check(share, TARGETS['driver_share'], False))}"))
    if "scoring" in r:
        sc = r["scoring"]
        o, m = sc["seconds"][bi.OURS], sc["seconds"][bi.MLLIB]
        ratio = _ratio(o, m)
        rows.append((f"scoring: transform + Parquet write, {sc['n']:,} rows", _s(o),
                     f"{bi.MLLIB}: {_s(m)}", _times(ratio, "faster"),
                     f">= {TARGETS['scoring']}x: "
                     f"{_verdict(_check(ratio, TARGETS['scoring'], True))}"))
        floor = sc["seconds"].get(WRITE_FLOOR)
        if floor is not None:
            best_possible = _ratio(floor, m)
            rows.append((f"scoring floor: Parquet write of MLlib's output, already computed "
                         f"and cached, {sc['n']:,} rows", _s(floor), f"{bi.MLLIB}: {_s(m)}",
                         f"{_times(best_possible, 'faster')} at most, for any scorer",
                         f">= {TARGETS['scoring']}x: "
                         f"{'reachable' if best_possible >= TARGETS['scoring'] else 'out of reach'}"
                         ))
    if "ninit" in r:
        impl = r["ninit"]["impl"]
        one, four = impl["nInit=1"]["s_per_iter"], impl["nInit=4"]["s_per_iter"]
        ratio = _ratio(one, four)
        rows.append((f"nInit=4 vs nInit=1, full {_size(r['ninit']['size'])}",
                     f"{_s(four)}/iter", f"nInit=1: {_s(one)}/iter", _times(ratio, "the time"),
                     f"<= {TARGETS['ninit']}x: "
                     f"{_verdict(_check(ratio, TARGETS['ninit'], False))}"))
    return rows


def markdown(r: dict[str, Any], meta: dict[str, Any], quick: bool) -> str:
    m, v = meta["machine"], meta["versions"]
    mode = "QUICK MODE (smaller sizes; not the issue's sizes)" if quick else "full sizes"
    lines = [
        f"# spark_gmm performance suite, {mode}",
        "",
        f"{meta['date']}. Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram']} RAM; "
        f"1-minute load average {meta['load'][0]:.1f} at the start, {meta['load'][1]:.1f} "
        f"at the end. Spark `{bi.SPARK_MASTER}`, {bi.INPUT_PARTITIONS} input partitions. "
        f"Versions: pyspark {v['pyspark']}, numpy {v['numpy']}, scikit-learn {v['sklearn']}, "
        f"Python {v['python']}. Per-iteration = (fit capped at {meta['long_cap']} - fit "
        f"capped at 1) / iterations run, tol=0, random_from_data init, nInit=1, best of "
        f"{meta['repeats']} repeat(s). Total run time {meta['seconds']:.0f} s.",
        "",
        "| case | spark_gmm | reference | result | target |",
        "|---|---|---|---|---|",
    ]
    for row in table_rows(r, quick):
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def chart(r: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [c for c in ("full", "full64", "diag") if c in r] + (
        ["scaling"] if "scaling" in r else [])
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, case in zip(axes[0], panels, strict=True):
        if case == "scaling":
            pts = r["scaling"]
            ns = [p["n"] for p in pts]
            ts = [p["s_per_iter"] for p in pts]
            ax.plot(ns, ts, "o-", label="spark_gmm")
            ax.plot(ns, [ts[0] * n / ns[0] for n in ns], "--", color="grey",
                    label="proportional to N")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("rows N (full, d=16, k=8)")
            ax.legend(fontsize=7)
            ax.set_title("scaling", fontsize=9)
        else:
            impl = r[case]["impl"]
            names = list(impl)
            raw = [math.nan if impl[x].get("failure") else impl[x]["s_per_iter"] for x in names]
            vals = [x if _valid(x) else 0.0 for x in raw]
            bars = ax.bar(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
            for bar, name, val in zip(bars, names, vals, strict=True):
                label = f"{val:.2f}" if val > 0 else "below noise"
                if impl[name].get("failure"):
                    label = "failed"
                ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels([x.replace(" (1 core)", "\n(1 core)") for x in names],
                               fontsize=7, rotation=20)
            ax.set_title(f"{case}: {_size(r[case]['size'])}", fontsize=9)
        ax.set_ylabel("s / EM iteration")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 3 minutes")
    parser.add_argument("--cases", default=",".join(ALL_CASES),
                        help=f"comma-separated subset of {', '.join(ALL_CASES)}")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed fit pairs per implementation (default 3; --quick: 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output-dir", type=Path,
                        default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.cases) - set(ALL_CASES)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; choose from {', '.join(ALL_CASES)}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("spark_gmm").setLevel(logging.ERROR)
    bi.ignore_convergence_warnings()
    start = time.perf_counter()
    load_start = bi.load_average()
    with tempfile.TemporaryDirectory(prefix="bench_suite_") as scratch:
        suite = Suite(args.quick, args.repeats, 6 if args.quick else 11, args.seed, scratch)
        suite.spark = bi.start_spark()
        try:
            for case in args.cases:
                log.info("=== case %s ===", case)
                CASE_FUNCTIONS[case](suite)
        finally:
            suite.spark.stop()
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": bi.machine_description(),
        "versions": bi.versions(),
        "load": (load_start, bi.load_average()),
        "repeats": args.repeats,
        "long_cap": suite.long_cap,
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
    }
    stem = "suite_quick" if args.quick else "suite"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(suite.results, meta, args.quick)
    (args.output_dir / f"{stem}.md").write_text(text)
    (args.output_dir / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "results": suite.results}, indent=2, default=str) + "\n")
    chart(suite.results, args.output_dir / f"{stem}.png",
          f"spark_gmm performance suite ({'quick mode' if args.quick else 'full sizes'}), "
          f"{meta['date']}")
    print(text)


if __name__ == "__main__":
    main()
