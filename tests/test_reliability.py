"""The bad-input matrix of issue 6, through the jobs and through the Python API.

Every case checks: exit code 2 (jobs, run in process on the shared session) or a specific
exception (API), exactly one ``error:`` line naming the column/parameter/path and what to
do, and that no output (model directory, scored output, report) was created or changed.
Cases the API already covers elsewhere are named in the README's Reliability table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.ml.linalg import SparseVector, Vectors
from pyspark.sql import functions as F

from spark_gmm import ConvergenceWarning, GaussianMixture, GaussianMixtureModel, InvalidInputError
from spark_gmm.cli import main
from spark_gmm.em import InMemoryData, fit_em
from spark_gmm.errors import MemoryGuardError

COLS = ["a", "b"]
N = 120


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(spark, tmp_path_factory):
    """Small Parquet/CSV inputs, one per bad case (written by pyarrow, not Spark, to keep
    the setup fast), and two saved models."""
    base = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(61)
    X = np.vstack([rng.normal(size=(N // 2, 2)), rng.normal(size=(N // 2, 2)) + 6.0])
    paths: dict[str, str] = {}

    def put(key, /, **columns):
        paths[key] = str(base / key)
        Path(paths[key]).mkdir()
        table = pa.table(
            {c: v if isinstance(v, pa.Array) else pa.array(v) for c, v in columns.items()}
        )
        pq.write_table(table, f"{paths[key]}/part-0.parquet")

    good = {"a": X[:, 0], "b": X[:, 1], "id": np.arange(N), "name": ["row"] * N, "w": np.ones(N)}
    put("good", **good)
    a, b = X[:, 0].copy(), X[:, 1].copy()
    a[[3, 7]], b[11] = [np.nan, np.inf], -np.inf
    put("nan", **{**good, "a": a, "b": b})
    put("all_null", **good, c=pa.nulls(N, pa.float64()))
    w = np.ones(N)
    w[5] = -1.0
    put("neg_weight", **{**good, "w": w})
    put("big", a=X[:, 0] * 1e300, b=X[:, 1] * 1e300)
    put("tiny", a=X[:, 0] * 1e-300, b=X[:, 1] * 1e-300)
    dup = np.repeat([[0.0, 0.0], [5.0, 1.0], [1.0, 7.0]], 20, axis=0)
    put("dup", a=dup[:, 0], b=dup[:, 1], c=np.full(60, 3.0))  # c: a constant feature
    put("mixed_len", v=[[1.0, 2.0]] * 5 + [[1.0, 2.0, 3.0]])
    put("wide", v=[[1.0] * 2000] * 3)
    paths["sparse_huge"] = str(base / "sparse_huge")
    spark.createDataFrame(
        [(SparseVector(100_000, {0: float(i)}),) for i in range(4)], ["v"]
    ).coalesce(1).write.parquet(paths["sparse_huge"])
    csv = base / "malformed.csv"
    csv.mkdir()
    lines = ["a,b"] + [f"{x:.6f},{y:.6f}" for x, y in X[:20]] + ["1.5,1.2.3"]
    (csv / "part-0.csv").write_text("\n".join(lines) + "\n")
    paths["csv"] = str(csv)
    model = GaussianMixtureModel.fromParameters(
        [0.5, 0.5], [[0.0, 0.0], [6.0, 6.0]], [np.eye(2), np.eye(2)]
    ).setInputCols(COLS)
    paths["model"] = str(base / "model")
    model.write().save(paths["model"])
    model3 = GaussianMixtureModel.fromParameters([1.0], [[0.0, 0.0, 0.0]], [np.eye(3)])
    paths["model3"] = str(base / "model3")
    model3.write().save(paths["model3"])
    return paths


@pytest.fixture
def job(spark, monkeypatch, capsys):
    """Run ``spark-gmm ...`` in process on the shared session; returns
    (exit code, the ``error:`` lines, stdout)."""
    import spark_gmm.session

    monkeypatch.setattr(spark_gmm.session, "build_session", lambda *a, **k: spark)
    monkeypatch.setattr(spark, "stop", lambda: None)
    # No plots in reports here (matplotlib is slow); report.json is what these tests read.
    monkeypatch.setattr("spark_gmm.report._plots", lambda *args: [])
    log = logging.getLogger("spark_gmm")

    def run(*argv):
        # main() gives the logger a stderr handler (as a job should); undo it afterwards
        # so that caplog keeps working in this and later tests.
        saved = (list(log.handlers), log.propagate, log.level)
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        finally:
            log.handlers[:] = saved[0]
            log.propagate = saved[1]
            log.setLevel(saved[2])
        captured = capsys.readouterr()
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
        return code, errors, captured.out + captured.err

    return run


def snapshot(path) -> dict[str, int] | None:
    """Every file under ``path`` with its size and mtime, or None when it is absent."""
    root = Path(path)
    if not root.exists():
        return None
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def failed(result, *fragments) -> str:
    """Assert exit 2 with one ``error:`` line containing every fragment; return it."""
    code, errors, output = result
    assert code == 2, output[-2000:]
    assert len(errors) == 1, errors
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in output, output[-2000:]
    return errors[0]


def api_error(df, cls=InvalidInputError, **params) -> str:
    with pytest.raises(cls) as info:
        GaussianMixture(seed=1, **params).fit(df)
    assert "\n" not in str(info.value)
    return str(info.value)


def no_leftovers(directory) -> None:
    assert not [p.name for p in Path(directory).iterdir() if "_tmp-" in p.name]


# ---------------------------------------------------------------------------
# Input that is missing or empty
# ---------------------------------------------------------------------------


def test_missing_input_path_and_table(job, inputs, tmp_path):
    model, out = tmp_path / "m", tmp_path / "o"
    failed(
        job("fit", "--input", tmp_path / "nope", "--features", "a,b", "--output", model),
        f"input path {tmp_path / 'nope'} does not exist",
        "Check 'input'",
    )
    failed(
        job("score", "--table", "no_db.events", "--model", inputs["model"], "--output", out),
        "input table no_db.events does not exist",
        "Check 'table'",
    )
    assert snapshot(model) is None and snapshot(out) is None


def test_empty_input_after_where(job, inputs, tmp_path):
    model, out = tmp_path / "m", tmp_path / "o"
    good = inputs["good"]
    failed(
        job("fit", "--input", good, "--features", "a,b", "--where", "a > 1e9", "--output", model),
        "no rows to fit",
        "Check the input path, table or filter",
    )
    failed(
        job(
            "score",
            "--input",
            good,
            "--where",
            "a > 1e9",
            "--model",
            inputs["model"],
            "--output",
            out,
        ),
        "has no rows after where 'a > 1e9': nothing to score",
    )
    assert snapshot(model) is None and snapshot(out) is None


# ---------------------------------------------------------------------------
# Columns that are not usable features
# ---------------------------------------------------------------------------


def test_all_null_feature_column(spark, job, inputs, tmp_path):
    path, model, out = inputs["all_null"], tmp_path / "m", tmp_path / "o"
    expected = "column 'c': null, NaN or infinite values in all 120 rows"
    failed(job("fit", "--input", path, "--features", "a,c", "--output", model), expected, "Drop it")
    failed(
        job(
            "score",
            "--input",
            path,
            "--features",
            "a,c",
            "--model",
            inputs["model"],
            "--output",
            out,
        ),
        "row(s) of a batch",
        "'a', 'c'",
        "handleInvalid='skip'",
    )
    assert snapshot(model) is None and snapshot(out) is None
    no_leftovers(tmp_path)
    df = spark.read.parquet(path)
    for handle in ("error", "skip"):
        assert expected in api_error(df, k=2, inputCols=["a", "c"], handleInvalid=handle)


def test_string_column_as_feature(spark, job, inputs, tmp_path):
    path, model, out = inputs["good"], tmp_path / "m", tmp_path / "o"
    expected = "'name' (120 value(s), e.g. 'row')"
    failed(job("fit", "--input", path, "--features", "a,name", "--output", model), expected)
    failed(
        job(
            "score",
            "--input",
            path,
            "--features",
            "a,name",
            "--model",
            inputs["model"],
            "--output",
            out,
        ),
        expected,
    )
    assert snapshot(model) is None and snapshot(out) is None
    msg = api_error(spark.read.parquet(path), k=2, inputCols=["a", "name"])
    assert "'name' has type string" in msg and "Cast it" in msg


def test_csv_with_a_malformed_number(spark, job, inputs, tmp_path):
    """inferSchema reads the column as text: the jobs name it and show the bad value. With
    an explicit schema Spark reads it as null: the fit counts it like any null."""
    model = tmp_path / "m"
    failed(
        job(
            "fit",
            "--input",
            inputs["csv"],
            "--format",
            "csv",
            "--features",
            "a,b",
            "--output",
            model,
        ),
        "read as text because some values are not numbers: 'b' (1 value(s), e.g. '1.2.3')",
    )
    conf = tmp_path / "c.toml"
    conf.write_text(
        f'input = "{inputs["csv"]}"\nformat = "csv"\ncsv_infer_schema = false\nfeatures = ["a"]\n'
    )
    failed(
        job("fit", "--config", conf, "--output", model),
        "'a' are text (string) although their values are numbers",
        "csv_infer_schema = true",
    )
    assert snapshot(model) is None
    df = spark.read.schema("a double, b double").option("header", "true").csv(inputs["csv"])
    msg = api_error(df, k=2, inputCols=COLS)
    assert "1 input rows have invalid features or weights (column 'b': null, NaN or" in msg


def test_csv_column_without_any_value(job, tmp_path):
    """An empty CSV column is inferred as string: the job says it is empty, not text."""
    path = tmp_path / "empty_c.csv"
    path.write_text("a,b,c\n" + "".join(f"{i}.0,{i % 3}.5,\n" for i in range(12)))
    model = tmp_path / "m"
    failed(
        job("fit", "--input", path, "--format", "csv", "--features", "a,b,c", "--output", model),
        "feature column(s) 'c': null in all 12 rows",
        "Drop them from the features",
    )
    assert snapshot(model) is None


def test_nan_inf_null_error_by_default_skip_counts(job, inputs, tmp_path):
    path, model, out, report = inputs["nan"], tmp_path / "m", tmp_path / "o", tmp_path / "r"
    failed(
        job("fit", "--input", path, "--features", "a,b", "--output", model, "--report", report),
        "3 input rows have invalid features",
        "column 'a': null, NaN or infinite values: 2",
        "column 'b': null, NaN or infinite values: 1",
        "handleInvalid='skip'",
    )
    failed(
        job("score", "--input", path, "--model", inputs["model"], "--output", out),
        "row(s) of a batch",
        "null, NaN, infinite",
    )
    assert snapshot(model) is None and snapshot(out) is None and snapshot(report) is None
    no_leftovers(tmp_path)
    # skip: the fit drops and reports them, scoring drops them.
    code, _, output = job(
        "fit",
        "--input",
        path,
        "--features",
        "a,b",
        "--k",
        "2",
        "--n-init",
        "1",
        "--handle-invalid",
        "skip",
        "--output",
        model,
        "--report",
        report,
    )
    assert code == 0, output[-2000:]
    assert "rows=117 (skipped 3)" in output
    rows = json.loads((report / "report.json").read_text())["rows"]
    assert rows == {"read": 120, "skipped": 3, "used": 117}
    code, _, output = job(
        "score",
        "--input",
        path,
        "--model",
        inputs["model"],
        "--output",
        out,
        "--handle-invalid",
        "skip",
        "--id-cols",
        "id",
    )
    assert code == 0, output[-2000:]
    scored = pd.read_parquet(out)
    assert sorted(scored["id"]) == sorted(set(range(N)) - {3, 7, 11})
    assert np.isfinite(np.stack(scored["probability"].to_numpy())).all()


def test_vectors_of_mixed_lengths(job, inputs, tmp_path):
    failed(
        job(
            "fit",
            "--input",
            inputs["mixed_len"],
            "--features-col",
            "v",
            "--k",
            "1",
            "--output",
            tmp_path / "m",
        ),
        "column 'v': vectors of a different length: 1",
    )
    assert snapshot(tmp_path / "m") is None


def test_sparse_vectors_densified_or_refused(spark, job, inputs, tmp_path):
    rng = np.random.default_rng(62)
    X = np.vstack([rng.normal(size=(40, 2)), rng.normal(size=(40, 2)) + 5.0])
    sparse = spark.createDataFrame(
        [(Vectors.sparse(3, {0: float(x), 2: float(y)}),) for x, y in X], ["v"]
    )
    dense = np.column_stack([X[:, 0], np.zeros(len(X)), X[:, 1]])
    start = GaussianMixtureModel.fromParameters(
        [0.5, 0.5], [[0.0, 0.0, 0.0], [5.0, 0.0, 5.0]], np.ones((2, 3)), "diag"
    )
    with pytest.warns(ConvergenceWarning):  # tol=0: always the full maxIter iterations
        fitted = GaussianMixture(
            k=2, featuresCol="v", covarianceType="diag", initialModel=start, maxIter=3, tol=0.0
        ).fit(sparse)
    # The same EM on the dense rows in memory: the sparse vectors were densified exactly.
    with pytest.warns(ConvergenceWarning):
        reference = fit_em(
            InMemoryData(dense),
            2,
            "diag",
            max_iter=3,
            tol=0.0,
            initial_params=start.mixtureParameters,
        )
    assert np.allclose(fitted.means, reference.params.means, rtol=1e-12, atol=1e-12)
    assert np.allclose(fitted.covariances, reference.params.covariances, rtol=1e-10)
    # Size 1e5: 10,000-row dense blocks would take 8 GB; blocks shrink to one densified
    # row (800 KB), so a diagonal model fits...
    huge = spark.read.parquet(inputs["sparse_huge"])
    with pytest.warns(ConvergenceWarning):
        wide = GaussianMixture(k=1, featuresCol="v", covarianceType="diag", maxIter=2, tol=0.0).fit(
            huge
        )
    expected_mean = np.zeros(100_000)
    expected_mean[0] = 1.5  # the rows are 0, 1, 2, 3 in the first coordinate
    assert np.allclose(wide.means[0], expected_mean, rtol=0, atol=1e-12)
    # ... but a full covariance (10^10 entries) is refused up front.
    failed(
        job(
            "fit",
            "--input",
            inputs["sparse_huge"],
            "--features-col",
            "v",
            "--k",
            "1",
            "--output",
            tmp_path / "m",
        ),
        "d=100000 features",
        "Not enough memory",
    )
    assert snapshot(tmp_path / "m") is None
    api_error(huge, MemoryGuardError, k=1, featuresCol="v", covarianceType="full")


# ---------------------------------------------------------------------------
# Degenerate data and extreme values
# ---------------------------------------------------------------------------


def test_fewer_distinct_rows_than_k(spark, job, inputs, tmp_path):
    expected = "k=4 but the rows have only 3 distinct values"
    failed(
        job(
            "fit",
            "--input",
            inputs["dup"],
            "--features",
            "a,b,c",
            "--k",
            "4",
            "--output",
            tmp_path / "m",
        ),
        expected,
        "Use a smaller k",
    )
    assert snapshot(tmp_path / "m") is None
    assert expected in api_error(spark.read.parquet(inputs["dup"]), k=4, inputCols=["a", "b", "c"])


def test_constant_feature_and_duplicated_rows_fit(spark, job, inputs, tmp_path):
    """3 distinct rows, each 20 times, and a constant column: regCovar keeps every
    covariance positive definite; no NaN anywhere."""
    model = GaussianMixture(k=3, inputCols=["a", "b", "c"], seed=1, nInit=1).fit(
        spark.read.parquet(inputs["dup"])
    )
    for values in (model.weights, model.means, model.covariances, model.precisionsCholesky):
        assert np.isfinite(values).all()
    assert np.allclose(sorted(model.weights), [1 / 3] * 3, atol=1e-9), model.weights
    assert np.allclose(model.covariances, np.eye(3) * 1e-6, rtol=1e-6, atol=1e-12)
    assert np.isfinite(model.summary.meanLogLikelihood)
    code, _, output = job(
        "fit",
        "--input",
        inputs["dup"],
        "--features",
        "a,b,c",
        "--k",
        "3",
        "--n-init",
        "1",
        "--output",
        tmp_path / "m",
    )
    assert code == 0, output[-2000:]
    saved = GaussianMixtureModel.load(str(tmp_path / "m"))
    assert np.isfinite(saved.covariances).all() and np.isfinite(saved.means).all()


def test_values_near_1e300(spark, job, inputs, tmp_path):
    path, out = inputs["big"], tmp_path / "o"
    expected = "Feature values too large for float64: 'a' up to"
    failed(
        job("fit", "--input", path, "--features", "a,b", "--output", tmp_path / "m"),
        expected,
        "divide by 1e+300",
    )
    # Scoring such rows with a model of ordinary scale: an error, never NaN probabilities.
    failed(
        job("score", "--input", path, "--model", inputs["model"], "--output", out),
        "so far from every component",
        "handleInvalid='skip'",
    )
    assert snapshot(tmp_path / "m") is None and snapshot(out) is None
    no_leftovers(tmp_path)
    assert expected in api_error(spark.read.parquet(path), k=2, inputCols=COLS)
    # API transform: 'keep' gives such rows null outputs, 'skip' drops them; never NaN.
    model = GaussianMixtureModel.load(inputs["model"]).setLogLikelihoodCol("ll")
    big = spark.read.parquet(path).union(spark.read.parquet(inputs["good"]).select(*COLS))
    kept = model.setHandleInvalid("keep").transform(big).collect()
    assert len(kept) == 2 * N
    assert sum(r["probability"] is None and r["ll"] is None for r in kept) == N
    assert all(np.isfinite(r["probability"].toArray()).all() for r in kept if r["probability"])
    assert model.setHandleInvalid("skip").transform(big).count() == N


def test_values_near_1e_minus_300(spark, job, inputs, tmp_path, caplog):
    expected = "vary on a scale far below regCovar=1e-06"
    failed(
        job("fit", "--input", inputs["tiny"], "--features", "a,b", "--output", tmp_path / "m"),
        expected,
        "--standardize",
    )
    assert snapshot(tmp_path / "m") is None
    assert expected in api_error(spark.read.parquet(inputs["tiny"]), k=2, inputCols=COLS)
    # One tiny feature beside an ordinary one: the fit runs (no NaN) and warns about it.
    df = spark.read.parquet(inputs["good"]).withColumn("t", F.col("a") * 1e-300)
    with caplog.at_level(logging.WARNING, logger="spark_gmm"):
        model = GaussianMixture(k=2, inputCols=["a", "t"], seed=1, nInit=1, maxIter=10).fit(df)
    assert np.isfinite(model.means).all() and np.isfinite(model.covariances).all()
    assert any("'t' (range" in r.getMessage() for r in caplog.records)


def test_memory_guard_before_any_spark_job(spark, job, inputs, tmp_path):
    code_err = failed(
        job(
            "fit",
            "--input",
            inputs["wide"],
            "--features-col",
            "v",
            "--k",
            "100",
            "--output",
            tmp_path / "m",
        ),
        "1 candidate(s) (k=100 full) on d=2000 features",
        "per executor task (limit",
        "on the driver (limit",
        "covarianceType='diag'",
    )
    assert "GiB" in code_err
    assert snapshot(tmp_path / "m") is None
    # API: the vector size comes from the column's ML metadata, so no job runs at all.
    df = spark.read.parquet(inputs["wide"]).select(
        F.col("v").alias("v", metadata={"ml_attr": {"num_attrs": 2000}})
    )
    sc = spark.sparkContext
    sc.setJobGroup("memory-guard-test", "memory guard")
    try:
        api_error(df, MemoryGuardError, k=100, featuresCol="v")
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    assert list(sc.statusTracker().getJobIdsForGroup("memory-guard-test")) == []


def test_negative_weights(job, inputs, tmp_path):
    failed(
        job(
            "fit",
            "--input",
            inputs["neg_weight"],
            "--features",
            "a,b",
            "--weight-col",
            "w",
            "--output",
            tmp_path / "m",
        ),
        "weight column 'w': null, NaN, infinite or negative weights: 1",
    )
    assert snapshot(tmp_path / "m") is None


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "text", "message"),
    [
        ("fit", "kk = 3", "unknown config key 'kk' for FitConfig"),
        ("score", "k = 3", "unknown config key 'k' for ScoreConfig"),
        ("fit", 'k = "three"', "config key 'k' must be of type int; got 'three'"),
        ("fit", "k = 2.5", "config key 'k' must be of type int; got 2.5"),
        ("fit", 'tol = "small"', "config key 'tol' must be of type float"),
        ("fit", 'overwrite = "yes"', "config key 'overwrite' must be of type bool"),
        ("fit", "seed = true", "config key 'seed' must be of type int; got True"),
        ("score", 'anomaly_quantile = "1%"', "config key 'anomaly_quantile' must be of type"),
        ("fit", "features_col = 3", "config key 'features_col' must be of type str"),
    ],
)
def test_config_errors(tmp_path, capsys, command, text, message):
    conf = tmp_path / "c.toml"
    base = 'input = "in"\nfeatures = ["a"]\nmodel = "m"\noutput = "o"\n'
    if command == "fit":
        base = base.replace('model = "m"\n', "")
    conf.write_text(base + text + "\n")
    assert main([command, "--config", str(conf)]) == 2  # before any Spark session
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_flag_of_the_wrong_type(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--input", "x", "--features", "a", "--k", "three"])
    assert info.value.code == 2
    assert "argument --k: invalid int value: 'three'" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Models and outputs
# ---------------------------------------------------------------------------


def test_model_corrupt_or_of_another_dimension(job, inputs, tmp_path):
    out = tmp_path / "o"
    good = inputs["good"]
    failed(
        job("score", "--input", good, "--model", tmp_path / "none", "--output", out),
        f"{tmp_path / 'none'} is not a saved model",
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata").mkdir()
    (broken / "metadata" / "part-00000").write_text("{not json")
    failed(
        job("score", "--input", good, "--model", broken, "--output", out), "is not a saved model"
    )
    failed(
        job(
            "score",
            "--input",
            good,
            "--model",
            inputs["model3"],
            "--features",
            "a,b",
            "--output",
            out,
        ),
        "The model has 3 features but inputCols names 2 columns",
    )
    assert snapshot(out) is None


def test_mode_error_onto_an_existing_output(job, inputs, tmp_path):
    out, model = tmp_path / "o", tmp_path / "m"
    score = ("score", "--input", inputs["good"], "--model", inputs["model"], "--output", out)
    assert job(*score)[0] == 0
    before = snapshot(out)
    failed(job(*score), f"output {out} already exists; use mode overwrite or append")
    assert snapshot(out) == before
    model.mkdir()
    (model / "keep.txt").write_text("previous model")
    before = snapshot(model)
    failed(
        job("fit", "--input", inputs["good"], "--features", "a,b", "--output", model),
        f"model directory {model} already exists; set overwrite = true (--overwrite)",
    )
    assert snapshot(model) == before


def test_failed_overwrite_keeps_the_previous_output(job, inputs, tmp_path):
    out = tmp_path / "o"
    score = ("score", "--model", inputs["model"], "--output", out, "--mode", "overwrite")
    assert job(*score, "--input", inputs["good"])[0] == 0
    before = snapshot(out)
    failed(job(*score, "--input", inputs["nan"]), "row(s) of a batch")
    assert snapshot(out) == before
    no_leftovers(tmp_path)


def test_output_equal_to_input(job, inputs, tmp_path):
    good = inputs["good"]
    before = snapshot(good)
    failed(
        job(
            "score",
            "--input",
            good,
            "--model",
            inputs["model"],
            "--output",
            good,
            "--mode",
            "overwrite",
        ),
        f"refusing to write {good}: it is (inside) the job's input",
    )
    failed(
        job("fit", "--input", good, "--features", "a,b", "--output", f"{good}/model"),
        "refusing to write",
    )
    failed(
        job("fit", "--input", good, "--features", "a,b", "--report", good),
        f"refusing to write the report to {good}",
    )
    # Catalog tables: the names are compared before anything is read.
    table = ("--table", "lake.events", "--output-table", "LAKE.Events")
    failed(
        job("score", *table, "--model", inputs["model"]),
        "refusing to write table LAKE.Events: it is the job's input",
    )
    assert snapshot(good) == before


def test_unknown_feature_column(job, inputs, tmp_path):
    out = tmp_path / "model"
    error = failed(
        job("fit", "--input", inputs["good"], "--features", "a,zz", "--output", out),
        "Feature column 'zz' is not in the input",
    )
    assert "available columns" in error
    assert not out.exists()


def test_input_on_a_file_system_without_its_connector(job, tmp_path):
    """s3a:// with no hadoop-aws jar (the pyspark wheel ships none): one line, exit 2."""
    out = tmp_path / "model"
    error = failed(
        job("fit", "--input", "s3a://bucket/events", "--features", "a,b", "--output", out),
        "cannot read s3a://bucket/events",
        "S3AFileSystem",
        "--packages",
    )
    assert "Py4JJavaError" not in error
    assert not out.exists()
