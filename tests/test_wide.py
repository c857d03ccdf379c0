"""Wide tables (embeddings, d in the hundreds) and the diag/spherical GEMM kernels:
equality with sklearn at width, the exact fallback for means far from the others, the
float32 compute path within its stated bound, and the counts without argmax."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import rel_err
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from spark_gmm import GaussianMixture, GaussianMixtureModel, gaussian
from spark_gmm.gaussian import MixtureParameters, SufficientStatistics

DIAGONAL = ("diag", "spherical")
# Variances below this are compared absolutely (to 1e-8 x COV_FLOOR): a component left
# with one row has variances of regCovar plus rounding, and sklearn's E[x^2] - mu^2 form
# leaves ~1e-14 of cancellation there (ours is centred).
COV_FLOOR = 1e-3


def _embedding_like(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """Rows around k centres on a 3-dimensional curve in d dimensions, with per-feature
    noise: overlapping clusters, as text or image embeddings have."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(3, d)) / np.sqrt(3)
    t = np.sort(rng.uniform(0, 2 * np.pi, size=k))
    latent = np.column_stack([np.cos(t), np.sin(t), 0.3 * np.cos(3 * t)]) * 1.5
    centres = latent @ basis
    labels = rng.integers(0, k, size=n)
    scale = rng.uniform(0.2, 0.4, size=(k, d))
    return centres[labels] + rng.standard_normal((n, d)) * scale[labels]


def _start(X, k, covariance_type):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SkGaussianMixture(
            k, covariance_type=covariance_type, max_iter=1, random_state=0
        ).fit(X)


def _sklearn_iterations(X, start, covariance_type, iterations):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SkGaussianMixture(
            start.n_components,
            covariance_type=covariance_type,
            weights_init=start.weights_,
            means_init=start.means_,
            precisions_init=start.precisions_,
            max_iter=iterations,
            tol=0,
        ).fit(X)


def _em(X, params, iterations, n_blocks=3, dtype=np.float64):
    bounds = np.linspace(0, len(X), n_blocks + 1).astype(int)
    history = []
    for _ in range(iterations):
        stats = SufficientStatistics.zeros(params.covariance_type, params.means)
        for a, b in zip(bounds[:-1], bounds[1:]):
            block = np.asfortranarray(X[a:b], dtype=dtype)
            stats.merge(gaussian.block_statistics(block, None, params))
        history.append(stats.log_likelihood / stats.total_weight)
        params = gaussian.m_step(stats, 1e-6)
    return params, history


@pytest.fixture(scope="module")
def wide():
    return _embedding_like(3000, 256, 64, seed=3)


@pytest.mark.parametrize("covariance_type", DIAGONAL)
def test_numpy_em_equals_sklearn_at_d256_k64(wide, covariance_type):
    """Five iterations from the same start equal sklearn to 1e-8 at d=256, k=64."""
    X = wide
    start = _start(X, 64, covariance_type)
    ref = _sklearn_iterations(X, start, covariance_type, 5)
    params, history = _em(
        X,
        MixtureParameters.from_precisions(
            start.weights_, start.means_, start.precisions_, covariance_type
        ),
        5,
    )
    assert rel_err(params.weights, ref.weights_) < 1e-8
    assert rel_err(params.means, ref.means_) < 1e-8
    assert rel_err(params.covariances, ref.covariances_, floor=COV_FLOOR) < 1e-8
    assert abs(history[-1] - ref.lower_bound_) < 1e-10 * abs(ref.lower_bound_)


@pytest.mark.parametrize("covariance_type", DIAGONAL)
def test_spark_fit_equals_sklearn_at_d256_k64(spark, wide, covariance_type):
    """The same on Spark, from an ``array<double>`` column as embeddings are stored."""
    X = wide[:1500]
    df = spark.createDataFrame([(row.tolist(),) for row in X], "emb array<double>").repartition(3)
    start = _start(X, 64, covariance_type)
    ref = _sklearn_iterations(X, start, covariance_type, 3)
    initial = GaussianMixtureModel.fromParameters(
        start.weights_, start.means_, start.covariances_, covariance_type
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GaussianMixture(
            k=64,
            featuresCol="emb",
            covarianceType=covariance_type,
            initialModel=initial,
            maxIter=3,
            tol=0.0,
        ).fit(df)
    assert model.summary.numIter == 3
    assert rel_err(model.means, ref.means_) < 1e-8
    assert rel_err(model.covariances, ref.covariances_, floor=COV_FLOOR) < 1e-8
    assert abs(model.summary.meanLogLikelihood - ref.score(X)) < 1e-10 * abs(ref.score(X))


def _residual_statistics(X, resp, centres, covariance_type):
    """The centred sums straight from their definition: residuals per component."""
    diff = X[None, :, :] - centres[:, None, :]  # (k, n, d)
    sk = np.einsum("nk,knd->kd", resp, diff)
    scatter = np.einsum("nk,knd->kd", resp, diff * diff)
    if covariance_type == "spherical":
        scatter = scatter.mean(axis=1)
    return resp.sum(axis=0), sk, scatter


@pytest.mark.parametrize("covariance_type", DIAGONAL)
def test_mean_far_from_the_others_keeps_the_digits_of_the_centred_form(
    covariance_type, monkeypatch
):
    """Means 1e5 standard deviations apart: the GEMM expansion around the mean of the
    means would lose ~9 digits of the scatters; they are recomputed from residuals."""
    rng = np.random.default_rng(5)
    d, k = 6, 3
    means = np.zeros((k, d))
    means[1] = 3.0
    means[2] = 1e5  # sigma 1: 1e5 standard deviations away
    variances = np.full((k, d), 1.0) if covariance_type == "diag" else np.ones(k)
    params = MixtureParameters.from_covariances(
        np.full(k, 1 / k), means, variances, covariance_type
    )
    labels = rng.integers(0, k, size=600)
    X = np.asfortranarray(means[labels] + rng.standard_normal((600, d)))
    _, resp = gaussian.score_and_proba(X, params)
    _, sk, scatter = _residual_statistics(X, resp, params.means, covariance_type)

    def check():
        stats = gaussian.block_statistics(X, None, params)
        got = stats.scatter.mean(axis=1) if covariance_type == "spherical" else stats.scatter
        return rel_err(stats.sk, sk, floor=1e-3), rel_err(got, scatter)

    # Every mean is ~3e4 standard deviations from the mean of the means (the reference
    # point); means a few deviations apart would need none of this.
    assert params.diag_terms.far[np.dtype(np.float64)].all()
    near = MixtureParameters.from_covariances(
        np.full(k, 1 / k), means * (means < 10), variances, covariance_type
    )
    assert not near.diag_terms.far[np.dtype(np.float64)].any()
    sk_err, scatter_err = check()
    assert sk_err < 1e-9 and scatter_err < 1e-10, (sk_err, scatter_err)
    # Without the fallback the expansion's error shows: the check above can fail.
    monkeypatch.setitem(gaussian._EXACT_RATIO, np.dtype(np.float64), np.inf)
    params = MixtureParameters.from_covariances(
        np.full(k, 1 / k), means, variances, covariance_type
    )
    assert not params.diag_terms.far[np.dtype(np.float64)].any()
    assert check()[1] > 1e-8


@pytest.mark.parametrize("covariance_type", DIAGONAL)
@pytest.mark.parametrize("standardised", [True, False], ids=["standardised", "raw"])
def test_float32_path_within_its_stated_bound(wide, covariance_type, standardised):
    """float32 blocks compute in float32 for diag/spherical. From the same start, ten
    iterations stay within the bound docs/performance.md states against float64 on the
    same rounded rows: mean log-likelihood 2e-6, means 5e-4 and variances 2e-4 (relative;
    floors of 1e-3 of the data's scale), on standardised rows and on rows in raw units
    (offset 1e3, scale 1e2). Measured (benchmarks/results/float32_accuracy.md): up to
    1.3e-7, 6.3e-5 and 1.5e-5."""
    X = wide[:1500] if standardised else wide[:1500] * 1e2 + 1e3
    X32 = X.astype(np.float32).astype(np.float64)  # the rows both paths see
    start = _start(X32, 16, covariance_type)
    params0 = MixtureParameters.from_precisions(
        start.weights_, start.means_, start.precisions_, covariance_type
    )
    p64, h64 = _em(X32, params0, 10)
    p32, h32 = _em(X32, params0, 10, dtype=np.float32)
    scale = 1.0 if standardised else 1e2
    assert abs(h32[-1] - h64[-1]) < 2e-6 * abs(h64[-1]), (h32[-1], h64[-1])
    assert rel_err(p32.means, p64.means, floor=1e-3 * scale) < 5e-4
    assert rel_err(p32.covariances, p64.covariances, floor=1e-3 * scale**2) < 2e-4
    # And float32 really is computed in float32: the two differ.
    assert h32[-1] != h64[-1]


def test_counts_equal_argmax_with_ties_and_empty_rows():
    """The most-likely counts without argmax agree with argmax (first on a tie), also
    for rows whose log-probabilities are all -inf or NaN."""
    rng = np.random.default_rng(0)
    wlp = rng.normal(size=(5, 200))
    wlp[3] = wlp[1]  # exact ties between components 1 and 3
    for rows in (
        wlp,
        np.where(np.arange(200) == 7, -np.inf, wlp),
        np.where(np.arange(200) == 9, np.nan, wlp),
    ):
        expected = np.bincount(np.argmax(rows, axis=0), minlength=5)
        _, _, counts = gaussian._log_normalize_counts_t(rows.copy())
        assert counts is not None and counts.tolist() == expected.tolist()
    distinct = rng.normal(size=(5, 200))
    _, _, counts = gaussian._log_normalize_counts_t(distinct.copy())
    assert counts.tolist() == np.bincount(np.argmax(distinct, axis=0), minlength=5).tolist()


def test_array_of_float_column_fits_and_scores_as_its_doubles(spark, wide):
    """An ``array<float>`` column (how embeddings are stored; read as float32, half the
    bytes) gives the model and scores of the same values as ``array<double>``."""
    from pyspark.sql import functions as F

    X = wide[:600, :32].astype(np.float32)
    rows = [(row.tolist(),) for row in X]
    floats = spark.createDataFrame(rows, "emb array<float>").repartition(2)
    doubles = floats.select(F.col("emb").cast("array<double>").alias("emb"))
    models = [
        GaussianMixture(k=4, featuresCol="emb", covarianceType="diag", seed=1, maxIter=5).fit(df)
        for df in (floats, doubles)
    ]
    assert np.array_equal(models[0].means, models[1].means)
    assert np.array_equal(models[0].covariances, models[1].covariances)
    scores = [
        np.array([r[0] for r in m.setLogLikelihoodCol("ll").transform(df).select("ll").collect()])
        for m, df in zip(models, (floats, doubles))
    ]
    assert scores[0].shape == (600,) and np.array_equal(np.sort(scores[0]), np.sort(scores[1]))
