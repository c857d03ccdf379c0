"""The distributed fit on a local[2] session: parity, partition invariance, API, caching."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import make_mixture, rel_err
from pyspark.ml import Pipeline
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.linalg import DenseVector, VectorUDT
from pyspark.sql import functions as F
from pyspark.sql import types as T
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from spark_gmm import GaussianMixture, GaussianMixtureModel
from spark_gmm.em import InMemoryData, fit_em
from spark_gmm.gaussian import COVARIANCE_TYPES

COLS = ["x0", "x1", "x2"]


def _frame(spark, X, partitions=3, extra=None):
    pdf = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
    pdf["id"] = np.arange(len(X))
    for name, values in (extra or {}).items():
        pdf[name] = values
    return spark.createDataFrame(pdf).repartition(partitions)


def _persisted_rdd_ids(spark):
    return set(spark.sparkContext._jsc.getPersistentRDDs().keys())


@pytest.fixture(scope="module")
def data(spark):
    X, labels = make_mixture(n=1200, d=3, k=3, seed=21)
    return X, labels, _frame(spark, X)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_distributed_em_equals_sklearn_from_same_start(data, covariance_type):
    X, _, df = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = SkGaussianMixture(
            3, covariance_type=covariance_type, max_iter=1, random_state=0
        ).fit(X)
        ref = SkGaussianMixture(
            3,
            covariance_type=covariance_type,
            weights_init=start.weights_,
            means_init=start.means_,
            precisions_init=start.precisions_,
            max_iter=5,
            tol=0,
        ).fit(X)
    initial = GaussianMixtureModel.fromParameters(
        start.weights_, start.means_, start.covariances_, covariance_type
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GaussianMixture(
            k=3,
            inputCols=COLS,
            covarianceType=covariance_type,
            initialModel=initial,
            maxIter=5,
            tol=0.0,
        ).fit(df)
    assert model.summary.numIter == 5
    assert rel_err(model.weights, ref.weights_) < 1e-8
    assert rel_err(model.means, ref.means_) < 1e-8
    assert rel_err(model.covariances, ref.covariances_) < 1e-8
    assert rel_err(model.precisionsCholesky, ref.precisions_cholesky_) < 1e-8
    assert abs(model.summary.meanLogLikelihood - ref.score(X)) < 1e-10
    assert abs(model.summary.logLikelihood - ref.score(X) * len(X)) < 1e-7


def test_distributed_equals_single_block(data):
    """Default init on Spark equals the same computation on one in-memory block."""
    X, _, df = data
    model = GaussianMixture(k=3, inputCols=COLS, seed=4).fit(df)  # short-em, nInit=1
    local = fit_em(InMemoryData(X), 3, "full", seed=4, init_mode="short-em", n_init=1)
    assert model.summary.numIter == local.n_iter
    assert rel_err(model.means, local.params.means) < 1e-9
    assert rel_err(model.covariances, local.params.covariances) < 1e-9


def test_same_model_for_1_4_16_partitions(spark, data):
    X, _, _ = data
    frames = [_frame(spark, X, partitions=p) for p in (1, 4, 16)]
    # Default initialisation on a sample of about a third of the 1,200 rows: the rows
    # are chosen by a hash of their content, not by partition.
    models = [
        GaussianMixture(k=3, inputCols=COLS, seed=7, initSampleSize=400).fit(f) for f in frames
    ]
    everything = GaussianMixture(k=3, inputCols=COLS, seed=7, maxIter=1).fit(frames[0])
    sampled = GaussianMixture(k=3, inputCols=COLS, seed=7, maxIter=1, initSampleSize=400)
    # The sample really is a subset: the start differs from the whole-data one. (The
    # parameters after one iteration can be equal to rounding: on these separated
    # clusters both starts give the same responsibilities.)
    start_ll = sampled.fit(frames[0]).summary.logLikelihoodHistory[0]
    assert abs(start_ll - everything.summary.logLikelihoodHistory[0]) > 1e-9
    for m in models[1:]:
        assert m.summary.numIter == models[0].summary.numIter
        assert rel_err(m.means, models[0].means) < 1e-6
        assert rel_err(m.covariances, models[0].covariances) < 1e-6
        assert rel_err(m.weights, models[0].weights) < 1e-6
    # From a given initial model, only the summation order differs.
    initial = GaussianMixtureModel.fromParameters(
        [0.3, 0.3, 0.4], X[:3], np.array([np.eye(3)] * 3), "full"
    )
    fixed = [
        GaussianMixture(k=3, inputCols=COLS, initialModel=initial, maxIter=8, tol=0.0).fit(f)
        for f in frames
    ]
    for m in fixed[1:]:
        assert rel_err(m.means, fixed[0].means) < 1e-9
        assert rel_err(m.covariances, fixed[0].covariances) < 1e-9
        assert rel_err(m.weights, fixed[0].weights) < 1e-9


def test_quality_matches_known_labels(data):
    X, labels, df = data
    model = GaussianMixture(k=3, inputCols=COLS, seed=1).fit(df)
    pred = model.transform(df).orderBy("id").select("prediction").toPandas()["prediction"]
    assert adjusted_rand_score(labels, pred.to_numpy()) > 0.98
    sk = SkGaussianMixture(3, random_state=1).fit(X)
    assert model.summary.meanLogLikelihood >= sk.score(X) - 1e-6


def test_n_init_candidates_share_passes_and_best_wins(data, caplog):
    X, _, df = data
    with caplog.at_level(logging.INFO, logger="spark_gmm"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=0: no convergence
        model = GaussianMixture(
            k=3, inputCols=COLS, nInit=3, initMode="random", seed=3, maxIter=6, tol=0.0
        ).fit(df)
    lls = model.summary.candidateLogLikelihoods
    # Three different starts that end in different places...
    assert len(lls) == 3 and len({round(v, 9) for v in lls}) == 3, lls
    # ... the best one kept, and it is what the model scores on the rows...
    assert model.summary.meanLogLikelihood == max(lls)
    assert abs(model.score(X) - max(lls)) < 1e-9
    # ... and the three runs of 6 iterations took 6 data passes, not 18: each pass
    # computed the statistics of all three.
    passes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("EM iteration")]
    assert len(passes) == 6, passes
    assert all("(3 of 3 candidates in this pass)" in p for p in passes), passes


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_transform_columns_types_and_values(data, covariance_type):
    X, _, df = data
    model = GaussianMixture(
        k=3, inputCols=COLS, covarianceType=covariance_type, seed=2, logLikelihoodCol="ll"
    ).fit(df)
    out = model.transform(df)
    schema = {f.name: f.dataType for f in out.schema.fields}
    assert isinstance(schema["prediction"], T.IntegerType)
    assert isinstance(schema["probability"], VectorUDT)
    assert isinstance(schema["ll"], T.DoubleType)
    assert out.columns[: len(df.columns)] == df.columns
    rows = out.orderBy("id").collect()
    assert len(rows) == len(X)
    proba = np.array([r["probability"].toArray() for r in rows])
    assert rel_err(proba, model.predict_proba(X)) < 1e-10
    assert np.array_equal([r["prediction"] for r in rows], np.argmax(proba, axis=1))
    assert rel_err([r["ll"] for r in rows], model.score_samples(X)) < 1e-12
    # The summary's log-likelihood scores the final model on the training rows.
    assert abs(model.summary.meanLogLikelihood - model.score(X)) < 1e-10
    assert sum(model.summary.clusterSizes) == len(X)
    assert model.summary.clusterSizes == list(np.bincount(np.argmax(proba, 1), minlength=3))


def test_vector_and_array_feature_columns(spark, data):
    X, _, df = data
    by_cols = GaussianMixture(k=3, inputCols=COLS, seed=5).fit(df)
    vec_df = VectorAssembler(inputCols=COLS, outputCol="features").transform(df)
    by_vec = GaussianMixture(k=3, seed=5).fit(vec_df)
    arr_df = df.select("id", F.array(*[F.col(c) for c in COLS]).alias("arr"))
    by_arr = GaussianMixture(k=3, featuresCol="arr", seed=5).fit(arr_df)
    for m in (by_vec, by_arr):
        assert rel_err(m.means, by_cols.means) < 1e-12
    f32 = arr_df.select(F.col("arr").cast("array<float>").alias("arr"))
    by_f32 = GaussianMixture(k=3, featuresCol="arr", seed=5).fit(f32)
    # Rounding to float32 may break the tie between equally good starts differently, so
    # the same optimum can come back in another component order.
    order = [int(np.argmin(np.abs(by_f32.means - m).sum(axis=1))) for m in by_cols.means]
    assert sorted(order) == [0, 1, 2]
    assert rel_err(by_f32.means[order], by_cols.means) < 1e-5
    assert by_arr.transform(arr_df).count() == len(X)


def test_pipeline_with_vector_assembler(data):
    _, labels, df = data
    pipeline = Pipeline(
        stages=[VectorAssembler(inputCols=COLS, outputCol="features"), GaussianMixture(k=3, seed=6)]
    )
    fitted = pipeline.fit(df)
    out = fitted.transform(df).orderBy("id").select("prediction").toPandas()
    assert adjusted_rand_score(labels, out["prediction"]) > 0.98


def test_weights_equal_repeated_rows(spark):
    X, _ = make_mixture(n=400, d=2, k=2, seed=22)
    w = np.random.default_rng(1).integers(1, 4, size=len(X)).astype(float)
    initial = GaussianMixtureModel.fromParameters([0.5, 0.5], X[:2], np.array([np.eye(2)] * 2))
    weighted = GaussianMixture(
        k=2, inputCols=["x0", "x1"], weightCol="w", initialModel=initial, maxIter=5, tol=0.0
    ).fit(_frame(spark, X, extra={"w": w}))
    repeated = GaussianMixture(
        k=2, inputCols=["x0", "x1"], initialModel=initial, maxIter=5, tol=0.0
    ).fit(_frame(spark, np.repeat(X, w.astype(int), axis=0)))
    assert rel_err(weighted.means, repeated.means) < 1e-10
    assert rel_err(weighted.covariances, repeated.covariances) < 1e-10
    assert weighted.summary.totalWeight == w.sum()
    # Scoring does not need the weight column: new data rarely has one.
    rows = weighted.transform(_frame(spark, X)).orderBy("id").collect()
    proba = np.array([r["probability"].toArray() for r in rows])
    assert rel_err(proba, weighted.predict_proba(X)) < 1e-12


def test_cache_released_and_callers_cache_kept(spark, data):
    _, _, df = data
    cached = df.cache()
    cached.count()
    before = _persisted_rdd_ids(spark)
    GaussianMixture(k=3, inputCols=COLS, seed=1, maxIter=3).fit(cached)
    assert _persisted_rdd_ids(spark) == before
    assert cached.is_cached
    bad = _frame(spark, np.array([[0.0, np.nan, 1.0]] * 3 + [[1.0, 2.0, 3.0]] * 10))
    with pytest.raises(ValueError):
        GaussianMixture(k=2, inputCols=COLS).fit(bad)
    assert _persisted_rdd_ids(spark) == before
    cached.unpersist()


def test_one_log_line_per_iteration(data, caplog):
    _, _, df = data
    with caplog.at_level(logging.INFO, logger="spark_gmm"):
        model = GaussianMixture(k=3, inputCols=COLS, seed=1, maxIter=4, tol=0.0).fit(df)
    lines = [r.getMessage() for r in caplog.records if "EM iteration" in r.getMessage()]
    assert len(lines) == model.summary.numIter == 4
    assert "EM iteration 3/4: mean log-likelihood" in lines[2]
    assert len(model.summary.logLikelihoodHistory) == 5
    assert len(model.summary.iterationSeconds) == 4


def test_model_helpers_and_gaussians_df(data):
    X, _, df = data
    model = GaussianMixture(k=3, inputCols=COLS, covarianceType="diag", seed=1).fit(df)
    g = model.gaussiansDF.collect()
    assert len(g) == 3
    assert np.allclose(g[1]["mean"].toArray(), model.means[1])
    assert np.allclose(np.diag(g[1]["cov"].toArray()), model.covariances[1])
    assert model.predict(DenseVector(X[0])) == int(np.argmax(model.predict_proba(X[:1])))
    assert np.isclose(sum(model.predictProbability(X[0]).toArray()), 1.0)
    assert model.getK() == 3 and model.getCovarianceType() == "diag"
    assert abs(sum(model.weights) - 1.0) < 1e-12
    assert model.summary.k == 3 and model.summary.numRows == len(X)
    assert model.summary.predictions.count() == len(X)


@pytest.mark.parametrize("use_rdd", [True, False])
def test_both_caches_and_many_partitions_give_the_same_model(spark, data, use_rdd):
    """The RDD cache and the DataFrame cache (the Spark Connect path) agree, also with
    enough partitions for an intermediate aggregation level."""
    from spark_gmm.data import resolve_features
    from spark_gmm.engine import prepare

    X, _, _ = data
    df = _frame(spark, X, partitions=40)
    spec, columns = resolve_features(df, COLS, "features", None)
    prepared = prepare(df, spec, columns, "error", aggregation_depth=2, use_rdd=use_rdd)
    if use_rdd:
        # 40 input partitions are merged into 4 per core (local[2]) for the EM passes.
        assert prepared.cache.num_partitions == 4 * spark.sparkContext.defaultParallelism
    try:
        result = fit_em(prepared, 3, "full", seed=4)
    finally:
        prepared.release()
    local = fit_em(InMemoryData(X), 3, "full", seed=4)
    assert result.n_iter == local.n_iter
    assert rel_err(result.params.means, local.params.means) < 1e-9
    assert rel_err(result.params.covariances, local.params.covariances) < 1e-9
