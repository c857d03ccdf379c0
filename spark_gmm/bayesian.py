"""``BayesianGaussianMixture``: scikit-learn's variational Bayesian Gaussian mixture
(Dirichlet process or Dirichlet distribution prior on the weights), distributed.

Fit a generous ``k``: the prior empties the components the data do not support, so the
number of components that keep weight (``effectiveK``) answers "how many clusters?" in
about the cost of one fit. The data passes are the maximum-likelihood fit's (the same
statistics, plus one number for the lower bound); what differs is the driver's M-step and
the E-step's per-component constants (:mod:`spark_gmm.variational`).

Everything :class:`~spark_gmm.GaussianMixture` has that applies is here under the same
names; the priors take sklearn's defaults, computed from the data in one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from spark_gmm import kernels
from spark_gmm.em import EMResult, Variational, fit_em
from spark_gmm.engine import PreparedData, job_description
from spark_gmm.errors import InvalidInputError
from spark_gmm.model import GaussianMixtureModel, GaussianMixtureSummary
from spark_gmm.params import _OVERFLOW, _check_scale, _MixtureFitSetters, _ShapeParams
from spark_gmm.session import ensure_local_python_workers
from spark_gmm.variational import (
    PRIOR_TYPES,
    Priors,
    VariationalParameters,
    default_priors,
    effective_components,
    scoring_parameters,
)

__all__ = [
    "BayesianGaussianMixture",
    "BayesianGaussianMixtureModel",
    "BayesianGaussianMixtureSummary",
]


class _BayesianParams(_ShapeParams):
    """The priors (sklearn's, under Spark ML names) and the effective-k threshold."""

    weightConcentrationPriorType: Param[str] = Param(
        Params._dummy(),
        "weightConcentrationPriorType",
        "Prior on the weights: 'dirichlet_process' (stick-breaking: components beyond "
        "those the data need get little weight) or 'dirichlet_distribution'.",
        typeConverter=TypeConverters.toString,
    )
    weightConcentrationPrior: Param[float] = Param(
        Params._dummy(),
        "weightConcentrationPrior",
        "Dirichlet concentration (gamma): smaller values favour fewer components; unset: "
        "1/k. Must be > 0.",
        typeConverter=TypeConverters.toFloat,
    )
    meanPrecisionPrior: Param[float] = Param(
        Params._dummy(),
        "meanPrecisionPrior",
        "Precision prior of the means (beta_0); unset: 1. Must be > 0.",
        typeConverter=TypeConverters.toFloat,
    )
    meanPrior: Param[list[float]] = Param(
        Params._dummy(),
        "meanPrior",
        "Prior mean of the means (d values); unset: the data's mean.",
        typeConverter=TypeConverters.toListFloat,
    )
    degreesOfFreedomPrior: Param[float] = Param(
        Params._dummy(),
        "degreesOfFreedomPrior",
        "Degrees of freedom of the Wishart prior (nu_0); unset: d. Must be > d - 1.",
        typeConverter=TypeConverters.toFloat,
    )
    covariancePrior: Param[list[float]] = Param(
        Params._dummy(),
        "covariancePrior",
        "Covariance prior, flattened row by row: d*d values for full and tied, d for "
        "diag, 1 for spherical; unset: the data's covariance (variances, their mean).",
        typeConverter=TypeConverters.toListFloat,
    )
    mergeComponents: Param[bool] = Param(
        Params._dummy(),
        "mergeComponents",
        "After each pass, merge two components when that raises the lower bound (merge "
        "moves): empties the components the initialisation cut out of one cluster, which "
        "coordinate ascent alone keeps. False: sklearn's iterations exactly.",
        typeConverter=TypeConverters.toBoolean,
    )
    effectiveKThreshold: Param[float] = Param(
        Params._dummy(),
        "effectiveKThreshold",
        "A component counts in the model's effectiveK when its expected weight exceeds "
        "this. Must be in [0, 1).",
        typeConverter=TypeConverters.toFloat,
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(
            weightConcentrationPriorType="dirichlet_process",
            mergeComponents=True,
            effectiveKThreshold=0.01,
            # sklearn's BayesianGaussianMixture defaults: k-means responsibilities, one run.
            initMode="kmeans",
            nInit=1,
        )

    def getWeightConcentrationPriorType(self) -> str:
        return self.getOrDefault(self.weightConcentrationPriorType)

    def getEffectiveKThreshold(self) -> float:
        return self.getOrDefault(self.effectiveKThreshold)

    def getMergeComponents(self) -> bool:
        return self.getOrDefault(self.mergeComponents)

    def _prior_overrides(self) -> dict[str, Any]:
        """The priors set by the user (None: sklearn's data-derived default)."""
        return {
            "weight_concentration_prior": self._opt(self.weightConcentrationPrior),
            "mean_precision_prior": self._opt(self.meanPrecisionPrior),
            "mean_prior": self._opt(self.meanPrior),
            "degrees_of_freedom_prior": self._opt(self.degreesOfFreedomPrior),
            "covariance_prior": self._opt(self.covariancePrior),
        }

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.getWeightConcentrationPriorType() not in PRIOR_TYPES:
            raise InvalidInputError(
                f"weightConcentrationPriorType must be one of {', '.join(PRIOR_TYPES)}; "
                f"got {self.getWeightConcentrationPriorType()!r}."
            )
        if not 0.0 <= self.getEffectiveKThreshold() < 1.0:
            raise InvalidInputError(
                f"effectiveKThreshold must be in [0, 1); got {self.getEffectiveKThreshold()}."
            )
        if self.getInitMode() == "short-em":
            raise InvalidInputError(
                "initMode='short-em' starts from maximum-likelihood runs; the Bayesian "
                "mixture starts from responsibilities: use 'kmeans' (the default), "
                "'k-means++', 'random_from_data' or 'random'."
            )

    def _resolve_priors(self, k: int, covariance_type: str, moments: Any) -> Priors:
        d = moments.mean.shape[0]
        overrides = self._prior_overrides()
        cov = overrides["covariance_prior"]
        if cov is not None:
            shape = {"full": (d, d), "tied": (d, d), "diag": (d,), "spherical": ()}
            want = shape[covariance_type]
            size = int(np.prod(want)) if want else 1
            if len(cov) != size:
                raise InvalidInputError(
                    f"covariancePrior has {len(cov)} values; covarianceType="
                    f"{covariance_type!r} with d={d} needs {size}."
                )
            overrides["covariance_prior"] = np.asarray(cov, dtype=np.float64).reshape(want)
        try:
            return default_priors(
                k,
                covariance_type,
                moments.mean,
                moments.covariance,
                weight_concentration_prior_type=self.getWeightConcentrationPriorType(),
                **overrides,
            )
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None


@dataclass
class BayesianGaussianMixtureSummary(GaussianMixtureSummary):
    """Training summary of a Bayesian mixture: the GaussianMixture summary's fields
    (``logLikelihoodHistory`` is empty: EM climbs the lower bound here; ``bic``/``aic``
    are NaN: they assume a maximum-likelihood fit), plus:

    Attributes
    ----------
    lowerBound : float
        The final lower bound (sklearn's ``lower_bound_``).
    lowerBoundHistory : list of float
        The lower bound after each iteration.
    effectiveK : int
        Components whose expected weight exceeds ``effectiveKThreshold``.
    """

    lowerBound: float = float("nan")
    lowerBoundHistory: list[float] = field(default_factory=list)
    effectiveK: int = 0


class BayesianGaussianMixture(
    Estimator["BayesianGaussianMixtureModel"],
    _BayesianParams,
    _MixtureFitSetters,
    DefaultParamsWritable,
    DefaultParamsReadable[Any],
):
    """Variational Bayesian Gaussian mixture, distributed (sklearn's
    ``BayesianGaussianMixture`` on Spark).

    Examples
    --------
    >>> bgm = BayesianGaussianMixture(k=10, inputCols=["x", "y"], seed=1)  # doctest: +SKIP
    >>> model = bgm.fit(df)                                                # doctest: +SKIP
    >>> model.effectiveK, sorted(model.weights, reverse=True)              # doctest: +SKIP
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
        weightConcentrationPriorType: str = "dirichlet_process",
        weightConcentrationPrior: float | None = None,
        meanPrecisionPrior: float | None = None,
        meanPrior: list[float] | None = None,
        degreesOfFreedomPrior: float | None = None,
        covariancePrior: list[float] | None = None,
        mergeComponents: bool = True,
        effectiveKThreshold: float = 0.01,
    ) -> None:
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> BayesianGaussianMixture:
        """Set any of the constructor's params (keyword arguments only)."""
        kwargs = {key: value for key, value in self._input_kwargs.items() if value is not None}
        return self._set(**kwargs)

    def setK(self, value: int) -> BayesianGaussianMixture:
        return self._set(k=value)

    def setCovarianceType(self, value: str) -> BayesianGaussianMixture:
        return self._set(covarianceType=value)

    def setWeightConcentrationPriorType(self, value: str) -> BayesianGaussianMixture:
        return self._set(weightConcentrationPriorType=value)

    def setWeightConcentrationPrior(self, value: float) -> BayesianGaussianMixture:
        return self._set(weightConcentrationPrior=value)

    def setMeanPrecisionPrior(self, value: float) -> BayesianGaussianMixture:
        return self._set(meanPrecisionPrior=value)

    def setMeanPrior(self, value: list[float]) -> BayesianGaussianMixture:
        return self._set(meanPrior=value)

    def setDegreesOfFreedomPrior(self, value: float) -> BayesianGaussianMixture:
        return self._set(degreesOfFreedomPrior=value)

    def setCovariancePrior(self, value: list[float]) -> BayesianGaussianMixture:
        return self._set(covariancePrior=value)

    def setMergeComponents(self, value: bool) -> BayesianGaussianMixture:
        return self._set(mergeComponents=value)

    def setEffectiveKThreshold(self, value: float) -> BayesianGaussianMixture:
        return self._set(effectiveKThreshold=value)

    def _fit(self, dataset: Any) -> BayesianGaussianMixtureModel:
        self._validate_params()
        if self._marginalize():
            raise InvalidInputError(
                "handleMissing='marginalize' is not available for the Bayesian mixture yet "
                "(its variational E-step has no marginal form here). Use GaussianMixture "
                "with handleMissing='marginalize', or handleInvalid='skip' to drop rows "
                "with missing features."
            )
        k, covariance_type = self.getK(), self.getCovarianceType()
        ensure_local_python_workers(dataset.sparkSession)
        spec, columns = self._features(dataset)
        data = self._prepare(dataset, spec, columns, [(k, covariance_type)] * self.getNInit())
        try:
            if data.n_rows < max(k, 2):
                raise InvalidInputError(
                    f"k={k} needs at least max(k, 2) usable rows; the input has {data.n_rows}."
                )
            if data.summary is not None:
                _check_scale(data.summary, spec, k, self.getRegCovar())
            priors = self._resolve_priors(k, covariance_type, _moments(data))
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
                init_sample_size=data.init_sample_size or self.getInitSampleSize(),
                checkpoint=self._checkpointer(
                    data,
                    spec,
                    {
                        "model": "bayesian",
                        "k": k,
                        "covarianceType": covariance_type,
                        "weightConcentrationPriorType": self.getWeightConcentrationPriorType(),
                        "priors": {
                            key: None if v is None else list(np.ravel(v))
                            for key, v in self._prior_overrides().items()
                        },
                    },
                ),
                resume=self.getResumeFromCheckpoint(),
                variant=Variational(
                    priors, self.getRegCovar(), merges=self.getMergeComponents()
                ),
            )
        except FloatingPointError:
            raise InvalidInputError(_OVERFLOW) from None
        finally:
            data.release()
        return self._model_from_result(result, priors, spec, data, dataset)

    def _model_from_result(
        self, result: EMResult, priors: Priors, spec: Any, data: PreparedData, dataset: Any
    ) -> BayesianGaussianMixtureModel:
        posterior: VariationalParameters = result.params
        model = BayesianGaussianMixtureModel(posterior)
        model._feature_names = list(spec.names)
        model._priors = priors
        effective = effective_components(posterior.weights, self.getEffectiveKThreshold())
        model._summary = BayesianGaussianMixtureSummary(
            k=posterior.n_components,
            logLikelihood=result.log_likelihood,
            meanLogLikelihood=result.log_likelihood / result.total_weight,
            numIter=result.n_iter,
            converged=result.converged,
            logLikelihoodHistory=[],
            iterationSeconds=list(result.iteration_seconds),
            clusterSizes=[int(c) for c in result.cluster_sizes],
            numRows=data.n_rows,
            numSkippedRows=data.n_skipped,
            totalWeight=result.total_weight,
            candidateLogLikelihoods=list(result.candidate_log_likelihoods),
            bic=math.nan,
            aic=math.nan,
            lowerBound=result.history[-1],
            lowerBoundHistory=list(result.history),
            effectiveK=effective,
            _model=model,
            _dataset=dataset,
        )
        return self._copyValues(model)


def _moments(data: PreparedData) -> kernels.Moments:
    """The data's mean and covariance in one pass (centred on each feature's mid-range)."""
    summary = data.summary
    if summary is not None and np.all(np.isfinite(summary.col_min)):
        centre = 0.5 * (summary.col_min + summary.col_max)
    else:
        centre = np.zeros(data.n_features)
    task = kernels.MomentsTask(centre)
    with job_description(data.spark, "mean and covariance of the input (priors)"):
        flat = data.cache.run(_moments_pass, [task], data.aggregation_depth)
    moments: kernels.Moments = kernels.split_statistics(flat, [task])[0]
    return moments


def _moments_pass(blocks: Any, tasks: Any) -> Any:
    return kernels.tasks_statistics(blocks, tasks)


class BayesianGaussianMixtureModel(GaussianMixtureModel, _BayesianParams):
    """A fitted variational Bayesian mixture.

    Scores rows like sklearn's ``BayesianGaussianMixture`` (the variational
    expectations, :func:`spark_gmm.variational.scoring_parameters`), so ``transform``,
    ``predict_proba``, ``score_samples`` and the log-likelihood column match sklearn's
    ``predict_proba`` and ``score_samples``. ``weights``, ``covariances`` are sklearn's
    ``weights_`` and ``covariances_``.
    """

    def update(self, dataset: Any, *args: Any, **kwargs: Any) -> GaussianMixtureModel:
        """Not available: incremental updates are maximum-likelihood EM; the variational
        posterior has no running-statistics form here. Refit, or warm-start a fit."""
        raise InvalidInputError(
            "BayesianGaussianMixtureModel cannot be updated incrementally: update() is "
            "maximum-likelihood EM. Refit the Bayesian model on the new window instead."
        )

    def __init__(self, posterior: VariationalParameters | None = None) -> None:
        super().__init__(None if posterior is None else scoring_parameters(posterior))
        self._posterior = posterior
        self._priors: Priors | None = None

    @property
    def posterior(self) -> VariationalParameters:
        if self._posterior is None:
            raise InvalidInputError("This BayesianGaussianMixtureModel holds no parameters.")
        return self._posterior

    @property
    def weights(self) -> list[float]:
        """The expected mixing weights (sklearn's ``weights_``)."""
        return [float(x) for x in self.posterior.weights]

    @property
    def covariances(self) -> Any:
        """sklearn's ``covariances_`` (the posterior's Wishart scale over its degrees of
        freedom)."""
        return self.posterior.covariances.copy()

    @property
    def effectiveK(self) -> int:
        """Components whose expected weight exceeds ``effectiveKThreshold``."""
        return effective_components(self.posterior.weights, self.getEffectiveKThreshold())

    @property
    def weightConcentration(self) -> Any:
        """Posterior concentration: (2, k) Beta parameters (Dirichlet process) or (k,)."""
        return self.posterior.weight_concentration.copy()

    @property
    def meanPrecision(self) -> Any:
        return self.posterior.mean_precision.copy()

    @property
    def degreesOfFreedom(self) -> Any:
        return self.posterior.degrees_of_freedom.copy()

    def _full_covariances(self) -> Any:
        from spark_gmm.gaussian import MixtureParameters

        p = self.posterior
        plain = MixtureParameters(
            p.weights, p.means, p.covariances, p.precisions_chol, p.covariance_type
        )
        saved, self._mixture = self._mixture, plain
        try:
            return super()._full_covariances()
        finally:
            self._mixture = saved

    def sample(self, n: int, seed: int | None = None) -> Any:
        """Draw ``n`` rows from the mixture with the expected weights, means and
        covariances (as sklearn's ``sample``)."""
        from spark_gmm import gaussian

        p = self.posterior
        plain = gaussian.MixtureParameters(
            p.weights, p.means, p.covariances, p.precisions_chol, p.covariance_type
        )
        return gaussian.sample(plain, n, np.random.default_rng(seed))

    def toSklearn(self) -> Any:
        raise NotImplementedError(
            "toSklearn is for GaussianMixtureModel; a Bayesian model's posterior is in "
            "weightConcentration, meanPrecision, means, degreesOfFreedom and covariances."
        )

    def write(self) -> Any:
        from spark_gmm.persistence import BayesianModelWriter

        return BayesianModelWriter(self)

    @classmethod
    def read(cls) -> Any:
        from spark_gmm.persistence import BayesianModelReader

        return BayesianModelReader(cls)
