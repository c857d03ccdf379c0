"""The params every fit shares, declared once: the ``pyspark.ml`` Params mixins, their
defaults and constraints, MLlib-style setters, and the checks that run before any Spark
job (memory guard, scale of the features).

:class:`~spark_gmm.GaussianMixture`, :class:`~spark_gmm.GaussianMixtureSelector`,
:class:`~spark_gmm.BayesianGaussianMixture` and the models take their params from here.
"""

from __future__ import annotations

import logging
import math
import warnings
import zlib
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray
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

from spark_gmm import kernels
from spark_gmm.checkpoint import Checkpointer, local_checkpoint_dir
from spark_gmm.data import FeatureSpec, resolve_features
from spark_gmm.em import INIT_MODES
from spark_gmm.engine import BLOCK_DTYPES, STORAGE_LEVELS, CacheOptions, PreparedData, prepare
from spark_gmm.errors import InvalidInputError
from spark_gmm.gaussian import COVARIANCE_TYPES, MixtureParameters

__all__ = ["HANDLE_INVALID", "HANDLE_MISSING"]

log = logging.getLogger("spark_gmm")

Array = NDArray[np.float64]

# A fixed default seed (MLlib's default hashes the class name, which Python salts per
# process): the same call gives the same model in every run.
_DEFAULT_SEED = zlib.crc32(b"spark_gmm.GaussianMixture")

HANDLE_INVALID = ("error", "skip", "keep")
HANDLE_MISSING = ("invalid", "marginalize")

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
        "random-row and random-responsibility starts; the best one, preferring runs with no "
        "component at the covariance floor, starts the full EM), "
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
    handleMissing: Param[str] = Param(
        Params._dummy(),
        "handleMissing",
        "Null or NaN features: 'invalid' (the row is invalid and follows handleInvalid) "
        "or 'marginalize' (EM over each row's observed features: the responsibilities "
        "come from the marginal density of the observed values and the statistics use "
        "the conditional expectation of the missing ones; a row with no observed feature "
        "is still invalid, and so is an infinite value).",
        typeConverter=TypeConverters.toString,
    )
    imputedCol: Param[str] = Param(
        Params._dummy(),
        "imputedCol",
        "transform: output column (ml Vector) of the features with each missing value "
        "replaced by its conditional expectation under the model (with "
        "handleMissing='marginalize'); unset: not added.",
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
            handleMissing="invalid",
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
            "handleMissing": self.getHandleMissing(),
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

    def getHandleMissing(self) -> str:
        return self.getOrDefault(self.handleMissing)

    def getImputedCol(self) -> str | None:
        return self._opt(self.imputedCol)

    def _marginalize(self) -> bool:
        return self.getHandleMissing() == "marginalize"

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
                rows = min(self._init_sample_rows(spark, shapes, spec.n_features), data.n_rows)
                if rows < min(self.getInitSampleSize(), data.n_rows):
                    data.init_sample_size = rows
                _check_memory(spark, shapes, spec.n_features, block_rows, rows)
            except Exception:
                data.release()
                raise
        return data

    def _init_sample_rows(self, spark: Any, shapes: list[tuple[int, str]], d: int) -> int:
        """``initSampleSize``; left at its default on a wide table (embeddings), the
        largest sample the driver's memory guard admits, if that is still at least
        :data:`MIN_DEFAULT_SAMPLE_PER_COMPONENT` rows per component (at d=768 the default
        100,000 rows take 1.7 GiB on the driver, counting the copies)."""
        rows = self.getInitSampleSize()
        if self.isSet(self.initSampleSize):
            return rows  # the user's choice: the guard refuses it if it does not fit
        from spark_gmm.guards import largest_sample_rows, memory_limits

        _, driver_limit = memory_limits(spark)
        block_rows = kernels.kernel_rows(d)
        fits = largest_sample_rows(shapes, d, block_rows=block_rows, driver_limit=driver_limit)
        k_max = max(k for k, _ in shapes)
        if fits >= rows or fits < MIN_DEFAULT_SAMPLE_PER_COMPONENT * k_max:
            return rows
        log.info(
            "initSampleSize: %d rows (not the default %d): the largest sample of %d features "
            "the driver's memory admits (spark.driver.memory); set initSampleSize to choose",
            fits,
            rows,
            d,
        )
        return fits

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
            self.getHandleMissing() in HANDLE_MISSING,
            f"handleMissing must be one of {', '.join(HANDLE_MISSING)}; "
            f"got {self.getHandleMissing()!r}.",
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
            allow_missing=self._marginalize(),
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

    def setHandleMissing(self: _Fit, value: str) -> _Fit:
        return self._set(handleMissing=value)

    def setImputedCol(self: _Fit, value: str) -> _Fit:
        return self._set(imputedCol=value)

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


class _ShapeParams(_MixtureFitParams):
    """``k`` and ``covarianceType``: the shape of one mixture (every estimator but the
    selector, which takes lists of them)."""

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

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(k=2, covarianceType="full")

    def getK(self) -> int:
        return self.getOrDefault(self.k)

    def getCovarianceType(self) -> str:
        return self.getOrDefault(self.covarianceType)

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


class _GaussianMixtureParams(_ShapeParams):
    """Params of :class:`GaussianMixture` and :class:`GaussianMixtureModel`."""

    initialModel: Param[Any] = Param(
        Params._dummy(),
        "initialModel",
        "A GaussianMixtureModel to start EM from (warm start); overrides initMode/nInit.",
    )

    def getInitialModel(self) -> Any:
        return self.getOrDefault(self.initialModel) if self.isDefined(self.initialModel) else None


def _digest(params: MixtureParameters) -> str:
    """A short content hash of mixture parameters (checkpoint settings)."""
    import hashlib

    h = hashlib.sha256(params.covariance_type.encode())
    for a in (params.weights, params.means, params.precisions_chol):
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


# A default initSampleSize is shrunk to fit the driver only down to this many rows per
# component; below that the guard refuses and says what to change.
MIN_DEFAULT_SAMPLE_PER_COMPONENT = 20


def _check_memory(
    spark: Any, shapes: list[tuple[int, str]], n_features: int, block_rows: int, sample_rows: int
) -> None:
    """The memory guard (:mod:`spark_gmm.guards`), before any data pass; and, once, the
    cost warning of full covariances at embedding widths."""
    from spark_gmm.errors import CostWarning
    from spark_gmm.guards import check_memory, full_cost_warning, memory_limits

    if sample_rows == 0:
        cost = full_cost_warning(shapes, n_features)
        if cost:
            log.warning("%s", cost)
            warnings.warn(cost, CostWarning, stacklevel=5)

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
