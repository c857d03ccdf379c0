"""Inputs larger than executor memory: per-iteration cost per row, 1M to 16M rows x 16.

What it measures (issue 11), Spark ``local[2]`` where the driver JVM is the executor,
so ``--driver-memory`` is the executor heap:

``ours``     spark_gmm, full covariances, k=8, from a fixed start (``initialModel``),
             4 iterations with ``tol=0``, on N = 1, 2, 4, 8, 16 M rows x 16 float64
             (Parquet, 16 files each), with a 2g and an 8g heap. Per-iteration time is
             the median of the fit's ``summary.iterationSeconds``; per row, divided by N.
             Where the cache sits (MiB in memory / on disk) is read from the fit's log:
             the *spill point* is the smallest N with blocks on disk.
``variants`` at 2g: ``blockDtype="float32"`` and ``cacheStorageLevel="DISK_ONLY"`` on the
             largest N (spilled), ``cacheStorageLevel="NONE"`` on 4M; at 8g: float32 on
             the largest N (in memory).
``mllib``    ``pyspark.ml.clustering.GaussianMixture`` at 2g on N = 1, 4, 16 M, as its
             users fit it: ``VectorAssembler`` over the Parquet columns, then ``fit``
             on the uncached DataFrame, and after ``.cache()`` + ``count()``. k=8,
             ``maxIter=2``, ``tol=0``; per-iteration time is the median duration of its
             iteration jobs, read from the Spark UI's REST API.
``scalebar`` once: 8M x 16 with a 1500m heap, 3 iterations from the fixed start, equal
             to scikit-learn's 3 iterations from the same start (max relative
             difference of weights, means, covariances <= 1e-6); the model is saved.
``score``    once: the score job (``spark-gmm score``) on the 8M input (1 GB) with a 2g
             heap, reading Parquet and writing Parquet, with that model.

A round runs one child process per (implementation, heap): ours 2g, ours 8g, MLlib 2g;
``--repeats`` rounds (>= 5) interleave them. Results: medians with min and max, ratios of
medians, the load average before each child (see ``timing.py`` for when a run is
publishable). Writes ``scale.json`` and ``scale.md`` to ``--output-dir``.

Usage::

    python benchmarks/bench_scale.py                   # everything (~2.5 hours here)
    python benchmarks/bench_scale.py --quick           # 1 round, N = 0.25M / 1M, no MLlib
    python benchmarks/bench_scale.py --sizes 1M,4M,16M --mllib-sizes 1M,4M \
        --none-size 1M --skip-8g-float32                # the committed run (~75 minutes)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import timing

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
D, K = 16, 8
FILES = 16
SIZES = [1_000_000, 2_000_000, 4_000_000, 8_000_000, 16_000_000]
MLLIB_SIZES = [1_000_000, 4_000_000, 16_000_000]
QUICK_SIZES = [250_000, 1_000_000]
NONE_SIZE = 4_000_000
OUR_ITERATIONS = 4
MLLIB_ITERATIONS = 2
GOAL_SPILLED_VS_MEMORY = 1.5

log = logging.getLogger("bench_scale")


# ---------------------------------------------------------------------------
# Data: a mixture of K Gaussians in D dimensions, FILES Parquet files per size
# ---------------------------------------------------------------------------


def true_parameters() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights (K,), means (K, D) and covariance factors (K, D, D) of the generator."""
    rng = np.random.default_rng(0)
    means = rng.normal(0.0, 5.0, (K, D))
    factors = rng.normal(0.0, 1.0, (K, D, D)) / np.sqrt(D)
    weights = rng.dirichlet(np.full(K, 5.0))
    return weights, means, factors


def start_parameters() -> dict[str, Any]:
    """The fixed start of every fit: uniform weights, perturbed true means, unit covariances."""
    _, means, _ = true_parameters()
    rng = np.random.default_rng(1)
    return {
        "weights": [1.0 / K] * K,
        "means": (means + rng.normal(0.0, 1.0, means.shape)).tolist(),
        "covariances": np.repeat(np.eye(D)[None], K, axis=0).tolist(),
    }


def ensure_data(data_dir: Path, n_rows: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = data_dir / f"n{n_rows}"
    if (path / "_SUCCESS").exists():
        return path
    log.info("writing %d rows to %s", n_rows, path)
    path.mkdir(parents=True, exist_ok=True)
    weights, means, factors = true_parameters()
    per = n_rows // FILES
    for f in range(FILES):
        rng = np.random.default_rng(100 + f)
        z = rng.choice(K, size=per, p=weights)
        X = means[z] + np.einsum("nij,nj->ni", factors[z], rng.normal(size=(per, D)))
        table = pa.table({f"x{j}": X[:, j] for j in range(D)})
        pq.write_table(table, path / f"part-{f:05d}.parquet")
    (path / "_SUCCESS").touch()
    return path


def load_rows(path: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return np.column_stack([table.column(f"x{j}").to_numpy() for j in range(D)])


# ---------------------------------------------------------------------------
# Children (one JVM each, heap fixed before it starts)
# ---------------------------------------------------------------------------


def _session(app: str, ui: bool = False) -> Any:
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]")
        .appName(app)
        .config("spark.ui.enabled", "true" if ui else "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


_CACHED = re.compile(r"([\d.]+) MiB in memory, ([\d.]+) MiB on disk")


def child_ours(args: argparse.Namespace) -> dict[str, Any]:
    from spark_gmm import GaussianMixture, GaussianMixtureModel

    spark = _session("bench_scale ours")
    capture = _Capture()
    logging.getLogger("spark_gmm").addHandler(capture)
    logging.getLogger("spark_gmm").setLevel(logging.INFO)
    start = start_parameters()
    initial = GaussianMixtureModel.fromParameters(
        start["weights"], start["means"], start["covariances"], "full"
    )
    out = []
    for n_rows, variant in json.loads(args.plan):
        df = spark.read.parquet(str(Path(args.data_dir) / f"n{n_rows}"))
        capture.lines.clear()
        gm = GaussianMixture(
            k=K,
            inputCols=df.columns,
            initialModel=initial,
            maxIter=OUR_ITERATIONS,
            tol=0.0,
            **variant,
        )
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = gm.fit(df)
        wall = time.perf_counter() - began
        seconds = list(model.summary.iterationSeconds)
        placement = next((m for m in map(_CACHED.search, capture.lines) if m), None)
        out.append(
            {
                "rows": n_rows,
                "variant": variant,
                "wall_s": wall,
                "iteration_s": seconds,
                "per_iteration_s": statistics.median(seconds),
                "memory_mib": float(placement.group(1)) if placement else None,
                "disk_mib": float(placement.group(2)) if placement else None,
                "mean_log_likelihood": model.summary.meanLogLikelihood,
            }
        )
        log.info("ours %s %s: %.3f s/iteration", n_rows, variant, out[-1]["per_iteration_s"])
    spark.stop()
    return {"results": out}


def _rest_jobs(spark: Any) -> list[dict[str, Any]]:
    url = spark.sparkContext.uiWebUrl
    app = spark.sparkContext.applicationId
    with urllib.request.urlopen(f"{url}/api/v1/applications/{app}/jobs", timeout=30) as resp:
        return json.loads(resp.read())


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def child_mllib(args: argparse.Namespace) -> dict[str, Any]:
    from pyspark.ml.clustering import GaussianMixture as MLlibGaussianMixture
    from pyspark.ml.feature import VectorAssembler

    spark = _session("bench_scale mllib", ui=True)
    out = []
    for n_rows in json.loads(args.plan):
        source = spark.read.parquet(str(Path(args.data_dir) / f"n{n_rows}"))
        assembled = VectorAssembler(inputCols=source.columns, outputCol="features").transform(
            source
        )
        for cached in (False, True):
            df = assembled.select("features")
            if cached:
                df = df.cache()
                df.count()
            seen = {j["jobId"] for j in _rest_jobs(spark)}
            gm = MLlibGaussianMixture(k=K, maxIter=MLLIB_ITERATIONS, tol=0.0, seed=1)
            began = time.perf_counter()
            failure = None
            try:
                model = gm.fit(df)
                loglik = model.summary.logLikelihood / n_rows
            except Exception as exc:  # reported, not fatal
                failure, loglik = f"{type(exc).__name__}: {str(exc)[:300]}", float("nan")
            wall = time.perf_counter() - began
            time.sleep(1.0)  # let the UI's listener catch up
            jobs = [j for j in _rest_jobs(spark) if j["jobId"] not in seen]
            by_name: dict[str, list[float]] = {}
            for j in jobs:
                if j.get("completionTime") and j.get("status") == "SUCCEEDED":
                    duration = _seconds(j["completionTime"]) - _seconds(j["submissionTime"])
                    by_name.setdefault(j["name"], []).append(duration)
            # The iteration job is the one that runs once per iteration.
            candidates = {n: d for n, d in by_name.items() if len(d) == MLLIB_ITERATIONS}
            name = max(candidates, key=lambda n: sum(candidates[n]), default=None)
            per_iteration = statistics.median(candidates[name]) if name else float("nan")
            out.append(
                {
                    "rows": n_rows,
                    "cached": cached,
                    "wall_s": wall,
                    "iteration_job": name,
                    "iteration_s": candidates.get(name, []) if name else [],
                    "per_iteration_s": per_iteration,
                    "jobs": {n: d for n, d in by_name.items()},
                    "mean_log_likelihood": loglik,
                    "failure": failure,
                }
            )
            log.info("mllib %s cached=%s: %.3f s/iteration", n_rows, cached, per_iteration)
            if cached:
                df.unpersist(blocking=True)
    spark.stop()
    return {"results": out}


def child_scalebar(args: argparse.Namespace) -> dict[str, Any]:
    from spark_gmm import GaussianMixture, GaussianMixtureModel

    spark = _session("bench_scale scalebar")
    start = start_parameters()
    initial = GaussianMixtureModel.fromParameters(
        start["weights"], start["means"], start["covariances"], "full"
    )
    df = spark.read.parquet(str(Path(args.data_dir) / f"n{args.rows}"))
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GaussianMixture(
            k=K, inputCols=df.columns, initialModel=initial, maxIter=3, tol=0.0
        ).fit(df)
    wall = time.perf_counter() - began
    model.setLogLikelihoodCol("log_likelihood")
    model.write().overwrite().save(args.model_dir)
    heap = spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory()
    spark.stop()
    return {
        "wall_s": wall,
        "heap_bytes": heap,
        "weights": model.weights,
        "means": np.asarray(model.means).tolist(),
        "covariances": np.asarray(model.covariances).tolist(),
    }


def _run_child(kind: str, memory: str, extra: list[str], timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result_path = fh.name
    env = dict(os.environ)
    env["PYSPARK_SUBMIT_ARGS"] = f"--driver-memory {memory} pyspark-shell"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--result", result_path]
    began = time.perf_counter()
    proc = subprocess.run(
        cmd + extra, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-2000:]
        oom = "OutOfMemoryError" in (proc.stderr or "")
        return {"failure": "OutOfMemoryError" if oom else f"exit {proc.returncode}: {tail}"}
    result = json.loads(Path(result_path).read_text())
    os.unlink(result_path)
    result["child_s"] = seconds
    return result


# ---------------------------------------------------------------------------
# Parent: rounds, the reference, the report
# ---------------------------------------------------------------------------


def sklearn_reference(rows: np.ndarray) -> Any:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    start = start_parameters()
    sk = SkGaussianMixture(
        K,
        covariance_type="full",
        max_iter=3,
        tol=0.0,
        reg_covar=1e-6,
        weights_init=start["weights"],
        means_init=start["means"],
        precisions_init=np.repeat(np.eye(D)[None], K, axis=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.fit(rows)
    return sk


def max_relative_difference(ours: dict[str, Any], sk: Any) -> float:
    gaps = []
    for name, ref in (
        ("weights", sk.weights_),
        ("means", sk.means_),
        ("covariances", sk.covariances_),
    ):
        actual = np.asarray(ours[name])
        gaps.append(float(np.max(np.abs(actual - ref) / np.maximum(np.abs(ref), 1e-3))))
    return max(gaps)


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.data_dir)
    sizes = QUICK_SIZES if args.quick else (args.sizes or SIZES)
    mllib_sizes = args.mllib_sizes or MLLIB_SIZES
    largest = sizes[-1]
    none_size = sizes[0] if args.quick else (args.none_size or NONE_SIZE)
    for n in sorted(set(sizes + ([] if args.quick else [8_000_000]))):
        ensure_data(data_dir, n)
    plans = {
        "2g": [[n, {}] for n in sizes]
        + [
            [largest, {"blockDtype": "float32"}],
            [largest, {"cacheStorageLevel": "DISK_ONLY"}],
            [none_size, {"cacheStorageLevel": "NONE"}],
        ],
        "8g": [[n, {}] for n in sizes]
        + ([] if args.skip_8g_float32 else [[largest, {"blockDtype": "float32"}]]),
    }
    ours: dict[str, dict[str, timing.Repeats]] = {"2g": {}, "8g": {}}
    placements: dict[str, dict[str, Any]] = {"2g": {}, "8g": {}}
    mllib: dict[str, timing.Repeats] = {}
    failures: list[str] = []
    run_log = timing.Run()
    rounds = 1 if args.quick else args.repeats
    for r in range(rounds):
        for memory in ("2g", "8g"):
            run_log.start_round(f"round {r + 1} ours {memory}")
            res = _run_child(
                "ours",
                memory,
                ["--plan", json.dumps(plans[memory]), "--data-dir", str(data_dir)],
                timeout=7200,
            )
            if "failure" in res:
                failures.append(f"round {r + 1} ours {memory}: {res['failure']}")
                continue
            for item in res["results"]:
                key = _case_key(item["rows"], item["variant"])
                ours[memory].setdefault(key, timing.Repeats()).add(item["per_iteration_s"])
                placements[memory][key] = {
                    "memory_mib": item["memory_mib"],
                    "disk_mib": item["disk_mib"],
                    "rows": item["rows"],
                    "variant": item["variant"],
                }
        if not args.quick and not args.skip_mllib:
            run_log.start_round(f"round {r + 1} mllib 2g")
            res = _run_child(
                "mllib",
                "2g",
                ["--plan", json.dumps(mllib_sizes), "--data-dir", str(data_dir)],
                timeout=10800,
            )
            if "failure" in res:
                failures.append(f"round {r + 1} mllib 2g: {res['failure']}")
            else:
                for item in res["results"]:
                    key = f"{item['rows']} {'cached' if item['cached'] else 'uncached'}"
                    if item["failure"]:
                        failures.append(f"round {r + 1} mllib {key}: {item['failure']}")
                        continue
                    mllib.setdefault(key, timing.Repeats()).add(item["per_iteration_s"])

    scalebar: dict[str, Any] = {}
    score: dict[str, Any] = {}
    if not args.quick:
        bar_rows = 8_000_000
        with tempfile.TemporaryDirectory() as scratch:
            model_dir = os.path.join(scratch, "model")
            run_log.start_round("scale bar 1500m")
            bar = _run_child(
                "scalebar",
                "1500m",
                [
                    "--rows",
                    str(bar_rows),
                    "--data-dir",
                    str(data_dir),
                    "--model-dir",
                    model_dir,
                ],
                timeout=7200,
            )
            if "failure" in bar:
                scalebar = {"failure": bar["failure"]}
            else:
                sk = sklearn_reference(load_rows(data_dir / f"n{bar_rows}"))
                scalebar = {
                    "rows": bar_rows,
                    "heap_mib": bar["heap_bytes"] / 2**20,
                    "wall_s": bar["wall_s"],
                    "max_relative_difference_vs_sklearn": max_relative_difference(bar, sk),
                }
                score = score_job(data_dir / f"n{bar_rows}", model_dir, scratch, run_log)

    return {
        "machine": timing.machine(),
        "command": " ".join(["python", "benchmarks/bench_scale.py", *sys.argv[1:]]),
        "config": {
            "d": D,
            "k": K,
            "covariance": "full",
            "our_iterations": OUR_ITERATIONS,
            "mllib_iterations": MLLIB_ITERATIONS,
            "sizes": sizes,
            "mllib_sizes": [] if args.quick or args.skip_mllib else mllib_sizes,
            "none_size": none_size,
            "repeats": rounds,
            "master": "local[2]",
        },
        "ours": {
            m: {key: rep.summary() for key, rep in cases.items()} for m, cases in ours.items()
        },
        "placement": placements,
        "mllib_2g": {key: rep.summary() for key, rep in mllib.items()},
        "scalebar": scalebar,
        "score_job": score,
        "failures": failures,
        "rounds": run_log.rounds,
        "verdict": run_log.verdict(
            {f"ours {m} {key}": rep for m, cases in ours.items() for key, rep in cases.items()}
            | {f"mllib {key}": rep for key, rep in mllib.items()}
        ),
    }


def score_job(source: Path, model_dir: str, scratch: str, run_log: timing.Run) -> dict[str, Any]:
    import pyarrow.parquet as pq

    output = os.path.join(scratch, "scored")
    env = dict(os.environ)
    env["PYSPARK_SUBMIT_ARGS"] = "--driver-memory 2g pyspark-shell"
    run_log.start_round("score job 2g")
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "score_gmm.py"),
        "--input",
        str(source),
        "--model",
        model_dir,
        "--output",
        output,
        "--master",
        "local[2]",
    ]
    began = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=7200, check=False)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        oom = "OutOfMemoryError" in proc.stderr
        return {"failure": "OutOfMemoryError" if oom else proc.stderr[-2000:]}
    rows = pq.ParquetDataset(output).read(columns=["prediction"]).num_rows
    return {"rows": rows, "wall_s": seconds, "heap": "2g"}


def _case_key(n_rows: int, variant: dict[str, Any]) -> str:
    extra = ",".join(f"{k}={v}" for k, v in sorted(variant.items()))
    return f"{n_rows}" + (f" {extra}" if extra else "")


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Scale: per-iteration cost per row, inputs larger than executor memory",
        "",
        f"Written by `benchmarks/bench_scale.py` on {m['date_utc']}: {m['cpu']}, "
        f"{m['cores']} cores, {m['ram_gib']} GiB RAM; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        f"Command: `{results.get('command', 'python benchmarks/bench_scale.py')}`",
        "",
        f"Spark local[2]; full covariances, d={D}, k={K}; {results['config']['repeats']} "
        "interleaved rounds; each cell is the median over the rounds, with min and max.",
        "",
    ]
    verdict = results["verdict"]
    lines.append(
        "**Publishable run.**"
        if verdict["publishable"]
        else "**Not publishable:** " + "; ".join(verdict["reasons"])
    )
    lines += ["", "## spark_gmm, default settings (MEMORY_AND_DISK, float64 blocks)", ""]
    lines.append("| rows | heap | s/iteration | µs/row | cache in memory / on disk (MiB) |")
    lines.append("|---|---|---|---|---|")
    for memory in ("2g", "8g"):
        for key, rep in results["ours"][memory].items():
            place = results["placement"][memory].get(key, {})
            rows = int(key.split()[0])
            variant = " ".join(key.split()[1:])
            label = f"{rows / 1e6:g}M" + (f" ({variant})" if variant else "")
            per_row = rep["median"] / rows * 1e6
            lines.append(
                f"| {label} | {memory} | {timing.fmt_range(rep)} | {per_row:.3f} | "
                f"{place.get('memory_mib')} / {place.get('disk_mib')} |"
            )
    derived = derive(results)
    lines += ["", "## Derived", ""]
    for name, value in derived.items():
        lines.append(f"- {name}: {value}")
    if results["mllib_2g"]:
        lines += ["", "## MLlib at 2g (VectorAssembler + fit, as its users run it)", ""]
        lines.append("| rows | input | s/iteration | µs/row |")
        lines.append("|---|---|---|---|")
        for key, rep in results["mllib_2g"].items():
            rows, kind = key.split()
            lines.append(
                f"| {int(rows) / 1e6:g}M | {kind} | {timing.fmt_range(rep)} | "
                f"{rep['median'] / int(rows) * 1e6:.3f} |"
            )
    if results["scalebar"]:
        lines += ["", "## Scale bar", "", f"`{json.dumps(results['scalebar'])}`"]
    if results["score_job"]:
        lines += ["", "## Score job (8M rows, 2g)", "", f"`{json.dumps(results['score_job'])}`"]
    if results["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in results["failures"]]
    return "\n".join(lines) + "\n"


def derive(results: dict[str, Any]) -> dict[str, str]:
    """Spill point and ratios, all from medians of this run."""
    out: dict[str, str] = {}
    ours2, ours8 = results["ours"]["2g"], results["ours"]["8g"]
    place = results["placement"]["2g"]
    plain = sorted((int(k), v) for k, v in ours2.items() if k.isdigit())
    spilled = [n for n, _ in plain if (place.get(str(n), {}).get("disk_mib") or 0) > 0]
    if spilled:
        first = min(spilled)
        out["spill point at 2g"] = f"{first / 1e6:g}M rows (smallest N with blocks on disk)"
        for n in spilled:
            if str(n) in ours8:
                ratio = (ours2[str(n)]["median"] / n) / (ours8[str(n)]["median"] / n)
                out[f"{n / 1e6:g}M spilled (2g) / in memory (8g), per row"] = (
                    f"{ratio:.2f}x (goal <= {GOAL_SPILLED_VS_MEMORY}x)"
                )
        n = max(spilled)
        for variant in ("blockDtype=float32", "cacheStorageLevel=DISK_ONLY"):
            key = f"{n} {variant}"
            if key in ours2:
                out[f"{n / 1e6:g}M at 2g, float64 MEMORY_AND_DISK / {variant}"] = (
                    f"{ours2[str(n)]['median'] / ours2[key]['median']:.2f}x"
                )
    else:
        out["spill point at 2g"] = "none: every size stayed in memory"
    for key, rep in ours2.items():
        if "cacheStorageLevel=NONE" in key:
            n = int(key.split()[0])
            if str(n) in ours2:
                out[f"{n / 1e6:g}M at 2g, NONE (re-read every pass) / cached"] = (
                    f"{rep['median'] / ours2[str(n)]['median']:.2f}x"
                )
    largest = max((int(k) for k in ours8 if k.isdigit()), default=None)
    if largest and f"{largest} blockDtype=float32" in ours8:
        ratio = ours8[str(largest)]["median"] / ours8[f"{largest} blockDtype=float32"]["median"]
        out[f"{largest / 1e6:g}M at 8g (in memory), float64 / float32"] = f"{ratio:.2f}x"
    for key, rep in results["mllib_2g"].items():
        rows = key.split()[0]
        if rows in ours2:
            out[f"{int(rows) / 1e6:g}M at 2g, MLlib {key.split()[1]} / spark_gmm"] = (
                f"{rep['median'] / ours2[rows]['median']:.2f}x"
            )
    return out


def _rows(text: str) -> int:
    text = text.strip().upper()
    return int(float(text[:-1]) * 1_000_000) if text.endswith("M") else int(text)


def _rows_list(text: str) -> list[int]:
    return sorted(_rows(part) for part in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=timing.MIN_REPEATS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-mllib", action="store_true")
    parser.add_argument("--data-dir", default=str(HERE / "scratch" / "scale_data"))
    parser.add_argument("--sizes", type=_rows_list, help="rows per input, e.g. 1M,4M,16M")
    parser.add_argument("--mllib-sizes", type=_rows_list, help="MLlib's inputs, e.g. 1M,4M")
    parser.add_argument("--none-size", type=_rows, help="input of cacheStorageLevel=NONE")
    parser.add_argument("--skip-8g-float32", action="store_true")
    parser.add_argument("--output-dir", default=str(HERE / "results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    if args.child:
        child = {"ours": child_ours, "mllib": child_mllib, "scalebar": child_scalebar}
        result = child[args.child](args)
        Path(args.result).write_text(json.dumps(result))
        return
    results = run(args)
    out = Path(args.output_dir)
    name = "scale_quick" if args.quick else "scale"
    timing.write_json(out / f"{name}.json", results)
    (out / f"{name}.md").write_text(report(results))
    print((out / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
