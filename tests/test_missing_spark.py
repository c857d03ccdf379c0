"""``handleMissing="marginalize"`` through Spark: fit, transform, selector, jobs.

The numpy core (spark_gmm.missing) is checked against a per-row reference in
test_missing.py. Here the Spark plumbing is checked against that same kind of reference:
a few EM iterations from a given start, computed one row at a time in this file, must
equal the distributed fit's; a complete table must give exactly today's fit; and the
scores must equal the numpy functions on the same rows.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_mixture, rel_err
from pyspark.ml.linalg import Vectors

from spark_gmm import (
    BayesianGaussianMixture,
    GaussianMixture,
    GaussianMixtureModel,
    GaussianMixtureSelector,
    missing,
)
from spark_gmm.cli import FitConfig, ScoreConfig, _parser, load_config
from spark_gmm.em import InMemoryData, fit_em
from spark_gmm.errors import InvalidInputError
from spark_gmm.jobs import JobError, run_fit, run_score

COLS = ["a", "b", "c"]


def _holes(n=600, seed=0, share=0.2):
    """Rows of a 3-D, 2-component mixture with ``share`` of the cells missing (NaN),
    at least one value kept per row."""
    X, _ = make_mixture(n=n, d=3, k=2, seed=seed)
    rng = np.random.default_rng(seed + 1)
    out = X.copy()
    holes = rng.uniform(size=X.shape) < share
    holes[np.arange(n), rng.integers(0, 3, n)] = False
    out[holes] = np.nan
    return out


def _column_frame(spark, X, null_columns=("a",)):
    """A DataFrame of columns a, b, c: missing values are null in ``null_columns`` and
    NaN in the others (both are missing values under marginalize)."""
    records = []
    for i, row in enumerate(X):
        values = []
        for name, v in zip(COLS, row):
            values.append(None if np.isnan(v) and name in null_columns else float(v))
        records.append((i, *values))
    return spark.createDataFrame(records, "id long, a double, b double, c double")


def _vector_frame(spark, X):
    return spark.createDataFrame(
        [(i, Vectors.dense([float(v) for v in row])) for i, row in enumerate(X)],
        ["id", "features"],
    )


def _reference_em(X, params, n_iter, reg_covar):
    """``n_iter`` EM iterations with marginalised missing values, one row at a time
    (Ghahramani & Jordan 1994), full or diag covariances. Returns the parameters and the
    observed-data log-likelihood of each iteration's E-step."""
    k, d = params.means.shape
    weights, means = params.weights.copy(), params.means.copy()
    if params.covariance_type == "full":
        covs = params.covariances.copy()
    else:
        covs = np.stack([np.diag(c) for c in params.covariances])
    history = []
    for _ in range(n_iter):
        nk, sk, scatter, loglik = np.zeros(k), np.zeros((k, d)), np.zeros((k, d, d)), 0.0
        for x in X:
            o, m = ~np.isnan(x), np.isnan(x)
            log_dens, completed, cond = np.empty(k), np.empty((k, d)), np.zeros((k, d, d))
            for j in range(k):
                inv_oo = np.linalg.inv(covs[j][np.ix_(o, o)])
                diff = x[o] - means[j][o]
                log_dens[j] = np.log(weights[j]) - 0.5 * (
                    o.sum() * np.log(2 * np.pi)
                    + np.linalg.slogdet(covs[j][np.ix_(o, o)])[1]
                    + diff @ inv_oo @ diff
                )
                completed[j] = np.where(m, 0.0, x)
                completed[j, m] = means[j][m] + covs[j][np.ix_(m, o)] @ inv_oo @ diff
                cond[j][np.ix_(m, m)] = (
                    covs[j][np.ix_(m, m)] - covs[j][np.ix_(m, o)] @ inv_oo @ covs[j][np.ix_(o, m)]
                )
            lse = np.logaddexp.reduce(log_dens)
            r = np.exp(log_dens - lse)
            loglik += lse
            for j in range(k):
                e = completed[j] - means[j]
                nk[j] += r[j]
                sk[j] += r[j] * e
                scatter[j] += r[j] * (np.outer(e, e) + cond[j])
        history.append(loglik / len(X))
        shift = sk / nk[:, None]
        means = means + shift
        covs = scatter / nk[:, None, None] - np.einsum("kd,ke->kde", shift, shift)
        covs += reg_covar * np.eye(d)
        if params.covariance_type == "diag":
            covs = np.stack([np.diag(np.diag(c)) for c in covs])
        weights = nk / nk.sum()
    return weights, means, covs, history


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_warm_started_iterations_equal_a_per_row_reference(spark, covariance_type):
    X = _holes(n=300)
    complete = X[~np.isnan(X).any(axis=1)]
    start = GaussianMixtureModel.fromParameters(
        [0.5, 0.5],
        [complete[:50].mean(axis=0), complete[50:100].mean(axis=0)],
        np.stack([np.cov(complete.T) if covariance_type == "full" else np.var(complete, 0)] * 2),
        covariance_type,
    )
    n_iter = 4
    model = GaussianMixture(
        k=2,
        covarianceType=covariance_type,
        inputCols=COLS,
        handleMissing="marginalize",
        initialModel=start,
        maxIter=n_iter,
        tol=0.0,
    ).fit(_column_frame(spark, X).repartition(3))
    weights, means, covs, history = _reference_em(X, start.mixtureParameters, n_iter, 1e-6)
    assert model.summary.numIter == n_iter
    assert rel_err(model.weights, weights) < 1e-10
    assert rel_err(model.means, means) < 1e-10
    got = model.covariances
    if covariance_type == "diag":
        got = np.stack([np.diag(c) for c in got])
    assert rel_err(got, covs) < 1e-10
    # The history holds each E-step's observed-data log-likelihood: the reference's.
    np.testing.assert_allclose(model.summary.logLikelihoodHistory[:n_iter], history, rtol=1e-11)
    assert np.all(np.diff(model.summary.logLikelihoodHistory) >= -1e-12)
    assert model.summary.numRows == len(X) and model.summary.numSkippedRows == 0


def test_complete_table_gives_todays_fit(spark, mixture_data):
    X = mixture_data[0][:800]
    df = _vector_frame(spark, X)
    plain = GaussianMixture(k=3, seed=5).fit(df)
    marginal = GaussianMixture(k=3, seed=5, handleMissing="marginalize").fit(df)
    assert rel_err(marginal.means, plain.means) < 1e-12
    assert rel_err(marginal.covariances, plain.covariances) < 1e-12
    assert marginal.summary.logLikelihood == pytest.approx(plain.summary.logLikelihood, rel=1e-12)


def test_distributed_fit_equals_the_in_memory_engine(spark):
    """Same seed, same sample, same starts: the Spark fit (vector column, NaN entries,
    4 partitions) and the numpy engine over the same rows agree."""
    X = _holes(n=800, seed=3)
    model = GaussianMixture(k=2, seed=11, handleMissing="marginalize").fit(
        _vector_frame(spark, X).repartition(4)
    )
    result = fit_em(
        InMemoryData(X, n_blocks=3), 2, "full", init_mode="short-em", seed=11, missing=True
    )
    assert rel_err(model.means, result.params.means) < 1e-9
    assert rel_err(model.covariances, result.params.covariances) < 1e-9
    history = model.summary.logLikelihoodHistory
    assert np.all(np.diff(history) >= -1e-12), history


MODEL = GaussianMixtureModel.fromParameters(
    [0.3, 0.7],
    [[0.0, 1.0, -1.0], [3.0, -2.0, 2.0]],
    np.array([[[1.0, 0.6, 0.2], [0.6, 2.0, 0.3], [0.2, 0.3, 0.5]], np.eye(3)]),
    "full",
)


@pytest.mark.parametrize("source", ["columns", "vector"])
def test_transform_scores_observed_values_and_imputes(spark, udf_path, source):
    X = _holes(n=400, seed=7)
    X[5] = np.nan  # nothing observed: invalid
    X[9, 1] = np.inf  # infinite: invalid
    df = _column_frame(spark, X) if source == "columns" else _vector_frame(spark, X)
    model = MODEL.copy().setHandleMissing("marginalize").setImputedCol("filled")
    if source == "columns":
        model.setInputCols(COLS)
    out = (
        model.setHandleInvalid("keep")
        .setLogLikelihoodCol("ll")
        .transform(df.repartition(3))
        .orderBy("id")
        .collect()
    )
    ok = np.ones(len(X), dtype=bool)
    ok[[5, 9]] = False
    for i in (5, 9):
        assert out[i]["prediction"] is None and out[i]["filled"] is None
    params = MODEL.mixtureParameters
    log_prob, resp = missing.score_and_proba_missing(X[ok], params)
    kept = [r for r, good in zip(out, ok) if good]
    np.testing.assert_allclose([r["ll"] for r in kept], log_prob, rtol=1e-12)
    np.testing.assert_allclose(
        [r["probability"].toArray() for r in kept], resp, rtol=1e-10, atol=1e-300
    )
    assert [r["prediction"] for r in kept] == list(resp.argmax(axis=1))
    np.testing.assert_allclose(
        [r["filled"].toArray() for r in kept], missing.impute(X[ok], params), rtol=1e-12
    )
    # A complete row's score is the plain density's.
    full_row = int(np.flatnonzero(ok & ~np.isnan(X).any(axis=1))[0])
    assert out[full_row]["ll"] == pytest.approx(MODEL.score_samples(X[[full_row]])[0], rel=1e-12)
    # Without marginalize, the rows with missing values are invalid, as before.
    plain = MODEL.copy().setHandleInvalid("skip")
    if source == "columns":
        plain.setInputCols(COLS)
    assert plain.transform(df).count() == int((~np.isnan(X).any(axis=1) & ok).sum())
    with pytest.raises(Exception, match="handleMissing='marginalize'"):
        plain.setHandleInvalid("error").transform(df).collect()


def test_errors_name_the_problem(spark):
    X, _ = make_mixture(n=200, d=3, k=2, seed=0)
    df = _column_frame(spark, X).withColumn("a", _null_double())
    with pytest.raises(InvalidInputError, match=r"'a'.*missing \(null or NaN\) in every usable"):
        GaussianMixture(k=2, inputCols=COLS, handleMissing="marginalize").fit(df)
    with pytest.raises(InvalidInputError, match="handleMissing must be one of"):
        GaussianMixture(k=2, inputCols=COLS, handleMissing="impute").fit(df)
    with pytest.raises(InvalidInputError, match="not available for the Bayesian mixture"):
        BayesianGaussianMixture(k=2, inputCols=COLS, handleMissing="marginalize").fit(df)
    # Rows with nothing observed follow handleInvalid.
    Y = _holes(n=200)
    Y[:7] = np.nan
    df = _column_frame(spark, Y)
    with pytest.raises(InvalidInputError, match="rows with every feature null or NaN: 7"):
        GaussianMixture(k=2, inputCols=COLS, handleMissing="marginalize").fit(df)
    model = GaussianMixture(
        k=2, inputCols=COLS, handleMissing="marginalize", handleInvalid="skip", maxIter=5
    ).fit(df)
    assert model.summary.numSkippedRows == 7 and model.summary.numRows == 193


def _null_double():
    from pyspark.sql import functions as F

    return F.lit(None).cast("double")


def test_selector_marginalizes_like_the_estimator(spark):
    X = _holes(n=500, seed=4)
    df = _column_frame(spark, X)
    selector = GaussianMixtureSelector(
        kValues=[1, 2],
        covarianceTypes=["full"],
        inputCols=COLS,
        handleMissing="marginalize",
        seed=2,
    )
    chosen = selector.fit(df)
    assert chosen.bestModel.getK() == 2
    single = selector.estimatorFor(2, "full").fit(df)
    assert rel_err(chosen.bestModel.means, single.means) < 1e-10


def _config(cls, argv):
    """A job's config from its command line, as ``spark-gmm`` builds it."""
    args = vars(_parser().parse_args(argv))
    args.pop("command")
    return load_config(cls, args.pop("config"), args)


def test_fit_and_score_jobs_with_missing_values(spark, tmp_path):
    X = _holes(n=400, seed=8)
    data = tmp_path / "in.parquet"
    _column_frame(spark, X, null_columns=COLS).write.parquet(str(data))
    model_dir, scored = str(tmp_path / "model"), str(tmp_path / "scored")
    common = ["--input", str(data), "--features", "a,b,c"]
    fit = ["fit", *common, "--k", "2", "--max-iter", "20", "--output", model_dir]
    run_fit(spark, _config(FitConfig, [*fit, "--handle-missing", "marginalize"]))
    model = GaussianMixtureModel.load(model_dir)
    assert model.getHandleMissing() == "marginalize" and model.summary.numRows == len(X)
    score = ["score", *common, "--model", model_dir, "--id-cols", "id", "--output", scored]
    run_score(spark, _config(ScoreConfig, [*score, "--imputed-col", "filled"]))
    rows = spark.read.parquet(scored).orderBy("id").collect()
    assert len(rows) == len(X)
    params = model.mixtureParameters
    np.testing.assert_allclose(
        [r["log_likelihood"] for r in rows],
        missing.score_and_proba_missing(X, params)[0],
        rtol=1e-12,
    )
    np.testing.assert_allclose([r["filled"] for r in rows], missing.impute(X, params), rtol=1e-12)
    # Refused: standardising (StandardScaler does not skip NaN), and imputing without
    # marginalising.
    with pytest.raises(JobError, match="standardize cannot be combined"):
        run_fit(
            spark,
            _config(
                FitConfig,
                [*fit, "--overwrite", "--standardize", "--handle-missing", "marginalize"],
            ),
        )
    argv = [*score, "--mode", "overwrite", "--imputed-col", "filled", "--handle-missing", "invalid"]
    with pytest.raises(JobError, match="imputed_col needs handle_missing = marginalize"):
        run_score(spark, _config(ScoreConfig, argv))
