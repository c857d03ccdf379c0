"""The fitted model: persistence, BIC/AIC, sampling, sklearn interop, transform options."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import make_mixture, rel_err
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import StandardScaler, VectorAssembler
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from spark_gmm import GaussianMixture, GaussianMixtureModel
from spark_gmm.gaussian import COVARIANCE_TYPES
from spark_gmm.persistence import ModelFormatError

COLS = ["x0", "x1"]


@pytest.fixture(scope="module")
def frame(spark):
    X, _ = make_mixture(n=600, d=2, k=3, seed=41)
    pdf = pd.DataFrame(X, columns=COLS)
    pdf["id"] = np.arange(len(X))
    return X, spark.createDataFrame(pdf).repartition(2)


@pytest.fixture(scope="module")
def fitted(frame):
    _, df = frame
    return {
        ct: GaussianMixture(
            k=3, inputCols=COLS, covarianceType=ct, seed=3, logLikelihoodCol="ll"
        ).fit(df)
        for ct in COVARIANCE_TYPES
    }


def _scores(model, df):
    rows = model.transform(df).orderBy("id").collect()
    return (
        [r["prediction"] for r in rows],
        np.array([r["probability"].toArray() for r in rows]),
        [r["ll"] for r in rows],
    )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_save_load_round_trip(tmp_path, frame, fitted, covariance_type):
    _, df = frame
    model = fitted[covariance_type]
    path = str(tmp_path / "model")
    model.write().overwrite().save(path)
    loaded = GaussianMixtureModel.load(path)
    assert loaded.uid == model.uid
    assert loaded.getCovarianceType() == covariance_type
    assert loaded.getInputCols() == COLS and loaded.getLogLikelihoodCol() == "ll"
    assert np.array_equal(loaded.means, model.means)
    assert np.array_equal(loaded.covariances, model.covariances)
    before, after = _scores(model, df), _scores(loaded, df)
    assert before[0] == after[0]
    assert np.array_equal(before[1], after[1])
    assert before[2] == after[2]
    assert loaded.summary.numIter == model.summary.numIter
    assert loaded.summary.bic == model.summary.bic
    # No pickle anywhere: the directory holds JSON text and Parquet only.
    files = [f for _, _, names in os.walk(path) for f in names if not f.startswith((".", "_"))]
    assert all(f.endswith(".parquet") or f.startswith("part-") for f in files), files


def test_save_refuses_to_overwrite_without_flag(tmp_path, fitted):
    path = str(tmp_path / "m")
    fitted["full"].save(path)
    with pytest.raises(ModelFormatError, match=r"already exists; use write\(\).overwrite"):
        fitted["full"].save(path)


def test_failed_save_leaves_nothing_loadable(tmp_path, fitted, monkeypatch):
    from spark_gmm import persistence

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(persistence.DefaultParamsWriter, "saveMetadata", boom)
    path = str(tmp_path / "half")
    with pytest.raises(OSError, match="disk full"):
        fitted["full"].save(path)
    assert os.listdir(tmp_path) == []  # neither the model nor its temporary directory


def test_estimator_and_initial_model_round_trip(tmp_path, fitted):
    est = GaussianMixture(k=3, inputCols=COLS, covarianceType="diag", regCovar=1e-4)
    est.setInitialModel(fitted["diag"])
    est.save(str(tmp_path / "est"))
    loaded = GaussianMixture.load(str(tmp_path / "est"))
    assert loaded.getRegCovar() == 1e-4 and loaded.getCovarianceType() == "diag"
    assert np.array_equal(loaded.getInitialModel().means, fitted["diag"].means)


def test_pipeline_round_trip_with_assembler_and_scaler(tmp_path, frame):
    _, df = frame
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=COLS, outputCol="raw"),
            StandardScaler(inputCol="raw", outputCol="features", withMean=True),
            GaussianMixture(k=3, seed=2),
        ]
    )
    pipeline.write().overwrite().save(str(tmp_path / "pipeline"))
    fitted = Pipeline.load(str(tmp_path / "pipeline")).fit(df)
    fitted.write().overwrite().save(str(tmp_path / "pipeline_model"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline_model"))
    a = fitted.transform(df).orderBy("id").select("prediction", "probability").collect()
    b = loaded.transform(df).orderBy("id").select("prediction", "probability").collect()
    assert a == b


def _corrupt(tmp_path, fitted, edit):
    path = tmp_path / "m"
    fitted["full"].write().overwrite().save(str(path))
    edit(path)
    return str(path)


def _metadata_file(path):
    (name,) = [f for f in os.listdir(path / "metadata") if f.startswith("part-")]
    return path / "metadata" / name


def _rewrite_metadata(path, change):
    meta_file = _metadata_file(path)
    meta = json.loads(meta_file.read_text())
    change(meta)
    meta_file.write_text(json.dumps(meta))
    # Drop Hadoop's checksum of the old text, or the read fails on the checksum first.
    for crc in (path / "metadata").glob(".*.crc"):
        crc.unlink()


def test_load_missing_directory(spark, tmp_path):  # load reads through a session
    with pytest.raises(ModelFormatError, match="not a complete spark_gmm save"):
        GaussianMixtureModel.load(str(tmp_path / "nothing"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: shutil.rmtree(p / "metadata"), "metadata is missing or unreadable"),
        (lambda p: _metadata_file(p).write_text("{not json"), "metadata is missing or unreadable"),
        (lambda p: shutil.rmtree(p / "data"), "data cannot be read"),
        (
            lambda p: [
                f.write_bytes(f.read_bytes()[:40])
                for f in (p / "data").iterdir()
                if f.suffix == ".parquet"
            ],
            "data cannot be read",
        ),
        (
            lambda p: _rewrite_metadata(p, lambda m: m.update(formatVersion=99)),
            "format version 99",
        ),
        (
            lambda p: _rewrite_metadata(p, lambda m: m.update(numFeatures=5)),
            r"means has shape \(3, 2\) but the metadata says k=3, d=5",
        ),
    ],
)
def test_load_rejects_corrupt_directories(tmp_path, fitted, edit, message):
    path = _corrupt(tmp_path, fitted, edit)
    with pytest.raises(ModelFormatError, match=message):
        GaussianMixtureModel.load(path)


def _write_arrays(spark, path, weights, means, covariances):
    rows = [
        (name, list(np.shape(a)), [float(v) for v in np.ravel(a)])
        for name, a in (("weights", weights), ("means", means), ("covariances", covariances))
    ]
    shutil.rmtree(f"{path}/data")
    spark.createDataFrame(
        rows, "name string, shape array<int>, values array<double>"
    ).write.parquet(f"{path}/data")


@pytest.mark.parametrize(
    ("weights", "covariances", "message"),
    [
        ([0.5, 0.4, 0.3], [np.eye(2)] * 3, "weights must sum to 1"),
        (
            [0.4, 0.3, 0.3],
            [np.eye(2), np.eye(2), [[1.0, 3.0], [3.0, 1.0]]],
            "not positive definite",
        ),
        ([0.4, 0.3, 0.3], [np.eye(2), np.eye(2), [[1.0, 0.2], [0.1, 1.0]]], "symmetric"),
    ],
)
def test_load_validates_parameters(spark, tmp_path, fitted, weights, covariances, message):
    path = str(tmp_path / "m")
    fitted["full"].write().overwrite().save(path)
    _write_arrays(spark, path, np.array(weights), np.zeros((3, 2)), np.array(covariances, float))
    with pytest.raises(ModelFormatError, match=message):
        GaussianMixtureModel.load(path)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bic_aic_equal_sklearn(frame, fitted, covariance_type):
    X, df = frame
    model = fitted[covariance_type]
    sk = model.toSklearn()
    assert abs(model.bic(df) - sk.bic(X)) < 1e-8 * abs(sk.bic(X))
    assert abs(model.aic(df) - sk.aic(X)) < 1e-8 * abs(sk.aic(X))
    # Computed at fit time from the final log-likelihood, too.
    assert abs(model.summary.bic - sk.bic(X)) < 1e-8 * abs(sk.bic(X))
    assert abs(model.summary.aic - sk.aic(X)) < 1e-8 * abs(sk.aic(X))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_sklearn_interop_both_ways(frame, fitted, covariance_type):
    X, _ = frame
    model = fitted[covariance_type]
    sk = model.toSklearn()
    assert rel_err(sk.predict_proba(X), model.predict_proba(X)) < 1e-12
    assert rel_err(sk.score_samples(X), model.score_samples(X)) < 1e-12
    assert np.array_equal(sk.predict(X), model.predict(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = SkGaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X)
    back = GaussianMixtureModel.fromSklearn(theirs)
    assert rel_err(back.score_samples(X), theirs.score_samples(X)) < 1e-12


def test_sample_moments_match_the_model(fitted):
    model = fitted["full"]
    n = 200_000
    X, labels = model.sample(n, seed=7)
    assert X.shape == (n, 2) and labels.shape == (n,)
    for j in range(3):
        rows = X[labels == j]
        cov = model.covariances[j]
        stderr = np.sqrt(np.diag(cov) / len(rows))
        assert np.all(np.abs(rows.mean(axis=0) - model.means[j]) < 4 * stderr)
        frac = len(rows) / n
        w = model.weights[j]
        assert abs(frac - w) < 4 * np.sqrt(w * (1 - w) / n)


def test_sample_df_is_reproducible_and_distributed(spark, fitted):
    model = fitted["diag"]
    a = model.sampleDF(spark, 5000, seed=3, numPartitions=3)
    rows = a.collect()
    assert len(rows) == 5000
    assert rows == model.sampleDF(spark, 5000, seed=3, numPartitions=3).collect()
    X = np.array([r["features"].toArray() for r in rows])
    labels = np.array([r["label"] for r in rows])
    for j in range(3):
        stderr = np.sqrt(model.covariances[j] / max(1, (labels == j).sum()))
        assert np.all(np.abs(X[labels == j].mean(axis=0) - model.means[j]) < 5 * stderr)


def test_transform_handle_invalid(spark, fitted):
    model = fitted["full"]
    df = spark.createDataFrame(
        pd.DataFrame({"x0": [0.0, np.nan, 1.0, None], "x1": [1.0, 2.0, np.inf, 3.0]})
    )
    kept = model.copy({model.handleInvalid: "keep"}).transform(df).collect()
    assert [r["prediction"] is None for r in kept] == [False, True, True, True]
    assert kept[1]["probability"] is None and kept[1]["ll"] is None
    skipped = model.copy({model.handleInvalid: "skip"}).transform(df).collect()
    assert len(skipped) == 1
    with pytest.raises(Exception, match=r"row\(s\) of a batch .* have null, NaN, infinite"):
        model.copy({model.handleInvalid: "error"}).transform(df).collect()


def test_to_sklearn_without_scikit_learn_names_the_extra(monkeypatch):
    import sys

    model = GaussianMixtureModel.fromParameters([1.0], [[0.0, 0.0]], [np.eye(2)], "full")
    monkeypatch.setitem(sys.modules, "sklearn.mixture", None)  # import fails, as if absent
    with pytest.raises(ImportError, match=r"spark_gmm\[sklearn\]"):
        model.toSklearn()


def test_a_model_saved_under_the_former_class_path_loads(spark, tmp_path):
    """Saves made before GaussianMixtureModel moved to spark_gmm.model name the class
    spark_gmm.estimator.GaussianMixtureModel; they still load, alone and in a Pipeline."""
    import glob

    model = GaussianMixtureModel.fromParameters([0.4, 0.6], [[0.0], [3.0]], [[[1.0]], [[0.5]]])
    path = str(tmp_path / "old")
    model.write().save(path)
    (meta,) = glob.glob(f"{path}/metadata/part-*")
    text = open(meta).read()
    assert '"class":"spark_gmm.model.GaussianMixtureModel"' in text.replace(" ", "")
    open(meta, "w").write(text.replace("spark_gmm.model.", "spark_gmm.estimator."))
    for crc in glob.glob(f"{path}/metadata/.*.crc"):  # Hadoop's checksum of the old text
        os.remove(crc)
    loaded = GaussianMixtureModel.load(path)
    np.testing.assert_array_equal(loaded.means, model.means)
