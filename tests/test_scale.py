"""Inputs larger than the JVM heap: the cache spills to disk, the fit and the scoring
complete, and the result equals scikit-learn's EM on the same data.

One child process with a 512 MiB heap, where Spark's storage memory is about
(512 - 300) * 0.6 = 127 MiB, fits ~4.5 times that (4.4M rows x 16 float64 = 537 MiB of
blocks, more than the whole heap), then scores every row and writes them to Parquet.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

HERE = Path(__file__).parent

N_ROWS, D, K = 4_400_000, 16, 3
FILES = 8


def _write_input(base: Path) -> np.ndarray:
    """A 3-component mixture, written as FILES Parquet files; returns the rows."""
    rng = np.random.default_rng(11)
    centres = rng.normal(scale=4.0, size=(K, D))
    labels = rng.choice(K, size=N_ROWS, p=[0.5, 0.3, 0.2])
    X = centres[labels] + rng.normal(size=(N_ROWS, D)) * rng.uniform(0.5, 2.0, size=(K, D))[labels]
    base.mkdir()
    per = N_ROWS // FILES
    for f in range(FILES):
        part = X[f * per : (f + 1) * per]
        pq.write_table(
            pa.table({f"x{j}": part[:, j] for j in range(D)}), base / f"part-{f}.parquet"
        )
    return X


def _run_child(source: Path, start: Path, output: Path, heap: str, level: str):
    env = dict(os.environ)
    env["PYSPARK_SUBMIT_ARGS"] = f"--driver-memory {heap} pyspark-shell"
    env.pop("PYSPARK_PYTHON", None)
    return subprocess.Popen(
        [sys.executable, str(HERE / "scale_child.py"), str(source), str(start), str(output), level],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_fit_and_score_an_input_larger_than_the_heap(tmp_path):
    X = _write_input(tmp_path / "input")
    rng = np.random.default_rng(3)
    start = {
        "weights": [1 / K] * K,
        "means": X[rng.choice(N_ROWS, K, replace=False)].tolist(),
        "covariances": np.ones((K, D)).tolist(),
    }
    (tmp_path / "start.json").write_text(json.dumps(start))
    proc = _run_child(
        tmp_path / "input", tmp_path / "start.json", tmp_path / "scored", "512m", "MEMORY_AND_DISK"
    )
    # The reference while the child runs: scikit-learn's EM from the same start.
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    sk = SkGaussianMixture(
        K,
        covariance_type="diag",
        max_iter=3,
        tol=0.0,
        reg_covar=1e-6,
        weights_init=start["weights"],
        means_init=start["means"],
        precisions_init=1.0 / np.asarray(start["covariances"]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.fit(X)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    fitted = json.loads(out.strip().splitlines()[-1])

    # Really larger than memory: the heap is 512 MiB, the blocks more than 4x Spark's
    # storage memory, and the log reports the part of the cache that went to disk.
    storage = (fitted["heap_bytes"] - 300 * 2**20) * 0.6
    cached = re.search(
        r"cached (\d+) rows: ([\d.]+) MiB .*: ([\d.]+) MiB in memory, "
        r"([\d.]+) MiB on disk",
        err,
    )
    assert cached, err[-3000:]
    rows, total, in_memory, on_disk = (float(g) for g in cached.groups())
    assert in_memory < 0.5 * total, cached.group(0)
    assert fitted["heap_bytes"] <= 512 * 2**20
    assert rows == N_ROWS and total * 2**20 >= 4 * storage, (total, storage)
    assert on_disk > 0.5 * total, cached.group(0)

    for name, expected in (
        ("weights", sk.weights_),
        ("means", sk.means_),
        ("covariances", sk.covariances_),
    ):
        actual = np.asarray(fitted[name])
        gap = np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), 1e-3))
        assert gap < 1e-9, (name, gap)

    # Every row scored, with sklearn's labels and log-likelihoods for the same model.
    scored = pq.read_table(tmp_path / "scored")
    assert scored.num_rows == N_ROWS
    loglik = scored.column("loglik").to_numpy()
    expected_total = sk.score_samples(X).sum()
    assert abs(loglik.sum() - expected_total) <= 1e-9 * abs(expected_total)
    counts = np.bincount(scored.column("prediction").to_numpy(), minlength=K)
    assert np.array_equal(np.sort(counts), np.sort(np.bincount(sk.predict(X), minlength=K)))


@pytest.mark.parametrize("level", ["DISK_ONLY", "NONE"])
def test_storage_levels_give_the_same_model(spark, level):
    from spark_gmm import GaussianMixture, GaussianMixtureModel

    rng = np.random.default_rng(5)
    X = np.vstack([rng.normal(size=(3000, 4)), rng.normal(size=(2000, 4)) * 0.5 + 3.0])
    df = spark.createDataFrame([tuple(map(float, r)) for r in X], list("abcd")).repartition(6)
    start = GaussianMixtureModel.fromParameters(
        [0.5, 0.5], [X[0], X[-1]], np.repeat(np.eye(4)[None], 2, axis=0), "full"
    )

    def fit(**params):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return GaussianMixture(
                k=2, inputCols=list("abcd"), initialModel=start, maxIter=4, tol=0.0, **params
            ).fit(df)

    base = fit()
    other = fit(cacheStorageLevel=level)
    assert np.allclose(other.means, base.means, rtol=1e-12, atol=1e-12)
    assert np.allclose(other.covariances, base.covariances, rtol=1e-11, atol=1e-12)
    assert other.summary.logLikelihoodHistory == pytest.approx(
        base.summary.logLikelihoodHistory, rel=1e-12
    )
    # Nothing left cached (unpersist is asynchronous: wait for it).
    import time

    for _ in range(50):
        if not list(spark.sparkContext._jsc.sc().getRDDStorageInfo()):
            break
        time.sleep(0.1)
    assert not list(spark.sparkContext._jsc.sc().getRDDStorageInfo())


def test_float32_blocks_within_the_stated_bound_on_standardized_data(spark):
    """blockDtype='float32' is exact EM on the data rounded to float32 (each value moves
    by at most 2**-24 of itself): on standardized data the parameters stay within 1e-6
    (means) and 1e-5 (covariances) of the float64 fit from the same start."""
    from spark_gmm import GaussianMixture, GaussianMixtureModel

    rng = np.random.default_rng(9)
    X = np.vstack([rng.normal(size=(4000, 3)) + 2.0, rng.normal(size=(3000, 3)) * 0.6 - 1.0])
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    df = spark.createDataFrame([tuple(map(float, r)) for r in X], "a double, b double, c double")
    start = GaussianMixtureModel.fromParameters(
        [0.5, 0.5], [X[0], X[-1]], np.repeat(np.eye(3)[None], 2, axis=0), "full"
    )

    def fit(dtype):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return GaussianMixture(
                k=2,
                inputCols=["a", "b", "c"],
                initialModel=start,
                maxIter=10,
                tol=0.0,
                blockDtype=dtype,
            ).fit(df)

    f64, f32 = fit("float64"), fit("float32")
    mean_gap = np.max(np.abs(f32.means - f64.means))
    cov_gap = np.max(np.abs(f32.covariances - f64.covariances))
    assert 0 < mean_gap < 1e-6 and cov_gap < 1e-5, (mean_gap, cov_gap)
    assert abs(f32.summary.meanLogLikelihood - f64.summary.meanLogLikelihood) < 1e-6
