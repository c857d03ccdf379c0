"""Soak test: one long fit, watching what the driver holds at every EM iteration.

Method
------
Spark ``local[2]`` (driver and executors share one JVM), ``N`` rows x ``d`` features
drawn from a mixture of ``k`` Gaussians on the executors (``spark.range`` + ``randn``,
fixed seeds; nothing is collected to the driver), one fit with ``tol=0`` so that all
``--iterations`` EM iterations run. A logging handler on the ``spark_gmm`` logger takes a
sample at every ``EM iteration i/n`` line (the library's code is not touched):

- Python driver RSS, JVM RSS (driver + executors in local mode) and JVM heap in use,
  total PSS of the Python worker processes (forked from one daemon, they share pages:
  PSS splits those, where RSS would count them in every process);
- persisted RDDs (``sc.getPersistentRDDs``);
- broadcast variables with blocks in the driver's BlockManager, all of them (Spark's
  own task-binary broadcasts included, which its ``ContextCleaner`` removes after a JVM
  garbage collection) and those created by pyspark during the fit (spark_gmm's parameter
  broadcasts, recorded by wrapping ``sc.broadcast``);
- pyspark's broadcast files in its temp directory.

After the fit, the same numbers once the cache and broadcasts are released, and again
after a JVM garbage collection. "Flat" means: the persisted RDDs stay at baseline + 1 (the
cache) and the live parameter broadcasts at 0 or 1 (the last one, whose blocks are removed
asynchronously) at every iteration, and memory stops growing after warm-up.

Usage::

    python benchmarks/soak.py                       # 1,000,000 rows, 200 iterations
    python benchmarks/soak.py --rows 100000 --iterations 30   # quick look

Writes ``soak.md`` and ``soak.json`` to ``--output-dir`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the probes shared with the reliability tests

import spark_probes as probes  # noqa: E402


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=4)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    return p.parse_args()


def _data(spark, rows: int, d: int, k: int, partitions: int):
    """A k-component mixture, drawn on the executors (deterministic for fixed seeds)."""
    from pyspark.sql import functions as F

    df = spark.range(0, rows, numPartitions=partitions)
    df = df.withColumn("c", F.floor(F.rand(seed=1) * k).cast("int"))
    cols = []
    for j in range(d):
        # Component c has mean 3*c on feature c % d and a scale that grows with c.
        centre = F.when((F.col("c") % d) == j, F.col("c") * 3.0).otherwise(0.0)
        cols.append((F.randn(seed=10 + j) * (1.0 + 0.25 * F.col("c")) + centre).alias(f"f{j}"))
    return df.select(*cols)


class _Sampler(logging.Handler):
    def __init__(self, take) -> None:
        super().__init__(logging.INFO)
        self.take = take

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("EM iteration "):
            self.take(int(record.args[0]))  # type: ignore[index]


def _sample(spark, tracked, jvm_pid: int) -> dict:
    sc = spark.sparkContext
    runtime = sc._jvm.java.lang.Runtime.getRuntime()
    live = probes.driver_broadcast_ids(spark)
    workers = [
        pid for pid in probes.descendants(jvm_pid) if "pyspark.daemon" in probes.cmdline(pid)
    ]
    return {
        "t": time.monotonic(),
        "python_rss_mib": probes.process_rss_mib(),
        "jvm_rss_mib": probes.process_rss_mib(jvm_pid),
        "jvm_heap_used_mib": (runtime.totalMemory() - runtime.freeMemory()) / 2**20,
        "python_workers": len(workers),
        "python_workers_pss_mib": sum(probes.process_pss_mib(p) for p in workers),
        "persistent_rdds": len(probes.persistent_rdd_ids(spark)),
        "broadcasts_all": len(live),
        "broadcasts_params_live": len(live & set(tracked.created)),
        "broadcast_files": len(os.listdir(sc._temp_dir)),
    }


def _md(args, meta, base, samples, after, after_gc) -> str:
    its = sorted(samples)
    keys = [
        ("python_rss_mib", "Python driver RSS (MiB)", "{:.1f}"),
        ("jvm_rss_mib", "JVM RSS (MiB)", "{:.0f}"),
        ("jvm_heap_used_mib", "JVM heap used (MiB)", "{:.0f}"),
        ("python_workers_pss_mib", "Python workers PSS (MiB)", "{:.0f}"),
        ("persistent_rdds", "persisted RDDs", "{:.0f}"),
        ("broadcasts_params_live", "live parameter broadcasts", "{:.0f}"),
        ("broadcasts_all", "live broadcasts, all", "{:.0f}"),
        ("broadcast_files", "pyspark broadcast files", "{:.0f}"),
    ]
    warm = [i for i in its if i >= 10]
    lines = [
        "# Soak: one long fit, driver resources at every EM iteration",
        "",
        f"{meta['date']}, `benchmarks/soak.py` {meta['argv']}: {args.rows:,} rows x "
        f"{args.features} features, k={args.k}, full covariances, nInit=1, tol=0, "
        f"{args.iterations} iterations, {args.partitions} partitions, Spark `local[2]`, "
        f"pyspark {meta['pyspark']}, Python {meta['python']}, {meta['cpus']} CPUs, "
        f"load average at start {meta['load_start']}, at end {meta['load_end']}.",
        "",
        f"Fit: {meta['fit_seconds']:.0f} s wall, {meta['num_iter']} iterations, "
        f"median {meta['median_iteration_s']:.2f} s per iteration; "
        f"{meta['param_broadcasts']} parameter broadcasts created (one per data pass).",
        "",
        "| measure | before fit | iteration 1 | iteration 10 | median over iterations "
        f"| max | iteration {its[-1]} | growth 10→{its[-1]} | after fit | after JVM GC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label, fmt in keys:
        vals = [samples[i][key] for i in its]
        lines.append(
            f"| {label} | {fmt.format(base[key])} | {fmt.format(samples[its[0]][key])} | "
            f"{fmt.format(samples[10][key]) if 10 in samples else '-'} | "
            f"{fmt.format(statistics.median(vals))} | {fmt.format(max(vals))} | "
            f"{fmt.format(samples[its[-1]][key])} | "
            f"{fmt.format(samples[its[-1]][key] - samples[warm[0]][key]) if warm else '-'} | "
            f"{fmt.format(after[key])} | {fmt.format(after_gc[key])} |"
        )
    lines += [
        "",
        "Every 20th iteration:",
        "",
        "| iteration | Python driver RSS | JVM RSS | JVM heap used | workers PSS | persisted RDDs "
        "| live param. broadcasts | live broadcasts, all | broadcast files |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i in its:
        if i == 1 or i % 20 == 0:
            s = samples[i]
            lines.append(
                f"| {i} | {s['python_rss_mib']:.1f} | {s['jvm_rss_mib']:.0f} | "
                f"{s['jvm_heap_used_mib']:.0f} | {s['python_workers_pss_mib']:.0f} | "
                f"{s['persistent_rdds']} | {s['broadcasts_params_live']} | "
                f"{s['broadcasts_all']} | {s['broadcast_files']} |"
            )
    lines += ["", meta["verdict"], ""]
    return "\n".join(lines)


def main() -> int:
    args = _parse()
    import pyspark
    from pyspark.sql import SparkSession

    from spark_gmm import GaussianMixture

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("spark_gmm-soak")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "4g")
        .config("spark.sql.shuffle.partitions", str(args.partitions))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    jvm_pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    df = _data(spark, args.rows, args.features, args.k, args.partitions)
    gm = GaussianMixture(
        k=args.k,
        inputCols=[f"f{j}" for j in range(args.features)],
        maxIter=args.iterations,
        tol=0.0,
        nInit=1,
        seed=1,
    )
    logger = logging.getLogger("spark_gmm")
    logger.setLevel(logging.INFO)
    progress = logging.StreamHandler(sys.stderr)
    logger.addHandler(progress)
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    with probes.TrackedBroadcasts(spark) as tracked:
        base = _sample(spark, tracked, jvm_pid)
        samples: dict[int, dict] = {}
        logger.addHandler(
            _Sampler(lambda i: samples.__setitem__(i, _sample(spark, tracked, jvm_pid)))
        )
        t0 = time.monotonic()
        model = gm.fit(df)
        fit_seconds = time.monotonic() - t0
        probes.wait_for(
            lambda: _sample(spark, tracked, jvm_pid)["broadcasts_params_live"] == 0, 30.0
        )
        after = _sample(spark, tracked, jvm_pid)
        spark.sparkContext._jvm.java.lang.System.gc()
        time.sleep(5)  # the ContextCleaner thread removes what the collection freed
        after_gc = _sample(spark, tracked, jvm_pid)
    its = sorted(samples)
    flat_rdds = {samples[i]["persistent_rdds"] for i in its} == {base["persistent_rdds"] + 1}
    max_params = max(samples[i]["broadcasts_params_live"] for i in its)
    released = after["persistent_rdds"] == base["persistent_rdds"] and (
        after["broadcasts_params_live"] == 0 and after["broadcast_files"] == base["broadcast_files"]
    )
    verdict = (
        f"Verdict: persisted RDDs {'flat at baseline + 1 (the cache)' if flat_rdds else 'NOT flat'}"
        f" during the fit; live parameter broadcasts at most {max_params} at any iteration; "
        f"{'cache and broadcasts released after the fit' if released else 'NOT all released'}."
    )
    meta = {
        "date": dt.date.today().isoformat(),
        "argv": " ".join(sys.argv[1:]) or "(defaults)",
        "pyspark": pyspark.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "fit_seconds": fit_seconds,
        "num_iter": model.summary.numIter,
        "median_iteration_s": statistics.median(model.summary.iterationSeconds),
        "param_broadcasts": len(tracked.created),
        "verdict": verdict,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "soak.md").write_text(_md(args, meta, base, samples, after, after_gc))
    (args.output_dir / "soak.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "args": {k: str(v) for k, v in vars(args).items()},
                "before": base,
                "iterations": {str(i): samples[i] for i in its},
                "after": after,
                "after_jvm_gc": after_gc,
            },
            indent=1,
        )
    )
    print(verdict)
    print(f"wrote {args.output_dir / 'soak.md'}")
    spark.stop()
    return 0 if flat_rdds and released and max_params <= 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
