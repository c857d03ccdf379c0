"""Constants of the cost model in docs/scaling.md, measured here, and its projection.

Per EM iteration (one data pass plus the driver's M-step), with N rows of d features,
k components, E executors of C cores each, P pass partitions:

    t_iter ~ N / (E * C) * (c_kernel(d, k) + c_move(d))
             + P / (E * C) * c_task
             + t_reduce + t_broadcast + t_mstep(d, k)

Measured here (medians of >= 5 repeats; ``timing.py``):

``c_kernel``  seconds per row of the E-step + statistics kernel (numpy, one BLAS
              thread, 8,192-row column-major blocks) for several (d, k, covariance type).
``c_move``    seconds per row to bring cached float64 blocks from the JVM into a Python
              task and join them into kernel blocks, with no arithmetic (a pass whose
              task only touches every block), per feature.
``c_task``    the fixed cost of one Python task in a pass (a pass over P empty-ish
              partitions: slope of the pass time in P).
``t_mstep``   the driver's M-step for (d, k) (Cholesky of k d x d matrices etc.).
Bytes of the statistics each partition returns and of the broadcast parameters follow
from the formulas in :mod:`spark_gmm.guards` and are computed, not timed.

The projection: 1 billion rows x 50 features, k = 20, full covariances, on 100 executors
of 4 cores and 16 GB. Writes ``scale_model.json`` and ``scale_model.md``.

Usage::

    python benchmarks/scale_model.py
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import timing

HERE = Path(__file__).resolve().parent
KERNEL_CASES = [(16, 8, "full"), (50, 20, "full"), (64, 16, "full"), (32, 32, "diag")]
PROJECTION = {
    "rows": 1_000_000_000,
    "d": 50,
    "k": 20,
    "covariance": "full",
    "executors": 100,
    "cores_per_executor": 4,
    "executor_memory_gib": 16,
}

log = logging.getLogger("scale_model")


def _params(d: int, k: int, covariance_type: str, rng: np.random.Generator) -> Any:
    from spark_gmm.gaussian import MixtureParameters

    means = rng.normal(0.0, 3.0, (k, d))
    if covariance_type == "full":
        cov = np.repeat(np.eye(d)[None], k, axis=0)
    elif covariance_type == "diag":
        cov = np.ones((k, d))
    elif covariance_type == "tied":
        cov = np.eye(d)
    else:
        cov = np.ones(k)
    return MixtureParameters.from_covariances(np.full(k, 1.0 / k), means, cov, covariance_type)


def kernel_seconds_per_row(repeats: int) -> dict[str, timing.Repeats]:
    from threadpoolctl import threadpool_limits

    from spark_gmm.gaussian import block_statistics
    from spark_gmm.kernels import kernel_rows

    out: dict[str, timing.Repeats] = {}
    rng = np.random.default_rng(0)
    for d, k, ct in KERNEL_CASES:
        params = _params(d, k, ct, rng)
        rows = kernel_rows(d)
        blocks = []
        for _ in range(8):
            labels = rng.integers(0, k, rows)
            X = params.means[labels] + rng.normal(size=(rows, d))
            blocks.append(np.asfortranarray(X))
        key = f"d={d} k={k} {ct}"
        out[key] = timing.Repeats()
        with threadpool_limits(1):
            block_statistics(blocks[0], None, params)  # warm-up
            for _ in range(repeats):
                began = time.perf_counter()
                for X in blocks:
                    block_statistics(X, None, params)
                out[key].add((time.perf_counter() - began) / (rows * len(blocks)))
    return out


def mstep_seconds(repeats: int) -> timing.Repeats:
    from threadpoolctl import threadpool_limits

    from spark_gmm.gaussian import block_statistics, m_step

    d, k = PROJECTION["d"], PROJECTION["k"]
    rng = np.random.default_rng(1)
    params = _params(d, k, "full", rng)
    X = np.asfortranarray(params.means[rng.integers(0, k, 8192)] + rng.normal(size=(8192, d)))
    stats = block_statistics(X, None, params)
    out = timing.Repeats()
    calls = 20  # a few ms each: time a batch, so that timer and scheduler noise average out
    with threadpool_limits(1):
        m_step(stats, 1e-6)
        for _ in range(repeats):
            began = time.perf_counter()
            for _ in range(calls):
                m_step(stats, 1e-6)
            out.add((time.perf_counter() - began) / calls)
    return out


def spark_constants(repeats: int) -> dict[str, timing.Repeats]:
    """c_move (per row per feature) and c_task from passes on a local[2] session."""
    from pyspark.sql import SparkSession

    from spark_gmm.data import resolve_features
    from spark_gmm.engine import prepare
    from spark_gmm.session import ensure_local_python_workers

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.memory", "4g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    ensure_local_python_workers(spark)
    n, d = 2_000_000, 16
    rng = np.random.default_rng(2)
    import pandas as pd

    path = HERE / "scratch" / "scale_model_input"
    if not path.exists():
        X = rng.normal(size=(n, d))
        spark.createDataFrame(pd.DataFrame(X, columns=[f"x{j}" for j in range(d)])).repartition(
            8
        ).write.parquet(str(path))
    df = spark.read.parquet(str(path))
    spec, cols = resolve_features(df, df.columns, "features", None)
    data = prepare(df, spec, cols, "error")
    out = {"c_move_per_row_per_feature": timing.Repeats(), "c_task": timing.Repeats()}
    try:
        data.cache.run(_touch, None, 2)  # warm-up
        for _ in range(repeats):
            began = time.perf_counter()
            data.cache.run(_touch, None, 2)
            # Two cores share the rows: seconds of one core per row and feature.
            out["c_move_per_row_per_feature"].add(
                (time.perf_counter() - began) * 2 / (data.n_rows * d)
            )
    finally:
        data.release()
    sc = spark.sparkContext
    for _ in range(repeats):
        times = {}
        for parts in (8, 200):
            rdd = sc.parallelize(range(parts), parts)
            rdd.mapPartitions(_one_vector).treeReduce(np.add, depth=2)  # warm-up
            began = time.perf_counter()
            rdd.mapPartitions(_one_vector).treeReduce(np.add, depth=2)
            times[parts] = time.perf_counter() - began
        # Two cores run the tasks: seconds of one core per task.
        out["c_task"].add((times[200] - times[8]) * 2 / (200 - 8))
    spark.stop()
    return out


def _touch(blocks: Any, payload: Any) -> np.ndarray:
    rows = 0.0
    for X, _w in blocks:
        rows += X.shape[0]
    return np.array([rows])


def _one_vector(it: Any) -> Any:
    for _ in it:
        pass
    yield np.zeros(16)


def project(constants: dict[str, Any]) -> dict[str, Any]:
    from spark_gmm.guards import _sizes, estimate_memory
    from spark_gmm.kernels import kernel_rows

    p = PROJECTION
    n, d, k = p["rows"], p["d"], p["k"]
    cores = p["executors"] * p["cores_per_executor"]
    flat, _scatter, params, _work = _sizes(k, "full", d)
    cache_bytes = n * d * 8
    storage_per_executor = (p["executor_memory_gib"] * 2**30 - 300 * 2**20) * 0.6
    partitions = max(4 * cores, int(np.ceil(cache_bytes / (128 * 2**20))))
    c_kernel = constants["kernel"][f"d={d} k={k} full"]["median"]
    c_move = constants["spark"]["c_move_per_row_per_feature"]["median"] * d
    c_task = constants["spark"]["c_task"]["median"]
    t_mstep = constants["mstep"]["median"]
    rows_per_core = n / cores
    t_kernel = rows_per_core * c_kernel
    t_move = rows_per_core * c_move
    t_tasks = partitions / cores * c_task
    executor_task_bytes, driver_bytes = estimate_memory([(k, "full")], d, block_rows=kernel_rows(d))
    return {
        "inputs": p,
        "cache_gib": cache_bytes / 2**30,
        "cache_gib_float32": cache_bytes / 2 / 2**30,
        "cache_gib_per_executor": cache_bytes / p["executors"] / 2**30,
        "storage_memory_gib_per_executor": storage_per_executor / 2**30,
        "pass_partitions": partitions,
        "seconds": {
            "kernel": t_kernel,
            "move": t_move,
            "tasks": t_tasks,
            "m_step": t_mstep,
            "iteration": t_kernel + t_move + t_tasks + t_mstep,
        },
        "statistics_bytes_per_partition": flat * 8,
        "broadcast_bytes": params * 8,
        "guard_executor_task_bytes": executor_task_bytes,
        "guard_driver_bytes": driver_bytes,
        "largest_d_under_1gib": {
            str(kk): _largest_d(kk) for kk in (1, 5, 10, 20, 50, 100)
        },
    }


def _largest_d(k: int) -> int:
    """Largest d (full covariances) whose driver-side estimate stays under 1 GiB."""
    from spark_gmm.guards import estimate_memory

    lo, hi = 1, 100_000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        _, driver = estimate_memory([(k, "full")], mid, block_rows=1)
        if driver <= 2**30:
            lo = mid
        else:
            hi = mid - 1
    return lo


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    pr = results["projection"]
    s = pr["seconds"]
    lines = [
        "# Scaling model: constants measured here, and the 1-billion-row projection",
        "",
        f"Written by `benchmarks/scale_model.py` on {m['date_utc']}: {m['cpu']}, "
        f"{m['cores']} cores. Medians of {results['repeats']} repeats (min to max).",
        "",
        "**Publishable run.**"
        if results["verdict"]["publishable"]
        else "**Not publishable:** " + "; ".join(results["verdict"]["reasons"]),
        "",
        "| constant | value |",
        "|---|---|",
    ]
    for key, rep in results["kernel"].items():
        lines.append(f"| c_kernel {key} (µs/row, 1 core) | {timing.fmt_range(_scaled(rep))} |")
    sp = results["spark"]
    lines.append(
        f"| c_move (ns per row and feature, 1 core) | "
        f"{timing.fmt_range(_scaled(sp['c_move_per_row_per_feature'], 1e9), digits=2)} |"
    )
    lines.append(f"| c_task (ms per task) | {timing.fmt_range(_scaled(sp['c_task'], 1e3))} |")
    lines.append(
        f"| t_mstep d=50 k=20 full (ms) | {timing.fmt_range(_scaled(results['mstep'], 1e3))} |"
    )
    inp = pr["inputs"]
    lines += [
        "",
        f"## Projection: {inp['rows']:,} rows x {inp['d']}, k={inp['k']} full, "
        f"{inp['executors']} executors x {inp['cores_per_executor']} cores, "
        f"{inp['executor_memory_gib']} GB",
        "",
        f"- cache: {pr['cache_gib']:.0f} GiB float64 ({pr['cache_gib_float32']:.0f} GiB "
        f"float32), {pr['cache_gib_per_executor']:.1f} GiB per executor against "
        f"{pr['storage_memory_gib_per_executor']:.1f} GiB of storage memory",
        f"- pass partitions: {pr['pass_partitions']}",
        f"- seconds per iteration: {s['iteration']:.1f} (kernel {s['kernel']:.1f}, moving "
        f"blocks {s['move']:.1f}, task overheads {s['tasks']:.2f}, M-step {s['m_step']:.3f})",
        f"- statistics per partition: {pr['statistics_bytes_per_partition'] / 2**10:.0f} KiB; "
        f"broadcast: {pr['broadcast_bytes'] / 2**10:.0f} KiB",
        f"- memory guard: {pr['guard_executor_task_bytes'] / 2**20:.1f} MiB per executor "
        f"task, {pr['guard_driver_bytes'] / 2**20:.1f} MiB on the driver",
        "- largest d with the driver's statistics, broadcast and M-step under 1 GiB: "
        + ", ".join(f"k={k}: d={d}" for k, d in pr["largest_d_under_1gib"].items()),
    ]
    return "\n".join(lines) + "\n"


def _scaled(rep: dict[str, Any], factor: float = 1e6) -> dict[str, Any]:
    return {key: rep[key] * factor for key in ("median", "min", "max")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=timing.MIN_REPEATS)
    parser.add_argument("--output-dir", default=str(HERE / "results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run = timing.Run()
    run.start_round("kernel")
    kernel = kernel_seconds_per_row(args.repeats)
    run.start_round("m-step")
    mstep = mstep_seconds(args.repeats)
    run.start_round("spark")
    spark = spark_constants(args.repeats)
    cases = {f"kernel {k}": v for k, v in kernel.items()} | {"m-step": mstep} | spark
    results: dict[str, Any] = {
        "machine": timing.machine(),
        "repeats": args.repeats,
        "kernel": {k: v.summary() for k, v in kernel.items()},
        "mstep": mstep.summary(),
        "spark": {k: v.summary() for k, v in spark.items()},
        "rounds": run.rounds,
        "verdict": run.verdict(cases),
    }
    results["projection"] = project(results)
    out = Path(args.output_dir)
    timing.write_json(out / "scale_model.json", results)
    (out / "scale_model.md").write_text(report(results))
    print(json.dumps(results["projection"], indent=2))


if __name__ == "__main__":
    main()
