"""Choosing k (and the covariance type): a grid of fits in shared data passes, scored by BIC/AIC.

``GaussianMixtureSelector(kValues=[1, ..., 10], covarianceTypes=[...]).fit(df)`` fits every
(k, covariance type) of the grid the way :class:`~spark_gmm.GaussianMixture` would fit it
alone, with the same seed (same sample, same starts, same EM steps, so the same model), but
all candidates advance together: one pass over the cached rows per EM iteration computes
the statistics of every candidate still running, and a converged candidate leaves the
passes. The k-means starts are computed once per k and shared by the covariance types.

The result is a :class:`GaussianMixtureSelectionModel`: ``bestModel`` (the candidate with
the lowest criterion), every candidate's model in ``models``, and ``table``, a DataFrame
with one row per candidate.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters

from spark_gmm import gaussian
from spark_gmm.em import GridCell, fit_grid
from spark_gmm.errors import InvalidInputError
from spark_gmm.estimator import GaussianMixture
from spark_gmm.gaussian import COVARIANCE_TYPES
from spark_gmm.model import GaussianMixtureModel
from spark_gmm.params import _OVERFLOW, _check_scale, _MixtureFitParams, _MixtureFitSetters
from spark_gmm.session import ensure_local_python_workers

__all__ = [
    "CRITERIA",
    "TABLE_SCHEMA",
    "GaussianMixtureSelectionModel",
    "GaussianMixtureSelector",
    "SelectionRow",
]

log = logging.getLogger("spark_gmm")

CRITERIA = ("bic", "aic")

# The selector's own params and those of the whole run; all its others are passed to
# every candidate's fit.
_GRID_PARAMS = (
    "kValues",
    "covarianceTypes",
    "criterion",
    "checkpointDir",
    "checkpointInterval",
    "resumeFromCheckpoint",
)

TABLE_SCHEMA = (
    "k int, covarianceType string, numParameters int, logLikelihood double, "
    "meanLogLikelihood double, bic double, aic double, numIter int, converged boolean, "
    "seconds double, chosen boolean, error string"
)


@dataclass
class SelectionRow:
    """One candidate of the grid, as a row of the selection table.

    ``seconds`` is the compute charged to this candidate (executor time of its
    statistics, summed over cores, plus its driver-side M-steps). The data passes are
    shared, so the rows do not add up to the wall time of the selection.
    A candidate whose every start failed has ``error`` set and NaN/None numbers.
    """

    k: int
    covarianceType: str
    numParameters: int
    logLikelihood: float
    meanLogLikelihood: float
    bic: float
    aic: float
    numIter: int | None
    converged: bool | None
    seconds: float
    chosen: bool
    error: str | None

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__dataclass_fields__)


class _SelectorParams(_MixtureFitParams):
    kValues: Param[Any] = Param(
        Params._dummy(),
        "kValues",
        "Numbers of components to try, e.g. [1, 2, ..., 10]. Each must be >= 1.",
        typeConverter=TypeConverters.toListInt,
    )
    covarianceTypes: Param[Any] = Param(
        Params._dummy(),
        "covarianceTypes",
        "Covariance structures to try, any of 'full', 'tied', 'diag', 'spherical'.",
        typeConverter=TypeConverters.toListString,
    )
    criterion: Param[str] = Param(
        Params._dummy(),
        "criterion",
        "How the best candidate is chosen: 'bic' (Bayesian information criterion, "
        "default) or 'aic'; the lowest wins.",
        typeConverter=TypeConverters.toString,
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(
            kValues=list(range(1, 11)),
            covarianceTypes=list(COVARIANCE_TYPES),
            criterion="bic",
            nInit=1,
            # Every cell of a grid would repeat the short EM runs of initMode="short-em"
            # on the driver; the grid itself already explores, so k-means starts here.
            initMode="kmeans",
        )

    def getKValues(self) -> list[int]:
        return list(self.getOrDefault(self.kValues))

    def getCovarianceTypes(self) -> list[str]:
        return list(self.getOrDefault(self.covarianceTypes))

    def getCriterion(self) -> str:
        return self.getOrDefault(self.criterion)

    def _grid(self) -> list[tuple[int, str]]:
        """The distinct (k, covariance type) pairs, checked, in table order."""
        ks = self.getKValues()
        types = self.getCovarianceTypes()
        if not ks:
            raise InvalidInputError("kValues is empty; give at least one k, e.g. [1, 2, 3].")
        bad_k = [k for k in ks if k < 1]
        if bad_k:
            raise InvalidInputError(f"kValues must all be >= 1; got {bad_k}.")
        if not types:
            raise InvalidInputError(
                f"covarianceTypes is empty; give some of {', '.join(COVARIANCE_TYPES)}."
            )
        unknown = [t for t in types if t not in COVARIANCE_TYPES]
        if unknown:
            raise InvalidInputError(
                f"covarianceTypes: unknown {', '.join(map(repr, unknown))}; use any of "
                f"{', '.join(COVARIANCE_TYPES)}."
            )
        if self.getCriterion() not in CRITERIA:
            raise InvalidInputError(
                f"criterion must be one of {', '.join(CRITERIA)}; got {self.getCriterion()!r}."
            )
        ks = sorted(set(ks))
        types = list(dict.fromkeys(types))
        self._validate_common(max(ks))
        return [(k, t) for t in types for k in ks]


class GaussianMixtureSelector(
    Estimator["GaussianMixtureSelectionModel"], _SelectorParams, _MixtureFitSetters
):
    """Fit a grid of k by covariance types in shared data passes; keep the best by BIC/AIC.

    Every param of :class:`~spark_gmm.GaussianMixture` except ``k``, ``covarianceType``
    and ``initialModel`` applies to every candidate (``initMode`` defaults to ``kmeans``
    here: the grid explores already, and short EM runs per cell would cost each cell
    driver time).

    Examples
    --------
    >>> sel = GaussianMixtureSelector(kValues=list(range(1, 9)),
    ...                               covarianceTypes=["full", "diag"],
    ...                               inputCols=["x", "y"])             # doctest: +SKIP
    >>> result = sel.fit(df)                                           # doctest: +SKIP
    >>> result.bestModel.getK(), result.table.show()                   # doctest: +SKIP
    """

    _input_kwargs: dict[str, Any]

    @keyword_only
    def __init__(
        self,
        *,
        kValues: list[int] | None = None,
        covarianceTypes: list[str] | None = None,
        criterion: str = "bic",
        featuresCol: str = "features",
        predictionCol: str = "prediction",
        probabilityCol: str = "probability",
        tol: float = 1e-3,
        maxIter: int = 100,
        seed: int | None = None,
        aggregationDepth: int = 2,
        weightCol: str | None = None,
        inputCols: list[str] | None = None,
        regCovar: float = 1e-6,
        initMode: str = "kmeans",
        nInit: int = 1,
        logLikelihoodCol: str | None = None,
        handleInvalid: str = "error",
        handleMissing: str = "invalid",
        imputedCol: str | None = None,
        initSampleSize: int = 100_000,
        checkpointDir: str | None = None,
        checkpointInterval: int = 10,
        resumeFromCheckpoint: bool = False,
        cacheStorageLevel: str = "MEMORY_AND_DISK",
        blockDtype: str = "float64",
        maxBlockSizeInMB: float = 0.0,
    ) -> None:
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> GaussianMixtureSelector:
        """Set any of the constructor's params (keyword arguments only)."""
        kwargs = {key: value for key, value in self._input_kwargs.items() if value is not None}
        return self._set(**kwargs)

    def setKValues(self, value: list[int]) -> GaussianMixtureSelector:
        return self._set(kValues=value)

    def setCovarianceTypes(self, value: list[str]) -> GaussianMixtureSelector:
        return self._set(covarianceTypes=value)

    def setCriterion(self, value: str) -> GaussianMixtureSelector:
        return self._set(criterion=value)

    def estimatorFor(self, k: int, covarianceType: str) -> GaussianMixture:
        """The :class:`GaussianMixture` whose fit is the grid's (k, covarianceType) cell."""
        shared = {
            p.name: v for p, v in self.extractParamMap().items() if p.name not in _GRID_PARAMS
        }
        return GaussianMixture(**shared, k=k, covarianceType=covarianceType)

    def _fit(self, dataset: Any) -> GaussianMixtureSelectionModel:
        started = time.perf_counter()
        grid = self._grid()
        ensure_local_python_workers(dataset.sparkSession)
        spec, columns = self._features(dataset)
        # The guard counts every candidate of the grid: they share each pass.
        data = self._prepare(
            dataset, spec, columns, [(k, t) for k, t in grid for _ in range(self.getNInit())]
        )
        try:
            k_max = max(k for k, _ in grid)
            if data.n_rows < k_max:
                raise InvalidInputError(
                    f"kValues include k={k_max}, more than the number of usable rows "
                    f"({data.n_rows}). Use smaller k values."
                )
            if data.summary is not None:
                _check_scale(data.summary, spec, k_max, self.getRegCovar())
            cells = fit_grid(
                data,
                grid,
                max_iter=self.getMaxIter(),
                tol=self.getTol(),
                reg_covar=self.getRegCovar(),
                init_mode=self.getInitMode(),
                n_init=self.getNInit(),
                seed=self.getSeed(),
                init_sample_size=data.init_sample_size or self.getInitSampleSize(),
                checkpoint=self._checkpointer(data, spec, {"grid": [[k, t] for k, t in grid]}),
                resume=self.getResumeFromCheckpoint(),
                missing=self._marginalize(),
            )
        except FloatingPointError:
            raise InvalidInputError(_OVERFLOW) from None
        finally:
            data.release()
        models: dict[tuple[int, str], GaussianMixtureModel] = {}
        for cell in cells:
            if cell.result is not None:
                estimator = self.estimatorFor(cell.k, cell.covariance_type)
                models[(cell.k, cell.covariance_type)] = estimator._model_from_result(
                    cell.result, spec, data, dataset
                )
        if not models:
            first = cells[0].error
            assert first is not None
            raise first
        rows = _table_rows(cells, models, spec.n_features, self.getCriterion())
        best = next(r for r in rows if r.chosen)
        log.info(
            "model selection: %d candidates in %.1f s; best by %s: k=%d %s (%s %.6g)",
            len(cells),
            time.perf_counter() - started,
            self.getCriterion().upper(),
            best.k,
            best.covarianceType,
            self.getCriterion().upper(),
            getattr(best, self.getCriterion()),
        )
        result = GaussianMixtureSelectionModel(
            models[(best.k, best.covarianceType)], models, rows, self.getCriterion()
        )
        result._spark = dataset.sparkSession
        return self._copyValues(result)


def _table_rows(
    cells: list[GridCell],
    models: dict[tuple[int, str], GaussianMixtureModel],
    n_features: int,
    criterion: str,
) -> list[SelectionRow]:
    rows = []
    for cell in cells:
        n_params = gaussian.n_parameters(cell.covariance_type, cell.k, n_features)
        model = models.get((cell.k, cell.covariance_type))
        if model is None or cell.result is None:
            nan = float("nan")
            rows.append(
                SelectionRow(
                    k=cell.k,
                    covarianceType=cell.covariance_type,
                    numParameters=n_params,
                    logLikelihood=nan,
                    meanLogLikelihood=nan,
                    bic=nan,
                    aic=nan,
                    numIter=None,
                    converged=None,
                    seconds=0.0,
                    chosen=False,
                    error=str(cell.error),
                )
            )
            continue
        s = model.summary
        rows.append(
            SelectionRow(
                k=cell.k,
                covarianceType=cell.covariance_type,
                numParameters=n_params,
                logLikelihood=s.logLikelihood,
                meanLogLikelihood=s.meanLogLikelihood,
                bic=s.bic,
                aic=s.aic,
                numIter=s.numIter,
                converged=s.converged,
                seconds=cell.result.seconds,
                chosen=False,
                error=None,
            )
        )
    # Lowest criterion wins; on a tie, the simpler model (fewer parameters, then smaller k).
    fitted = [r for r in rows if r.error is None and math.isfinite(getattr(r, criterion))]
    best = min(fitted, key=lambda r: (getattr(r, criterion), r.numParameters, r.k))
    best.chosen = True
    return rows


class GaussianMixtureSelectionModel(Model):
    """Result of :class:`GaussianMixtureSelector`: the best model and the whole grid.

    Attributes
    ----------
    bestModel : GaussianMixtureModel
        The candidate with the lowest criterion (save it like any model).
    models : dict of (k, covarianceType) -> GaussianMixtureModel
        Every candidate that fitted.
    rows : list of SelectionRow
        The table as Python objects (see :attr:`table` for a DataFrame).
    criterion : str

    ``transform`` applies ``bestModel``.
    """

    def __init__(
        self,
        bestModel: GaussianMixtureModel,
        models: dict[tuple[int, str], GaussianMixtureModel],
        rows: list[SelectionRow],
        criterion: str,
    ) -> None:
        super().__init__()
        self.bestModel = bestModel
        self.models = models
        self.rows = rows
        self.criterion = criterion
        self._spark: Any = None

    @property
    def bestK(self) -> int:
        return self.bestModel.getK()

    @property
    def bestCovarianceType(self) -> str:
        return self.bestModel.getCovarianceType()

    @property
    def table(self) -> Any:
        """One row per candidate (see :data:`TABLE_SCHEMA`), in grid order."""
        from pyspark.sql import SparkSession

        spark = self._spark or SparkSession.active()
        return spark.createDataFrame([r.as_tuple() for r in self.rows], TABLE_SCHEMA)

    def toPandas(self) -> Any:
        """The table as a pandas DataFrame (no Spark job)."""
        import pandas as pd

        return pd.DataFrame([r.as_tuple() for r in self.rows], columns=_columns())

    def _transform(self, dataset: Any) -> Any:
        return self.bestModel.transform(dataset)


def _columns() -> list[str]:
    return list(SelectionRow.__dataclass_fields__)
