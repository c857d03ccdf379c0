"""Spark Connect: fit and transform through a Connect server equal the classic session's.

A module fixture starts the Connect server that ships with the pyspark wheel
(``spark-submit --class org.apache.spark.sql.connect.service.SparkConnectServer``) on
loopback, ``local[2]``, and stops it by its pid at the end. The Connect client runs in
its own process (tests/connect_client.py): a remote session cannot be created while the
classic ``spark`` fixture is running ("[SESSION_ALREADY_EXIST] Cannot start a remote Spark
session because there is a regular Spark session already running"), and once created it
switches ``pyspark.sql.functions`` to Connect columns for the whole process.

Missing prerequisites (the ``connect`` extra, Java, the Connect jar) fail with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from connect_client import SELECT_K, SELECT_TYPES
from helpers import free_port, make_mixture, rel_err
from pyspark.sql import functions as F

from spark_gmm import GaussianMixture, GaussianMixtureModel, GaussianMixtureSelector

CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
CLIENT = Path(__file__).resolve().parent / "connect_client.py"
CFG = {"n": 1500, "d": 3, "k": 3, "data_seed": 11, "seed": 7, "partitions": 3}
COLS = [f"x{j}" for j in range(CFG["d"])]
STARTUP_TIMEOUT = 180.0
CLIENT_TIMEOUT = 900.0
NO_JAVA = "/nonexistent/no-jvm-in-the-connect-client"
SAMPLE_CSV = Path(__file__).resolve().parents[1] / "data" / "sample_clusters.csv"


@dataclass
class ConnectServer:
    pid: int
    url: str
    ui_port: int
    log: Path

    def log_tail(self, head: int = 1500, tail: int = 3000) -> str:
        """The log's start (spark-submit's own errors) and end (the server's last words)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError as e:
            return f"(no server log: {e})"
        if len(text) <= head + tail:
            return text
        return f"{text[:head]}\n[... {self.log} ...]\n{text[-tail:]}"


def _check_prerequisites() -> Path:
    """The pyspark home to start the server from; fails with the reason if it cannot."""
    missing = [
        pkg
        for mod, pkg in [
            ("grpc", "grpcio"),
            ("grpc_status", "grpcio-status"),
            ("google.rpc", "googleapis-common-protos"),
            ("zstandard", "zstandard"),
        ]
        if importlib.util.find_spec(mod) is None
    ]
    if missing:
        pytest.fail(
            f"Spark Connect client packages missing: {', '.join(missing)}. "
            "Install them with: pip install -e '.[connect]' (or '.[dev]')."
        )
    from pyspark.sql.connect.utils import check_dependencies

    try:
        check_dependencies()
    except Exception as e:
        pytest.fail(f"Spark Connect client dependencies are not usable: {e}")
    java_home = os.environ.get("JAVA_HOME")
    if not shutil.which("java") and not (java_home and Path(java_home, "bin", "java").exists()):
        pytest.fail("Java 17+ is needed to start the Spark Connect server; none found.")
    import pyspark

    spark_home = Path(pyspark.__file__).resolve().parent
    if not list((spark_home / "jars").glob("spark-connect_*.jar")):
        pytest.fail(f"No spark-connect_*.jar in {spark_home / 'jars'}: this pyspark has no server.")
    if not (spark_home / "bin" / "spark-submit").exists():
        pytest.fail(f"No bin/spark-submit in {spark_home}.")
    return spark_home


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's JVM (its own pid: spark-submit execs java), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory):
    spark_home = _check_prerequisites()
    tmp = tmp_path_factory.mktemp("spark_connect")
    port, ui_port = free_port(), free_port()
    conf_dir = tmp / "conf"  # no spark-defaults.conf from the environment
    conf_dir.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "SPARK_REMOTE",
            "SPARK_CONNECT_MODE_ENABLED",
            "SPARK_API_MODE",
            "PYSPARK_GATEWAY_PORT",
            "PYSPARK_GATEWAY_SECRET",
        )
    }
    env.update(
        SPARK_HOME=str(spark_home),
        SPARK_CONF_DIR=str(conf_dir),
        SPARK_LOCAL_IP="127.0.0.1",
        # As sbin/start-connect-server.sh does.
        SPARK_CONNECT_MODE="0",
        # The Connect planner starts UDF workers with $PYSPARK_PYTHON (it does not read
        # spark.pyspark.python): the venv interpreter, which has numpy/pyarrow/spark_gmm.
        PYSPARK_PYTHON=sys.executable,
    )
    confs = {
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.pyspark.python": sys.executable,
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.port": str(ui_port),  # the test reads the storage/jobs REST API
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "4",
        "spark.default.parallelism": "4",
    }
    cmd = [
        str(spark_home / "bin" / "spark-submit"),
        "--class",
        CONNECT_SERVER_CLASS,
        "--name",
        "spark_gmm-connect-tests",
        "--master",
        "local[2]",
        "--driver-memory",
        "1g",
    ]
    for key, value in confs.items():
        cmd += ["--conf", f"{key}={value}"]
    log = tmp / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=tmp
        )
    server = ConnectServer(proc.pid, f"sc://127.0.0.1:{port}", ui_port, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"The Spark Connect server exited with code {proc.returncode} before "
                    f"listening on 127.0.0.1:{port}. Server log:\n{server.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"The Spark Connect server (pid {proc.pid}) did not listen on "
                    f"127.0.0.1:{port} within {STARTUP_TIMEOUT:.0f} s. Server log:\n"
                    f"{server.log_tail()}"
                )
            time.sleep(0.5)
        yield server
    finally:
        _stop(proc)


def _run_client(server: ConnectServer, *args: str) -> dict:
    """Run tests/connect_client.py with ``args``; what it printed after ``RESULT``.

    The client runs as a serverless user's process would: no ``SPARK_REMOTE`` or
    ``PYSPARK_PYTHON`` from this environment, and ``JAVA_HOME`` pointing nowhere, so
    anything that tried to start a JVM in the client (a SparkContext, a py4j gateway)
    would fail instead of quietly working.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "PYSPARK_PYTHON")}
    env["JAVA_HOME"] = NO_JAVA
    try:
        done = subprocess.run(
            [sys.executable, str(CLIENT), *args],
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"The Spark Connect client did not finish within {CLIENT_TIMEOUT:.0f} s. "
            f"Server log tail:\n{server.log_tail()}"
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        pytest.fail(
            f"The Spark Connect client failed (exit code {done.returncode}).\n"
            f"stderr tail:\n{done.stderr[-4000:]}\nserver log tail:\n{server.log_tail()}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def remote(connect_server):
    """Everything the Connect client computed (one client process for all the tests)."""
    cfg = dict(CFG, url=connect_server.url, ui_port=connect_server.ui_port)
    return _run_client(connect_server, json.dumps(cfg))


@pytest.fixture(scope="module")
def classic(spark):
    """The same fits on the classic local session."""
    X, _ = make_mixture(n=CFG["n"], d=CFG["d"], k=CFG["k"], seed=CFG["data_seed"])
    pdf = pd.DataFrame(X, columns=COLS)
    pdf["id"] = np.arange(len(X))
    df = spark.createDataFrame(pdf).repartition(CFG["partitions"])
    arr_df = df.select("id", F.array(*COLS).alias("features"))
    models = {
        "columns": GaussianMixture(k=CFG["k"], inputCols=COLS, seed=CFG["seed"]).fit(df),
        "array": GaussianMixture(k=CFG["k"], featuresCol="features", seed=CFG["seed"]).fit(arr_df),
    }
    return X, models


def test_selection_over_connect_equals_classic(remote, spark):
    X, _ = make_mixture(n=CFG["n"], d=CFG["d"], k=CFG["k"], seed=CFG["data_seed"])
    pdf = pd.DataFrame(X, columns=COLS)
    df = spark.createDataFrame(pdf).repartition(CFG["partitions"])
    want = GaussianMixtureSelector(
        kValues=SELECT_K, covarianceTypes=SELECT_TYPES, inputCols=COLS, seed=CFG["seed"]
    ).fit(df)
    got = remote["selection"]
    assert got["best"] == [want.bestK, want.bestCovarianceType]
    table = want.table.orderBy("k", "covarianceType").toPandas()
    assert got["table"]["k"] == table["k"].tolist()
    assert got["table"]["covarianceType"] == table["covarianceType"].tolist()
    assert got["table"]["chosen"] == table["chosen"].tolist()
    assert rel_err(got["table"]["bic"], table["bic"].to_numpy()) < 1e-9
    best = want.bestModel
    assert got["params"]["numIter"] == best.summary.numIter
    for name in ("weights", "means", "covariances"):
        assert rel_err(got["params"][name], getattr(best, name)) < 1e-9, name
    assert got["scored_rows"] == CFG["n"]
    assert remote["cached_after_selection"] == []


def test_client_ran_over_connect(remote):
    assert remote["is_connect"], remote["session_type"]
    assert remote["gaussians_rows"] == CFG["k"]
    assert remote["summary_predictions_rows"] == CFG["n"]


@pytest.mark.parametrize("variant", ["columns", "array"])
def test_fit_over_connect_equals_classic(remote, classic, variant):
    _, models = classic
    got, want = remote[variant]["params"], models[variant]
    assert got["numRows"] == CFG["n"]
    assert got["numIter"] == want.summary.numIter
    assert rel_err(got["weights"], want.weights) < 1e-9
    assert rel_err(got["means"], want.means) < 1e-9
    assert rel_err(got["covariances"], want.covariances) < 1e-9
    assert rel_err(got["meanLogLikelihood"], want.summary.meanLogLikelihood) < 1e-9


@pytest.mark.parametrize(
    ("variant", "scored"),
    [("columns", "scored"), ("array", "scored"), ("array", "scored_vector")],
)
def test_transform_over_connect_equals_numpy(remote, classic, variant, scored):
    X, models = classic
    out = remote[variant][scored]
    assert out["id"] == list(range(CFG["n"]))
    proba = np.asarray(out["probability"])
    pred = np.asarray(out["prediction"])
    p = remote[variant]["params"]
    # The model fitted over Connect, rebuilt from its parameters, scored with numpy.
    connect_model = GaussianMixtureModel.fromParameters(
        p["weights"], p["means"], p["covariances"], "full"
    )
    want = connect_model.predict_proba(X)
    assert np.max(np.abs(proba - want)) < 1e-9
    np.testing.assert_array_equal(pred, np.argmax(want, axis=1))
    # ... and equal to the classic model's numpy scores too.
    assert np.max(np.abs(proba - models[variant].predict_proba(X))) < 1e-8


def test_nothing_stays_cached_on_the_server(remote):
    # The check can see a cache: a DataFrame the client persisted itself was listed.
    assert remote["cached_probe"], "the storage REST API did not list a persisted DataFrame"
    assert remote["cached_before"] == []
    assert remote["cached_after_fit"] == []
    assert remote["cached_after_array_fit"] == []
    assert remote["cached_after_error"] == []


def test_invalid_input_error_reaches_the_connect_client(remote):
    message = remote["invalid_error"]
    assert message is not None, "fitting a NaN row over Connect did not raise"
    assert "1 input rows have invalid features" in message
    assert "column 'x0'" in message


def test_jobs_are_tagged_over_connect(remote):
    tags = remote["job_tags"]
    assert any("spark_gmm: EM iteration 1/" in t for t in tags), tags[:10]
    assert any("spark_gmm: validate and cache the input" in t for t in tags), tags[:10]


# --- Jobs, save/load and checkpoints over Connect -------------------------------------


@pytest.fixture(scope="module")
def sample(spark):
    """The shipped sample, its classic fit (the jobs' settings) and a classic pipeline."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler

    df = spark.read.csv(str(SAMPLE_CSV), header=True, inferSchema=True)
    model = GaussianMixture(k=4, inputCols=["x", "y", "z"], seed=1).fit(df)
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=["x", "y", "z"], outputCol="f"),
            GaussianMixture(k=3, featuresCol="f", seed=2),
        ]
    ).fit(df)
    pdf = pd.read_csv(SAMPLE_CSV).sort_values("id")
    return pdf, model, pipeline


@pytest.fixture(scope="module")
def remote_jobs(connect_server, sample, tmp_path_factory):
    """spark-gmm fit/score/select, save/load and checkpoints run by a Connect client."""
    _, model, pipeline = sample
    root = tmp_path_factory.mktemp("connect_jobs")
    model.write().save(str(root / "classic-model"))
    pipeline.write().save(str(root / "classic-pipeline"))
    cfg = {
        "url": connect_server.url,
        "dir": str(root / "client"),
        "csv": str(SAMPLE_CSV),
        "classic_model": str(root / "classic-model"),
        "classic_pipeline": str(root / "classic-pipeline"),
    }
    (root / "client").mkdir()
    result = _run_client(connect_server, "jobs", json.dumps(cfg))
    result["root"] = root / "client"
    return result


def _params_of(model) -> dict:
    return {"weights": model.weights, "means": model.means, "covariances": model.covariances}


def _assert_same_params(got: dict, want: dict, tol: float = 0.0) -> None:
    for name in ("weights", "means", "covariances"):
        if tol == 0.0:
            np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), name)
        else:
            assert rel_err(got[name], want[name]) < tol, name


def _one_error_line(job: dict, *needles: str) -> str:
    assert job["code"] == 2, job
    assert "Traceback" not in job["stderr"], job["stderr"][-2000:]
    errors = [line for line in job["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1, job["stderr"][-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_connect_clients_never_had_a_jvm(remote, remote_jobs):
    # JAVA_HOME pointed nowhere, and no SparkContext or py4j gateway was ever created.
    for result in (remote, remote_jobs):
        assert result["jvm"] == {"gateway": False, "active_context": False}


def test_fit_job_over_connect_equals_the_classic_fit(remote_jobs, sample):
    _, classic_model, _ = sample
    assert remote_jobs["fit"]["code"] == 0, remote_jobs["fit"]["stderr"][-3000:]
    _assert_same_params(remote_jobs["model_params"], _params_of(classic_model), tol=1e-9)
    spark_section = remote_jobs["report"]["spark"]
    assert spark_section["connect"] is True
    assert spark_section["master"] == "local[2]"
    assert spark_section["app_id"].startswith("local-")
    assert {"report.json", "convergence.png"} <= set(remote_jobs["report_files"])
    _one_error_line(remote_jobs["fit_again"], "already exists", "--overwrite")


def test_score_job_over_connect_is_idempotent_and_equals_numpy(remote_jobs, sample):
    pdf, classic_model, _ = sample
    first, second = remote_jobs["score"]
    for run in (first, second):
        assert run["code"] == 0, run["stderr"][-3000:]
        assert run["rows"] == len(pdf)
        assert {"id", "prediction", "probability", "log_likelihood", "is_anomaly"} <= set(
            run["columns"]
        )
    assert second["prediction"] == first["prediction"]
    assert second["log_likelihood"] == first["log_likelihood"]
    X = pdf[["x", "y", "z"]].to_numpy()
    want = classic_model.score_samples(X)
    assert np.max(np.abs(np.asarray(first["log_likelihood"]) - want)) < 1e-7
    assert first["prediction"] == classic_model.predict_proba(X).argmax(axis=1).tolist()
    # The 1% quantile of the training rows' log-likelihood, applied to those same rows.
    assert 0.005 * len(pdf) <= first["anomalies"] <= 0.02 * len(pdf)
    _one_error_line(remote_jobs["score_exists"], "already exists", "--mode")


def test_score_job_over_connect_into_a_partitioned_table(remote_jobs):
    assert remote_jobs["table_first"]["code"] == 0, remote_jobs["table_first"]["stderr"][-3000:]
    assert remote_jobs["table_rerun"]["code"] == 0, remote_jobs["table_rerun"]["stderr"][-3000:]
    # The rerun replaced the partition true_label = 0 only; every row is still there once.
    assert remote_jobs["table_rows"] == len(remote_jobs["score"][0]["prediction"])
    assert remote_jobs["table_last_column"] == "true_label"
    assert remote_jobs["table_prediction"] == remote_jobs["score"][0]["prediction"]


def test_select_job_over_spark_remote_env(remote_jobs):
    assert remote_jobs["select"]["code"] == 0, remote_jobs["select"]["stderr"][-3000:]
    assert {"report.json", "selection.csv"} <= set(remote_jobs["select_files"])
    _one_error_line(remote_jobs["both_remote_and_master"], "SPARK_REMOTE", "local[1]")


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing_input", ("does not exist", "nope.csv", "Check 'input'")),
        ("missing_table", ("input table no_db.events does not exist",)),
        ("missing_column", ("'nope'", "available columns")),
        ("empty_after_where", ("no rows to fit",)),
        ("score_empty_after_where", ("has no rows after where 'x > 1e9'",)),
        ("text_feature", ("'x' (2 value(s)",)),
        ("nan_feature", ("1 input rows have invalid features", "'x'")),
        ("all_null_feature", ("'z': null in all 3 rows", "Drop them")),
        ("fewer_distinct_rows_than_k", ("k=4 but the rows have only 3 distinct values",)),
        ("negative_weight", ("weight column 'w'", "negative weights: 1")),
        ("missing_model", ("no-model is not a saved model",)),
        ("corrupt_model", ("broken-model is not a saved model",)),
        ("output_is_input", ("refusing to write", "the job's input")),
    ],
)
def test_bad_input_over_connect_is_one_line_and_exit_2(remote_jobs, case, needles):
    _one_error_line(remote_jobs["bad"][case], *needles)


def test_failed_jobs_over_connect_leave_no_output(remote_jobs):
    assert remote_jobs["bad_outputs_left"] == []


def test_checkpoint_and_resume_over_connect(remote_jobs):
    assert remote_jobs["ckpt_first"]["code"] == 0, remote_jobs["ckpt_first"]["stderr"][-3000:]
    assert remote_jobs["ckpt_iteration"] == 3
    resumed = remote_jobs["ckpt_resumed"]
    assert resumed["code"] == 0, resumed["stderr"][-3000:]
    ran = [int(m) for m in re.findall(r"EM iteration (\d+)/6", resumed["stderr"])]
    assert ran == [4, 5, 6], ran
    assert "initialised " not in resumed["stderr"]
    assert remote_jobs["ckpt_whole"]["code"] == 0
    # Resumed from the checkpoint = six iterations in one run, bit for bit.
    _assert_same_params(remote_jobs["resumed_params"], remote_jobs["whole_params"])


def test_models_cross_between_classic_and_connect(remote_jobs, sample):
    _, classic_model, classic_pipeline = sample
    # classic save -> Connect load
    _assert_same_params(remote_jobs["classic_model_params"], _params_of(classic_model))
    _assert_same_params(
        remote_jobs["classic_pipeline_params"], _params_of(classic_pipeline.stages[-1])
    )
    # Connect save -> classic load (the overwritten model and the pipeline)
    root = remote_jobs["root"]
    _assert_same_params(
        _params_of(GaussianMixtureModel.load(str(root / "model"))),
        remote_jobs["overwritten_params"],
    )
    from pyspark.ml import PipelineModel

    loaded = PipelineModel.load(str(root / "pipeline"))
    _assert_same_params(_params_of(loaded.stages[-1]), remote_jobs["pipeline_params"])
    # Connect save -> Connect load
    _assert_same_params(remote_jobs["pipeline_reloaded_params"], remote_jobs["pipeline_params"])


def test_pipeline_over_connect_scores_like_numpy(remote_jobs, sample):
    pdf, _, _ = sample
    p = remote_jobs["pipeline_params"]
    model = GaussianMixtureModel.fromParameters(p["weights"], p["means"], p["covariances"], "full")
    want = model.predict_proba(pdf[["x", "y", "z"]].to_numpy()).argmax(axis=1)
    assert remote_jobs["pipeline_prediction"] == want.tolist()


def test_saves_over_connect_refuse_to_clobber_and_fail_cleanly(remote_jobs):
    assert "already exists" in remote_jobs["save_over_existing"]
    assert remote_jobs["overwritten_params"] == remote_jobs["pipeline_params"]
    assert "injected failure" in remote_jobs["failed_save"]
    assert remote_jobs["failed_save_exists"] is False
    assert "not a complete spark_gmm save" in remote_jobs["failed_save_load"]


def test_streaming_updates_over_connect(remote_jobs):
    """The foreachBatch function runs on the server with a Connect session: it lists,
    saves and prunes versions without a JVM of its own."""
    assert remote_jobs["stream_error"] is None, remote_jobs["stream_error"]
    assert remote_jobs["stream_versions"] == ["batch-000000000000", "batch-000000000001"]
    _assert_same_params(remote_jobs["stream_params"], remote_jobs["stream_want"], tol=1e-10)
