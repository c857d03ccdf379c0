"""Helpers shared by the benchmark scripts: generated data and a local Spark session."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

SPARK_CONF = {
    "spark.sql.shuffle.partitions": "4",
    "spark.driver.memory": "6g",
    "spark.ui.showConsoleProgress": "false",
}
INPUT_PARTITIONS = 4


def make_mixture_data(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """N rows drawn from k Gaussians with random weights, means and full covariances."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(k, 5.0))
    means = rng.normal(scale=4.0, size=(k, d))
    labels = rng.choice(k, size=n, p=weights)
    X = np.empty((n, d))
    for j in range(k):
        rows = labels == j
        A = rng.normal(size=(d, d))
        cov = A @ A.T / d + 0.1 * np.eye(d)
        X[rows] = means[j] + rng.standard_normal((rows.sum(), d)) @ np.linalg.cholesky(cov).T
    return X


def start_spark(app: str = "spark_gmm benchmark", ui: bool = True) -> Any:
    """A local[2] session, configured before the JVM starts."""
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    builder = SparkSession.builder.appName(app).master("local[2]")
    for key, value in SPARK_CONF.items():
        builder = builder.config(key, value)
    builder = builder.config("spark.ui.enabled", "true" if ui else "false")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def cached_features_frame(spark: Any, X: np.ndarray, scratch_dir: str) -> Any:
    """A cached, counted DataFrame with one ml vector column ``features`` holding X.

    The rows go through a Parquet file in ``scratch_dir`` (exact for float64).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.ml.functions import array_to_vector

    n, d = X.shape
    offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
    rows = pa.ListArray.from_arrays(offsets, pa.array(X.ravel()))
    path = os.path.join(scratch_dir, f"mixture_{n}_{d}.parquet")
    pq.write_table(pa.table({"x": rows}), path)
    df = (
        spark.read.parquet(path)
        .repartition(INPUT_PARTITIONS)
        .select(array_to_vector("x").alias("features"))
        .cache()
    )
    if df.count() != n:
        raise RuntimeError("the cached DataFrame does not hold every row")
    return df
