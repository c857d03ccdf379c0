"""The performance table: ``make bench`` (``--quick``: smaller sizes, one round).

Every case runs ``--repeats`` (>= 5) interleaved rounds in one Spark ``local[2]`` session
and is reported as the median with min and max; a ratio is a ratio of medians of the
same run (``timing.py`` has the rules and when a run is publishable).

How one repeat is timed:

* spark_gmm fit: one fit capped at ``CAP`` iterations, ``tol=0``; per-iteration time is
  the median of ``summary.iterationSeconds`` (each iteration's wall time on the driver:
  the data pass and the M-step).
* MLlib fit: one fit capped at ``CAP`` iterations; per-iteration time is the median gap
  between the completions of consecutive iteration jobs, read from the Spark UI's REST
  API (so the driver's work between passes counts, as for ours).
* scikit-learn fit: ``(wall(CAP iterations) - wall(1 iteration)) / (CAP - 1)``.
* numpy floor: one E-step + statistics + M-step over the same rows in this process, one
  BLAS thread, 8,192-row column-major blocks (what a Spark task computes, with no Spark).
* scoring: ``transform`` of a cached input, forced with Spark's ``noop`` sink (every
  output column computed, nothing written) or written as Parquet; one repeat is the
  mean of back-to-back passes, at least ``--score-passes`` (3) and at least
  ``--score-seconds`` (5 s) of them, in seconds per pass.

Cases (full sizes; ``--quick`` divides them):

``fit_full``     full, 1M x 16, k=8: spark_gmm, MLlib, sklearn, numpy floor; overhead
``fit_full64``   full, 200k x 64, k=16 from the same start: spark_gmm, sklearn (mean
                 log-likelihoods must agree to 1e-6); MLlib from its own start, reported
``fit_diag``     diag, 2M x 32, k=32: spark_gmm, sklearn, numpy floor
``scaling``      spark_gmm full 16 x 8 at N = 0.25M ... 4M; Python driver peak memory
``driver``       the driver's share of an iteration (split + M-step), input in 200 parts
``ninit``        nInit=4 against nInit=1 per iteration
``score``        transform: 1M x 16 k=8 (noop and Parquet), 200k x 64 k=16 (noop), diag
                 1M x 32 k=32 (noop), each against MLlib where it has the model; the
                 floors measured beside them: an Arrow UDF that returns one constant
                 double (the Python round trip alone), and writing MLlib's output after
                 it was computed and cached (the Parquet write alone); and ours at
                 50,000-row Arrow batches against Spark's default 10,000 (1M x 16 noop)
``score_job``    read Parquet, score, write Parquet: the score job against the same
                 pipeline built on MLlib's model
``score_floors`` 1M x 16 k=8 noop (on demand, not in ``make bench``): ours and MLlib's
                 transform beside the round trip floor and an output floor (our exact
                 output type filled with zeros, no maths)
``missing``      full 1M x 16, k=8: an iteration with handleMissing="marginalize" on the
                 rows with 10% of them missing 1 to 3 coordinates, against the default
                 fit's iteration on the complete rows
``init_cost``    full 1M x 16, k=8: the wall time of a default fit (initMode="short-em",
                 nInit=1, tol 1e-3, initialisation included) against initMode="kmeans",
                 nInit=1, and against the old default (kmeans, nInit=4), same data and
                 seed, from the cached input

Usage::

    python benchmarks/bench_suite.py                 # everything (about an hour here)
    python benchmarks/bench_suite.py --quick         # a few minutes
    python benchmarks/bench_suite.py --cases fit_full,score

Writes ``suite.json`` and ``suite.md`` (``suite_quick.*``) to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
import urllib.request
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa  # module level: arrow_udf resolves the floor UDF's hints here

sys.path.insert(0, str(Path(__file__).resolve().parent))

import timing
from common import make_mixture_data

log = logging.getLogger("bench_suite")

HERE = Path(__file__).resolve().parent
CORES = 2
CAP = 6
INPUT_PARTITIONS = 4
SIZES: dict[str, dict[str, Any]] = {
    "fit_full": {"full": (1_000_000, 16, 8), "quick": (100_000, 16, 8)},
    "fit_full64": {"full": (200_000, 64, 16), "quick": (20_000, 64, 16)},
    "fit_diag": {"full": (2_000_000, 32, 32), "quick": (100_000, 32, 32)},
    "scaling": {
        "full": [250_000, 500_000, 1_000_000, 2_000_000, 4_000_000],
        "quick": [100_000, 200_000],
    },
    "driver": {"full": (1_000_000, 200), "quick": (100_000, 20)},
    "score_full": {"full": (1_000_000, 16, 8), "quick": (100_000, 16, 8)},
    "score_full64": {"full": (200_000, 64, 16), "quick": (20_000, 64, 16)},
    "score_diag": {"full": (1_000_000, 32, 32), "quick": (100_000, 32, 32)},
    "missing": {"full": (1_000_000, 16, 8), "quick": (100_000, 16, 8)},
}
ALL_CASES = ("fit_full", "ninit", "init_cost", "score", "score_job", "scaling", "driver",
             "fit_full64", "fit_diag", "missing")
GOALS = {
    "fit_full MLlib/ours": (">=", 3.0),
    "fit_full sklearn/ours": (">=", 5.0),
    "fit_full overhead": ("<=", 0.35),
    "fit_full64 sklearn/ours": (">=", 3.0),
    "fit_diag sklearn/ours": (">=", 8.0),
    "scaling 4x rows": ("<=", 4.4),
    "driver share": ("<=", 0.10),
    "ninit 4/1": ("<=", 1.6),
    "init_cost short-em/kmeans": ("<=", 1.3),
    "missing marginalize/complete": ("<=", 1.5),
    "score 1M x 16 noop MLlib/ours": (">=", 1.0),
    "score 1M x 16 parquet MLlib/ours": (">=", 1.0),
    "score 200k x 64 noop MLlib/ours": (">=", 1.5),
}
OURS, MLLIB, SKLEARN, FLOOR = "spark_gmm", "MLlib", "scikit-learn", "numpy floor (1 core)"
BIG_BATCH = "spark_gmm, 50k-row Arrow batches"


# ---------------------------------------------------------------------------
# Data and session
# ---------------------------------------------------------------------------


def start_spark() -> Any:
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (
        SparkSession.builder.appName("bench_suite")
        .master("local[2]")
        .config("spark.driver.memory", "6g")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    return spark


class Data:
    """Generated arrays and their cached DataFrames (one size kept at a time)."""

    def __init__(self, spark: Any, scratch: str, seed: int) -> None:
        self.spark, self.scratch, self.seed = spark, scratch, seed
        self._key: tuple[int, int, int] | None = None
        self._X: np.ndarray | None = None
        self._frames: dict[tuple[Any, ...], Any] = {}

    def array(self, n: int, d: int, k: int) -> np.ndarray:
        if self._key != (n, d, k):
            log.info("generating %d x %d rows from %d Gaussians", n, d, k)
            self._X, self._key = make_mixture_data(n, d, k, self.seed), (n, d, k)
        assert self._X is not None
        return self._X

    def parquet(self, n: int, d: int, k: int) -> str:
        """The rows as a Parquet file (a vector column ``features`` written as array)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = os.path.join(self.scratch, f"rows_{n}_{d}_{k}.parquet")
        if not os.path.exists(path):
            X = self.array(n, d, k)
            offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
            table = pa.table({"x": pa.ListArray.from_arrays(offsets, pa.array(X.ravel()))})
            pq.write_table(table, path)
        return path

    def frame(self, n: int, d: int, k: int, partitions: int = INPUT_PARTITIONS) -> Any:
        """A cached, counted DataFrame: ``id`` and an ml vector column ``features``."""
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        key = (n, d, k, partitions)
        if key not in self._frames:
            for old in self._frames.values():
                old.unpersist()
            self._frames.clear()
            df = (
                self.spark.read.parquet(self.parquet(n, d, k))
                .repartition(partitions)
                .select(F.monotonically_increasing_id().alias("id"),
                        array_to_vector("x").alias("features"))
                .cache()
            )
            assert df.count() == n
            self._frames[key] = df
        return self._frames[key]


# ---------------------------------------------------------------------------
# One timed repeat of each implementation
# ---------------------------------------------------------------------------


def ours_per_iteration(df: Any, k: int, ct: str, seed: int, n_init: int = 1,
                       initial: Any = None, **params: Any) -> tuple[float, float]:
    """(median seconds per iteration, final mean log-likelihood) of one fit."""
    from spark_gmm import GaussianMixture

    est = GaussianMixture(k=k, featuresCol="features", covarianceType=ct, maxIter=CAP,
                          tol=0.0, seed=seed, nInit=n_init, initMode="random_from_data",
                          **params)
    if initial is not None:
        est.setInitialModel(initial)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = est.fit(df)
    return statistics.median(model.summary.iterationSeconds), model.summary.meanLogLikelihood


def _rest_jobs(spark: Any) -> list[dict[str, Any]]:
    sc = spark.sparkContext
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/jobs"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _stamp(text: str) -> float:
    return datetime.strptime(text.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def mllib_per_iteration(spark: Any, df: Any, k: int, seed: int, n: int) -> tuple[float, float]:
    """(median gap between MLlib's iteration-job completions, mean log-likelihood)."""
    from pyspark.ml.clustering import GaussianMixture

    seen = {j["jobId"] for j in _rest_jobs(spark)}
    model = GaussianMixture(k=k, featuresCol="features", maxIter=CAP, tol=0.0, seed=seed).fit(df)
    time.sleep(1.0)  # the UI's listener runs behind the jobs
    jobs = [j for j in _rest_jobs(spark) if j["jobId"] not in seen and j.get("completionTime")]
    by_name: dict[str, list[float]] = {}
    for j in jobs:
        by_name.setdefault(j["name"], []).append(_stamp(j["completionTime"]))
    runs = model.summary.numIter
    names = [name for name, ends in by_name.items() if len(ends) == runs]
    if runs < 3 or not names:
        return float("nan"), model.summary.logLikelihood / n
    ends = sorted(by_name[max(names, key=lambda s: len(s))])
    return float(np.median(np.diff(ends))), model.summary.logLikelihood / n


def sklearn_per_iteration(X: np.ndarray, k: int, ct: str, seed: int,
                          init: tuple[np.ndarray, ...] | None = None) -> tuple[float, float]:
    from sklearn.mixture import GaussianMixture

    def fit(cap: int) -> tuple[float, Any]:
        kwargs: dict[str, Any] = {"init_params": "random_from_data"}
        if init is not None:
            kwargs = {"weights_init": init[0], "means_init": init[1], "precisions_init": init[2]}
        est = GaussianMixture(n_components=k, covariance_type=ct, max_iter=cap, tol=0.0,
                              random_state=seed, **kwargs)
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X)
        return time.perf_counter() - began, est

    short, _ = fit(1)
    long, est = fit(CAP)
    return (long - short) / (CAP - 1), float(est.score(X))


def numpy_floor(X: np.ndarray, k: int, ct: str, seed: int) -> float:
    from threadpoolctl import threadpool_limits

    from spark_gmm import gaussian
    from spark_gmm.kernels import join_blocks, kernel_rows

    rows = kernel_rows(X.shape[1])
    blocks = [b for b, _ in join_blocks(((X[i : i + rows], None)
                                         for i in range(0, len(X), rows)), rows)]
    rng = np.random.default_rng(seed)
    centres = X[rng.choice(len(X), k, replace=False)]
    params = gaussian.m_step(gaussian.hard_assignment_statistics(X, None, centres, ct), 1e-6)
    with threadpool_limits(1):
        began = time.perf_counter()
        stats = gaussian.SufficientStatistics.zeros(ct, params.means)
        for block in blocks:
            stats.merge(gaussian.block_statistics(block, None, params))
        gaussian.m_step(stats, 1e-6)
        return time.perf_counter() - began


# ---------------------------------------------------------------------------
# Cases: each adds Repeats under names, rounds interleaved inside the case
# ---------------------------------------------------------------------------


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.quick = args.quick
        self.score_passes = 1 if args.quick else args.score_passes
        self.score_seconds = 0.0 if args.quick else args.score_seconds
        self.repeats = 1 if args.quick else args.repeats
        self.seed = args.seed
        self.scratch = tempfile.mkdtemp(prefix="bench_suite_")
        self.spark = start_spark()
        self.data = Data(self.spark, self.scratch, args.seed)
        self.run = timing.Run()
        self.cases: dict[str, timing.Repeats] = {}
        self.extra: dict[str, Any] = {}

    def size(self, case: str) -> Any:
        return SIZES[case]["quick" if self.quick else "full"]

    def add(self, name: str, value: float) -> None:
        self.cases.setdefault(name, timing.Repeats()).add(value)

    def rounds(self, label: str, body: Callable[[int], None]) -> None:
        for r in range(self.repeats):
            self.run.start_round(f"{label} round {r + 1}")
            body(r)

    def median(self, name: str) -> float:
        rep = self.cases.get(name)
        return rep.median if rep else float("nan")


def case_fit_full(s: Suite) -> None:
    n, d, k = s.size("fit_full")
    X, df = s.data.array(n, d, k), s.data.frame(n, d, k)
    ours_per_iteration(df, k, "full", s.seed)  # warm-up: JIT, Python workers
    lls: dict[str, float] = {}

    def body(_: int) -> None:
        t, lls[OURS] = ours_per_iteration(df, k, "full", s.seed)
        s.add(f"fit_full {OURS}", t)
        t, lls[MLLIB] = mllib_per_iteration(s.spark, df, k, s.seed, n)
        s.add(f"fit_full {MLLIB}", t)
        t, lls[SKLEARN] = sklearn_per_iteration(X, k, "full", s.seed)
        s.add(f"fit_full {SKLEARN}", t)
        s.add(f"fit_full {FLOOR}", numpy_floor(X, k, "full", s.seed))

    s.rounds("fit_full", body)
    s.extra["fit_full"] = {"size": [n, d, k], "mean_log_likelihood": lls}


def case_fit_full64(s: Suite) -> None:
    from spark_gmm import GaussianMixtureModel, gaussian

    n, d, k = s.size("fit_full64")
    X, df = s.data.array(n, d, k), s.data.frame(n, d, k)
    rng = np.random.default_rng(s.seed)
    centres = X[rng.choice(n, k, replace=False)]
    start = gaussian.m_step(gaussian.hard_assignment_statistics(X, None, centres, "full"), 1e-6)
    precisions = np.einsum("kij,klj->kil", start.precisions_chol, start.precisions_chol)
    init = (start.weights, start.means, precisions)
    lls: dict[str, float] = {}

    def body(_: int) -> None:
        t, lls[OURS] = ours_per_iteration(df, k, "full", s.seed,
                                          initial=GaussianMixtureModel(start))
        s.add(f"fit_full64 {OURS}", t)
        t, lls[SKLEARN] = sklearn_per_iteration(X, k, "full", s.seed, init=init)
        s.add(f"fit_full64 {SKLEARN}", t)

    s.rounds("fit_full64", body)
    # MLlib, once, from its own random start: in 64 dimensions it is expected to collapse.
    from pyspark.ml.clustering import GaussianMixture as MLlibGM

    try:
        m = MLlibGM(k=k, featuresCol="features", maxIter=CAP, tol=0.0, seed=s.seed).fit(df)
        mllib = {"iterations": m.summary.numIter,
                 "mean_log_likelihood": m.summary.logLikelihood / n}
    except Exception as exc:
        mllib = {"failure": f"{type(exc).__name__}: {str(exc)[:200]}"}
    s.extra["fit_full64"] = {"size": [n, d, k], "mean_log_likelihood": lls, "mllib": mllib,
                             "ll_difference": abs(lls[OURS] - lls[SKLEARN])}


def case_fit_diag(s: Suite) -> None:
    n, d, k = s.size("fit_diag")
    X, df = s.data.array(n, d, k), s.data.frame(n, d, k)

    def body(_: int) -> None:
        s.add(f"fit_diag {OURS}", ours_per_iteration(df, k, "diag", s.seed)[0])
        s.add(f"fit_diag {SKLEARN}", sklearn_per_iteration(X, k, "diag", s.seed)[0])
        s.add(f"fit_diag {FLOOR}", numpy_floor(X, k, "diag", s.seed))

    s.rounds("fit_diag", body)
    s.extra["fit_diag"] = {"size": [n, d, k]}


def case_scaling(s: Suite) -> None:
    sizes = s.size("scaling")
    memory = {}
    for n in sizes:
        df = s.data.frame(n, 16, 8)
        tracemalloc.start()
        try:
            ours_per_iteration(df, 8, "full", s.seed)
            memory[n] = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()

        def body(_: int, df: Any = df, n: int = n) -> None:
            s.add(f"scaling {n}", ours_per_iteration(df, 8, "full", s.seed)[0])

        s.rounds(f"scaling {n}", body)
    s.extra["scaling"] = {"sizes": sizes, "peak_python_driver_mib": memory}


def case_driver(s: Suite) -> None:
    """The driver's share of an iteration: split + M-step, wrapped with timers."""
    from spark_gmm import em, kernels

    n, partitions = s.size("driver")
    df = s.data.frame(n, 16, 8, partitions=partitions)
    acc = {"s": 0.0}
    orig_m, orig_split = em.m_step, kernels.split_statistics

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*a: Any, **kw: Any) -> Any:
            began = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                acc["s"] += time.perf_counter() - began
        return inner

    def body(_: int) -> None:
        acc["s"] = 0.0
        em.m_step, kernels.split_statistics = wrap(orig_m), wrap(orig_split)  # type: ignore
        try:
            from spark_gmm import GaussianMixture

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = GaussianMixture(k=8, featuresCol="features", maxIter=CAP, tol=0.0,
                                        seed=s.seed, nInit=1,
                                        initMode="random_from_data").fit(df)
        finally:
            em.m_step, kernels.split_statistics = orig_m, orig_split  # type: ignore
        per_iter = statistics.median(model.summary.iterationSeconds)
        # CAP iterations plus the initial M-step; split also runs for the final pass.
        s.add("driver per_iteration", per_iter)
        s.add("driver share", acc["s"] / (CAP + 2) / per_iter)

    s.rounds("driver", body)
    s.extra["driver"] = {"rows": n, "input_partitions": partitions}


def case_ninit(s: Suite) -> None:
    n, d, k = s.size("fit_full")
    df = s.data.frame(n, d, k)

    def body(_: int) -> None:
        s.add("ninit 1", ours_per_iteration(df, k, "full", s.seed, n_init=1)[0])
        s.add("ninit 4", ours_per_iteration(df, k, "full", s.seed, n_init=4)[0])

    s.rounds("ninit", body)


def case_init_cost(s: Suite) -> None:
    from spark_gmm import GaussianMixture

    n, d, k = s.size("fit_full")
    df = s.data.frame(n, d, k)
    iterations: dict[str, list[int]] = {}

    def wall(label: str, **params: Any) -> None:
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = GaussianMixture(k=k, featuresCol="features", seed=s.seed, **params).fit(df)
        s.add(f"init_cost {label}", time.perf_counter() - began)
        iterations.setdefault(label, []).append(model.summary.numIter)

    def body(_: int) -> None:
        wall("short-em")
        wall("kmeans", initMode="kmeans", nInit=1)
        wall("kmeans x4", initMode="kmeans", nInit=4)

    # Warm-up, untimed, as in the other cases: the session's first fit starts the Python
    # workers and loads the modules (the first timed short-em fit took 2.4x the others).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GaussianMixture(k=k, featuresCol="features", seed=s.seed, maxIter=2).fit(df)
    s.rounds("init_cost", body)
    s.extra["init_cost"] = {"size": [n, d, k], "iterations": iterations}


def _fit_models(s: Suite, df: Any, k: int, ct: str) -> dict[str, Any]:
    from pyspark.ml.clustering import GaussianMixture as MLlibGM

    from spark_gmm import GaussianMixture

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {OURS: GaussianMixture(k=k, featuresCol="features", covarianceType=ct,
                                        maxIter=2, tol=0.0, seed=s.seed, nInit=1,
                                        initMode="random_from_data").fit(df)}
        if ct == "full":
            models[MLLIB] = MLlibGM(k=k, featuresCol="features", maxIter=2, tol=0.0,
                                    seed=s.seed).fit(df)
    return models


def _score_once(output: Any, sink: str, path: str) -> float:
    began = time.perf_counter()
    if sink == "noop":
        output.write.format("noop").mode("overwrite").save()
    else:
        output.write.mode("overwrite").parquet(path)
    seconds = time.perf_counter() - began
    shutil.rmtree(path, ignore_errors=True)
    return seconds


def _score_passes(spark: Any, job: Callable[[], Any], sink: str, path: str, passes: int,
                  batch_rows: int | None = None, min_seconds: float = 0.0) -> float:
    """Seconds per pass, over back-to-back scorings of ``job()`` to ``sink``: at least
    ``passes`` of them, and more until ``min_seconds`` have passed.

    A 1M-row pass takes 0.6-2 s here, short enough for one scheduler hiccup of this VM
    to put a single pass at 1.6-1.9x its neighbours; a repeat of several passes averages
    that out (each repeat is still one sample of the median). ``batch_rows`` sets
    Spark's Arrow batch size for these passes only (restored after).
    """
    from spark_gmm.engine import session_conf

    batch = {} if batch_rows is None else {
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(batch_rows)}
    with session_conf(spark, batch):
        times: list[float] = []
        while len(times) < passes or sum(times) < min_seconds:
            times.append(_score_once(job(), sink, path))
        return sum(times) / len(times)


def _round_trip_floor(df: Any) -> Any:
    """The Python round trip alone: the same input as our transform's UDF gets (the
    vector as ``array<double>``) into an Arrow UDF that returns one zero per row."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql.functions import arrow_udf

    @arrow_udf("double")  # type: ignore[call-overload]
    def round_trip(x: pa.Array) -> pa.Array:
        return pa.array(np.zeros(len(x)))

    return df.select("id", round_trip(vector_to_array(df["features"])).alias("x"))


def case_score(s: Suite) -> None:
    path = os.path.join(s.scratch, "scored")
    for label, key, ct, sinks in (
        ("1M x 16", "score_full", "full", ("noop", "parquet")),
        ("200k x 64", "score_full64", "full", ("noop",)),
        ("diag 1M x 32", "score_diag", "diag", ("noop",)),
    ):
        n, d, k = s.size(key)
        df = s.data.frame(n, d, k)
        models = _fit_models(s, df, k, ct)
        jobs = {name: (lambda m=m, df=df: m.transform(df)) for name, m in models.items()}
        batches: dict[str, int] = {}
        if key == "score_full":
            # Our transform at 5x Spark's default Arrow batch (10,000 rows): whether a
            # bigger batch would pay for the round trip (the scorer keeps the default).
            jobs[BIG_BATCH] = jobs[OURS]
            batches[BIG_BATCH] = 50_000
        jobs["round trip floor"] = lambda df=df: _round_trip_floor(df)
        computed = None
        if "parquet" in sinks and MLLIB in models:
            computed = models[MLLIB].transform(df).cache()
            computed.count()
            jobs["write floor"] = lambda c=computed: c
        pairs = [(sink, name) for sink in sinks for name in jobs
                 if (name != "write floor" or sink == "parquet")
                 and (name not in batches or sink == "noop")]
        # Warm-up, untimed: every job once into every sink (a first Parquet write of a
        # plan compiles its writer path; warmed on noop only, round 1 came out 1.3-1.5x
        # the others).
        for sink, name in pairs:
            _score_passes(s.spark, jobs[name], sink, path, 1, batches.get(name))

        def body(_: int, label: str = label, jobs: dict[str, Any] = jobs,
                 pairs: list[tuple[str, str]] = pairs, batches: dict[str, int] = batches) -> None:
            for sink, name in pairs:
                s.add(f"score {label} {sink} {name}",
                      _score_passes(s.spark, jobs[name], sink, path, s.score_passes,
                                    batches.get(name), min_seconds=s.score_seconds))

        s.rounds(f"score {label}", body)
        if computed is not None:
            computed.unpersist()


def case_score_floors(s: Suite) -> None:
    """1M x 16, k=8, noop: where our transform's time goes. Beside ours and MLlib's: the
    round trip floor (one double out), and the output floor: a UDF with our transform's
    exact output type (prediction, a VectorUDT of k values, log-likelihood) filled with
    zeros, no maths, selected like our output (input columns, then the outputs)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as T
    from pyspark.sql.functions import arrow_udf

    from spark_gmm.scoring import dense_vectors

    n, d, k = s.size("score_full")
    df = s.data.frame(n, d, k)
    models = _fit_models(s, df, k, "full")
    returns = T.StructType([T.StructField("prediction", T.IntegerType()),
                            T.StructField("probability", VectorUDT()),
                            T.StructField("loglik", T.DoubleType())])

    @arrow_udf(returns)  # type: ignore[call-overload]
    def zeros_out(x: pa.Array) -> pa.Array:
        rows = len(x)
        offsets = pa.array(np.arange(0, (rows + 1) * k, k, dtype=np.int32))
        proba = pa.ListArray.from_arrays(offsets, pa.array(np.zeros(rows * k)))
        return pa.StructArray.from_arrays(
            [pa.array(np.zeros(rows, dtype=np.int32)), dense_vectors(proba),
             pa.array(np.zeros(rows))], names=returns.names)

    jobs = {name: (lambda m=m: m.transform(df)) for name, m in models.items()}
    jobs["round trip floor"] = lambda: _round_trip_floor(df)
    jobs["output floor"] = lambda: df.select(
        "*", zeros_out(vector_to_array(df["features"])).alias("out")
    ).select("id", "features", "out.prediction", "out.probability")
    path = os.path.join(s.scratch, "scored")
    for job in jobs.values():  # warm-up
        _score_once(job(), "noop", path)

    def body(_: int) -> None:
        for name, job in jobs.items():
            s.add(f"score_floors {name}",
                  _score_passes(s.spark, job, "noop", path, s.score_passes,
                                min_seconds=s.score_seconds))

    s.rounds("score_floors", body)


def case_score_job(s: Suite) -> None:
    """read Parquet -> score -> write Parquet: the score job vs MLlib's pipeline."""
    from pyspark.ml.clustering import GaussianMixtureModel as MLlibModel
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.sql import functions as F

    from spark_gmm.cli import ScoreConfig
    from spark_gmm.jobs import run_score

    n, d, k = s.size("score_full")
    source = os.path.join(s.scratch, "score_input")
    if not os.path.exists(source):
        s.spark.read.parquet(s.data.parquet(n, d, k)).select(
            F.monotonically_increasing_id().alias("id"), "x"
        ).repartition(INPUT_PARTITIONS).write.parquet(source)
    df = s.data.frame(n, d, k)
    models = _fit_models(s, df, k, "full")
    ours_dir, mllib_dir = (os.path.join(s.scratch, f"model_{x}") for x in ("ours", "mllib"))
    models[OURS].write().overwrite().save(ours_dir)
    models[MLLIB].write().overwrite().save(mllib_dir)
    out = os.path.join(s.scratch, "job_out")

    def ours_job() -> float:
        config = ScoreConfig(input=source, model=ours_dir, features_col="x", id_cols=["id"],
                             output=out, mode="overwrite")
        began = time.perf_counter()
        run_score(s.spark, config)
        return time.perf_counter() - began

    def mllib_job() -> float:
        began = time.perf_counter()
        model = MLlibModel.load(mllib_dir)
        rows = s.spark.read.parquet(source).select("id", array_to_vector("x").alias("features"))
        scored = model.transform(rows)
        scored.select("id", "prediction",
                      vector_to_array("probability").alias("probability")).write.mode(
            "overwrite").parquet(out)
        return time.perf_counter() - began

    ours_job(), mllib_job()  # warm-up

    def body(_: int) -> None:
        s.add(f"score_job {OURS}", ours_job())
        s.add(f"score_job {MLLIB}", mllib_job())

    s.rounds("score_job", body)


def case_missing(s: Suite) -> None:
    """Marginalising missing values against the complete-data iteration."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.ml.functions import array_to_vector

    n, d, k = s.size("missing")
    complete = s.data.frame(n, d, k)
    X = s.data.array(n, d, k).copy()
    rng = np.random.default_rng(s.seed)
    rows = np.flatnonzero(rng.uniform(size=n) < 0.10)
    for row, count in zip(rows, rng.integers(1, 4, size=rows.size)):
        X[row, rng.choice(d, size=count, replace=False)] = np.nan
    path = os.path.join(s.data.scratch, f"rows_missing_{n}_{d}_{k}.parquet")
    offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
    pq.write_table(pa.table({"x": pa.ListArray.from_arrays(offsets, pa.array(X.ravel()))}), path)
    holes = (
        s.spark.read.parquet(path).repartition(INPUT_PARTITIONS)
        .select(array_to_vector("x").alias("features")).cache()
    )
    assert holes.count() == n
    marginalize = {"handleMissing": "marginalize"}
    ours_per_iteration(holes, k, "full", s.seed, **marginalize)  # warm-up

    def body(_: int) -> None:
        s.add("missing complete", ours_per_iteration(complete, k, "full", s.seed)[0])
        s.add("missing marginalize",
              ours_per_iteration(holes, k, "full", s.seed, **marginalize)[0])

    try:
        s.rounds("missing", body)
    finally:
        holes.unpersist()
    s.extra["missing"] = {"size": [n, d, k], "rows_with_missing": int(rows.size)}


CASES: dict[str, Callable[[Suite], None]] = {
    "fit_full": case_fit_full, "fit_full64": case_fit_full64, "fit_diag": case_fit_diag,
    "scaling": case_scaling, "driver": case_driver, "ninit": case_ninit,
    "score": case_score, "score_job": case_score_job, "score_floors": case_score_floors,
    "init_cost": case_init_cost,
    "missing": case_missing,
}


# ---------------------------------------------------------------------------
# Derived ratios and the report
# ---------------------------------------------------------------------------


def derive(s: Suite) -> dict[str, float]:
    m = s.median
    out = {
        "fit_full MLlib/ours": m(f"fit_full {MLLIB}") / m(f"fit_full {OURS}"),
        "fit_full sklearn/ours": m(f"fit_full {SKLEARN}") / m(f"fit_full {OURS}"),
        "fit_full overhead": 1 - (m(f"fit_full {FLOOR}") / CORES) / m(f"fit_full {OURS}"),
        "fit_full64 sklearn/ours": m(f"fit_full64 {SKLEARN}") / m(f"fit_full64 {OURS}"),
        "fit_diag sklearn/ours": m(f"fit_diag {SKLEARN}") / m(f"fit_diag {OURS}"),
        "driver share": m("driver share"),
        "ninit 4/1": m("ninit 4") / m("ninit 1"),
    }
    sizes = s.extra.get("scaling", {}).get("sizes", [])
    if sizes and sizes[-1] // 4 in sizes:
        out["scaling 4x rows"] = m(f"scaling {sizes[-1]}") / m(f"scaling {sizes[-1] // 4}")
    for label, sink in (("1M x 16", "noop"), ("1M x 16", "parquet"), ("200k x 64", "noop")):
        out[f"score {label} {sink} MLlib/ours"] = (
            m(f"score {label} {sink} {MLLIB}") / m(f"score {label} {sink} {OURS}")
        )
    out["score_job MLlib/ours"] = m(f"score_job {MLLIB}") / m(f"score_job {OURS}")
    out["score_floors round trip/MLlib"] = m("score_floors round trip floor") / m(
        f"score_floors {MLLIB}")
    out["score_floors output floor/MLlib"] = m("score_floors output floor") / m(
        f"score_floors {MLLIB}")
    out["init_cost short-em/kmeans"] = m("init_cost short-em") / m("init_cost kmeans")
    out["init_cost short-em/kmeans x4"] = m("init_cost short-em") / m("init_cost kmeans x4")
    out["missing marginalize/complete"] = m("missing marginalize") / m("missing complete")
    return {k: v for k, v in out.items() if np.isfinite(v)}


def report(results: dict[str, Any]) -> str:
    mach = results["machine"]
    lines = [
        "# Performance suite",
        "",
        f"Written by `benchmarks/bench_suite.py` on {mach['date_utc']}: {mach['cpu']}, "
        f"{mach['cores']} cores, {mach['ram_gib']} GiB RAM; "
        + ", ".join(f"{a} {b}" for a, b in mach["versions"].items()) + ".",
        f"Spark local[2]; {results['repeats']} interleaved rounds per case; medians with "
        "min and max; ratios of medians.",
        "",
        "**Publishable run.**" if results["verdict"]["publishable"]
        else "**Not publishable:** " + "; ".join(results["verdict"]["reasons"]),
        "",
        "| measurement | median (min to max) |",
        "|---|---|",
    ]
    for name, rep in results["cases"].items():
        unit = "" if "share" in name else " s"
        lines.append(f"| {name} | {timing.fmt_range(rep, unit)} |")
    lines += ["", "| ratio (of medians) | value | goal |", "|---|---|---|"]
    for name, value in results["derived"].items():
        goal = GOALS.get(name)
        verdict = ""
        if goal:
            op, limit = goal
            ok = value >= limit if op == ">=" else value <= limit
            verdict = f"{op} {limit}: {'met' if ok else '**not met**'}"
        lines.append(f"| {name} | {value:.3f} | {verdict} |")
    lines += ["", "```json", json.dumps(results["extra"], indent=1, default=str), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=timing.MIN_REPEATS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score-passes", type=int, default=3,
                        help="scorings per timed repeat of the score case (seconds per pass)")
    parser.add_argument("--score-seconds", type=float, default=5.0,
                        help="and more scorings until a repeat has lasted this long")
    parser.add_argument("--cases", default=",".join(ALL_CASES))
    parser.add_argument("--output-dir", default=str(HERE / "results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    suite = Suite(args)
    failed: dict[str, str] = {}
    try:
        for case in args.cases.split(","):
            log.info("case %s", case)
            try:
                CASES[case](suite)
            except Exception as exc:  # one broken case must not cost an hour of the others
                log.exception("case %s failed", case)
                failed[case] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        suite.spark.stop()
        shutil.rmtree(suite.scratch, ignore_errors=True)
    results = {
        "machine": timing.machine(),
        "repeats": suite.repeats,
        "cases": {k: v.summary() for k, v in suite.cases.items()},
        "derived": derive(suite),
        "extra": suite.extra,
        "rounds": suite.run.rounds,
        "verdict": suite.run.verdict(suite.cases),
        "failed_cases": failed,
    }
    if failed:
        results["verdict"]["publishable"] = False
        results["verdict"]["reasons"].append("cases failed: " + ", ".join(failed))
    name = "suite_quick" if args.quick else "suite"
    out = Path(args.output_dir)
    timing.write_json(out / f"{name}.json", results)
    (out / f"{name}.md").write_text(report(results))
    print((out / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
