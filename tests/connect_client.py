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

import contextlib
import io
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


def _run_job(argv: list[str]) -> dict[str, Any]:
    """``spark-gmm <argv>`` in this process: its exit code and what it wrote to stderr."""
    from spark_gmm.cli import main as cli_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return {"code": code, "stderr": err.getvalue()}


def _model_params(model: Any) -> dict[str, Any]:
    return {
        "weights": list(model.weights),
        "means": model.means.tolist(),
        "covariances": model.covariances.tolist(),
    }


def _connect_only() -> dict[str, Any]:
    """Whether this process ever had a JVM: the SparkContext's gateway and active context."""
    from pyspark import SparkContext

    return {
        "gateway": SparkContext._gateway is not None,
        "active_context": SparkContext._active_spark_context is not None,
    }


def jobs(cfg: dict[str, Any]) -> dict[str, Any]:
    """The jobs, save/load and checkpoints over Connect (``tests/test_spark_connect.py``).

    Keys: ``url``, ``dir`` (scratch, client side = server side on loopback), ``csv``,
    ``classic_model`` and ``classic_pipeline`` (saved by a classic session beforehand).
    """
    import os
    from pathlib import Path

    url, root, csv = cfg["url"], Path(cfg["dir"]), cfg["csv"]
    src = ["--input", csv, "--format", "csv", "--features", "x,y,z"]
    out: dict[str, Any] = {}

    # fit, then the same output again without --overwrite.
    model_dir, report_dir = str(root / "model"), str(root / "report")
    fit = ["fit", "--remote", url, *src, "--k", "4", "--seed", "1", "--output", model_dir]
    out["fit"] = _run_job([*fit, "--report", report_dir])
    report = root / "report"
    out["report"] = json.loads((report / "report.json").read_text()) if report.exists() else {}
    out["report_files"] = sorted(p.name for p in report.iterdir()) if report.exists() else []
    out["fit_again"] = _run_job(fit)

    # score twice into the same output (mode overwrite: a rerun is idempotent), then once
    # with mode error.
    scored = str(root / "scored")
    score = [
        "score",
        "--remote",
        url,
        *src,
        "--model",
        model_dir,
        "--id-cols",
        "id",
        "--output",
        scored,
        "--anomaly-quantile",
        "0.01",
    ]
    runs = []
    for _ in range(2):
        run = _run_job([*score, "--mode", "overwrite"])
        pdf = pd.read_parquet(scored).sort_values("id")
        run["rows"] = len(pdf)
        run["columns"] = sorted(pdf.columns)
        run["prediction"] = pdf["prediction"].astype(int).tolist()
        run["log_likelihood"] = pdf["log_likelihood"].tolist()
        run["anomalies"] = int(pdf["is_anomaly"].sum())
        runs.append(run)
    out["score"] = runs
    out["score_exists"] = _run_job([*score, "--mode", "error"])

    # A partitioned catalog table (in the server's warehouse), then a rerun that
    # overwrites one partition only.
    to_table = [
        "score",
        "--remote",
        url,
        *src,
        "--model",
        model_dir,
        "--id-cols",
        "id",
        "--output-table",
        "connect_scored",
        "--partition-by",
        "true_label",
    ]
    out["table_first"] = _run_job(to_table)
    out["table_rerun"] = _run_job([*to_table, "--mode", "overwrite", "--where", "true_label = 0"])

    # select through $SPARK_REMOTE instead of --remote.
    os.environ["SPARK_REMOTE"] = url
    try:
        out["select"] = _run_job(
            [
                "select",
                *src,
                "--k",
                "2..5",
                "--covariance-types",
                "full,diag",
                "--seed",
                "1",
                "--output",
                str(root / "selected"),
                "--report",
                str(root / "select-report"),
            ]
        )
        selected = root / "select-report"
        out["select_files"] = (
            sorted(p.name for p in selected.iterdir()) if selected.exists() else []
        )
        out["both_remote_and_master"] = _run_job(
            ["fit", *src, "--k", "2", "--master", "local[1]", "--output", str(root / "m2")]
        )
    finally:
        del os.environ["SPARK_REMOTE"]

    # The bad-input matrix of docs/reliability.md, over Connect: exit code 2, one line,
    # nothing written.
    files = {
        "text": "id,x,y,z\n1,a,2.0,3.0\n2,b,1.0,1.0\n",
        "nan": "id,x,y,z\n1,NaN,2.0,3.0\n2,1.0,1.0,1.0\n3,2.0,1.0,0.0\n",
        "null_z": "id,x,y,z\n1,1.0,2.0,\n2,2.0,1.0,\n3,3.0,1.0,\n",
        "dup": "id,x,y,z\n" + "".join(f"{i},{i % 3}.0,1.0,2.0\n" for i in range(30)),
        "weights": "id,x,y,z,w\n1,1.0,2.0,3.0,1.0\n2,2.0,1.0,0.0,-1.0\n3,0.0,1.0,1.0,2.0\n",
    }
    for name, text in files.items():
        (root / f"{name}.csv").write_text(text)
    broken = root / "broken-model" / "metadata"
    broken.mkdir(parents=True)
    (broken / "part-00000").write_text("{not json")

    def fit_on(path: str, *extra: str) -> list[str]:
        return [
            "fit",
            "--remote",
            url,
            "--input",
            path,
            "--format",
            "csv",
            "--features",
            "x,y,z",
            "--k",
            "2",
            *extra,
        ]

    def score_with(model: str, *extra: str) -> list[str]:
        return [
            "score",
            "--remote",
            url,
            *src,
            "--model",
            model,
            "--output",
            str(root / "scored-none"),
            *extra,
        ]

    bad = {
        "missing_input": fit_on(str(root / "nope.csv")),
        "missing_table": [
            "score",
            "--remote",
            url,
            "--table",
            "no_db.events",
            "--model",
            model_dir,
            "--output",
            str(root / "scored-none"),
        ],
        "missing_column": ["fit", "--remote", url, *src[:4], "--features", "x,y,nope"],
        "empty_after_where": fit_on(csv, "--where", "x > 1e9"),
        "score_empty_after_where": score_with(model_dir, "--where", "x > 1e9"),
        "text_feature": fit_on(str(root / "text.csv")),
        "nan_feature": fit_on(str(root / "nan.csv")),
        "all_null_feature": fit_on(str(root / "null_z.csv")),
        "fewer_distinct_rows_than_k": fit_on(str(root / "dup.csv"), "--k", "4"),
        "negative_weight": fit_on(str(root / "weights.csv"), "--weight-col", "w"),
        "missing_model": score_with(str(root / "no-model")),
        "corrupt_model": score_with(str(root / "broken-model")),
        "output_is_input": [
            "score",
            "--remote",
            url,
            *src,
            "--model",
            model_dir,
            "--output",
            csv,
            "--mode",
            "overwrite",
        ],
    }
    out["bad"] = {name: _run_job(argv) for name, argv in bad.items()}
    out["bad_outputs_left"] = sorted(
        p.name for p in root.iterdir() if p.name.startswith(("scored-none", "m2"))
    )

    # Checkpoints (client side): 3 iterations, resumed to 6, against 6 in one go.
    ckpt = root / "ckpt"
    base = [
        "fit",
        "--remote",
        url,
        *src,
        "--k",
        "4",
        "--seed",
        "1",
        "--tol",
        "0",
        "--checkpoint-interval",
        "1",
    ]
    out["ckpt_first"] = _run_job(
        [*base, "--max-iter", "3", "--checkpoint-dir", str(ckpt), "--output", str(root / "ckpt3")]
    )
    state = ckpt / "em_state.json"
    out["ckpt_iteration"] = json.loads(state.read_text())["iteration"] if state.exists() else None
    out["ckpt_resumed"] = _run_job(
        [
            *base,
            "--max-iter",
            "6",
            "--checkpoint-dir",
            str(ckpt),
            "--resume",
            "--output",
            str(root / "resumed"),
        ]
    )
    out["ckpt_whole"] = _run_job(
        [
            *base,
            "--max-iter",
            "6",
            "--checkpoint-dir",
            str(root / "ckpt-whole"),
            "--output",
            str(root / "whole"),
        ]
    )

    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import SparkSession

    from spark_gmm import GaussianMixture, GaussianMixtureModel
    from spark_gmm.persistence import ModelFormatError, path_exists

    spark = SparkSession.builder.remote(url).getOrCreate()
    try:
        table = spark.table("connect_scored").toPandas().sort_values("id")
        out["table_rows"] = len(table)
        out["table_last_column"] = list(table.columns)[-1]
        out["table_prediction"] = table["prediction"].astype(int).tolist()
        spark.sql("DROP TABLE connect_scored")
        for name in ("model", "resumed", "whole"):
            out[f"{name}_params"] = _model_params(GaussianMixtureModel.load(str(root / name)))
        # Saved by a classic session, loaded here.
        out["classic_model_params"] = _model_params(GaussianMixtureModel.load(cfg["classic_model"]))
        classic_pipeline = PipelineModel.load(cfg["classic_pipeline"])
        out["classic_pipeline_params"] = _model_params(classic_pipeline.stages[-1])

        df = spark.read.csv(csv, header=True, inferSchema=True)
        pipeline = Pipeline(
            stages=[
                VectorAssembler(inputCols=["x", "y", "z"], outputCol="f"),
                GaussianMixture(k=4, featuresCol="f", seed=1),
            ]
        ).fit(df)
        pipeline.write().save(str(root / "pipeline"))
        reloaded = PipelineModel.load(str(root / "pipeline"))
        out["pipeline_params"] = _model_params(pipeline.stages[-1])
        out["pipeline_reloaded_params"] = _model_params(reloaded.stages[-1])
        got = reloaded.transform(df).select("id", "prediction").toPandas().sort_values("id")
        out["pipeline_prediction"] = got["prediction"].astype(int).tolist()

        # A save that fails part-way leaves nothing that loads.
        model = pipeline.stages[-1]
        try:
            model.save(str(root / "model"))
            out["save_over_existing"] = None
        except ModelFormatError as e:
            out["save_over_existing"] = str(e)
        model.write().overwrite().save(str(root / "model"))
        out["overwritten_params"] = _model_params(GaussianMixtureModel.load(str(root / "model")))

        from pyspark.ml.util import DefaultParamsWriter

        def fail(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("injected failure before the metadata")

        saved = DefaultParamsWriter.saveMetadata
        DefaultParamsWriter.saveMetadata = staticmethod(fail)  # type: ignore[method-assign]
        try:
            model.save(str(root / "failed"))
            out["failed_save"] = None
        except RuntimeError as e:
            out["failed_save"] = str(e)
        finally:
            DefaultParamsWriter.saveMetadata = saved  # type: ignore[method-assign]
        out["failed_save_exists"] = path_exists(spark, str(root / "failed"))
        try:
            GaussianMixtureModel.load(str(root / "failed"))
            out["failed_save_load"] = None
        except ModelFormatError as e:
            out["failed_save_load"] = str(e)

        out.update(_streaming(spark, root, csv, cfg["classic_model"]))
    finally:
        spark.stop()
    out["jvm"] = _connect_only()
    return out


def _streaming(spark: Any, root: Any, csv: str, start_path: str) -> dict[str, Any]:
    """StreamingGaussianMixture over Connect: its foreachBatch function runs in a Python
    process of the server, with a Connect session; two files, one micro-batch each."""
    import os

    from spark_gmm import GaussianMixtureModel, StreamingGaussianMixture

    folder = root / "stream-in"
    folder.mkdir()
    halves = [pd.read_csv(csv)[["x", "y", "z"]].iloc[i::2] for i in range(2)]
    for i, half in enumerate(halves):
        half.to_parquet(folder / f"part-{i}.parquet")
        # The file source takes the oldest file first: make the order certain.
        os.utime(folder / f"part-{i}.parquet", (1_700_000_000 + 60 * i,) * 2)
    start = GaussianMixtureModel.load(start_path)
    sgm = StreamingGaussianMixture(str(root / "stream-models"), initialModel=start, decayFactor=0.9)
    stream = (
        spark.readStream.schema("x double, y double, z double")
        .option("maxFilesPerTrigger", 1)
        .parquet(str(folder))
    )
    query = sgm.start(stream, str(root / "stream-ckpt"), trigger={"availableNow": True})
    query.awaitTermination(600)
    error = query.exception()
    out: dict[str, Any] = {"stream_error": None if error is None else str(error)[:3000]}
    models = root / "stream-models"
    out["stream_versions"] = sorted(p.name for p in models.iterdir()) if models.exists() else []
    if error is None and out["stream_versions"]:
        want = start
        for half in halves:
            want = want.update(spark.createDataFrame(half), decayFactor=0.9)
        out["stream_params"] = _model_params(sgm.latestModel(spark))
        out["stream_want"] = _model_params(want)
    return out


if __name__ == "__main__":
    if sys.argv[1] == "jobs":
        result = jobs(json.loads(sys.argv[2]))
    else:
        result = main(json.loads(sys.argv[1]))
        result["jvm"] = _connect_only()
    print("RESULT " + json.dumps(result), flush=True)
