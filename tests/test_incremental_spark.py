"""Incremental EM through Spark: ``model.update`` equals the numpy update on the same rows,
the running statistics survive save/load (and a model saved without them can be updated),
``StreamingGaussianMixture`` over a file source (replays skipped, a restarted query
resumes), and the ``spark-gmm update`` job."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import make_mixture

from spark_gmm import (
    BayesianGaussianMixture,
    GaussianMixture,
    GaussianMixtureModel,
    InvalidInputError,
    StreamingGaussianMixture,
)
from spark_gmm.em import InMemoryData
from spark_gmm.incremental import Schedule, from_parameters, update_parameters

COLS = ["a", "b", "c"]


def _frame(spark, X, w=None, partitions=3):
    pdf = pd.DataFrame(X, columns=COLS)
    if w is not None:
        pdf["w"] = w
    return spark.createDataFrame(pdf).repartition(partitions)


@pytest.fixture(scope="module")
def fitted(spark):
    X, _ = make_mixture(n=3_000, d=3, k=3, seed=21)
    model = GaussianMixture(k=3, inputCols=COLS, seed=3, maxIter=50).fit(_frame(spark, X))
    return X, model


def _assert_params_equal(a, b, tol):
    for name in ("weights", "means", "covariances"):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert np.max(np.abs(x - y)) <= tol * max(1.0, np.max(np.abs(y))), name


def test_update_equals_the_numpy_update_on_the_same_rows(spark, fitted):
    _, model = fitted
    rng = np.random.default_rng(1)
    Xb, _ = make_mixture(n=1_500, d=3, k=3, seed=22)
    w = rng.uniform(0.5, 2.0, size=len(Xb))
    weighted = model.copy()
    weighted.set(weighted.weightCol, "w")
    updated = weighted.update(
        _frame(spark, Xb, w), stepSizeOffset=1.0, stepSizeExponent=0.7, passes=2
    )
    params = model.mixtureParameters
    want = update_parameters(
        InMemoryData(Xb, w, n_blocks=4),
        params,
        from_parameters(params, model.summary.totalWeight, model.getRegCovar()),
        0,
        Schedule.from_params(step_size_offset=1.0, step_size_exponent=0.7),
        model.getRegCovar(),
        passes=2,
    )
    _assert_params_equal(updated, GaussianMixtureModel(want.params), 1e-10)
    assert updated.updateCount == 1 and updated.updateRows == len(Xb)
    assert updated.updateSchedule["kind"] == "stepwise"
    assert updated.updateSchedule["passes"] == 2
    np.testing.assert_allclose(updated.runningStatistics().nk, want.running.nk, rtol=1e-10)


def test_running_statistics_survive_save_and_load(spark, fitted, tmp_path):
    _, model = fitted
    batches = [make_mixture(n=800, d=3, k=3, seed=30 + i)[0] for i in range(3)]
    once = model.update(_frame(spark, batches[0]), halfLife=3.0)
    once.write().save(str(tmp_path / "once"))
    loaded = GaussianMixtureModel.load(str(tmp_path / "once"))
    assert loaded.updateCount == 1 and loaded.updateRows == 800
    assert loaded.updateSchedule == once.updateSchedule
    for name in ("nk", "centres", "scatter"):
        np.testing.assert_array_equal(
            getattr(loaded.runningStatistics(), name), getattr(once.runningStatistics(), name)
        )
    assert loaded.runningStatistics().total_weight == once.runningStatistics().total_weight
    # The loaded model continues as the one in memory (to the last bits: Spark sums the
    # partitions' statistics in no fixed order).
    a = once.update(_frame(spark, batches[1]), halfLife=3.0)
    b = loaded.update(_frame(spark, batches[1]), halfLife=3.0)
    _assert_params_equal(a, b, 1e-12)


def test_a_model_saved_without_running_statistics_loads_and_updates(spark, fitted, tmp_path):
    """Saves from before incremental updates have no running statistics: the update
    starts from the parameters weighted by the training summary's total weight."""
    X, model = fitted
    model.write().save(str(tmp_path / "fitted"))
    loaded = GaussianMixtureModel.load(str(tmp_path / "fitted"))
    assert loaded.updateCount == 0 and loaded._running is None
    batch = _frame(spark, make_mixture(n=600, d=3, k=3, seed=40)[0])
    a = loaded.update(batch)
    b = model.update(batch, initialWeight=len(X))
    _assert_params_equal(a, b, 1e-12)
    # A hand-built model (no summary) counts as one row unless told otherwise.
    bare = GaussianMixtureModel.fromParameters(
        model.weights, model.means, model.covariances, "full"
    ).setInputCols(COLS)
    assert bare.runningStatistics().total_weight == 1.0
    with pytest.raises(InvalidInputError, match="initialWeight must be > 0"):
        bare.update(batch, initialWeight=0.0)


def test_update_refuses_bad_settings_and_bayesian_models(spark, fitted):
    X, model = fitted
    df = _frame(spark, X[:200])
    with pytest.raises(InvalidInputError, match="not both"):
        model.update(df, decayFactor=0.5, stepSizeExponent=0.7)
    with pytest.raises(InvalidInputError, match="passes must be >= 1"):
        model.update(df, passes=0)
    bayes = BayesianGaussianMixture(k=3, inputCols=COLS, seed=1, maxIter=5).fit(df)
    with pytest.raises(InvalidInputError, match="cannot be updated incrementally"):
        bayes.update(df)


# ---------------------------------------------------------------------------
# Structured Streaming
# ---------------------------------------------------------------------------


def _write_batches(folder: Path, batches, start: int) -> None:
    folder.mkdir(exist_ok=True)
    for i, Xb in enumerate(batches, start=start):
        # Written aside and renamed: the file source must never see a partial file.
        tmp = folder.parent / f".part-{i}.parquet"
        pd.DataFrame(Xb, columns=COLS).to_parquet(tmp)
        tmp.rename(folder / f"batch-{i:03d}.parquet")
        # The file source takes the oldest file first: make the order certain.
        os.utime(folder / f"batch-{i:03d}.parquet", (1_700_000_000 + 60 * i,) * 2)


def _run_available(spark, sgm, folder, checkpoint):
    stream = (
        spark.readStream.schema("a double, b double, c double")
        .option("maxFilesPerTrigger", 1)
        .parquet(str(folder))
    )
    query = sgm.start(stream, str(checkpoint), trigger={"availableNow": True})
    query.awaitTermination(300)
    assert query.exception() is None, query.exception()


def test_streaming_updates_commit_skip_replays_and_resume(spark, fitted, tmp_path, caplog):
    _, model = fitted
    batches = [make_mixture(n=500, d=3, k=3, seed=50 + i)[0] for i in range(5)]
    folder, checkpoint, model_dir = tmp_path / "in", tmp_path / "ckpt", tmp_path / "models"
    _write_batches(folder, batches[:3], 0)
    sgm = StreamingGaussianMixture(str(model_dir), initialModel=model, decayFactor=0.9)
    _run_available(spark, sgm, folder, checkpoint)
    versions = sorted(p.name for p in model_dir.iterdir())
    assert versions == ["batch-000000000000", "batch-000000000001", "batch-000000000002"]

    # The same updates, one DataFrame at a time.
    want = model
    for Xb in batches[:3]:
        want = want.update(_frame(spark, Xb), decayFactor=0.9)
    got = sgm.latestModel(spark)
    _assert_params_equal(got, want, 1e-10)
    assert got.updateCount == 3

    # A replayed batch id changes nothing (foreachBatch is at-least-once).
    with caplog.at_level(logging.INFO, logger="spark_gmm"):
        sgm.process_batch(_frame(spark, batches[4]), 1)
    assert any("batch 1 skipped" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in model_dir.iterdir()) == versions
    _assert_params_equal(GaussianMixtureModel.load(str(model_dir / versions[-1])), got, 0.0)

    # A new query on the same checkpoint resumes from the committed version (no initial
    # model needed) with the next batch ids; the oldest versions are pruned.
    _write_batches(folder, batches[3:], 3)
    resumed = StreamingGaussianMixture(str(model_dir), decayFactor=0.9)
    assert resumed.latest(spark)[0] == 2
    _run_available(spark, resumed, folder, checkpoint)
    for Xb in batches[3:]:
        want = want.update(_frame(spark, Xb), decayFactor=0.9)
    final = resumed.latestModel(spark)
    _assert_params_equal(final, want, 1e-10)
    assert final.updateCount == 5 and final.updateRows == 2_500
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "batch-000000000002",
        "batch-000000000003",
        "batch-000000000004",
    ]


def _committed(model_dir: Path) -> list[int]:
    """Batch ids of the committed versions (not a save in progress, ``._tmp-...``)."""
    if not model_dir.exists():
        return []
    found = (re.fullmatch(r"batch-(\d{12})", p.name) for p in model_dir.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


_STREAMING_DRIVER = """
import sys
from pyspark.sql import SparkSession
from spark_gmm import GaussianMixtureModel, StreamingGaussianMixture

folder, checkpoint, model_dir, start = sys.argv[1:5]
spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
         .getOrCreate())
sgm = StreamingGaussianMixture(model_dir, initialModel=GaussianMixtureModel.load(start),
                               decayFactor=0.9, keepVersions=10)
stream = (spark.readStream.schema("a double, b double, c double")
          .option("maxFilesPerTrigger", 1).parquet(folder))
sgm.start(stream, checkpoint, trigger={"processingTime": "1 second"}).awaitTermination()
"""


def test_streaming_driver_killed_then_resumed_folds_every_batch_once(spark, fitted, tmp_path):
    """SIGKILL the driver (and its JVM) of a running query after two commits; a new query
    on the same checkpoint ends with every row folded in exactly once, whether the batch
    in flight was committed (then Spark replays it and it is skipped) or not.

    Spark decides how the files are cut into micro-batches after a restart (3.5 may put
    two files in one), so the reference replays the batches as the committed versions
    record them: their sizes, in file order."""
    _, model = fitted
    rows = 400
    batches = [make_mixture(n=rows, d=3, k=3, seed=70 + i)[0] for i in range(5)]
    folder, checkpoint, model_dir = tmp_path / "in", tmp_path / "ckpt", tmp_path / "models"
    _write_batches(folder, batches, 0)
    model.write().save(str(tmp_path / "start"))
    script = tmp_path / "driver.py"
    script.write_text(_STREAMING_DRIVER)
    args = [str(folder), str(checkpoint), str(model_dir), str(tmp_path / "start")]
    with open(tmp_path / "driver.log", "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            start_new_session=True,  # its JVM too: kill the whole group, as a lost host would
            env={**os.environ, "PYSPARK_PYTHON": sys.executable},
        )
        try:
            deadline = time.time() + 240
            while time.time() < deadline:
                if len(_committed(model_dir)) >= 2:
                    break
                if proc.poll() is not None:
                    tail = (tmp_path / "driver.log").read_text()[-3000:]
                    pytest.fail(f"the streaming driver ended before it was killed:\n{tail}")
                time.sleep(0.2)
            else:
                pytest.fail("no two committed versions within 240 s")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    killed_after = max(_committed(model_dir))
    assert killed_after < 4, "the query was not killed mid-way"

    resumed = StreamingGaussianMixture(str(model_dir), decayFactor=0.9, keepVersions=10)
    _run_available(spark, resumed, folder, checkpoint)
    versions = _committed(model_dir)
    assert versions == list(range(len(versions))), versions  # no id missing or repeated
    sizes = [
        GaussianMixtureModel.load(str(model_dir / f"batch-{v:012d}")).updateSchedule["batchRows"]
        for v in versions
    ]
    assert sum(sizes) == len(batches) * rows and all(s % rows == 0 for s in sizes), sizes
    want, first = GaussianMixtureModel.load(str(tmp_path / "start")), 0
    for size in sizes:
        files = batches[first : first + size // rows]
        want = want.update(_frame(spark, np.vstack(files)), decayFactor=0.9)
        first += len(files)
    final = resumed.latestModel(spark)
    assert final.updateCount == len(versions) and final.updateRows == len(batches) * rows
    _assert_params_equal(final, want, 1e-10)


def test_streaming_without_a_model_says_what_to_give(spark, tmp_path):
    sgm = StreamingGaussianMixture(str(tmp_path / "empty"))
    with pytest.raises(InvalidInputError, match="no committed model and no initialModel"):
        sgm.latestModel(spark)


# ---------------------------------------------------------------------------
# The update job
# ---------------------------------------------------------------------------


def test_update_job_is_idempotent_and_refuses_to_update_in_place(
    spark, fitted, tmp_path, capsys, monkeypatch
):
    import spark_gmm.session
    from spark_gmm.cli import main

    # In process on the shared session, which the job must not stop.
    monkeypatch.setattr(spark_gmm.session, "build_session", lambda *a, **k: spark)
    monkeypatch.setattr(spark, "stop", lambda: None)

    _, model = fitted
    day = make_mixture(n=700, d=3, k=3, seed=60)[0]
    pdf = pd.DataFrame(day, columns=COLS)
    pdf["date"] = np.where(np.arange(len(day)) % 2 == 0, "2026-11-27", "2026-11-28")
    source = tmp_path / "events"
    spark.createDataFrame(pdf).write.partitionBy("date").parquet(str(source))
    model.write().save(str(tmp_path / "day0"))
    argv = [
        "update",
        "--input",
        str(source),
        "--where",
        "date = '2026-11-28'",
        "--model",
        str(tmp_path / "day0"),
        "--output",
        str(tmp_path / "day1"),
        "--half-life",
        "7",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "spark_gmm update 1: 350 new rows" in out
    first = GaussianMixtureModel.load(str(tmp_path / "day1"))
    want = model.update(_frame(spark, day[1::2]), halfLife=7.0)
    _assert_params_equal(first, want, 1e-10)
    # Rerun for the same day: refused without --overwrite, the same model with it.
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    _assert_params_equal(GaussianMixtureModel.load(str(tmp_path / "day1")), first, 1e-12)
    # In place would fold the day in twice on a rerun.
    assert main([*argv[:-4], "--output", str(tmp_path / "day0"), "--overwrite"]) == 2
    assert "is the model being updated" in capsys.readouterr().err
