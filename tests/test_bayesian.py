"""BayesianGaussianMixture on Spark: the distributed passes equal scikit-learn's
BayesianGaussianMixture iteration for iteration, the prior empties the components the
data do not need, and the model scores, saves and loads like sklearn's."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import make_mixture, rel_err
from sklearn.mixture import BayesianGaussianMixture as SkBayesian

from spark_gmm import BayesianGaussianMixture, BayesianGaussianMixtureModel
from spark_gmm.data import resolve_features
from spark_gmm.em import Variational, fit_em
from spark_gmm.engine import prepare
from spark_gmm.gaussian import COVARIANCE_TYPES, hard_assignment_statistics
from spark_gmm.session import ensure_local_python_workers
from spark_gmm.variational import PRIOR_TYPES, default_priors, m_step

T = 5
COLS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def data(spark):
    X, labels = make_mixture(n=900, d=3, k=3, seed=12)
    pdf = pd.DataFrame(X, columns=COLS)
    pdf["id"] = np.arange(len(X))
    return X, labels, spark.createDataFrame(pdf).repartition(5)


@pytest.fixture(scope="module")
def prepared(data):
    """The input validated and cached once for the eight parity fits."""
    _, _, df = data
    ensure_local_python_workers(df.sparkSession)
    spec, columns = resolve_features(df, COLS, "features", None)
    cached = prepare(df, spec, columns, "error")
    yield cached
    cached.release()


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_distributed_iterations_equal_sklearn_from_the_same_responsibilities(
    data, prepared, ct, prior_type
):
    X, _, _ = data
    k = 5
    rng = np.random.default_rng(2)
    resp = rng.uniform(size=(len(X), k))
    resp /= resp.sum(axis=1, keepdims=True)
    sk = SkBayesian(n_components=k, covariance_type=ct, weight_concentration_prior_type=prior_type)
    sk._check_parameters(X)
    sk._initialize(X, resp)
    bounds = []
    for _ in range(T):
        log_prob_norm, log_resp = sk._e_step(X)
        sk._m_step(X, log_resp)
        bounds.append(float(np.squeeze(sk._compute_lower_bound(log_resp, log_prob_norm))))
    sk._set_parameters(sk._get_parameters())

    priors = default_priors(
        k, ct, X.mean(axis=0), np.cov(X.T), weight_concentration_prior_type=prior_type
    )
    centre = np.repeat(X.mean(axis=0)[None], k, axis=0)
    start = m_step(hard_assignment_statistics(X, None, centre, ct, resp=resp), priors, 1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit_em(
            prepared,
            k,
            ct,
            max_iter=T,
            tol=0.0,
            initial_params=start,
            variant=Variational(priors, 1e-6),
        )
    vp = result.params
    assert rel_err(vp.weights, sk.weights_) < 1e-8
    assert rel_err(vp.means, sk.means_) < 1e-8
    assert rel_err(vp.covariances, sk.covariances_) < 1e-8
    assert rel_err(result.history, bounds) < 1e-8


def test_merge_moves_on_spark_equal_the_numpy_fit(data, prepared):
    """The entropy terms of the candidate merges add up across partitions: the same
    start gives the same merges, bounds and posterior on Spark as in numpy."""
    from spark_gmm.em import InMemoryData
    from spark_gmm.variational import effective_components

    X, _, _ = data
    k = 6  # twice the true 3: the nearest-centre start cuts clusters in pieces
    priors = default_priors(k, "full", X.mean(axis=0), np.cov(X.T))
    centres = X[np.random.default_rng(5).choice(len(X), k, replace=False)]
    start = m_step(hard_assignment_statistics(X, None, centres, "full"), priors, 1e-6)
    results = []
    for source in (prepared, InMemoryData(X, n_blocks=4)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results.append(
                fit_em(
                    source,
                    k,
                    "full",
                    max_iter=T,
                    tol=0.0,
                    initial_params=start,
                    variant=Variational(priors, 1e-6, merges=True),
                )
            )
    on_spark, in_numpy = results
    assert effective_components(on_spark.params.weights, 0.01) == 3
    assert rel_err(on_spark.history, in_numpy.history) < 1e-10
    assert rel_err(on_spark.params.weights, in_numpy.params.weights, floor=1e-12) < 1e-8
    assert rel_err(on_spark.params.means, in_numpy.params.means) < 1e-8


def test_the_prior_empties_the_components_the_data_do_not_need(data):
    X, labels, df = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BayesianGaussianMixture(k=8, inputCols=COLS, seed=3, maxIter=300).fit(df)
    assert model.effectiveK == 3 == model.summary.effectiveK
    assert sum(model.weights) == pytest.approx(1.0)
    # Its priors are sklearn's defaults, from the data's moments.
    assert rel_err(model._priors.mean_prior, X.mean(axis=0)) < 1e-12
    assert rel_err(model._priors.covariance_prior, np.cov(X.T)) < 1e-12
    # The lower bound never decreases (variational EM), and it converged on it.
    hist = np.array(model.summary.lowerBoundHistory)
    assert np.all(np.diff(hist) > -1e-6 * np.abs(hist[1:]))
    assert model.summary.converged
    # transform scores like the numpy model, which scores like sklearn's variational one.
    out = model.setLogLikelihoodCol("ll").transform(df).orderBy("id").collect()
    proba = np.array([r["probability"].toArray() for r in out])
    assert rel_err(proba, model.predict_proba(X), floor=1e-12) < 1e-10
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(labels, proba.argmax(axis=1)) > 0.95
    X_sampled, comps = model.sample(500, seed=1)
    assert X_sampled.shape == (500, 3) and set(np.unique(comps)) <= set(range(8))


def test_save_load_round_trip_and_the_score_job_model_loader(spark, data, tmp_path):
    from spark_gmm.persistence import load_any_model

    X, _, df = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BayesianGaussianMixture(
            k=4,
            inputCols=COLS,
            covarianceType="diag",
            seed=1,
            maxIter=20,
            weightConcentrationPriorType="dirichlet_distribution",
            weightConcentrationPrior=0.5,
        ).fit(df)
    path = str(tmp_path / "bgm")
    model.write().save(path)
    loaded = BayesianGaussianMixtureModel.load(path)
    np.testing.assert_array_equal(loaded.weights, model.weights)
    np.testing.assert_array_equal(loaded.weightConcentration, model.weightConcentration)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert loaded.summary.effectiveK == model.summary.effectiveK
    assert loaded.getOrDefault("weightConcentrationPrior") == 0.5
    assert loaded._priors.weight_concentration_prior == 0.5
    again, gmm = load_any_model(path, spark)
    assert isinstance(gmm, BayesianGaussianMixtureModel) and again is gmm
    est_path = str(tmp_path / "est")
    BayesianGaussianMixture(k=6, covarianceType="tied").save(est_path)
    est = BayesianGaussianMixture.load(est_path)
    assert (est.getK(), est.getCovarianceType()) == (6, "tied")


def test_bad_priors_fail_before_any_em_pass(data):
    _, _, df = data
    from spark_gmm.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="degreesOfFreedomPrior must be > 2"):
        BayesianGaussianMixture(k=2, inputCols=COLS, degreesOfFreedomPrior=1.0).fit(df)
    with pytest.raises(InvalidInputError, match="covariancePrior has 3 values"):
        BayesianGaussianMixture(k=2, inputCols=COLS, covariancePrior=[1.0, 1.0, 1.0]).fit(df)
    with pytest.raises(InvalidInputError, match="weightConcentrationPriorType"):
        BayesianGaussianMixture(k=2, inputCols=COLS, weightConcentrationPriorType="x").fit(df)


def test_fit_job_with_model_bayesian_reports_the_effective_k(data, tmp_path, capsys):
    import json

    from spark_gmm.cli import FitConfig
    from spark_gmm.jobs import run_fit
    from spark_gmm.persistence import load_any_model

    _, _, df = data
    source = str(tmp_path / "input")
    df.write.parquet(source)
    spark = df.sparkSession
    # A short run: that the prior finds k=3 here is the estimator test's claim above; this
    # one is that the job prints, reports and saves what the fitted model says.
    config = FitConfig(
        input=source,
        features=COLS,
        k=8,
        model="bayesian",
        seed=1,
        max_iter=40,
        merge_components=False,  # the config key reaches the estimator and the report
        output=str(tmp_path / "model"),
        report=str(tmp_path / "r"),
    )
    run_fit(spark, config)
    printed = capsys.readouterr().out
    _, gmm = load_any_model(str(tmp_path / "model"), spark)
    assert isinstance(gmm, BayesianGaussianMixtureModel)
    assert f"Bayesian mixture: effective k {gmm.effectiveK} of 8" in printed, printed
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["bayesian"]["effective_k"] == gmm.effectiveK
    assert gmm.getMergeComponents() is False and report["bayesian"]["merge_components"] is False
    weights = [w for _, w in report["bayesian"]["weights_sorted"]]
    assert weights == sorted(weights, reverse=True)
    assert sorted(weights, reverse=True) == pytest.approx(sorted(gmm.weights, reverse=True))
    assert (tmp_path / "r" / "weights.png").stat().st_size > 0
