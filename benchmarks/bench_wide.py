"""Embedding tables on Spark (issue 31, item 4): diag and spherical mixtures against
MLlib's KMeans (what Spark users cluster embeddings with today) and sklearn's diag
GaussianMixture, on a generated table of ``array<float>`` rows (benchmarks/embeddings.py).

Two parts, each a subcommand writing ``benchmarks/results/wide/<part>.{json,md}``:

``compare`` (local[2], driver 6g; a slice of the table, default 200,000 x 768, k=64)
    Interleaved rounds; in each, one repeat of:
    * ours, per iteration: median of ``summary.iterationSeconds`` of a fit capped at
      ``CAP`` iterations (``tol=0``) from one start (a default fit's first iteration),
      diag with float64 blocks, diag and spherical with float32 blocks (the float32
      compute path);
    * MLlib ``KMeans`` per iteration: ``(wall(CAP) - wall(1)) / (CAP - 1)``, k-means||
      start, ``tol=0`` (the start is the same in both fits and cancels);
    * sklearn ``GaussianMixture(covariance_type='diag')`` per iteration, float64 rows in
      this process (two BLAS threads): ``(wall(CAP) - wall(1)) / (CAP - 1)``;
    * whole default fits with the same iteration budget (``DEFAULT_BUDGET``): ours
      (default initialisation, ``blockDtype`` float32, diag) from the uncached Parquet
      file, and MLlib ``KMeans`` (k-means||) from the same file, with ``maxIter`` equal
      and ``tol=0`` for both; ours is broken down into reading and caching, the
      initialisation, the iterations and the rest (final pass, driver).

``table`` (its own process: local[2] with a 2 GiB driver, which in local mode is the
executor too; the whole table, default 1,000,000 x 768 float32 = 2.9 GiB, k=256)
    One fit each of diag and spherical (``blockDtype="float32"``, default
    initialisation, ``maxIter=TABLE_ITERATIONS``), then ``transform`` of every row
    (counted); wall times by phase and where the cache went (memory / disk).

Usage::

    .venv/bin/python benchmarks/bench_wide.py compare [--rows 200000 --k 64 --rounds 5]
    .venv/bin/python benchmarks/bench_wide.py table [--rows 1000000 --k 256]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_suite
import embeddings
import timing

RESULTS = Path(__file__).resolve().parent / "results" / "wide"
SCRATCH = Path(os.environ.get("BENCH_SCRATCH", tempfile.gettempdir())) / "spark_gmm_wide"
TABLE_ROWS, D, TABLE_K = 1_000_000, 768, 256
CAP = bench_suite.CAP
DEFAULT_BUDGET = 10
TABLE_ITERATIONS = 5
PARTITIONS = 8

log = logging.getLogger("bench_wide")


def start_spark(driver_memory: str) -> Any:
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (
        SparkSession.builder.appName("bench_wide")
        .master("local[2]")
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    return spark


def table_path(rows: int, d: int, k: int) -> Path:
    SCRATCH.mkdir(parents=True, exist_ok=True)
    return embeddings.write_table(SCRATCH / f"embeddings_{rows}_{d}_{k}.parquet", rows, d, k)


class PhaseLog(logging.Handler):
    """Collects spark_gmm's log lines to read the initialisation time and the cache."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def seconds(self, pattern: str) -> float:
        for line in self.lines:
            m = re.search(pattern, line)
            if m:
                return float(m.group(1))
        return float("nan")

    def line(self, prefix: str) -> str:
        return next((x for x in self.lines if x.startswith(prefix)), "")


def attach() -> PhaseLog:
    handler = PhaseLog()
    logger = logging.getLogger("spark_gmm")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def ours_fit(
    df: Any, k: int, ct: str, dtype: str, max_iter: int, default: bool = False, initial: Any = None
) -> tuple[Any, float, PhaseLog]:
    from spark_gmm import GaussianMixture

    est = GaussianMixture(
        k=k,
        featuresCol="embedding",
        covarianceType=ct,
        maxIter=max_iter,
        tol=0.0,
        seed=0,
        blockDtype=dtype,
    )
    if not default:
        est.setInitMode("random_from_data")
    if initial is not None:
        est.setInitialModel(initial)
    handler = attach()
    began = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = est.fit(df)
    finally:
        logging.getLogger("spark_gmm").removeHandler(handler)
    return model, time.perf_counter() - began, handler


def kmeans_fit(df: Any, k: int, max_iter: int) -> tuple[Any, float]:
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector

    vectors = df.select(array_to_vector("embedding").alias("features"))
    began = time.perf_counter()
    model = KMeans(k=k, maxIter=max_iter, tol=0.0, seed=0).fit(vectors)
    return model, time.perf_counter() - began


def compare(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    spark = start_spark("6g")
    path = table_path(TABLE_ROWS, D, TABLE_K)
    slice_path = SCRATCH / f"slice_{args.rows}.parquet"
    if not slice_path.exists():
        pq.write_table(pq.read_table(path).slice(0, args.rows), slice_path)
    raw = spark.read.parquet(str(slice_path)).repartition(PARTITIONS)
    cached = raw.cache()
    assert cached.count() == args.rows
    column = pq.read_table(slice_path).column("embedding").combine_chunks()
    X = column.values.to_numpy().reshape(args.rows, D).astype(np.float64)  # the same rows
    k = args.k
    cases: dict[str, timing.Repeats] = {}
    extra: dict[str, Any] = {"ours_breakdown": [], "loglik": {}}

    def add(name: str, value: float) -> None:
        cases.setdefault(name, timing.Repeats()).add(value)

    # One start for every per-iteration fit (a random-row start lets components collapse
    # at this width): the default initialisation, one iteration. Also the warm-up.
    from spark_gmm import GaussianMixtureModel

    first, _, _ = ours_fit(cached, k, "diag", "float64", 1, default=True)
    starts = {
        "diag": first,
        "spherical": GaussianMixtureModel.fromParameters(
            first.weights, first.means, first.covariances.mean(axis=1), "spherical"
        ),
    }
    ours_fit(cached, k, "diag", "float32", 1, initial=first)
    kmeans_fit(cached, k, 1)
    run = timing.Run()
    for r in range(args.rounds):
        run.start_round(f"round {r + 1}")
        for name, ct, dtype in [
            ("ours diag float64", "diag", "float64"),
            ("ours diag float32", "diag", "float32"),
            ("ours spherical float32", "spherical", "float32"),
        ]:
            model, _, _ = ours_fit(cached, k, ct, dtype, CAP, initial=starts[ct])
            add(f"{name} per iteration", statistics.median(model.summary.iterationSeconds))
            extra["loglik"][name] = model.summary.meanLogLikelihood
        _, short = kmeans_fit(cached, k, 1)
        model, long = kmeans_fit(cached, k, CAP)
        add("MLlib KMeans per iteration", (long - short) / (CAP - 1))
        seconds, score = bench_suite.sklearn_per_iteration(X, k, "diag", 0)
        add("sklearn diag per iteration", seconds)
        extra["loglik"]["sklearn diag"] = score
        # Whole default fits, same iteration budget, from the uncached file.
        model, wall, phases = ours_fit(raw, k, "diag", "float32", DEFAULT_BUDGET, default=True)
        add("ours default fit", wall)
        init = phases.seconds(r"initialised \d+ candidate\(s\) in ([0-9.]+) s")
        iterations = sum(model.summary.iterationSeconds)
        extra["ours_breakdown"].append(
            {
                "wall": wall,
                "initialisation": init,
                "iterations": iterations,
                "read, cache and the rest": wall - init - iterations,
                "cache": phases.line("cached"),
            }
        )
        _, kwall = kmeans_fit(raw, k, DEFAULT_BUDGET)
        add("MLlib KMeans default fit", kwall)
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {rep.values[-1]:.2f}" for n, rep in cases.items()),
            flush=True,
        )
    cached.unpersist()
    med = {n: rep.median for n, rep in cases.items()}
    ratios = {
        "ours diag float64 / KMeans": med["ours diag float64 per iteration"]
        / med["MLlib KMeans per iteration"],
        "ours diag float32 / KMeans": med["ours diag float32 per iteration"]
        / med["MLlib KMeans per iteration"],
        "sklearn diag / ours diag float64": med["sklearn diag per iteration"]
        / med["ours diag float64 per iteration"],
        "sklearn diag / ours diag float32": med["sklearn diag per iteration"]
        / med["ours diag float32 per iteration"],
        "ours spherical float32 / ours diag float32": med["ours spherical float32 per iteration"]
        / med["ours diag float32 per iteration"],
        "ours default fit / KMeans default fit": med["ours default fit"]
        / med["MLlib KMeans default fit"],
    }
    payload = {
        "machine": timing.machine(),
        "setup": {
            "rows": args.rows,
            "d": D,
            "k": k,
            "cap": CAP,
            "default_budget": DEFAULT_BUDGET,
            "partitions": PARTITIONS,
            "table": str(path.name),
        },
        "rounds": run.rounds,
        "verdict": run.verdict(cases),
        "cases": {n: rep.summary() for n, rep in cases.items()},
        "ratios_of_medians": ratios,
        **extra,
    }
    timing.write_json(RESULTS / "compare.json", payload)
    (RESULTS / "compare.md").write_text(render_compare(payload))
    print(render_compare(payload))


def render_compare(p: dict[str, Any]) -> str:
    m, s, v = p["machine"], p["setup"], p["verdict"]
    lines = [
        f"# Embedding table: {s['rows']:,} x {s['d']} float32 rows, k={s['k']}",
        "",
        timing.provenance_line(m)
        + f"; {m['cpu']}, {m['cores']} cores; local[2], driver 6g; "
        f"{s['partitions']} partitions.",
        "",
        "**Publishable.**"
        if v["publishable"]
        else "**Not publishable:** " + "; ".join(v["reasons"]) + ".",
        "",
        f"Seconds, median of {len(p['rounds'])} interleaved rounds (min to max). Per "
        f"iteration: fits capped at {s['cap']} iterations, tol=0. Default fits: "
        f"maxIter={s['default_budget']}, tol=0, from the uncached Parquet file.",
        "",
        *timing.cases_table(p["cases"]),
        "",
        *timing.ratios_table(p["ratios_of_medians"]),
    ]
    lines += [
        "",
        "Our default fit, by phase (seconds, each round):",
        "",
        "| wall | initialisation | iterations | read, cache and the rest |",
        "|---|---|---|---|",
    ]
    for b in p["ours_breakdown"]:
        lines.append(
            f"| {b['wall']:.2f} | {b['initialisation']:.2f} | {b['iterations']:.2f} "
            f"| {b['read, cache and the rest']:.2f} |"
        )
    lines += [
        "",
        "Final mean log-likelihood of the last round's fits (per row): "
        + ", ".join(f"{n} {v:.4f}" for n, v in p["loglik"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def table(args: argparse.Namespace) -> None:
    from pyspark.sql import functions as F

    path = table_path(args.rows, D, args.k)
    spark = start_spark(args.driver_memory)
    df = spark.read.parquet(str(path))
    out: dict[str, Any] = {
        "machine": timing.machine(),
        "setup": {
            "rows": args.rows,
            "d": D,
            "k": args.k,
            "driver_memory": args.driver_memory,
            "max_iter": TABLE_ITERATIONS,
            "file_bytes": path.stat().st_size,
        },
        "fits": [],
    }
    for ct in args.types.split(","):
        model, wall, phases = ours_fit(df, args.k, ct, "float32", TABLE_ITERATIONS, default=True)
        began = time.perf_counter()
        scored = model.transform(df).agg(F.count("prediction"), F.max("prediction")).first()
        transform = time.perf_counter() - began
        init = phases.seconds(r"initialised \d+ candidate\(s\) in ([0-9.]+) s")
        iterations = model.summary.iterationSeconds
        out["fits"].append(
            {
                "covariance_type": ct,
                "wall": wall,
                "initialisation": init,
                "iterations": iterations,
                "rest": wall - init - sum(iterations),
                "transform_rows": int(scored[0]),
                "transform_seconds": transform,
                "mean_log_likelihood": model.summary.meanLogLikelihood,
                "cluster_sizes_min_max": [
                    min(model.summary.clusterSizes),
                    max(model.summary.clusterSizes),
                ],
                "log": phases.lines,
            }
        )
        print(out["fits"][-1], flush=True)
    # The default initialisation against one k-means start (initMode="kmeans": the best
    # of 3 k-means runs on the same driver sample, then an M-step pass), diag.
    from spark_gmm import GaussianMixture

    handler = attach()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            GaussianMixture(
                k=args.k,
                featuresCol="embedding",
                covarianceType="diag",
                maxIter=1,
                tol=0.0,
                seed=0,
                blockDtype="float32",
                initMode="kmeans",
            ).fit(df)
    finally:
        logging.getLogger("spark_gmm").removeHandler(handler)
    out["kmeans_start_seconds"] = handler.seconds(r"initialised \d+ candidate\(s\) in ([0-9.]+) s")
    timing.write_json(RESULTS / "table.json", out)
    (RESULTS / "table.md").write_text(render_table(out))
    print(render_table(out))


def render_table(p: dict[str, Any]) -> str:
    m, s = p["machine"], p["setup"]
    lines = [
        f"# The whole table: {s['rows']:,} x {s['d']} float32 rows "
        f"({s['file_bytes'] / 2**30:.2f} GiB of Parquet), k={s['k']}",
        "",
        timing.provenance_line(m)
        + f"; {m['cpu']}, {m['cores']} cores; local[2] with "
        f"spark.driver.memory={s['driver_memory']} (the executor in local mode). One run "
        "per covariance type (a capacity check, not a timing comparison).",
        "",
        "| covariance | fit wall s | initialisation s | iterations s (each) | rest s | "
        "transform rows, s | mean log-lik. |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in p["fits"]:
        its = ", ".join(f"{x:.1f}" for x in f["iterations"])
        lines.append(
            f"| {f['covariance_type']} | {f['wall']:.1f} | {f['initialisation']:.1f} | {its} "
            f"| {f['rest']:.1f} | {f['transform_rows']:,}, {f['transform_seconds']:.1f} "
            f"| {f['mean_log_likelihood']:.4f} |"
        )
    for f in p["fits"]:
        cache = next((x for x in f["log"] if x.startswith("cached")), "")
        sample = next((x for x in f["log"] if x.startswith("initSampleSize")), "")
        lines += ["", f"{f['covariance_type']}: {cache}. {sample}"]
    if "kmeans_start_seconds" in p:
        diag = next(f for f in p["fits"] if f["covariance_type"] == "diag")
        lines += [
            "",
            f"The default initialisation (diag) took {diag['initialisation']:.1f} s; one "
            f'k-means start (initMode="kmeans", best of 3 k-means runs on the same sample, '
            f"then its M-step pass) {p['kmeans_start_seconds']:.1f} s: "
            f"{diag['initialisation'] / p['kmeans_start_seconds']:.2f}x (one run each).",
        ]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--rows", type=int, default=200_000)
    c.add_argument("--k", type=int, default=64)
    c.add_argument("--rounds", type=int, default=5)
    t = sub.add_parser("table")
    t.add_argument("--rows", type=int, default=TABLE_ROWS)
    t.add_argument("--k", type=int, default=TABLE_K)
    t.add_argument("--driver-memory", default="2g")
    t.add_argument("--types", default="diag,spherical")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    compare(args) if args.part == "compare" else table(args)


if __name__ == "__main__":
    main()
