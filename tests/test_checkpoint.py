"""Checkpoints: a fit killed mid-way and resumed ends with the uninterrupted model."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from helpers import make_mixture, rel_err

from spark_gmm import GaussianMixture, GaussianMixtureSelector
from spark_gmm.checkpoint import Checkpointer, CheckpointMismatchError
from spark_gmm.em import InMemoryData, fit_em, fit_grid
from spark_gmm.errors import InvalidInputError

pytestmark = pytest.mark.filterwarnings("ignore::spark_gmm.ConvergenceWarning")

SETTINGS = {"k": 3, "covarianceType": "full", "seed": 5}


class Crash(Exception):
    pass


class CrashingData(InMemoryData):
    """Raises in the n-th data pass, like a driver dying mid-fit."""

    crash_at: int = 10**9
    passes: int = 0

    def statistics(self, tasks, description):
        self.passes += 1
        if self.passes == self.crash_at:
            raise Crash(description)
        return super().statistics(tasks, description)


def _checkpointer(tmp_path, data, interval=2, **settings):
    return Checkpointer(str(tmp_path), interval, {**SETTINGS, **settings}, data.fingerprint())


def _fit(data, **kw):
    return fit_em(data, 3, "full", tol=0.0, max_iter=12, n_init=2, seed=5, **kw)


def test_resumed_fit_equals_uninterrupted_fit_bit_for_bit(tmp_path):
    X, _ = make_mixture(n=900, d=3, k=3, seed=2)
    reference = _fit(InMemoryData(X, n_blocks=3))
    crashing = CrashingData(X, n_blocks=3)
    crashing.crash_at = 7  # the init pass, EM passes 1..5, crash in EM pass 6
    with pytest.raises(Crash):
        _fit(crashing, checkpoint=_checkpointer(tmp_path, crashing))
    state = json.loads((tmp_path / "em_state.json").read_text())
    assert state["iteration"] == 4  # the last multiple of the interval before the crash
    assert len(state["candidates"]) == 2
    resumed_data = CrashingData(X, n_blocks=3)
    resumed = _fit(resumed_data, checkpoint=_checkpointer(tmp_path, resumed_data), resume=True)
    # 8 EM passes left (5..12) and the final scoring pass; no sampling or init pass.
    assert resumed_data.passes == 9
    np.testing.assert_array_equal(resumed.params.means, reference.params.means)
    np.testing.assert_array_equal(resumed.params.covariances, reference.params.covariances)
    np.testing.assert_array_equal(resumed.params.weights, reference.params.weights)
    assert resumed.history == reference.history
    assert resumed.n_iter == reference.n_iter == 12


def test_bayesian_fit_with_merges_resumes_bit_for_bit(tmp_path):
    from spark_gmm.em import Variational
    from spark_gmm.variational import default_priors, effective_components

    X, _ = make_mixture(n=900, d=3, k=3, seed=2)
    priors = default_priors(6, "full", X.mean(axis=0), np.cov(X.T))

    def fit(data, **kw):
        variant = Variational(priors, 1e-6, merges=True)
        return fit_em(data, 6, "full", tol=0.0, max_iter=8, seed=1, variant=variant, **kw)

    reference = fit(InMemoryData(X, n_blocks=3))
    assert effective_components(reference.params.weights, 0.01) == 3  # merges happened
    crashing = CrashingData(X, n_blocks=3)
    crashing.crash_at = 6  # the init pass, EM passes 1..4, crash in EM pass 5
    with pytest.raises(Crash):
        fit(crashing, checkpoint=_checkpointer(tmp_path, crashing, k=6))
    assert json.loads((tmp_path / "em_state.json").read_text())["iteration"] == 4
    resumed_data = CrashingData(X, n_blocks=3)
    resumed = fit(
        resumed_data, checkpoint=_checkpointer(tmp_path, resumed_data, k=6), resume=True
    )
    assert resumed_data.passes == 5  # EM passes 5..8 and the final scoring pass
    np.testing.assert_array_equal(resumed.params.means, reference.params.means)
    np.testing.assert_array_equal(resumed.params.covariances, reference.params.covariances)
    np.testing.assert_array_equal(resumed.params.weights, reference.params.weights)
    assert resumed.history == reference.history


def test_grid_resumes_too(tmp_path):
    X, _ = make_mixture(n=600, d=2, k=3, seed=3)
    grid = [(2, "diag"), (3, "full")]
    reference = fit_grid(InMemoryData(X, n_blocks=2), grid, tol=0.0, max_iter=9, seed=1)
    crashing = CrashingData(X, n_blocks=2)
    crashing.crash_at = 6
    cp = Checkpointer(str(tmp_path), 1, {"grid": [list(g) for g in grid]}, crashing.fingerprint())
    with pytest.raises(Crash):
        fit_grid(crashing, grid, tol=0.0, max_iter=9, seed=1, checkpoint=cp)
    again = CrashingData(X, n_blocks=2)
    cells = fit_grid(again, grid, tol=0.0, max_iter=9, seed=1, checkpoint=cp, resume=True)
    for got, ref in zip(cells, reference):
        assert got.result is not None and ref.result is not None
        np.testing.assert_array_equal(got.result.params.means, ref.result.params.means)
        assert got.result.history == ref.result.history


def test_checkpoint_of_other_input_or_settings_is_refused(tmp_path):
    X, _ = make_mixture(n=600, d=3, k=3, seed=2)
    data = InMemoryData(X, n_blocks=2)
    _fit(data, checkpoint=_checkpointer(tmp_path, data))
    other = InMemoryData(X[:-1], n_blocks=2)
    with pytest.raises(CheckpointMismatchError, match=r"other input \(content_hash: .*rows: "):
        _fit(other, checkpoint=_checkpointer(tmp_path, other), resume=True)
    with pytest.raises(
        CheckpointMismatchError, match=r"other settings .*seed: checkpoint 5, now 6"
    ):
        _fit(data, checkpoint=_checkpointer(tmp_path, data, seed=6), resume=True)
    # The fingerprint ignores the partitioning.
    same = InMemoryData(X, n_blocks=5)
    assert same.fingerprint() == data.fingerprint()
    (tmp_path / "em_state.json").write_text("{not json")
    with pytest.raises(CheckpointMismatchError, match="cannot be read"):
        _fit(data, checkpoint=_checkpointer(tmp_path, data), resume=True)


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path):
    X, _ = make_mixture(n=600, d=3, k=3, seed=2)
    data = InMemoryData(X, n_blocks=2)
    fresh = _fit(data, checkpoint=_checkpointer(tmp_path / "empty", data), resume=True)
    np.testing.assert_array_equal(fresh.params.means, _fit(data).params.means)
    assert (tmp_path / "empty" / "em_state.json").exists()


def test_remote_checkpoint_dirs_are_refused_up_front(spark):
    df = spark.createDataFrame([(float(i), float(i % 7)) for i in range(50)], "a double, b double")
    with pytest.raises(InvalidInputError, match="only local or mounted paths"):
        GaussianMixture(k=2, inputCols=["a", "b"], checkpointDir="hdfs://nn/x").fit(df)


# ---------------------------------------------------------------------------
# kill -9 of a real driver, resume in another
# ---------------------------------------------------------------------------

_DRIVER = textwrap.dedent(
    """
    import sys
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import SparkSession
    from spark_gmm import GaussianMixture
    spark = (SparkSession.builder.master("local[2]")
             .config("spark.ui.enabled", "false").getOrCreate())
    df = spark.read.parquet(sys.argv[1]).select(array_to_vector("x").alias("features"))
    GaussianMixture(k=6, featuresCol="features", tol=0.0, maxIter=15, nInit=2, seed=9,
                    checkpointDir=sys.argv[2], checkpointInterval=1).fit(df)
    """
)


def _estimator(**kw):
    return GaussianMixture(k=6, featuresCol="features", tol=0.0, maxIter=15, nInit=2, seed=9, **kw)


@pytest.fixture(scope="module")
def parquet_input(spark, tmp_path_factory):
    from pyspark.ml.functions import array_to_vector

    X, _ = make_mixture(n=6000, d=4, k=6, seed=8, separation=3.0)
    path = str(tmp_path_factory.mktemp("ckpt") / "input")
    rows = [(list(map(float, r)),) for r in X]
    spark.createDataFrame(rows, "x array<double>").coalesce(2).write.parquet(path)
    return path, lambda: spark.read.parquet(path).select(array_to_vector("x").alias("features"))


def test_driver_killed_with_sigkill_then_resumed_equals_uninterrupted(
    spark, parquet_input, tmp_path
):
    path, read = parquet_input
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    checkpoints = tmp_path / "ckpt"
    state_file = checkpoints / "em_state.json"
    pool = ThreadPoolExecutor(max_workers=1)
    # The uninterrupted reference, in this process's session while the child runs.
    reference = pool.submit(lambda: _estimator().fit(read()))
    proc = subprocess.Popen(
        [sys.executable, str(script), path, str(checkpoints)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its JVM too: kill the whole group, as a lost host would
        env={**os.environ, "PYSPARK_PYTHON": sys.executable},
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if state_file.exists() and json.loads(state_file.read_text())["iteration"] >= 3:
                break
            assert proc.poll() is None, "the driver ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint of iteration 3 within 240 s")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        pool.shutdown()
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads(state_file.read_text())["iteration"]
    assert 3 <= killed_at < 15, "the fit was not killed mid-way"

    with _logged_iterations() as ran:
        resumed = _estimator(checkpointDir=str(checkpoints), resumeFromCheckpoint=True).fit(read())
    uninterrupted = reference.result()
    # Only the iterations after the checkpoint ran (a restart from scratch with the same
    # seed would give the same model too, but would run all 15 and the initialisation).
    assert ran.iterations == list(range(killed_at + 1, 16)), ran.iterations
    assert not ran.initialised, ran.messages
    assert resumed.summary.numIter == uninterrupted.summary.numIter == 15
    assert rel_err(resumed.means, uninterrupted.means) < 1e-9
    assert rel_err(resumed.covariances, uninterrupted.covariances) < 1e-9
    assert rel_err(resumed.weights, uninterrupted.weights) < 1e-9
    # The resumed run did only the remaining iterations: its history is the whole one.
    assert resumed.summary.logLikelihoodHistory == pytest.approx(
        uninterrupted.summary.logLikelihoodHistory, rel=1e-12
    )
    assert json.loads(state_file.read_text())["iteration"] == 15

    # Another selection's settings are refused with the checkpoint of this fit.
    with pytest.raises(CheckpointMismatchError, match="other settings"):
        GaussianMixtureSelector(
            kValues=[2],
            covarianceTypes=["full"],
            featuresCol="features",
            checkpointDir=str(checkpoints),
            resumeFromCheckpoint=True,
        ).fit(read())


def test_checkpoint_files_are_plain_json(tmp_path):
    X, _ = make_mixture(n=300, d=2, k=2, seed=1)
    data = InMemoryData(X)
    fit_em(data, 2, "diag", max_iter=3, checkpoint=Checkpointer(str(tmp_path), 1, {}, {}))
    assert [p.name for p in Path(tmp_path).iterdir()] == ["em_state.json"]
    state = json.loads((tmp_path / "em_state.json").read_text())
    assert state["format_version"] == 1 and state["candidates"][0]["params"]["means"]


def test_fit_job_checkpoints_and_resumes(spark, parquet_input, tmp_path, capsys):
    from spark_gmm.cli import FitConfig, main
    from spark_gmm.jobs import run_fit

    path, _ = parquet_input
    checkpoints = tmp_path / "ckpt"

    def config(**kw):
        return FitConfig(
            input=path,
            features_col="x",
            k=3,
            max_iter=4,
            tol=0.0,
            n_init=1,
            checkpoint_dir=str(checkpoints),
            checkpoint_interval=2,
            **kw,
        )

    first = run_fit(spark, config())
    assert json.loads((checkpoints / "em_state.json").read_text())["iteration"] == 4
    with _logged_iterations() as ran:
        again = run_fit(spark, config(resume=True))  # resumes at the end: only the final pass
    assert ran.iterations == [] and not ran.initialised, ran.messages
    np.testing.assert_array_equal(again.means, first.means)
    assert again.summary.logLikelihoodHistory == first.summary.logLikelihoodHistory
    with pytest.raises(CheckpointMismatchError, match="k: checkpoint 3, now 4"):
        run_fit(spark, replace_k(config(resume=True), 4))
    assert main(["fit", "--input", path, "--features-col", "x", "--resume"]) == 2
    assert "'resume' needs 'checkpoint_dir'" in capsys.readouterr().err


class _Iterations(logging.Handler):
    """The EM iterations and initialisations a fit logs on the ``spark_gmm`` logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @property
    def iterations(self) -> list[int]:
        found = (re.match(r"EM iteration (\d+)/", m) for m in self.messages)
        return [int(m.group(1)) for m in found if m]

    @property
    def initialised(self) -> bool:
        return any(m.startswith("initialised ") for m in self.messages)


@contextmanager
def _logged_iterations():
    logger = logging.getLogger("spark_gmm")
    handler = _Iterations()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def replace_k(config, k):
    from dataclasses import replace

    return replace(config, k=k)
