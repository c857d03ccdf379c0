"""Bad input: one clear error before any EM iteration, naming the column and the count."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from spark_gmm import GaussianMixture, InvalidInputError


@pytest.fixture(scope="module")
def good(spark):
    rng = np.random.default_rng(31)
    pdf = pd.DataFrame(rng.normal(size=(60, 2)), columns=["a", "b"])
    pdf["name"] = "row"
    pdf["w"] = 1.0
    return spark.createDataFrame(pdf).repartition(2)


def _no_iteration_ran(caplog):
    return not any("EM iteration" in r.getMessage() for r in caplog.records)


def _fit_error(df, caplog, **params):
    with (
        caplog.at_level(logging.INFO, logger="spark_gmm"),
        pytest.raises(InvalidInputError) as info,
    ):
        GaussianMixture(**params).fit(df)
    assert _no_iteration_ran(caplog)
    return str(info.value)


def test_missing_column(good, caplog):
    msg = _fit_error(good, caplog, k=2, inputCols=["a", "nope"])
    assert "'nope' is not in the input" in msg and "available columns: a, b, name, w" in msg
    msg = _fit_error(good, caplog, k=2)  # default featuresCol='features' does not exist
    assert "Features column 'features' is not in the input" in msg


def test_non_numeric_column(good, caplog):
    msg = _fit_error(good, caplog, k=2, inputCols=["a", "name"])
    assert "'name' has type string" in msg and "numeric" in msg
    msg = _fit_error(good, caplog, k=2, featuresCol="name")
    assert "'name' has type string" in msg and "vector" in msg


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"k": 0}, "k must be >= 1; got 0"),
        ({"k": 2, "covarianceType": "banana"}, "covarianceType must be one of full, tied"),
        ({"k": 2, "regCovar": -1.0}, "regCovar must be a finite number >= 0"),
        ({"k": 2, "nInit": 0}, "nInit must be >= 1"),
        ({"k": 2, "initMode": "magic"}, "initMode must be one of short-em, kmeans"),
        ({"k": 2, "maxIter": 0}, "maxIter must be >= 1"),
        ({"k": 2, "handleInvalid": "ignore"}, "handleInvalid must be one of error, skip, keep"),
    ],
)
def test_bad_params(good, caplog, params, text):
    assert text in _fit_error(good, caplog, inputCols=["a", "b"], **params)


def test_k_larger_than_rows(good, caplog):
    msg = _fit_error(good, caplog, k=61, inputCols=["a", "b"])
    assert "k=61 is larger than the number of usable rows (60)" in msg


def test_empty_input(good, caplog):
    msg = _fit_error(good.where("a > 1e9"), caplog, k=2, inputCols=["a", "b"])
    assert "no rows to fit" in msg
    vec = good.select(F.array("a", "b").alias("v")).where("a > 1e9")
    msg = _fit_error(vec, caplog, k=2, featuresCol="v")
    assert "'v' has no non-empty vector" in msg


def test_nan_inf_null_features_name_column_and_count(spark, caplog):
    pdf = pd.DataFrame(
        {
            "a": [1.0, np.nan, 3.0, np.inf, 5.0, 6.0, 7.0],
            "b": [1.0, 2.0, None, 4.0, 5.0, 6.0, -np.inf],
        }
    )
    df = spark.createDataFrame(pdf)
    msg = _fit_error(df, caplog, k=2, inputCols=["a", "b"])
    assert "4 input rows have invalid features" in msg
    assert "column 'a': null, NaN or infinite values: 2" in msg
    assert "column 'b': null, NaN or infinite values: 2" in msg
    assert "handleInvalid='skip'" in msg


def test_skip_drops_and_counts_invalid_rows(spark):
    rng = np.random.default_rng(32)
    X = rng.normal(size=(40, 2))
    X[[3, 7, 11], 0] = [np.nan, np.inf, -np.inf]
    df = spark.createDataFrame(pd.DataFrame(X, columns=["a", "b"]))
    model = GaussianMixture(k=2, inputCols=["a", "b"], handleInvalid="skip", seed=1).fit(df)
    assert model.summary.numSkippedRows == 3
    assert model.summary.numRows == 37
    clean = np.delete(X, [3, 7, 11], axis=0)
    assert abs(model.summary.meanLogLikelihood - model.score(clean)) < 1e-10


def test_vectors_of_different_lengths(spark, caplog):
    df = spark.createDataFrame(
        [([1.0, 2.0],), ([3.0, 4.0],), ([5.0, 6.0, 7.0],), ([8.0, 9.0],), (None,)],
        "v array<double>",
    )
    msg = _fit_error(df, caplog, k=1, featuresCol="v")
    assert "vectors of a different length: 1" in msg
    assert "null vectors: 1" in msg


def test_negative_and_null_weights(spark, caplog):
    df = spark.createDataFrame(
        pd.DataFrame(
            {"a": [1.0, 2.0, 3.0, 4.0], "b": [1.0, 0.0, 1.0, 0.0], "w": [1.0, -2.0, None, 1.0]}
        )
    )
    msg = _fit_error(df, caplog, k=1, inputCols=["a", "b"], weightCol="w")
    assert "weight column 'w': null, NaN, infinite or negative weights: 2" in msg


def test_string_weight_column(good, caplog):
    msg = _fit_error(good, caplog, k=2, inputCols=["a", "b"], weightCol="name")
    assert "Weight column 'name' has type string" in msg


def test_initial_model_must_match(good, caplog):
    from spark_gmm import GaussianMixtureModel

    initial = GaussianMixtureModel.fromParameters([1.0], np.zeros((1, 3)), np.ones((1, 3)), "diag")
    msg = _fit_error(good, caplog, k=1, inputCols=["a", "b"], initialModel=initial)
    assert "covarianceType='diag'" in msg
    msg = _fit_error(
        good, caplog, k=1, inputCols=["a", "b"], covarianceType="diag", initialModel=initial
    )
    assert "initialModel has 3 features but the input has 2" in msg


def test_transform_dimension_mismatch(spark, good):
    model = GaussianMixture(k=2, inputCols=["a", "b"], seed=1, maxIter=2).fit(good)
    with pytest.raises(InvalidInputError, match="model has 2 features but inputCols names 1"):
        model.setInputCols(["a"]).transform(good)
    with pytest.raises(InvalidInputError, match="model has 2 features but the data has 3"):
        model.predict_proba(np.zeros((4, 3)))
