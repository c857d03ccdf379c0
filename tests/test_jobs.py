"""The fit/score jobs: config files, outputs, reruns, exit codes, spark-submit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import make_mixture

from spark_gmm import GaussianMixtureModel
from spark_gmm.cli import ConfigError, FitConfig, ScoreConfig, load_config, main
from spark_gmm.jobs import JobError, run_fit, run_score

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table(spark, tmp_path_factory):
    """A small mixture written as Parquet, CSV and ORC, with an id and a group column."""
    X, _ = make_mixture(n=900, d=3, k=3, seed=51)
    pdf = pd.DataFrame(X, columns=["a", "b", "c"])
    pdf["id"] = np.arange(len(X))
    pdf["grp"] = np.where(np.arange(len(X)) % 2 == 0, "even", "odd")
    base = tmp_path_factory.mktemp("jobs")
    df = spark.createDataFrame(pdf).repartition(2)
    paths = {}
    for fmt in ("parquet", "csv", "orc"):
        paths[fmt] = str(base / f"input_{fmt}")
        writer = df.write.mode("overwrite")
        if fmt == "csv":
            writer = writer.option("header", "true")
        writer.format(fmt).save(paths[fmt])
    return X, paths


def _fit_config(path, fmt, **kw):
    return FitConfig(input=path, format=fmt, features=["a", "b", "c"], k=3, seed=1, **kw)


def test_unknown_and_mistyped_config_keys(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('input = "x"\nfeatures = ["a"]\nkk = 3\n')
    with pytest.raises(ConfigError, match="unknown config key 'kk'"):
        load_config(FitConfig, str(bad), {})
    bad.write_text('input = "x"\nfeatures = ["a"]\nk = "three"\n')
    with pytest.raises(ConfigError, match="'k' must be of type int; got 'three'"):
        load_config(FitConfig, str(bad), {})
    # Through the command: exit 2, one line, before any Spark session starts.
    assert main(["fit", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: config key 'k' must be of type int; got 'three'."]


def test_flags_override_the_file(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('input = "in"\nfeatures = ["a", "b"]\nk = 3\n')
    config = load_config(FitConfig, str(conf), {"k": 5, "features": "a,b,c"})
    assert config.k == 5 and config.features == ["a", "b", "c"]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "orc"])
def test_fit_then_score_each_format(spark, table, tmp_path, fmt):
    X, paths = table
    model_dir = str(tmp_path / "model")
    run_fit(spark, _fit_config(paths[fmt], fmt, output=model_dir))
    model = GaussianMixtureModel.load(model_dir)
    assert model.getK() == 3 and model.summary.numRows == len(X)
    out = str(tmp_path / "scored")
    run_score(
        spark,
        ScoreConfig(input=paths[fmt], format=fmt, model=model_dir, id_cols=["id"], output=out),
    )
    scored = pd.read_parquet(out).sort_values("id")
    assert len(scored) == len(X)
    expected = model.predict_proba(X)
    assert np.allclose(np.stack(scored["probability"].to_numpy()), expected, atol=1e-12)
    assert np.array_equal(scored["prediction"].to_numpy(), expected.argmax(axis=1))


def test_standardize_is_saved_with_the_model(spark, table, tmp_path):
    from pyspark.ml import PipelineModel

    X, paths = table
    model_dir = str(tmp_path / "model")
    run_fit(spark, _fit_config(paths["parquet"], "parquet", output=model_dir, standardize=True))
    pipeline = PipelineModel.load(model_dir)
    out = str(tmp_path / "scored")
    run_score(
        spark, ScoreConfig(input=paths["parquet"], model=model_dir, id_cols=["id"], output=out)
    )
    scored = pd.read_parquet(out).sort_values("id")
    scaled = (X - X.mean(axis=0)) / X.std(axis=0, ddof=1)
    gmm = pipeline.stages[-1]
    assert np.allclose(
        np.stack(scored["probability"].to_numpy()), gmm.predict_proba(scaled), atol=1e-9
    )


def test_anomaly_quantile_and_partitioned_reruns(spark, table, tmp_path):
    X, paths = table
    model_dir = str(tmp_path / "model")
    run_fit(spark, _fit_config(paths["parquet"], "parquet", output=model_dir))
    out = str(tmp_path / "scored")
    score = ScoreConfig(
        input=paths["parquet"],
        model=model_dir,
        id_cols=["id"],
        output=out,
        partition_by=["grp"],
        anomaly_quantile=0.05,
        mode="overwrite",
    )
    run_score(spark, score)
    first = pd.read_parquet(out)
    assert abs(first["is_anomaly"].mean() - 0.05) < 0.02  # ~5% of the training rows
    # Rerun on the even rows only: the odd partition must survive (dynamic overwrite).
    run_score(spark, replace(score, where="grp = 'even'"))
    again = pd.read_parquet(out)
    assert len(again) == len(first) == len(X)
    # --mode error onto the existing output fails and leaves it untouched.
    with pytest.raises(Exception, match="already exists"):
        run_score(spark, replace(score, mode="error"))
    assert len(pd.read_parquet(out)) == len(X)


def test_refuses_to_write_over_its_input(spark, table, tmp_path):
    _, paths = table
    with pytest.raises(JobError, match=r"refusing to write .* job.s input"):
        run_score(spark, ScoreConfig(input=paths["parquet"], model="m", output=paths["parquet"]))
    with pytest.raises(JobError, match="refusing to write"):
        run_fit(spark, _fit_config(paths["parquet"], "parquet", output=paths["parquet"] + "/model"))


def test_dry_run_writes_nothing(spark, table, tmp_path, capsys):
    _, paths = table
    run_fit(
        spark, _fit_config(paths["parquet"], "parquet", output=str(tmp_path / "m"), dry_run=True)
    )
    assert "plan: fit k=3 full" in capsys.readouterr().out
    assert not (tmp_path / "m").exists()


# Short-lived test JVMs start faster without the optimising JIT and with the serial GC.
FAST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def _start_submit(*args, java_options="", cwd=ROOT):
    """``spark-submit --master local[2] ...`` in the background; :func:`_finish` waits."""
    spark_submit = Path(sys.executable).parent / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    return subprocess.Popen(
        [
            *(str(spark_submit), "--master", "local[2]", "--conf", "spark.ui.enabled=false"),
            *("--driver-java-options", f"{FAST_JVM} {java_options}".strip(), *args),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
    )


def _finish(proc) -> subprocess.CompletedProcess:
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def _submit(*args, java_options="", cwd=ROOT):
    return _finish(_start_submit(*args, java_options=java_options, cwd=cwd))


def test_spark_submit_fit_and_score_with_report(table, tmp_path):
    """The jobs through spark-submit. Formats and column errors are covered in process
    (here and in test_reliability.py); this checks what only a real spark-submit shows."""
    X, paths = table
    model_dir, report, out = tmp_path / "model", tmp_path / "report", tmp_path / "scored"
    # An error case runs alongside the fit (each JVM start-up is mostly one core).
    missing = _start_submit(
        *("jobs/fit_gmm.py", "--input", str(tmp_path / "nope"), "--features", "a,b,c"),
        *("--output", str(tmp_path / "o2")),
    )
    # Fit from CSV, score ORC.
    fit = _submit(
        *("--conf", "spark.my.password=hunter2", "jobs/fit_gmm.py"),
        *("--input", paths["csv"], "--format", "csv", "--features", "a,b,c"),
        *("--k", "3", "--seed", "1", "--output", str(model_dir), "--report", str(report)),
    )
    missing = _finish(missing)
    assert fit.returncode == 0, fit.stdout[-3000:]
    # spark-submit merges the Python driver's stderr into its stdout.
    assert "EM iteration 1/100" in fit.stdout  # one log line per iteration
    assert "spark_gmm fit: k=3" in fit.stdout
    data = json.loads((report / "report.json").read_text())
    assert data["rows"] == {"read": len(X), "skipped": 0, "used": len(X)}
    assert len(data["iterations"]) == data["num_iter"]
    assert "hunter2" not in (report / "report.json").read_text()
    assert data["spark"]["conf"]["spark.my.password"] == "*****(redacted)"
    for png in ("convergence.png", "cluster_sizes.png", "components_pca.png"):
        assert (report / png).stat().st_size > 1000
    expected = GaussianMixtureModel.load(str(model_dir)).predict_proba(X)
    score = _submit(
        *("jobs/score_gmm.py", "--input", paths["orc"], "--format", "orc"),
        *("--model", str(model_dir), "--id-cols", "id", "--output", str(out)),
    )
    assert score.returncode == 0, score.stdout[-3000:]
    scored = pd.read_parquet(out).sort_values("id")
    assert np.allclose(np.stack(scored["probability"].to_numpy()), expected, atol=1e-12)
    # Errors: exit 2 and one line naming the problem, no stack trace, nothing written.
    assert missing.returncode == 2, missing.stdout[-3000:]
    errors = [line for line in missing.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"input path {tmp_path / 'nope'} does not exist" in errors[0], (
        errors
    )
    assert "Traceback" not in missing.stdout and "\tat org.apache" not in missing.stdout
    assert not (tmp_path / "o2").exists()


def test_catalog_tables_in_an_embedded_hive_metastore(table, tmp_path):
    """--table in, --output-table out, through a Derby metastore created here."""
    _, paths = table
    hive = [
        "--conf",
        "spark.sql.catalogImplementation=hive",
        "--conf",
        f"spark.sql.warehouse.dir={tmp_path / 'warehouse'}",
        "--conf",
        "spark.hadoop.javax.jdo.option.ConnectionURL="
        f"jdbc:derby:;databaseName={tmp_path / 'metastore_db'};create=true",
    ]
    derby = f"-Dderby.system.home={tmp_path}"
    setup = tmp_path / "setup.py"
    setup.write_text(
        "from pyspark.sql import SparkSession\n"
        "spark = SparkSession.builder.getOrCreate()\n"
        "spark.sql('CREATE DATABASE IF NOT EXISTS lake')\n"
        f"spark.read.parquet({paths['parquet']!r}).write.partitionBy('grp')"
        ".saveAsTable('lake.events')\n"
    )
    made = _submit(*hive, str(setup), java_options=derby, cwd=tmp_path)
    assert made.returncode == 0, made.stdout[-3000:]
    model_dir = tmp_path / "model"
    fit = _submit(
        *hive,
        str(ROOT / "jobs/fit_gmm.py"),
        "--table",
        "lake.events",
        "--where",
        "grp = 'even'",
        "--features",
        "a,b,c",
        "--k",
        "3",
        "--output",
        str(model_dir),
        java_options=derby,
        cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stdout[-3000:]
    assert "rows=450 " in fit.stdout  # the --where predicate kept the even half
    score = _submit(
        *hive,
        str(ROOT / "jobs/score_gmm.py"),
        "--table",
        "lake.events",
        "--model",
        str(model_dir),
        "--id-cols",
        "id",
        "--output-table",
        "lake.scored",
        java_options=derby,
        cwd=tmp_path,
    )
    assert score.returncode == 0, score.stdout[-3000:]
    scored = pd.read_parquet(tmp_path / "warehouse" / "lake.db" / "scored")
    assert len(scored) == 900 and set(scored.columns) >= {"id", "prediction", "probability"}


def test_report_without_matplotlib_still_writes_json(spark, table, tmp_path, monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    _, paths = table
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    report = tmp_path / "report"
    run_fit(spark, _fit_config(paths["parquet"], "parquet", report=str(report)))
    assert json.loads((report / "report.json").read_text())["num_iter"] >= 1
    assert not list(report.glob("*.png"))
    assert any("matplotlib is not installed" in r.getMessage() for r in caplog.records)


def test_partitioned_table_overwrite_replaces_only_its_partitions(spark, table, tmp_path):
    """--output-table with --partition-by and mode overwrite: Spark's insertInto matches
    columns by position and the table keeps its partition column last."""
    X, paths = table
    model_dir = str(tmp_path / "model")
    run_fit(spark, _fit_config(paths["parquet"], "parquet", output=model_dir))
    score = ScoreConfig(
        input=paths["parquet"], model=model_dir, id_cols=["id"], partition_by=["grp"]
    )
    run_score(spark, replace(score, output=str(tmp_path / "scored")))
    first = spark.read.parquet(str(tmp_path / "scored"))  # grp comes last when read back
    name = "spark_gmm_partitioned_overwrite"
    first.write.partitionBy("grp").option("path", str(tmp_path / "tbl")).saveAsTable(name)
    try:
        assert spark.table(name).columns[-1] == "grp"
        run_score(spark, replace(score, output_table=name, mode="overwrite", where="grp = 'even'"))
        got = spark.table(name).toPandas().sort_values("id")
        want = first.toPandas().sort_values("id")
        assert len(got) == len(X)  # the odd partition survived
        np.testing.assert_array_equal(got["prediction"], want["prediction"])
        np.testing.assert_allclose(got["log_likelihood"], want["log_likelihood"], rtol=1e-12)
        assert (got["grp"].to_numpy() == want["grp"].to_numpy()).all()
        with pytest.raises(JobError, match="has the columns"):
            run_score(
                spark,
                replace(score, output_table=name, mode="overwrite", anomaly_quantile=0.1),
            )
    finally:
        spark.sql(f"DROP TABLE IF EXISTS {name}")
