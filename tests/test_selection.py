"""Model selection: a grid of k x covariance types fitted in shared passes, chosen by BIC/AIC."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import make_mixture, rel_err
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from threadpoolctl import threadpool_limits

from spark_gmm import (
    GaussianMixture,
    GaussianMixtureModel,
    GaussianMixtureSelector,
    InvalidInputError,
)
from spark_gmm.cli import SelectConfig, load_config, main, parse_k_values
from spark_gmm.em import ConvergenceWarning, InMemoryData, fit_em, fit_grid
from spark_gmm.gaussian import COVARIANCE_TYPES
from spark_gmm.jobs import run_select
from spark_gmm.persistence import load_any_model


def _shaped_mixture(n: int, seed: int) -> np.ndarray:
    """Three well-separated 2-d clusters: elongated and tilted differently (full wins)."""
    rng = np.random.default_rng(seed)
    parts = []
    for centre, angle, scales, share in [
        ((0.0, 0.0), 0.5, (3.0, 0.3), 0.5),
        ((12.0, 3.0), -0.9, (2.0, 0.4), 0.3),
        ((4.0, 12.0), 0.0, (0.5, 0.5), 0.2),
    ]:
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        z = rng.normal(size=(int(n * share), 2)) * scales
        parts.append(z @ rot.T + centre)
    return np.concatenate(parts)


# ---------------------------------------------------------------------------
# The driver loop, without Spark
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("init_mode", ["kmeans", "random"])
def test_grid_cells_equal_separate_fits_exactly(init_mode):
    """Every cell of a shared-pass grid is the fit that fit_em makes alone, bit for bit."""
    X, _ = make_mixture(n=600, d=3, k=3, seed=4)
    data = InMemoryData(X, n_blocks=3)
    grid = [(k, t) for t in COVARIANCE_TYPES for k in (1, 2, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cells = fit_grid(data, grid, max_iter=30, init_mode=init_mode, n_init=2, seed=7)
        for cell in cells:
            alone = fit_em(
                data,
                cell.k,
                cell.covariance_type,
                max_iter=30,
                init_mode=init_mode,
                n_init=2,
                seed=7,
            )
            assert cell.error is None and cell.result is not None
            got = cell.result
            assert (cell.k, cell.covariance_type) == (
                got.params.n_components,
                got.params.covariance_type,
            )
            np.testing.assert_array_equal(got.params.means, alone.params.means)
            np.testing.assert_array_equal(got.params.covariances, alone.params.covariances)
            np.testing.assert_array_equal(got.params.weights, alone.params.weights)
            assert got.log_likelihood == alone.log_likelihood
            assert got.history == alone.history
            assert (got.n_iter, got.converged, got.best_index) == (
                alone.n_iter,
                alone.converged,
                alone.best_index,
            )
            assert got.seconds > 0


def test_grid_converged_candidates_leave_the_passes():
    """A k=1 fit converges at once; the grid keeps passing for the others only."""
    X, _ = make_mixture(n=600, d=2, k=3, seed=1)

    class CountingData(InMemoryData):
        tasks_per_pass: list[int] = []

        def statistics(self, tasks, description):
            self.tasks_per_pass.append(len(tasks))
            return super().statistics(tasks, description)

    data = CountingData(X, n_blocks=2)
    cells = fit_grid(data, [(1, "full"), (3, "full")], max_iter=100, tol=1e-6, seed=0)
    # init pass (2), EM passes (2 then 1 after k=1 converged), final scoring pass (2)
    counts = data.tasks_per_pass
    assert counts[0] == 2 and counts[-1] == 2
    em_passes = counts[1:-1]
    assert em_passes[0] == 2 and em_passes[-1] == 1
    assert cells[0].result is not None and cells[0].result.n_iter == 2
    assert len(em_passes) == max(c.result.n_iter for c in cells if c.result)


# ---------------------------------------------------------------------------
# Through Spark
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shaped_df(spark):
    X = _shaped_mixture(1200, seed=3)
    return spark.createDataFrame([tuple(map(float, r)) for r in X], "x double, y double"), X


def test_selector_finds_the_true_k_and_type_like_sklearn_bic(shaped_df):
    df, X = shaped_df
    ks = [1, 2, 3, 4, 5]
    types = list(COVARIANCE_TYPES)
    result = GaussianMixtureSelector(
        kValues=ks, covarianceTypes=types, inputCols=["x", "y"], seed=5
    ).fit(df)
    assert (result.bestK, result.bestCovarianceType) == (3, "full")
    rows = result.toPandas()
    assert len(rows) == len(ks) * len(types)
    assert rows["chosen"].sum() == 1
    assert rows.loc[rows["chosen"], "bic"].item() == rows["bic"].min()
    # sklearn's BIC over the same grid (its own fits, several restarts) picks the same.
    with threadpool_limits(1):  # the 2 cores are busy with Spark's workers
        sk_bic = {
            (k, t): SkGaussianMixture(k, covariance_type=t, n_init=3, random_state=0).fit(X).bic(X)
            for k in ks
            for t in types
        }
    assert min(sk_bic, key=sk_bic.get) == (3, "full")
    # At the chosen (well-identified) model both reach the same optimum. Each stops when
    # the mean log-likelihood moves by < tol=1e-3, so the BICs (-2 n mean LL + ...) agree
    # within 2 n (2 tol).
    ours = rows.loc[rows["chosen"], "bic"].item()
    assert abs(ours - sk_bic[(3, "full")]) < 4 * len(X) * 1e-3
    table = result.table
    assert table.columns == list(rows.columns)
    assert table.count() == len(rows)
    chosen = table.where("chosen").collect()
    assert [(r.k, r.covarianceType) for r in chosen] == [(3, "full")]
    # transform applies the best model
    out = result.transform(df).select("prediction").distinct().count()
    assert out == 3


def test_selection_equals_separate_fits_and_best_model_round_trips(shaped_df, tmp_path):
    df, _ = shaped_df
    selector = GaussianMixtureSelector(
        kValues=[2, 3],
        covarianceTypes=["diag", "full"],
        inputCols=["x", "y"],
        nInit=2,
        seed=11,
        maxIter=40,
        criterion="aic",
    )
    result = selector.fit(df)
    for (k, t), model in result.models.items():
        alone = GaussianMixture(
            k=k,
            covarianceType=t,
            inputCols=["x", "y"],
            nInit=2,
            seed=11,
            maxIter=40,
            initMode=selector.getInitMode(),  # the selector's default start differs
        ).fit(df)
        assert rel_err(model.means, alone.means) < 1e-12
        assert rel_err(model.covariances, alone.covariances) < 1e-12
        assert rel_err(model.weights, alone.weights) < 1e-12
        assert model.summary.aic == pytest.approx(alone.summary.aic, rel=1e-12)
        assert model.summary.numIter == alone.summary.numIter
    rows = result.toPandas()
    assert rows.loc[rows["chosen"], "aic"].item() == rows["aic"].min()
    path = str(tmp_path / "best")
    result.bestModel.save(path)
    loaded = GaussianMixtureModel.load(path)
    assert loaded.getK() == result.bestK
    assert loaded.getCovarianceType() == result.bestCovarianceType
    np.testing.assert_array_equal(loaded.means, result.bestModel.means)
    a = result.bestModel.transform(df).select("probability").collect()
    b = loaded.transform(df).select("probability").collect()
    assert a == b


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"kValues": []}, "kValues is empty"),
        ({"kValues": [0, 2]}, "kValues must all be >= 1"),
        ({"covarianceTypes": ["full", "banded"]}, "unknown 'banded'"),
        ({"covarianceTypes": []}, "covarianceTypes is empty"),
        ({"criterion": "icl"}, "criterion must be one of bic, aic"),
        ({"kValues": [2, 1300]}, "more than the number of usable rows"),
    ],
)
def test_bad_grids_are_refused_with_a_clear_error(shaped_df, params, message):
    df, _ = shaped_df
    settings = {"kValues": [1, 2], "inputCols": ["x", "y"], "initSampleSize": 5000} | params
    with pytest.raises(InvalidInputError, match=message):
        GaussianMixtureSelector(**settings).fit(df)


# ---------------------------------------------------------------------------
# The select job
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1..4", [1, 2, 3, 4]), ("2,8,4,4", [2, 4, 8]), ([3, 1], [1, 3]), (5, [5])],
)
def test_k_values_parse(value, expected):
    assert parse_k_values(value) == expected


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--k", "10..1"], "the range 10..1 is empty (kMin 10 > kMax 1); write it as 1..10"),
        (["--k", "a..b"], "'a..b' is not a range"),
        (["--k", "0..3"], "every k must be >= 1; got 0"),
        (["--covariance-types", "full,banded"], "unknown 'banded'; use any of full, tied"),
        (["--criterion", "icl"], "'criterion' must be bic or aic; got 'icl'"),
    ],
)
def test_select_job_refuses_bad_grids_before_spark_starts(flags, message, capsys):
    argv = ["select", "--input", "in.parquet", "--features", "a,b", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_select_job_saves_the_best_model_and_report(spark, shaped_df, tmp_path):
    df, _ = shaped_df
    source = str(tmp_path / "in")
    df.write.parquet(source)
    model_dir, report_dir = str(tmp_path / "model"), tmp_path / "report"
    config = load_config(
        SelectConfig,
        None,
        {
            "input": source,
            "features": "x,y",
            "k": "2..4",
            "covariance_types": "full,spherical",
            "standardize": True,
            "output": model_dir,
            "report": str(report_dir),
        },
    )
    fitted = run_select(spark, config)
    selection = fitted.stages[-1]
    assert (selection.bestK, selection.bestCovarianceType) == (3, "full")
    # The saved model is the best mixture behind the same scaling stages; it scores.
    model, gm = load_any_model(model_dir, spark)
    assert gm.getK() == 3 and gm.getCovarianceType() == "full"
    np.testing.assert_array_equal(gm.means, selection.bestModel.means)
    assert gm.logLikelihoodQuantiles  # for score --anomaly-quantile
    assert model.transform(df).select("prediction").distinct().count() == 3
    table = pd.read_csv(report_dir / "selection.csv")
    assert len(table) == 6 and table["chosen"].sum() == 1
    assert set(zip(table["k"], table["covarianceType"])) == {
        (k, t) for k in (2, 3, 4) for t in ("full", "spherical")
    }
    report = json.loads((report_dir / "report.json").read_text())
    assert report["chosen"] == {"k": 3, "covariance_type": "full"}
    assert (report_dir / "selection.png").stat().st_size > 10_000


def test_memory_guard_counts_the_whole_grid(spark):
    """Each candidate alone fits the limits; the grid, whose candidates share every pass,
    does not: refused up front, before any Spark job."""
    from spark_gmm.errors import MemoryGuardError
    from spark_gmm.guards import estimate_memory, memory_limits

    d = 300
    cols = [f"c{i}" for i in range(d)]
    df = spark.createDataFrame([tuple(float(i + j) for j in range(d)) for i in range(3)], cols)
    executor_limit, driver_limit = memory_limits(spark)
    one = estimate_memory([(60, "full")], d, block_rows=10_000)
    assert one[0] < executor_limit and one[1] < driver_limit
    sc = spark.sparkContext
    sc.setJobGroup("grid-guard", "grid memory guard")
    try:
        with pytest.raises(MemoryGuardError, match=r"one EM pass needs about .* per executor"):
            GaussianMixtureSelector(
                kValues=list(range(1, 61)), covarianceTypes=["full"], inputCols=cols
            ).fit(df)
    finally:
        sc.setJobGroup("", "")
    assert list(sc.statusTracker().getJobIdsForGroup("grid-guard")) == []
