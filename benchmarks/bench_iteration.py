"""Per-iteration cost of Gaussian-mixture EM: spark_gmm vs Spark MLlib vs scikit-learn.

Method
------
One process generates a mixture of ``k`` Gaussians with random means and covariances
(fixed seed), ``N`` rows x ``d`` float64 features, and fits it with three implementations
on the same data:

1. ``spark_gmm.GaussianMixture`` on a cached Spark DataFrame (ml vector column),
2. ``pyspark.ml.clustering.GaussianMixture`` (MLlib) on the same cached DataFrame,
3. ``sklearn.mixture.GaussianMixture`` on the same numpy array.

Each implementation is fitted twice with ``tol=0`` and a cheap initialisation (spark_gmm
and sklearn: ``random_from_data``; MLlib: its only, random, initialisation): once capped
at 1 iteration and once capped at 11. The fixed costs (input conversion and caching,
initialisation, the final log-likelihood pass, job scheduling) are the same in both fits,
so they cancel in

    s/iteration = (wall(11-capped fit) - wall(1-capped fit))
                  / (iterations run by the 11-capped fit - iterations run by the 1-capped fit)

with the iteration counts read from each fitted model (``summary.numIter`` /
``n_iter_``). A warm-up fit (1 iteration, untimed) of every implementation runs first,
so that JVM code generation and Python worker start-up are not charged to anyone. The
pair of timed fits is repeated ``--repeats`` times, the implementations interleaved in
each round. Other load on the machine only ever adds time, so the headline number uses
the fastest wall time of each fit over the repeats; the range of the per-repeat
differences shows the noise.

An implementation fails when a fit raises, when its final log-likelihood is not finite,
or when the 11-capped fit stops early (with ``tol=0`` that only happens on a numerical
breakdown, e.g. MLlib's covariances collapsing); it is then reported with its
log-likelihood instead of a speed. The mean log-likelihood per sample of each 11-iteration
fit (spark_gmm: ``summary.meanLogLikelihood``; sklearn: ``score(X)``; MLlib:
``summary.logLikelihood / N``) shows that the fits are comparable.

Spark runs in ``local[2]`` with ``spark.sql.shuffle.partitions=4`` and a 6g driver; the
data reaches it through a temporary Parquet file (so that tasks do not carry the rows)
and is cached in 4 partitions. sklearn uses the BLAS threads numpy gives it. Timings on a
shared machine are noisy (the report records the load average): compare only numbers from
the same run.

Usage::

    python benchmarks/bench_iteration.py            # N=1,000,000, d=16, k=8, full
    python benchmarks/bench_iteration.py --quick    # N=100,000, 2 repeats

Writes ``iteration.md`` (table), ``iteration.json`` (raw numbers) and ``iteration.png``
(bar chart) to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_iteration")

SHORT_CAP = 1
LONG_CAP = 11
DEFAULT_N = 1_000_000
QUICK_N = 100_000
SPARK_MASTER = "local[2]"
INPUT_PARTITIONS = 4
SPARK_CONF = {
    "spark.sql.shuffle.partitions": "4",
    "spark.driver.memory": "6g",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
}

OURS = "spark_gmm"
MLLIB = "Spark MLlib"
SKLEARN = "scikit-learn"


@dataclass
class Case:
    n: int
    d: int
    k: int
    covariance_type: str
    seed: int
    repeats: int


@dataclass
class FitResult:
    """One fit: wall time, iterations actually run, mean log-likelihood per sample."""

    seconds: float
    n_iter: int
    mean_log_likelihood: float


@dataclass
class ImplementationResult:
    name: str
    short_fits: list[FitResult] = field(default_factory=list)
    long_fits: list[FitResult] = field(default_factory=list)
    failure: str | None = None

    @property
    def per_iteration(self) -> list[float]:
        """Seconds per iteration of each repeat (long fit minus short fit)."""
        if self.failure is not None:
            return []
        return [
            (long.seconds - short.seconds) / (long.n_iter - short.n_iter)
            for short, long in zip(self.short_fits, self.long_fits, strict=True)
        ]

    @property
    def best_per_iteration(self) -> float:
        """Seconds per iteration from the fastest short and the fastest long fit."""
        if self.failure is not None:
            return math.nan
        short = min(self.short_fits, key=lambda fit: fit.seconds)
        long = min(self.long_fits, key=lambda fit: fit.seconds)
        return (long.seconds - short.seconds) / (long.n_iter - short.n_iter)

    @property
    def mean_log_likelihood(self) -> float:
        return self.long_fits[-1].mean_log_likelihood if self.long_fits else math.nan

    @property
    def iterations_run(self) -> int | None:
        return self.long_fits[-1].n_iter if self.long_fits else None


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def make_mixture_data(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """N rows drawn from k Gaussians with random weights, means and full covariances."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(k, 5.0))
    means = rng.normal(scale=4.0, size=(k, d))
    labels = rng.choice(k, size=n, p=weights)
    X = np.empty((n, d))
    for j in range(k):
        rows = labels == j
        A = rng.normal(size=(d, d))
        cov = A @ A.T / d + 0.1 * np.eye(d)
        X[rows] = means[j] + rng.standard_normal((rows.sum(), d)) @ np.linalg.cholesky(cov).T
    return X


def start_spark():
    """A local[2] session, configured before the JVM starts."""
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    builder = SparkSession.builder.appName("bench_iteration").master(SPARK_MASTER)
    for key, value in SPARK_CONF.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def cached_features_frame(spark, X: np.ndarray, scratch_dir: str):
    """A cached, counted DataFrame with one ml vector column ``features`` holding X.

    The rows go through a Parquet file in ``scratch_dir`` (exact for float64).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.ml.functions import array_to_vector

    n, d = X.shape
    offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
    rows = pa.ListArray.from_arrays(offsets, pa.array(X.ravel()))
    path = os.path.join(scratch_dir, "mixture.parquet")
    pq.write_table(pa.table({"x": rows}), path)
    df = (
        spark.read.parquet(path)
        .repartition(INPUT_PARTITIONS)
        .select(array_to_vector("x").alias("features"))
        .cache()
    )
    if df.count() != n:
        raise RuntimeError("the cached DataFrame does not hold every row")
    return df


# ---------------------------------------------------------------------------
# One fit of each implementation
# ---------------------------------------------------------------------------


def fit_ours(df, case: Case, max_iter: int) -> FitResult:
    from spark_gmm import GaussianMixture

    estimator = GaussianMixture(
        k=case.k,
        featuresCol="features",
        covarianceType=case.covariance_type,
        initMode="random_from_data",
        nInit=1,
        maxIter=max_iter,
        tol=0.0,
        seed=case.seed,
    )
    start = time.perf_counter()
    summary = estimator.fit(df).summary
    seconds = time.perf_counter() - start
    return FitResult(seconds, summary.numIter, summary.meanLogLikelihood)


def fit_mllib(df, case: Case, max_iter: int) -> FitResult:
    from pyspark.ml.clustering import GaussianMixture

    estimator = GaussianMixture(
        k=case.k, featuresCol="features", maxIter=max_iter, tol=0.0, seed=case.seed
    )
    start = time.perf_counter()
    summary = estimator.fit(df).summary
    seconds = time.perf_counter() - start
    return FitResult(seconds, summary.numIter, summary.logLikelihood / case.n)


def fit_sklearn(X: np.ndarray, case: Case, max_iter: int) -> FitResult:
    from sklearn.mixture import GaussianMixture

    estimator = GaussianMixture(
        n_components=case.k,
        covariance_type=case.covariance_type,
        init_params="random_from_data",
        max_iter=max_iter,
        tol=0.0,
        random_state=case.seed,
    )
    start = time.perf_counter()
    estimator.fit(X)
    seconds = time.perf_counter() - start
    return FitResult(seconds, int(estimator.n_iter_), float(estimator.score(X)))


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------


def failure_of(fit: FitResult, long_cap: int = LONG_CAP) -> str | None:
    """Why a long (11-capped) fit cannot be timed, or None."""
    if not math.isfinite(fit.mean_log_likelihood):
        return f"log-likelihood is {fit.mean_log_likelihood} after {fit.n_iter} iterations"
    if fit.n_iter < long_cap:
        return f"stopped after {fit.n_iter} of {long_cap} iterations"
    return None


def run_benchmark(
    fitters: dict[str, Callable[[int], FitResult]],
    repeats: int,
    warm_up: bool = True,
    long_cap: int = LONG_CAP,
) -> list[ImplementationResult]:
    """Warm up every implementation, then time short/long fit pairs, interleaved."""
    results = {name: ImplementationResult(name) for name in fitters}
    for name, fit in fitters.items():
        if not warm_up:
            break
        log.info("warm-up: %s", name)
        try:
            fit(SHORT_CAP)
        except Exception as exc:  # report any implementation's crash, keep the others
            results[name].failure = f"{type(exc).__name__}: {exc}"
    for round_ in range(1, repeats + 1):
        for name, fit in fitters.items():
            result = results[name]
            if result.failure is not None:
                continue
            try:
                short, long = fit(SHORT_CAP), fit(long_cap)
            except Exception as exc:
                result.failure = f"{type(exc).__name__}: {exc}"
                continue
            result.short_fits.append(short)
            result.long_fits.append(long)
            result.failure = failure_of(long, long_cap)
            log.info(
                "round %d %s: %d it %.2f s, %d it %.2f s, mean log-likelihood %.4f%s",
                round_, name, short.n_iter, short.seconds, long.n_iter, long.seconds,
                long.mean_log_likelihood, f" FAILED ({result.failure})" if result.failure else "",
            )
    return list(results.values())


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def load_average() -> float:
    """The machine's 1-minute load average (other work running shows up here)."""
    return os.getloadavg()[0]


def machine_description() -> dict[str, str]:
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        mem_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu_model,
        "ram": f"{mem_kb / 2**20:.1f} GiB",
    }


def versions() -> dict[str, str]:
    import pyspark
    import sklearn

    return {
        "pyspark": pyspark.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
    }


def case_description(case: Case) -> str:
    return (
        f"N={case.n:,} x d={case.d}, k={case.k}, covariance {case.covariance_type}, float64; "
        f"Spark {SPARK_MASTER}, {INPUT_PARTITIONS} input partitions, shuffle partitions 4, "
        f"driver memory 6g; tol=0, fits capped at {SHORT_CAP} and {LONG_CAP} iterations, "
        f"{case.repeats} repeat(s), seed {case.seed}"
    )


def markdown_report(results: list[ImplementationResult], header: str) -> str:
    ours = next(r for r in results if r.name == OURS).best_per_iteration
    lines = [
        header,
        "",
        "| implementation | s/iteration (best, range over repeats) | iterations run "
        "| mean log-likelihood | speed-up of spark_gmm vs it |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        loglik = f"{result.mean_log_likelihood:.4f}"
        iterations = str(result.iterations_run) if result.iterations_run is not None else "-"
        if result.failure is not None:
            speed, speed_up = f"failed: {result.failure}", "-"
        else:
            times = result.per_iteration
            speed = f"{result.best_per_iteration:.3f} ({min(times):.3f} to {max(times):.3f})"
            if result.best_per_iteration <= 0:
                speed += " below the noise of the fixed cost"
            measurable = ours > 0 and result.best_per_iteration > 0
            speed_up = "-" if result.name == OURS or not measurable else (
                f"{result.best_per_iteration / ours:.2f}x"
            )
        lines.append(f"| {result.name} | {speed} | {iterations} | {loglik} | {speed_up} |")
    return "\n".join(lines) + "\n"


def bar_chart(results: list[ImplementationResult], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in results]
    best = [0.0 if r.failure else max(r.best_per_iteration, 0.0) for r in results]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    bars = ax.bar(names, best, color=[f"C{i}" for i in range(len(results))])
    for bar, result in zip(bars, results, strict=True):
        ax.scatter([bar.get_x() + bar.get_width() / 2] * len(result.per_iteration),
                   result.per_iteration, color="black", s=12, zorder=3)
        label = "failed" if result.failure else f"{result.best_per_iteration:.3f} s"
        if not result.failure and result.best_per_iteration <= 0:
            label = "below noise"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", xytext=(0, 3), textcoords="offset points")
    ax.set_ylabel("seconds per EM iteration (lower is better)")
    ax.set_xlabel("bar: best of the repeats; dots: each repeat")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(
    results: list[ImplementationResult], case: Case, loads: tuple[float, float], output_dir: Path
) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine, software = machine_description(), versions()
    case_text = case_description(case)
    header = (
        f"EM per-iteration cost, {date}. Machine: {machine['nproc']} CPUs ({machine['cpu']}), "
        f"{machine['ram']} RAM, 1-minute load average {loads[0]:.1f} at the start and "
        f"{loads[1]:.1f} at the end. Versions: pyspark {software['pyspark']}, numpy "
        f"{software['numpy']}, scikit-learn {software['sklearn']}, Python "
        f"{software['python']}. Case: {case_text}."
    )
    table_path = output_dir / "iteration.md"
    table_path.write_text(markdown_report(results, header))
    raw = {
        "date": date,
        "machine": machine,
        "load_average_start_end": loads,
        "versions": software,
        "case": {
            **asdict(case),
            "spark_master": SPARK_MASTER,
            "spark_conf": SPARK_CONF,
            "input_partitions": INPUT_PARTITIONS,
            "short_cap": SHORT_CAP,
            "long_cap": LONG_CAP,
        },
        "results": [
            {**asdict(r), "per_iteration_seconds": r.per_iteration,
             "best_per_iteration_seconds": r.best_per_iteration}
            for r in results
        ],
    }
    (output_dir / "iteration.json").write_text(json.dumps(raw, indent=2, allow_nan=True) + "\n")
    title = f"EM s/iteration, N={case.n:,}, d={case.d}, k={case.k}, {case.covariance_type}"
    bar_chart(results, title, output_dir / "iteration.png")
    return table_path


def ignore_convergence_warnings() -> None:
    """Every capped fit stops before converging, by design: silence that warning."""
    from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning

    from spark_gmm.em import ConvergenceWarning

    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.simplefilter("ignore", SklearnConvergenceWarning)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"N={QUICK_N:,} (unless --n)")
    parser.add_argument("--n", type=int, default=None, help=f"rows (default {DEFAULT_N:,})")
    parser.add_argument("--d", type=int, default=16, help="features (default 16)")
    parser.add_argument("--k", type=int, default=8, help="components (default 8)")
    parser.add_argument("--covariance-type", default="full",
                        choices=["full", "tied", "diag", "spherical"])
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed short/long fit pairs per implementation (default 3; "
                        "--quick: 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output-dir", type=Path,
                        default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.n is None:
        args.n = QUICK_N if args.quick else DEFAULT_N
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("spark_gmm").setLevel(logging.ERROR)  # not the capped fits' warning
    ignore_convergence_warnings()
    case = Case(args.n, args.d, args.k, args.covariance_type, args.seed, args.repeats)

    log.info("generating %d x %d rows from %d Gaussians", case.n, case.d, case.k)
    X = make_mixture_data(case.n, case.d, case.k, case.seed)
    load_at_start = load_average()
    spark = start_spark()
    try:
        with tempfile.TemporaryDirectory(prefix="bench_iteration_") as scratch_dir:
            df = cached_features_frame(spark, X, scratch_dir)
            fitters: dict[str, Callable[[int], FitResult]] = {
                OURS: lambda cap: fit_ours(df, case, cap),
                MLLIB: lambda cap: fit_mllib(df, case, cap),
                SKLEARN: lambda cap: fit_sklearn(X, case, cap),
            }
            if case.covariance_type != "full":
                del fitters[MLLIB]  # MLlib only fits full covariances
            results = run_benchmark(fitters, case.repeats)
    finally:
        spark.stop()
    loads = (load_at_start, load_average())
    table_path = write_outputs(results, case, loads, args.output_dir)
    print(table_path.read_text())


if __name__ == "__main__":
    main()
