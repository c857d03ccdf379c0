"""``GaussianMixture`` / ``GaussianMixtureModel``: a drop-in for ``pyspark.ml.clustering``.

Same param names as MLlib's estimator where MLlib has them, plus sklearn's features
(four covariance types, ``regCovar``, ``nInit``, initialisation modes). The maths is in
:mod:`spark_gmm.gaussian`, the EM loop in :mod:`spark_gmm.em`, the Spark plumbing in
:mod:`spark_gmm.engine`.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasAggregationDepth,
    HasCheckpointInterval,
    HasFeaturesCol,
    HasHandleInvalid,
    HasInputCols,
    HasMaxBlockSizeInMB,
    HasMaxIter,
    HasPredictionCol,
    HasProbabilityCol,
    HasSeed,
    HasTol,
    HasWeightCol,
)
from pyspark.ml.util import MLReadable, MLWritable

from spark_gmm import gaussian, kernels
from spark_gmm.checkpoint import Checkpointer, local_checkpoint_dir
from spark_gmm.data import FeatureSpec, resolve_features
from spark_gmm.em import INIT_MODES, EMResult, fit_em
from spark_gmm.engine import BLOCK_DTYPES, STORAGE_LEVELS, CacheOptions, PreparedData, prepare
from spark_gmm.errors import InvalidInputError
from spark_gmm.gaussian import COVARIANCE_TYPES, MixtureParameters
from spark_gmm.session import ensure_local_python_workers

__all__ = ["GaussianMixture", "GaussianMixtureModel", "GaussianMixtureSummary"]

log = logging.getLogger("spark_gmm")

Array = NDArray[np.float64]

# A fixed default seed (MLlib's default hashes the class name, which Python salts per
# process): the same call gives the same model in every run.
_DEFAULT_SEED = zlib.crc32(b"spark_gmm.GaussianMixture")

HANDLE_INVALID = ("error", "skip", "keep")

_OVERFLOW = (
    "EM statistics became infinite: the features, or the weights in weightCol, are too "
    "large for float64 once squared and summed. Rescale them (divide by a constant, or "
    "standardize) and fit again."
)


class _MixtureFitParams(
    HasMaxIter,
    HasFeaturesCol,
    HasInputCols,
    HasSeed,
    HasPredictionCol,
    HasProbabilityCol,
    HasTol,
    HasAggregationDepth,
    HasWeightCol,
    HasHandleInvalid,
    HasCheckpointInterval,
    HasMaxBlockSizeInMB,
):
    """Params of every fit, whatever chooses k: shared by :class:`GaussianMixture`,
    :class:`GaussianMixtureModel` and the model selector."""

    regCovar: Param[float] = Param(
        Params._dummy(),
        "regCovar",
        "Non-negative value added to the diagonal of every covariance, so that they stay "
        "positive definite. Must be >= 0.",
        typeConverter=TypeConverters.toFloat,
    )
    initMode: Param[str] = Param(
        Params._dummy(),
        "initMode",
        "Initialisation: 'short-em' (short EM runs on a sample from k-means, k-means++, "
        "random-row and random-responsibility starts; the best one starts the full EM), "
        "'kmeans' (k-means on a sample, then one M-step on all rows' nearest-centre "
        "labels), 'k-means++' (k-means++ seeds, no Lloyd iterations), 'random_from_data' "
        "(k random rows as centres), 'random' (random responsibilities).",
        typeConverter=TypeConverters.toString,
    )
    nInit: Param[int] = Param(
        Params._dummy(),
        "nInit",
        "Number of full EM runs (sklearn's n_init), each from its own initialisation, run "
        "together in shared data passes; the one with the best final log-likelihood is "
        "kept. Must be >= 1.",
        typeConverter=TypeConverters.toInt,
    )
    logLikelihoodCol: Param[str] = Param(
        Params._dummy(),
        "logLikelihoodCol",
        "Output column of each row's log-likelihood under the model; unset: not added.",
        typeConverter=TypeConverters.toString,
    )
    initSampleSize: Param[int] = Param(
        Params._dummy(),
        "initSampleSize",
        "Rows sampled (by a hash of their content, independent of partitioning) for the "
        "driver-side initialisation. Must be >= k.",
        typeConverter=TypeConverters.toInt,
    )

    checkpointDir: Param[str] = Param(
        Params._dummy(),
        "checkpointDir",
        "Local or mounted directory where the EM state of every candidate is saved after "
        "the initialisation and every checkpointInterval iterations (atomically); unset: "
        "no checkpoints.",
        typeConverter=TypeConverters.toString,
    )
    resumeFromCheckpoint: Param[bool] = Param(
        Params._dummy(),
        "resumeFromCheckpoint",
        "Continue from the state saved in checkpointDir (refused if it was written for "
        "other input or settings); start from scratch when there is none.",
        typeConverter=TypeConverters.toBoolean,
    )

    cacheStorageLevel: Param[str] = Param(
        Params._dummy(),
        "cacheStorageLevel",
        "Where the validated input blocks are kept between EM passes: a Spark storage "
        "level name (MEMORY_AND_DISK: executor memory, spilling to local disk when it is "
        "full; DISK_ONLY; MEMORY_ONLY; their _SER/_2 variants; OFF_HEAP), or NONE: no "
        "cache, every pass reads and validates the input again.",
        typeConverter=TypeConverters.toString,
    )
    blockDtype: Param[str] = Param(
        Params._dummy(),
        "blockDtype",
        "Precision of the cached features: 'float64', or 'float32' to halve the cache and "
        "the bytes each pass moves (values rounded to float32 once; statistics are still "
        "accumulated in float64).",
        typeConverter=TypeConverters.toString,
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(
            cacheStorageLevel="MEMORY_AND_DISK",
            blockDtype="float64",
            maxIter=100,
            tol=1e-3,
            seed=_DEFAULT_SEED,
            aggregationDepth=2,
            regCovar=1e-6,
            initMode="short-em",
            nInit=1,
            handleInvalid="error",
            initSampleSize=100_000,
            checkpointInterval=10,
            resumeFromCheckpoint=False,
        )

    def getCheckpointDir(self) -> str | None:
        return self._opt(self.checkpointDir)

    def getResumeFromCheckpoint(self) -> bool:
        return self.getOrDefault(self.resumeFromCheckpoint)

    def _checkpointer(
        self, data: PreparedData, spec: FeatureSpec, trajectory: dict[str, Any]
    ) -> Checkpointer | None:
        """The fit's checkpoint writer/reader, or None when checkpoints are off.

        ``trajectory``: the settings besides the common ones that determine the EM path
        (k and covariance type, or the grid). ``maxIter`` is left out on purpose: a fit
        may be resumed with a larger cap.
        """
        directory = self.getCheckpointDir()
        if directory is None:
            return None
        settings = {
            "features": list(spec.names),
            "weightCol": self._opt(self.weightCol),
            "handleInvalid": self.getHandleInvalid(),
            "tol": self.getTol(),
            "regCovar": self.getRegCovar(),
            "initMode": self.getInitMode(),
            "nInit": self.getNInit(),
            "seed": self.getSeed(),
            "initSampleSize": self.getInitSampleSize(),
            "blockDtype": self.getBlockDtype(),
            **trajectory,
        }
        return Checkpointer(directory, self.getCheckpointInterval(), settings, data.fingerprint())

    def getRegCovar(self) -> float:
        return self.getOrDefault(self.regCovar)

    def getInitMode(self) -> str:
        return self.getOrDefault(self.initMode)

    def getNInit(self) -> int:
        return self.getOrDefault(self.nInit)

    def getLogLikelihoodCol(self) -> str | None:
        return (
            self.getOrDefault(self.logLikelihoodCol)
            if self.isDefined(self.logLikelihoodCol)
            else None
        )

    def getInitSampleSize(self) -> int:
        return self.getOrDefault(self.initSampleSize)

    def getCacheStorageLevel(self) -> str:
        return self.getOrDefault(self.cacheStorageLevel)

    def getBlockDtype(self) -> str:
        return self.getOrDefault(self.blockDtype)

    def _cache_options(self) -> CacheOptions:
        """The cache settings, validated (raises InvalidInputError naming the param)."""
        return CacheOptions(
            storage_level=self.getCacheStorageLevel().upper(),
            block_dtype=self.getBlockDtype(),
            max_block_bytes=int(self.getMaxBlockSizeInMB() * 2**20),
        )

    def _prepare(
        self,
        dataset: Any,
        spec: FeatureSpec,
        columns: list[Any],
        shapes: list[tuple[int, str]],
        sample: bool = True,
    ) -> PreparedData:
        """Check memory for the candidates that will share each pass, validate, convert
        and cache the input, then check the driver's initialisation sample (unless there
        is none) now that the number of rows is known."""
        options = self._cache_options()
        spark = dataset.sparkSession
        block_rows = kernels.kernel_rows(spec.n_features)
        _check_memory(spark, shapes, spec.n_features, block_rows, 0)
        data = prepare(
            dataset,
            spec,
            columns,
            self.getHandleInvalid(),
            aggregation_depth=self.getAggregationDepth(),
            options=options,
        )
        if sample:
            try:
                rows = min(self.getInitSampleSize(), data.n_rows)
                _check_memory(spark, shapes, spec.n_features, block_rows, rows)
            except Exception:
                data.release()
                raise
        return data

    def _opt(self, param: Param[Any]) -> Any:
        """Value of an optional param, None when unset or empty."""
        return (
            self.getOrDefault(param) if self.isDefined(param) and self.getOrDefault(param) else None
        )

    def _validate_common(self, k_max: int) -> None:
        """Check every common param against its constraint, before any Spark job runs."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise InvalidInputError(message)

        need(self.getMaxIter() >= 1, f"maxIter must be >= 1; got {self.getMaxIter()}.")
        need(self.getTol() >= 0, f"tol must be >= 0; got {self.getTol()}.")
        need(
            self.getRegCovar() >= 0 and math.isfinite(self.getRegCovar()),
            f"regCovar must be a finite number >= 0; got {self.getRegCovar()}.",
        )
        need(self.getNInit() >= 1, f"nInit must be >= 1; got {self.getNInit()}.")
        need(
            self.getAggregationDepth() >= 1,
            f"aggregationDepth must be >= 1; got {self.getAggregationDepth()}.",
        )
        need(
            self.getInitMode() in INIT_MODES,
            f"initMode must be one of {', '.join(INIT_MODES)}; got {self.getInitMode()!r}.",
        )
        need(
            self.getHandleInvalid() in HANDLE_INVALID,
            f"handleInvalid must be one of {', '.join(HANDLE_INVALID)}; "
            f"got {self.getHandleInvalid()!r}.",
        )
        need(
            self.getInitSampleSize() >= k_max,
            f"initSampleSize must be >= k={k_max}; got {self.getInitSampleSize()}.",
        )
        need(
            self.getCacheStorageLevel().upper() in STORAGE_LEVELS,
            f"cacheStorageLevel must be one of {', '.join(STORAGE_LEVELS)}; "
            f"got {self.getCacheStorageLevel()!r}.",
        )
        need(
            self.getBlockDtype() in BLOCK_DTYPES,
            f"blockDtype must be one of {', '.join(BLOCK_DTYPES)}; got {self.getBlockDtype()!r}.",
        )
        need(
            self.getMaxBlockSizeInMB() >= 0 and math.isfinite(self.getMaxBlockSizeInMB()),
            f"maxBlockSizeInMB must be >= 0 (0: automatic); got {self.getMaxBlockSizeInMB()}.",
        )
        need(
            self.getCheckpointDir() is not None or not self.getResumeFromCheckpoint(),
            "resumeFromCheckpoint needs checkpointDir (the directory the checkpoint was "
            "written to); set it, or drop resumeFromCheckpoint.",
        )
        if self.getCheckpointDir() is not None:
            need(
                self.getCheckpointInterval() >= 1,
                f"checkpointInterval must be >= 1 when checkpointDir is set; got "
                f"{self.getCheckpointInterval()} (unset checkpointDir to turn checkpoints off).",
            )
            local_checkpoint_dir(self.getCheckpointDir() or "")

    def _features(
        self, dataset: Any, n_features: int | None = None, with_weight: bool = True
    ) -> tuple[Any, list[Any]]:
        return resolve_features(
            dataset,
            self._opt(self.inputCols),
            self.getFeaturesCol(),
            self._opt(self.weightCol) if with_weight else None,
            n_features=n_features,
        )


_Fit = TypeVar("_Fit", bound="_MixtureFitSetters")


class _MixtureFitSetters(_MixtureFitParams):
    """MLlib-style setters of the shared fit params, for the two estimators
    (:class:`GaussianMixture` and :class:`~spark_gmm.GaussianMixtureSelector`); each
    returns the estimator it was called on."""

    def setMaxIter(self: _Fit, value: int) -> _Fit:
        return self._set(maxIter=value)

    def setTol(self: _Fit, value: float) -> _Fit:
        return self._set(tol=value)

    def setSeed(self: _Fit, value: int) -> _Fit:
        return self._set(seed=value)

    def setFeaturesCol(self: _Fit, value: str) -> _Fit:
        return self._set(featuresCol=value)

    def setInputCols(self: _Fit, value: list[str]) -> _Fit:
        return self._set(inputCols=value)

    def setPredictionCol(self: _Fit, value: str) -> _Fit:
        return self._set(predictionCol=value)

    def setProbabilityCol(self: _Fit, value: str) -> _Fit:
        return self._set(probabilityCol=value)

    def setWeightCol(self: _Fit, value: str) -> _Fit:
        return self._set(weightCol=value)

    def setAggregationDepth(self: _Fit, value: int) -> _Fit:
        return self._set(aggregationDepth=value)

    def setRegCovar(self: _Fit, value: float) -> _Fit:
        return self._set(regCovar=value)

    def setInitMode(self: _Fit, value: str) -> _Fit:
        return self._set(initMode=value)

    def setNInit(self: _Fit, value: int) -> _Fit:
        return self._set(nInit=value)

    def setLogLikelihoodCol(self: _Fit, value: str) -> _Fit:
        return self._set(logLikelihoodCol=value)

    def setHandleInvalid(self: _Fit, value: str) -> _Fit:
        return self._set(handleInvalid=value)

    def setInitSampleSize(self: _Fit, value: int) -> _Fit:
        return self._set(initSampleSize=value)

    def setCheckpointDir(self: _Fit, value: str) -> _Fit:
        return self._set(checkpointDir=value)

    def setCheckpointInterval(self: _Fit, value: int) -> _Fit:
        return self._set(checkpointInterval=value)

    def setResumeFromCheckpoint(self: _Fit, value: bool) -> _Fit:
        return self._set(resumeFromCheckpoint=value)

    def setCacheStorageLevel(self: _Fit, value: str) -> _Fit:
        return self._set(cacheStorageLevel=value)

    def setBlockDtype(self: _Fit, value: str) -> _Fit:
        return self._set(blockDtype=value)

    def setMaxBlockSizeInMB(self: _Fit, value: float) -> _Fit:
        return self._set(maxBlockSizeInMB=value)


class _GaussianMixtureParams(_MixtureFitParams):
    """Params of :class:`GaussianMixture` and :class:`GaussianMixtureModel`."""

    k: Param[int] = Param(
        Params._dummy(),
        "k",
        "Number of Gaussian components in the mixture. Must be >= 1.",
        typeConverter=TypeConverters.toInt,
    )
    covarianceType: Param[str] = Param(
        Params._dummy(),
        "covarianceType",
        "Covariance structure: 'full' (each component its own matrix), 'tied' (one "
        "matrix shared by all), 'diag' (diagonal per component), 'spherical' (one "
        "variance per component).",
        typeConverter=TypeConverters.toString,
    )
    initialModel: Param[Any] = Param(
        Params._dummy(),
        "initialModel",
        "A GaussianMixtureModel to start EM from (warm start); overrides initMode/nInit.",
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(k=2, covarianceType="full")

    def getK(self) -> int:
        return self.getOrDefault(self.k)

    def getCovarianceType(self) -> str:
        return self.getOrDefault(self.covarianceType)

    def getInitialModel(self) -> GaussianMixtureModel | None:
        return self.getOrDefault(self.initialModel) if self.isDefined(self.initialModel) else None

    def _validate_params(self) -> None:
        """Check every param against its constraint, before any Spark job runs."""
        k = self.getK()
        if k < 1:
            raise InvalidInputError(f"k must be >= 1; got {k}.")
        if self.getCovarianceType() not in COVARIANCE_TYPES:
            raise InvalidInputError(
                f"covarianceType must be one of {', '.join(COVARIANCE_TYPES)}; "
                f"got {self.getCovarianceType()!r}."
            )
        self._validate_common(k)


@dataclass
class GaussianMixtureSummary:
    """Training summary.

    Attributes
    ----------
    k : int
    logLikelihood : float
        Total (weighted) log-likelihood of the training rows under the final model, as
        MLlib reports it.
    meanLogLikelihood : float
        ``logLikelihood`` divided by the total weight (the number of rows when
        unweighted), as sklearn's ``score``; ``tol`` applies to its change.
    numIter : int
    converged : bool
    logLikelihoodHistory : list of float
        Mean log-likelihood after 0, 1, ..., numIter EM iterations.
    iterationSeconds : list of float
    clusterSizes : list of int
        Training rows whose most likely component is each component.
    numRows : int
        Rows used by the fit.
    numSkippedRows : int
        Invalid rows dropped under ``handleInvalid='skip'``.
    totalWeight : float
    candidateLogLikelihoods : list of float
        Final mean log-likelihood of each of the ``nInit`` candidates (NaN: failed).
    bic, aic : float
        Information criteria (sklearn's definitions; n = total weight).
    """

    k: int
    logLikelihood: float
    meanLogLikelihood: float
    numIter: int
    converged: bool
    logLikelihoodHistory: list[float]
    iterationSeconds: list[float]
    clusterSizes: list[int]
    numRows: int
    numSkippedRows: int
    totalWeight: float
    candidateLogLikelihoods: list[float]
    bic: float
    aic: float
    _model: Any = field(default=None, repr=False)
    _dataset: Any = field(default=None, repr=False)

    @property
    def predictions(self) -> Any:
        """The training DataFrame transformed by the model (lazy; not kept by save/load)."""
        if self._dataset is None:
            raise RuntimeError("predictions are not available on a loaded model's summary.")
        return self._model.transform(self._dataset)

    @property
    def featuresCol(self) -> str:
        """Name of the features column of the model (MLlib's; with ``inputCols`` the
        features are those columns and this is the unused default)."""
        return str(self._model.getFeaturesCol()) if self._model is not None else "features"

    @property
    def predictionCol(self) -> str:
        """Name of the predicted component column in ``predictions``."""
        return str(self._model.getPredictionCol()) if self._model is not None else "prediction"

    @property
    def probabilityCol(self) -> str:
        """Name of the membership probabilities column in ``predictions``."""
        return (
            str(self._model.getProbabilityCol()) if self._model is not None else "probability"
        )

    @property
    def cluster(self) -> Any:
        """The predicted component of every training row (a one-column DataFrame)."""
        return self.predictions.select(self.predictionCol)

    @property
    def probability(self) -> Any:
        """The membership probabilities of every training row (a one-column DataFrame)."""
        return self.predictions.select(self.probabilityCol)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of the numbers (no DataFrames)."""
        return {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if not name.startswith("_")
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], model: Any = None) -> GaussianMixtureSummary:
        known = {n for n in cls.__dataclass_fields__ if not n.startswith("_")}
        return cls(**{k: v for k, v in values.items() if k in known}, _model=model)


class GaussianMixture(
    Estimator["GaussianMixtureModel"],
    _GaussianMixtureParams,
    _MixtureFitSetters,
    MLWritable,
    MLReadable[Any],
):
    """Gaussian mixture clustering fitted by distributed EM.

    A drop-in for :class:`pyspark.ml.clustering.GaussianMixture` (same param names and
    usage in a Pipeline) with scikit-learn's numerics: log-space E-step, Cholesky of the
    precision, ``regCovar``, four covariance types, restarts that share data passes.

    Examples
    --------
    >>> gm = GaussianMixture(k=3, inputCols=["x", "y"], seed=1)   # doctest: +SKIP
    >>> model = gm.fit(df)                                         # doctest: +SKIP
    >>> model.transform(df).select("prediction", "probability")    # doctest: +SKIP
    """

    _input_kwargs: dict[str, Any]

    @keyword_only
    def __init__(
        self,
        *,
        featuresCol: str = "features",
        predictionCol: str = "prediction",
        k: int = 2,
        probabilityCol: str = "probability",
        tol: float = 1e-3,
        maxIter: int = 100,
        seed: int | None = None,
        aggregationDepth: int = 2,
        weightCol: str | None = None,
        inputCols: list[str] | None = None,
        covarianceType: str = "full",
        regCovar: float = 1e-6,
        initMode: str = "short-em",
        nInit: int = 1,
        initialModel: GaussianMixtureModel | None = None,
        logLikelihoodCol: str | None = None,
        handleInvalid: str = "error",
        initSampleSize: int = 100_000,
        checkpointDir: str | None = None,
        checkpointInterval: int = 10,
        resumeFromCheckpoint: bool = False,
        cacheStorageLevel: str = "MEMORY_AND_DISK",
        blockDtype: str = "float64",
        maxBlockSizeInMB: float = 0.0,
    ) -> None:
        super().__init__()
        kwargs = self._input_kwargs
        self.setParams(**kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> GaussianMixture:
        """Set any of the constructor's params (keyword arguments only)."""
        kwargs = {key: value for key, value in self._input_kwargs.items() if value is not None}
        return self._set(**kwargs)

    # setters, like MLlib's
    def setK(self, value: int) -> GaussianMixture:
        return self._set(k=value)

    def setCovarianceType(self, value: str) -> GaussianMixture:
        return self._set(covarianceType=value)

    def setInitialModel(self, value: GaussianMixtureModel) -> GaussianMixture:
        return self._set(initialModel=value)

    def write(self) -> Any:
        """An ``MLWriter``: ``gm.write().overwrite().save(path)``; params as JSON."""
        from spark_gmm.persistence import GaussianMixtureWriter

        return GaussianMixtureWriter(self)

    @classmethod
    def read(cls) -> Any:
        from spark_gmm.persistence import GaussianMixtureReader

        return GaussianMixtureReader(cls)

    def _fit(self, dataset: Any) -> GaussianMixtureModel:
        self._validate_params()
        k = self.getK()
        covariance_type = self.getCovarianceType()
        initial = self.getInitialModel()
        initial_params = None
        if initial is not None:
            initial_params = initial.mixtureParameters
            if (
                initial_params.n_components != k
                or initial_params.covariance_type != covariance_type
            ):
                raise InvalidInputError(
                    f"initialModel has k={initial_params.n_components} and covarianceType="
                    f"{initial_params.covariance_type!r}, but this estimator has k={k} and "
                    f"covarianceType={covariance_type!r}; make them agree."
                )
        ensure_local_python_workers(dataset.sparkSession)
        spec, columns = self._features(dataset)
        if initial_params is not None and initial_params.n_features != spec.n_features:
            raise InvalidInputError(
                f"initialModel has {initial_params.n_features} features but the input has "
                f"{spec.n_features}."
            )
        n_candidates = 1 if initial_params is not None else self.getNInit()
        data = self._prepare(
            dataset,
            spec,
            columns,
            [(k, covariance_type)] * n_candidates,
            sample=initial_params is None,
        )
        try:
            if data.n_rows < k:
                raise InvalidInputError(
                    f"k={k} is larger than the number of usable rows ({data.n_rows}). "
                    "Use a smaller k."
                )
            if data.summary is not None:
                _check_scale(data.summary, spec, k, self.getRegCovar())
            result = fit_em(
                data,
                k,
                covariance_type,
                max_iter=self.getMaxIter(),
                tol=self.getTol(),
                reg_covar=self.getRegCovar(),
                init_mode=self.getInitMode(),
                n_init=self.getNInit(),
                seed=self.getSeed(),
                initial_params=initial_params,
                init_sample_size=self.getInitSampleSize(),
                checkpoint=self._checkpointer(
                    data,
                    spec,
                    {
                        "k": k,
                        "covarianceType": covariance_type,
                        "initialModel": None if initial_params is None else _digest(initial_params),
                    },
                ),
                resume=self.getResumeFromCheckpoint(),
            )
        except FloatingPointError:
            raise InvalidInputError(_OVERFLOW) from None
        finally:
            data.release()
        return self._model_from_result(result, spec, data, dataset)

    def _model_from_result(
        self, result: EMResult, spec: FeatureSpec, data: PreparedData, dataset: Any
    ) -> GaussianMixtureModel:
        """The fitted model, its training summary and this estimator's params."""
        params = result.params
        n_params = gaussian.n_parameters(
            params.covariance_type, params.n_components, params.n_features
        )
        model = GaussianMixtureModel(params)
        model._feature_names = list(spec.names)
        summary = GaussianMixtureSummary(
            k=params.n_components,
            logLikelihood=result.log_likelihood,
            meanLogLikelihood=result.log_likelihood / result.total_weight,
            numIter=result.n_iter,
            converged=result.converged,
            logLikelihoodHistory=list(result.history),
            iterationSeconds=list(result.iteration_seconds),
            clusterSizes=[int(c) for c in result.cluster_sizes],
            numRows=data.n_rows,
            numSkippedRows=data.n_skipped,
            totalWeight=result.total_weight,
            candidateLogLikelihoods=list(result.candidate_log_likelihoods),
            bic=-2.0 * result.log_likelihood + n_params * math.log(result.total_weight),
            aic=-2.0 * result.log_likelihood + 2.0 * n_params,
            _model=model,
            _dataset=dataset,
        )
        model._summary = summary
        return self._copyValues(model)


def _digest(params: MixtureParameters) -> str:
    """A short content hash of mixture parameters (checkpoint settings)."""
    import hashlib

    h = hashlib.sha256(params.covariance_type.encode())
    for a in (params.weights, params.means, params.precisions_chol):
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _check_memory(
    spark: Any, shapes: list[tuple[int, str]], n_features: int, block_rows: int, sample_rows: int
) -> None:
    """The memory guard (:mod:`spark_gmm.guards`), before any data pass."""
    from spark_gmm.guards import check_memory, memory_limits

    executor_limit, driver_limit = memory_limits(spark)
    check_memory(
        shapes,
        n_features,
        block_rows=block_rows,
        executor_limit=executor_limit,
        driver_limit=driver_limit,
        sample_rows=sample_rows,
    )


def _check_scale(summary: Any, spec: Any, k: int, reg_covar: float) -> None:
    """Features varying on a scale regCovar swamps: an error if no feature is left to
    separate k > 1 components, else a warning naming them."""
    from spark_gmm.data import tiny_scale_features

    tiny = tiny_scale_features(spec, summary, reg_covar)
    if not tiny:
        return
    listed = ", ".join(f"'{name}' (range {span:.3g})" for name, span in tiny[:5])
    span = summary.col_max - summary.col_min
    varying = int(np.sum(np.isfinite(span) & (span > 0)))
    text = (
        f"Features {listed} vary on a scale far below regCovar={reg_covar:g} (or so small "
        "that their squares underflow), so EM sees them as constant."
    )
    fix = (
        "Rescale the features (StandardScaler, or --standardize in the jobs; for values "
        "near 1e-300 multiply by a constant first) or lower regCovar."
    )
    if k > 1 and varying == len(tiny):
        raise InvalidInputError(f"{text} No feature is left to separate k={k} components. {fix}")
    log.warning("%s %s", text, fix)


class GaussianMixtureModel(Model, _GaussianMixtureParams, MLWritable, MLReadable[Any]):
    """A fitted (or hand-built) Gaussian mixture.

    Build one from numbers with :meth:`fromParameters`. ``transform`` adds
    ``predictionCol`` (int), ``probabilityCol`` (ml Vector) and, when set,
    ``logLikelihoodCol`` (double).
    """

    def __init__(self, params: MixtureParameters | None = None) -> None:
        super().__init__()
        self._mixture = params
        self._summary: GaussianMixtureSummary | None = None
        self._feature_names: list[str] = []
        # [[q, log-likelihood], ...] of the training rows, set by the fit job so that
        # scoring can flag rows less likely than the training q-quantile; saved with it.
        self.logLikelihoodQuantiles: list[list[float]] | None = None
        if params is not None:
            # The model's own k/covarianceType params describe its parameters.
            self._set(k=params.n_components, covarianceType=params.covariance_type)

    @classmethod
    def fromParameters(
        cls,
        weights: Any,
        means: Any,
        covariances: Any,
        covarianceType: str = "full",
    ) -> GaussianMixtureModel:
        """A model from weights (k,), means (k, d) and covariances (sklearn's shapes)."""
        params = MixtureParameters.from_covariances(weights, means, covariances, covarianceType)
        return cls(params)

    def write(self) -> Any:
        """An ``MLWriter``: ``model.write().overwrite().save(path)`` (JSON + Parquet, no pickle)."""
        from spark_gmm.persistence import GaussianMixtureModelWriter

        return GaussianMixtureModelWriter(self)

    @classmethod
    def read(cls) -> Any:
        from spark_gmm.persistence import GaussianMixtureModelReader

        return GaussianMixtureModelReader(cls)

    # -- fitted parameters -------------------------------------------------

    @property
    def mixtureParameters(self) -> MixtureParameters:
        if self._mixture is None:
            raise InvalidInputError("This GaussianMixtureModel holds no parameters.")
        return self._mixture

    @property
    def weights(self) -> list[float]:
        """Mixing weights, a list of k floats (like MLlib)."""
        return [float(x) for x in self.mixtureParameters.weights]

    @property
    def means(self) -> Array:
        """Component means, shape (k, d)."""
        return self.mixtureParameters.means.copy()

    @property
    def covariances(self) -> Array:
        """Covariances in sklearn's shape for ``covarianceType``."""
        return self.mixtureParameters.covariances.copy()

    @property
    def precisionsCholesky(self) -> Array:
        """Cholesky factors of the precision matrices (sklearn's ``precisions_cholesky_``)."""
        return self.mixtureParameters.precisions_chol.copy()

    @property
    def numFeatures(self) -> int:
        return self.mixtureParameters.n_features

    def _full_covariances(self) -> Array:
        p = self.mixtureParameters
        k, d = p.n_components, p.n_features
        cov = p.covariances
        if p.covariance_type == "full":
            return cov
        if p.covariance_type == "tied":
            return np.repeat(cov[None], k, axis=0)
        if p.covariance_type == "diag":
            return np.stack([np.diag(c) for c in cov])
        return np.stack([np.eye(d) * c for c in cov])

    @property
    def gaussians(self) -> list[Any]:
        """One ``pyspark.ml.stat.MultivariateGaussian`` (mean, full covariance) per
        component, as MLlib's (built on the driver, no Spark job)."""
        from pyspark.ml.linalg import DenseMatrix, DenseVector
        from pyspark.ml.stat import MultivariateGaussian

        d = self.numFeatures
        return [
            MultivariateGaussian(
                DenseVector(mean), DenseMatrix(d, d, cov.ravel(order="F").tolist())
            )
            for mean, cov in zip(self.mixtureParameters.means, self._full_covariances())
        ]

    @property
    def gaussiansDF(self) -> Any:
        """One row per component: ``mean`` (DenseVector) and ``cov`` (DenseMatrix), as MLlib."""
        from pyspark.ml.linalg import DenseMatrix, DenseVector
        from pyspark.sql import SparkSession

        spark = SparkSession.active()
        d = self.numFeatures
        rows = [
            (DenseVector(mean), DenseMatrix(d, d, cov.ravel(order="F").tolist()))
            for mean, cov in zip(self.mixtureParameters.means, self._full_covariances())
        ]
        return spark.createDataFrame(rows, ["mean", "cov"])

    @property
    def hasSummary(self) -> bool:
        return self._summary is not None

    @property
    def summary(self) -> GaussianMixtureSummary:
        if self._summary is None:
            raise RuntimeError("No training summary: this model was not produced by fit().")
        return self._summary

    # -- numpy helpers (sklearn's names) ----------------------------------

    def _as_matrix(self, X: Any) -> Array:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != self.numFeatures:
            raise InvalidInputError(
                f"The model has {self.numFeatures} features but the data has "
                f"{X.shape[-1] if X.ndim else 0}."
            )
        return X

    def predict_proba(self, X: Any) -> Array:
        """Membership probabilities of each row of ``X``, shape (n, k)."""
        return gaussian.predict_proba(self._as_matrix(X), self.mixtureParameters)

    def score_samples(self, X: Any) -> Array:
        """Log-likelihood of each row of ``X``, shape (n,)."""
        return gaussian.score_samples(self._as_matrix(X), self.mixtureParameters)

    def score(self, X: Any) -> float:
        """Mean log-likelihood of the rows of ``X`` (sklearn's ``score``)."""
        return float(np.mean(self.score_samples(X)))

    def predict(self, value: Any) -> Any:
        """Most likely component: an int for one vector (MLlib), an array for a matrix."""
        X = np.asarray(value.toArray() if hasattr(value, "toArray") else value, dtype=np.float64)
        labels = np.argmax(self.predict_proba(X), axis=1)
        return int(labels[0]) if X.ndim == 1 else labels

    def predictProbability(self, value: Any) -> Any:
        """Membership probabilities of one vector, as a DenseVector (MLlib)."""
        from pyspark.ml.linalg import DenseVector

        X = np.asarray(value.toArray() if hasattr(value, "toArray") else value, dtype=np.float64)
        return DenseVector(self.predict_proba(X)[0])

    # -- model statistics, sampling, sklearn interop ---------------------------

    def _n_parameters(self) -> int:
        p = self.mixtureParameters
        return gaussian.n_parameters(p.covariance_type, p.n_components, p.n_features)

    def _total_log_likelihood(self, dataset: Any) -> tuple[float, int]:
        from pyspark.sql import functions as F

        ll = "__spark_gmm_ll"
        scored = self.copy({self.logLikelihoodCol: ll}).transform(dataset)
        row = scored.agg(F.sum(ll).alias("ll"), F.count(F.lit(1)).alias("n")).collect()[0]
        return float(row["ll"] or 0.0), int(row["n"])

    def bic(self, dataset: Any) -> float:
        """Bayesian information criterion on a DataFrame (sklearn's ``bic``; lower is better)."""
        total, n = self._total_log_likelihood(dataset)
        return -2.0 * total + self._n_parameters() * math.log(n)

    def aic(self, dataset: Any) -> float:
        """Akaike information criterion on a DataFrame (sklearn's ``aic``; lower is better)."""
        total, _ = self._total_log_likelihood(dataset)
        return -2.0 * total + 2.0 * self._n_parameters()

    def sample(self, n: int, seed: int | None = None) -> tuple[Array, NDArray[np.int64]]:
        """Draw ``n`` rows from the mixture on the driver, like sklearn's ``sample``.

        Returns
        -------
        X : ndarray of shape (n, d)
        labels : ndarray of shape (n,)
            The component each row was drawn from.
        """
        return gaussian.sample(self.mixtureParameters, n, np.random.default_rng(seed))

    def sampleDF(self, spark: Any, n: int, seed: int = 0, numPartitions: int = 4) -> Any:
        """A DataFrame of ``n`` rows drawn on the executors: ``features`` (vector), ``label``.

        Each partition draws its share with its own child seed, so the result depends
        only on ``(n, seed, numPartitions)``.
        """
        import pyarrow as pa
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        if n < 0 or numPartitions < 1:
            raise InvalidInputError("sampleDF needs n >= 0 and numPartitions >= 1.")
        params = self.mixtureParameters
        bounds = np.linspace(0, n, numPartitions + 1).astype(np.int64)
        seeds = [
            int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(numPartitions)
        ]

        def draw(batches: Any) -> Any:
            for batch in batches:
                for part in batch.column(0).to_pylist():
                    size = int(bounds[part + 1] - bounds[part])
                    X, labels = gaussian.sample(params, size, np.random.default_rng(seeds[part]))
                    yield pa.RecordBatch.from_arrays(
                        [
                            pa.array(list(X), pa.list_(pa.float64())),
                            pa.array(labels.astype(np.int32), pa.int32()),
                        ],
                        names=["features", "label"],
                    )

        parts = spark.range(numPartitions, numPartitions=numPartitions).select(
            F.col("id").cast("int").alias("part")
        )
        out = parts.mapInArrow(draw, "features array<double>, label int")
        return out.select(array_to_vector(F.col("features")).alias("features"), "label")

    def toSklearn(self) -> Any:
        """A fitted ``sklearn.mixture.GaussianMixture`` with these parameters."""
        try:
            from sklearn.mixture import GaussianMixture as SkGaussianMixture
        except ImportError:
            raise ImportError(
                "toSklearn needs scikit-learn, which spark_gmm does not install by default: "
                "pip install 'spark_gmm[sklearn]' (or pip install scikit-learn)."
            ) from None
        p = self.mixtureParameters
        gm = SkGaussianMixture(n_components=p.n_components, covariance_type=p.covariance_type)
        gm.weights_ = p.weights.copy()
        gm.means_ = p.means.copy()
        gm.covariances_ = p.covariances.copy()
        gm.precisions_cholesky_ = p.precisions_chol.copy()
        # sklearn derives precisions_ from the Cholesky factors the same way.
        if p.covariance_type == "full":
            gm.precisions_ = np.einsum("kij,klj->kil", p.precisions_chol, p.precisions_chol)
        elif p.covariance_type == "tied":
            gm.precisions_ = p.precisions_chol @ p.precisions_chol.T
        else:
            gm.precisions_ = p.precisions_chol**2
        gm.converged_ = self._summary.converged if self._summary else True
        gm.n_iter_ = self._summary.numIter if self._summary else 0
        gm.lower_bound_ = self._summary.meanLogLikelihood if self._summary else float("nan")
        gm.n_features_in_ = p.n_features
        return gm

    @classmethod
    def fromSklearn(cls, gm: Any) -> GaussianMixtureModel:
        """A model from a fitted ``sklearn.mixture.GaussianMixture``."""
        return cls.fromParameters(gm.weights_, gm.means_, gm.covariances_, gm.covariance_type)

    # -- Spark transform ------------------------------------------------------

    def setFeaturesCol(self, value: str) -> GaussianMixtureModel:
        return self._set(featuresCol=value)

    def setInputCols(self, value: list[str]) -> GaussianMixtureModel:
        return self._set(inputCols=value)

    def setPredictionCol(self, value: str) -> GaussianMixtureModel:
        return self._set(predictionCol=value)

    def setProbabilityCol(self, value: str) -> GaussianMixtureModel:
        return self._set(probabilityCol=value)

    def setLogLikelihoodCol(self, value: str) -> GaussianMixtureModel:
        return self._set(logLikelihoodCol=value)

    def setHandleInvalid(self, value: str) -> GaussianMixtureModel:
        return self._set(handleInvalid=value)

    def _transform(self, dataset: Any) -> Any:
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        from spark_gmm.scoring import scoring_column

        if self.getHandleInvalid() not in HANDLE_INVALID:
            raise InvalidInputError(
                f"handleInvalid must be one of {', '.join(HANDLE_INVALID)}; "
                f"got {self.getHandleInvalid()!r}."
            )
        ensure_local_python_workers(dataset.sparkSession)
        params = self.mixtureParameters
        d = params.n_features
        # Weights only matter for fitting: scoring neither reads nor needs the column.
        spec, columns = self._features(dataset, n_features=d, with_weight=False)
        if spec.source == "columns" and spec.n_features != d:
            raise InvalidInputError(
                f"The model has {d} features but inputCols names {spec.n_features} columns."
            )
        handle = self.getHandleInvalid()
        tmp = "__spark_gmm_out"
        column, probability = scoring_column(columns, spec, params, handle)
        out = dataset.withColumn(tmp, column)
        if handle == "skip":
            out = out.where(F.col(f"{tmp}.prediction").isNotNull())
        out = out.withColumn(self.getPredictionCol(), F.col(f"{tmp}.prediction"))
        proba = probability(F.col(tmp))
        # array_to_vector fails on null; rows kept under handleInvalid='keep' have none.
        out = out.withColumn(
            self.getProbabilityCol(), F.when(proba.isNotNull(), array_to_vector(proba))
        )
        ll_col = self.getLogLikelihoodCol()
        if ll_col:
            out = out.withColumn(ll_col, F.col(f"{tmp}.loglik"))
        return out.drop(tmp)
