"""The Spark Connect side of tests/test_spark_connect.py, run in its own Python process.

A Spark Connect session cannot share a process with the classic ``spark`` fixture: while
a classic session runs, ``SparkSession.builder.remote(...).getOrCreate()`` raises
"[SESSION_ALREADY_EXIST] Cannot start a remote Spark session because there is a regular
Spark session already running", and once created it sets ``SPARK_CONNECT_MODE_ENABLED`` in
``os.environ``, after which ``pyspark.sql.functions`` builds Connect columns for every
session. So the test runs this script with the same interpreter, and it prints one line
``RESULT <json>`` with everything the test compares.

Usage: ``python connect_client.py '<json config>'`` with keys ``url``, ``ui_port``,
``n``, ``d``, ``k``, ``data_seed``, ``seed``, ``partitions``.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from typing import Any

import numpy as np
import pandas as pd
from helpers import make_mixture  # the script's folder is first on sys.path


def _rest(ui_port: int, endpoint: str) -> Any:
    """The server's monitoring REST API (``/api/v1``) for its one application."""
    base = f"http://127.0.0.1:{ui_port}/api/v1/applications"
    with urllib.request.urlopen(base, timeout=10) as r:
        app_id = json.load(r)[0]["id"]
    with urllib.request.urlopen(f"{base}/{app_id}/{endpoint}", timeout=10) as r:
        return json.load(r)


def _cached(ui_port: int) -> list[str]:
    """Names of the cached RDDs/DataFrames on the server (its Storage tab)."""
    return [r["name"] for r in _rest(ui_port, "storage/rdd")]


def _cached_settled(ui_port: int, expect_empty: bool = True, timeout: float = 20.0) -> list[str]:
    """The cached list once it matches the expectation, or as it is at the deadline.

    ``unpersist`` is not blocking and the status store is fed by listener events, so the
    list can lag behind by a moment.
    """
    deadline = time.monotonic() + timeout
    while True:
        names = _cached(ui_port)
        if bool(names) != expect_empty or time.monotonic() > deadline:
            return names
        time.sleep(0.25)


# The selection grid run over Connect and on the classic session (the test imports these).
SELECT_K = [2, 3, 4]
SELECT_TYPES = ["full", "diag"]


def _params(model: Any) -> dict[str, Any]:
    return {
        "weights": list(model.weights),
        "means": model.means.tolist(),
        "covariances": model.covariances.tolist(),
        "numIter": model.summary.numIter,
        "meanLogLikelihood": model.summary.meanLogLikelihood,
        "numRows": model.summary.numRows,
    }


def _scored(model: Any, df: Any) -> dict[str, Any]:
    from pyspark.ml.functions import vector_to_array

    pdf = (
        model.transform(df)
        .select("id", "prediction", vector_to_array("probability").alias("p"))
        .toPandas()
        .sort_values("id")
    )
    return {
        "id": pdf["id"].astype(int).tolist(),
        "prediction": pdf["prediction"].astype(int).tolist(),
        "probability": np.stack(pdf["p"].to_numpy()).tolist(),
    }


def main(cfg: dict[str, Any]) -> dict[str, Any]:
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from spark_gmm import GaussianMixture, GaussianMixtureSelector
    from spark_gmm.engine import is_connect
    from spark_gmm.errors import InvalidInputError

    spark = SparkSession.builder.remote(cfg["url"]).getOrCreate()
    ui = int(cfg["ui_port"])
    out: dict[str, Any] = {"is_connect": is_connect(spark), "session_type": type(spark).__name__}
    try:
        X, _ = make_mixture(n=cfg["n"], d=cfg["d"], k=cfg["k"], seed=cfg["data_seed"])
        cols = [f"x{j}" for j in range(X.shape[1])]
        pdf = pd.DataFrame(X, columns=cols)
        pdf["id"] = np.arange(len(X))
        df = spark.createDataFrame(pdf).repartition(cfg["partitions"])
        arr_df = df.select("id", F.array(*cols).alias("features"))
        vec_df = arr_df.select("id", array_to_vector("features").alias("features"))

        # The storage check must be able to see a cache: persist one ourselves first.
        probe = spark.range(10).persist()
        probe.count()
        out["cached_probe"] = _cached_settled(ui, expect_empty=False)
        probe.unpersist()
        out["cached_before"] = _cached_settled(ui)

        gm = GaussianMixture(k=cfg["k"], inputCols=cols, seed=cfg["seed"])
        t0 = time.perf_counter()
        model = gm.fit(df)
        out["fit_seconds"] = time.perf_counter() - t0
        out["cached_after_fit"] = _cached_settled(ui)
        # Model DataFrames built on the client's (remote) active session.
        out["gaussians_rows"] = model.gaussiansDF.count()
        out["summary_predictions_rows"] = model.summary.predictions.count()
        out["columns"] = {"params": _params(model), "scored": _scored(model, df)}

        gm_arr = GaussianMixture(k=cfg["k"], featuresCol="features", seed=cfg["seed"])
        model_arr = gm_arr.fit(arr_df)
        out["cached_after_array_fit"] = _cached_settled(ui)
        out["array"] = {
            "params": _params(model_arr),
            "scored": _scored(model_arr, arr_df),
            # The same model on an ml Vector column.
            "scored_vector": _scored(model_arr, vec_df),
        }

        # Model selection: the grid's passes, its table DataFrame and its best model.
        selection = GaussianMixtureSelector(
            kValues=SELECT_K, covarianceTypes=SELECT_TYPES, inputCols=cols, seed=cfg["seed"]
        ).fit(df)
        table = selection.table.orderBy("k", "covarianceType").toPandas()
        out["selection"] = {
            "best": [selection.bestK, selection.bestCovarianceType],
            "params": _params(selection.bestModel),
            "table": {c: table[c].tolist() for c in ("k", "covarianceType", "bic", "chosen")},
            "scored_rows": selection.transform(df).count(),
        }
        out["cached_after_selection"] = _cached_settled(ui)

        # Invalid input is reported on the client, and the cache is released then too.
        nan_x0 = F.when(F.col("id") == 7, F.lit(float("nan"))).otherwise(F.col("x0"))
        bad = df.withColumn("x0", nan_x0)
        try:
            gm.fit(bad)
            out["invalid_error"] = None
        except InvalidInputError as e:
            out["invalid_error"] = str(e)
        out["cached_after_error"] = _cached_settled(ui)

        jobs = _rest(ui, "jobs")
        out["job_tags"] = sorted({t for j in jobs for t in j.get("jobTags", [])})
    finally:
        spark.stop()
    return out


if __name__ == "__main__":
    result = main(json.loads(sys.argv[1]))
    print("RESULT " + json.dumps(result), flush=True)
