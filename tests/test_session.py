"""Python workers in local mode: the driver's interpreter, one BLAS thread per task."""

from __future__ import annotations

import os
import sys

import pyarrow as pa

from spark_gmm.session import ensure_local_python_workers


def test_workers_use_driver_python_and_one_blas_thread(spark):
    # The fixture's session was built without PYSPARK_PYTHON; spark_gmm fixes the
    # interpreter the first time it touches the session.
    assert "PYSPARK_PYTHON" not in os.environ

    # Defined here so that cloudpickle ships it by value (workers cannot import tests).
    def _worker_facts(batches):
        from threadpoolctl import threadpool_info

        blas = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
        for _ in batches:
            pass
        yield pa.RecordBatch.from_pydict(
            {"exe": [sys.executable], "blas_threads": [max(blas) if blas else -1]}
        )

    ensure_local_python_workers(spark)
    rows = (
        spark.range(4, numPartitions=2)
        .mapInArrow(_worker_facts, "exe string, blas_threads long")
        .collect()
    )
    assert {r["exe"] for r in rows} == {sys.executable}
    assert {r["blas_threads"] for r in rows} == {1}
