"""Params that change what a fit or a transform does, each shown to do it on Spark."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import make_mixture, rel_err

from spark_gmm import GaussianMixture, GaussianMixtureModel
from spark_gmm.errors import InvalidInputError

COLS = ["a", "b"]


@pytest.fixture(scope="module")
def frame(spark):
    X, _ = make_mixture(n=900, d=2, k=3, seed=31)
    pdf = pd.DataFrame(X, columns=COLS)
    pdf["id"] = np.arange(len(X))
    return X, spark.createDataFrame(pdf).repartition(24)


def _start(X):
    return GaussianMixtureModel.fromParameters(
        [0.3, 0.3, 0.4], X[[0, 300, 600]], np.repeat(np.eye(2)[None], 3, axis=0), "full"
    )


def _fit(df, **params):
    settings = {"k": 3, "inputCols": COLS, "maxIter": 5, "tol": 0.0, **params}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=0 never converges
        return GaussianMixture(**settings).fit(df)


def test_renamed_prediction_and_probability_columns(frame):
    X, df = frame
    model = _fit(df, initialModel=_start(X), predictionCol="label", probabilityCol="p")
    out = model.transform(df)
    assert "prediction" not in out.columns and "probability" not in out.columns
    rows = out.orderBy("id").select("label", "p").collect()
    proba = np.array([r["p"].toArray() for r in rows])
    assert rel_err(proba, model.predict_proba(X)) < 1e-10
    assert [r["label"] for r in rows] == list(np.argmax(proba, axis=1))
    # The model's own setters rename them too.
    again = model.setPredictionCol("cluster").setProbabilityCol("membership").transform(df)
    assert {"cluster", "membership"} <= set(again.columns)


def test_aggregation_depth_changes_the_reduce_not_the_model(frame):
    X, df = frame
    base = _fit(df, initialModel=_start(X))
    for depth in (1, 3):
        other = _fit(df, initialModel=_start(X), aggregationDepth=depth)
        for name in ("weights", "means", "covariances"):
            assert rel_err(getattr(other, name), getattr(base, name)) < 1e-12, (depth, name)


def test_init_sample_size_decides_the_rows_of_the_initialisation(spark):
    # Overlapping components: k-means on 100 rows and on all 900 find different centres.
    X, _ = make_mixture(n=900, d=2, k=3, seed=31, separation=1.0)
    df = spark.createDataFrame(pd.DataFrame(X, columns=COLS)).repartition(5)
    kmeans = {"seed": 4, "maxIter": 1, "initMode": "kmeans", "nInit": 4}
    small = _fit(df, initSampleSize=100, **kmeans)
    large = _fit(df, initSampleSize=100_000, **kmeans)
    assert rel_err(small.means, large.means) > 1e-6
    # With every row in the sample, the driver-side k-means saw all of X: the same start
    # as the in-memory engine's.
    from spark_gmm.em import InMemoryData, fit_em

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fit_em(InMemoryData(X), 3, "full", max_iter=1, tol=0.0, n_init=4, seed=4)
    assert rel_err(large.means, ref.params.means) < 1e-9
    with pytest.raises(InvalidInputError, match="initSampleSize must be >= k=3"):
        _fit(df, initSampleSize=2)


def test_handle_invalid_keep_in_fit_drops_and_counts_like_skip(spark):
    X, _ = make_mixture(n=600, d=2, k=2, seed=5)
    rows = [(float(a), float(b)) for a, b in X]
    rows[7] = (float("nan"), 1.0)
    rows[9] = (None, 2.0)
    df = spark.createDataFrame(rows, "a double, b double")
    start = GaussianMixtureModel.fromParameters(
        [0.5, 0.5], X[[0, 1]], np.repeat(np.eye(2)[None], 2, axis=0), "full"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keep = GaussianMixture(
            k=2, inputCols=COLS, initialModel=start, maxIter=3, tol=0.0, handleInvalid="keep"
        ).fit(df)
        skip = GaussianMixture(
            k=2, inputCols=COLS, initialModel=start, maxIter=3, tol=0.0, handleInvalid="skip"
        ).fit(df)
    assert keep.summary.numSkippedRows == skip.summary.numSkippedRows == 2
    assert keep.summary.numRows == 598
    np.testing.assert_array_equal(keep.means, skip.means)
    # ... while its transform keeps the rows, with null outputs.
    out = keep.transform(df).collect()
    assert len(out) == 600
    assert sum(r["prediction"] is None for r in out) == 2


def test_resume_needs_a_checkpoint_dir_and_an_interval_of_at_least_one(frame, tmp_path):
    _, df = frame
    with pytest.raises(InvalidInputError, match="resumeFromCheckpoint needs checkpointDir"):
        _fit(df, resumeFromCheckpoint=True)
    with pytest.raises(InvalidInputError, match="checkpointInterval must be >= 1"):
        _fit(df, checkpointDir=str(tmp_path), checkpointInterval=0)
    assert not any(tmp_path.iterdir())
