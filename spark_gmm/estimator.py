"""``GaussianMixture``: the estimator, a drop-in for ``pyspark.ml.clustering``'s.

Same param names as MLlib's estimator where MLlib has them, plus sklearn's features
(four covariance types, ``regCovar``, ``nInit``, initialisation modes). Its params are
declared in :mod:`spark_gmm.params`, the model in :mod:`spark_gmm.model`, the maths in
:mod:`spark_gmm.gaussian`, the EM loop in :mod:`spark_gmm.em`, the Spark plumbing in
:mod:`spark_gmm.engine`.

``GaussianMixtureModel`` and ``GaussianMixtureSummary`` are importable from here too:
models saved before they moved to :mod:`spark_gmm.model` name this module.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Estimator
from pyspark.ml.util import MLReadable, MLWritable

from spark_gmm import gaussian
from spark_gmm.data import FeatureSpec
from spark_gmm.em import EMResult, fit_em
from spark_gmm.engine import PreparedData
from spark_gmm.errors import InvalidInputError
from spark_gmm.model import GaussianMixtureModel, GaussianMixtureSummary
from spark_gmm.params import (
    _OVERFLOW,
    _check_scale,
    _digest,
    _GaussianMixtureParams,
    _MixtureFitSetters,
)
from spark_gmm.session import ensure_local_python_workers

__all__ = ["GaussianMixture", "GaussianMixtureModel", "GaussianMixtureSummary"]

log = logging.getLogger("spark_gmm")


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
                init_sample_size=data.init_sample_size or self.getInitSampleSize(),
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
                missing=self._marginalize(),
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
