"""Where the executor heap goes when an input is cached: the measurements behind
docs/scaling.md ("Where the heap went").

Each probe is one fit (full covariances, k=8, 1 iteration from a fixed start) of the
``bench_scale.py`` data in a child JVM with a 2g heap (Spark ``local[2]``: the driver is
the executor), with a cache layout chosen through the fit's params, and G1's log
written to a file. For each probe it records whether the fit completed or died with
``OutOfMemoryError``, the largest heap occupancy left after a full GC (live data G1
could not free), and the number of humongous allocations.

Probes (N = 8M or 16M rows x 16 float64: 977 / 1953 MiB of blocks; Spark's storage
memory in a 2g heap is (2048 - 300) * 0.6 = 1049 MiB):

``ser-1.25MiB-8M``     the layout before: serialized cache (PySpark's MEMORY_AND_DISK),
                       blocks of ~1.25 MiB (one per 10,000-row Arrow batch)
``ser-0.25MiB-8M``     serialized cache, small blocks
``ser-0.25MiB-8M-4m``  the same with G1 regions of 4 MiB instead of 1 MiB
``deser-256KiB-16M``   deserialized cache (one byte array per block), 256 KiB of floats
``deser-252KiB-16M``   the default now: 252 KiB of floats (4 KiB left for headers)

Usage::

    python benchmarks/heap_probe.py        # ~15 minutes; writes heap_probe.json / .md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale
import timing

HERE = Path(__file__).resolve().parent
MIB = 2**20

PROBES: list[dict[str, Any]] = [
    {
        "name": "ser-1.25MiB-8M",
        "rows": 8_000_000,
        "params": {"cacheStorageLevel": "MEMORY_AND_DISK_SER", "maxBlockSizeInMB": 1.25},
    },
    {
        "name": "ser-0.25MiB-8M",
        "rows": 8_000_000,
        "params": {"cacheStorageLevel": "MEMORY_AND_DISK_SER", "maxBlockSizeInMB": 0.25},
    },
    {
        "name": "ser-0.25MiB-8M-4m",
        "rows": 8_000_000,
        "params": {"cacheStorageLevel": "MEMORY_AND_DISK_SER", "maxBlockSizeInMB": 0.25},
        "jvm": "-XX:G1HeapRegionSize=4m",
    },
    {
        "name": "deser-256KiB-16M",
        "rows": 16_000_000,
        # 256 KiB of floats once the 4 KiB header allowance is taken off.
        "params": {"cacheStorageLevel": "MEMORY_AND_DISK", "maxBlockSizeInMB": 260 / 1024},
    },
    {
        "name": "deser-252KiB-16M",
        "rows": 16_000_000,
        "params": {"cacheStorageLevel": "MEMORY_AND_DISK"},
    },
]

_FULL_GC = re.compile(r"Pause Full \([^)]*\) (\d+)M->(\d+)M")


def child(args: argparse.Namespace) -> None:
    from pyspark.sql import SparkSession

    from spark_gmm import GaussianMixture, GaussianMixtureModel

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    start = bench_scale.start_parameters()
    initial = GaussianMixtureModel.fromParameters(
        start["weights"], start["means"], start["covariances"], "full"
    )
    df = spark.read.parquet(args.input)
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GaussianMixture(
            k=bench_scale.K,
            inputCols=df.columns,
            initialModel=initial,
            maxIter=1,
            tol=0.0,
            **json.loads(args.params),
        ).fit(df)
    print(json.dumps({"seconds": time.perf_counter() - began}))
    spark.stop()


def probe(item: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        gc_log = os.path.join(scratch, "gc.log")
        jvm = f"-Xlog:gc:file={gc_log} {item.get('jvm', '')}".strip()
        env = dict(os.environ)
        env["PYSPARK_SUBMIT_ARGS"] = (
            f'--driver-memory 2g --driver-java-options "{jvm}" pyspark-shell'
        )
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            "--input",
            str(bench_scale.ensure_data(data_dir, item["rows"])),
            "--params",
            json.dumps(item["params"]),
        ]
        began = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        seconds = time.perf_counter() - began
        text = Path(gc_log).read_text() if os.path.exists(gc_log) else ""
    after_full = [int(m.group(2)) for m in _FULL_GC.finditer(text)]
    oom = "OutOfMemoryError" in proc.stderr
    return {
        **item,
        "outcome": "completed" if proc.returncode == 0 else ("OutOfMemoryError" if oom else
                                                             f"exit {proc.returncode}"),
        "seconds": seconds,
        "full_gcs": len(after_full),
        "max_heap_after_full_gc_mib": max(after_full) if after_full else None,
        "humongous_allocation_pauses": text.count("Humongous Allocation"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=str(HERE / "scratch" / "scale_data"))
    parser.add_argument("--output-dir", default=str(HERE / "results"))
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = []
    for item in PROBES:
        logging.info("probe %s", item["name"])
        results.append(probe(item, Path(args.data_dir)))
        logging.info("%s", results[-1])
    payload = {"machine": timing.machine(), "heap": "2g", "probes": results}
    out = Path(args.output_dir)
    timing.write_json(out / "heap_probe.json", payload)
    lines = [
        "# Where the executor heap goes: cache layouts in a 2 GiB heap",
        "",
        f"Written by `benchmarks/heap_probe.py` on {payload['machine']['date_utc']}. One fit "
        "per probe (Spark local[2], the driver JVM is the executor); G1 log per probe.",
        "",
        "| probe | rows | params | JVM | outcome | heap after full GC, max (MiB) | "
        "humongous-allocation pauses |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['rows']:,} | `{json.dumps(r['params'])}` | "
            f"{r.get('jvm', '')} | {r['outcome']} | {r['max_heap_after_full_gc_mib']} | "
            f"{r['humongous_allocation_pauses']} |"
        )
    (out / "heap_probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
