"""Sessions: local-mode Python workers (the driver's interpreter, one BLAS thread per task),
and the choice between a classic session and a Spark Connect server."""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import pytest

from spark_gmm.session import connect_url, ensure_local_python_workers


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


def test_connect_url_chooses_between_master_remote_and_spark_remote(monkeypatch):
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    assert connect_url(None, None) is None
    assert connect_url(None, "local[2]") is None
    assert connect_url("sc://h:15002", None) == "sc://h:15002"
    with pytest.raises(ValueError, match="not both"):
        connect_url("sc://h:15002", "local[2]")
    monkeypatch.setenv("SPARK_REMOTE", "sc://env:15002")
    assert connect_url(None, None) == "sc://env:15002"
    assert connect_url("sc://h:15002", None) == "sc://h:15002"  # the flag wins
    with pytest.raises(ValueError, match="SPARK_REMOTE=sc://env:15002 is set"):
        connect_url(None, "local[2]")


def test_jobs_refuse_a_master_and_a_remote_in_one_line(capsys, monkeypatch):
    from spark_gmm.cli import main

    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    code = main(
        [
            "fit",
            "--input",
            "x.parquet",
            "--features",
            "a",
            "--k",
            "2",
            "--master",
            "local[1]",
            "--remote",
            "sc://127.0.0.1:1",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: give a master (local[1]) or a Connect server (sc://127.0.0.1:1), not both."
    ]
