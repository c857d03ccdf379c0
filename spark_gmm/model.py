"""``GaussianMixtureModel`` and its training summary: transform, numpy helpers, sampling,
sklearn interop and persistence hooks. A drop-in for ``pyspark.ml.clustering``'s model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pyspark.ml import Model
from pyspark.ml.util import MLReadable, MLWritable

from spark_gmm import gaussian
from spark_gmm.errors import InvalidInputError
from spark_gmm.gaussian import MixtureParameters
from spark_gmm.params import HANDLE_INVALID, HANDLE_MISSING, _GaussianMixtureParams
from spark_gmm.session import ensure_local_python_workers

__all__ = ["GaussianMixtureModel", "GaussianMixtureSummary"]

log = logging.getLogger("spark_gmm")

Array = NDArray[np.float64]


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
        return str(self._model.getProbabilityCol()) if self._model is not None else "probability"

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
        # Incremental updates (spark_gmm.incremental): the running statistics, how many
        # batches and rows were folded in, and the schedule of the last update.
        self._running: Any = None
        self.updateCount = 0
        self.updateRows = 0
        self.updateSchedule: dict[str, Any] | None = None
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
        """Whether the training summary of this fit is here, as MLlib means it: with its
        ``predictions`` on the training DataFrame. A loaded model answers False (as MLlib's
        does) but still has ``summary`` with the saved numbers (no ``predictions``)."""
        return self._summary is not None and self._summary._dataset is not None

    @property
    def summary(self) -> GaussianMixtureSummary:
        if self._summary is None:
            raise RuntimeError("No training summary: this model was not produced by fit().")
        return self._summary

    # -- incremental updates ----------------------------------------------

    def runningStatistics(self, initialWeight: float | None = None) -> Any:
        """The statistics the next :meth:`update` blends a batch into
        (:class:`spark_gmm.gaussian.SufficientStatistics`, centred on the means).

        A model never updated has none stored: they are implied by its parameters,
        weighted by ``initialWeight`` rows, by default the training summary's total weight
        (the rows of the fit), or 1 for a model without a summary.
        """
        from spark_gmm.incremental import from_parameters

        if self._running is not None and initialWeight is None:
            return self._running
        if initialWeight is None:
            summary = self._summary
            initialWeight = float(summary.totalWeight) if summary is not None else 1.0
        if not (initialWeight > 0 and math.isfinite(initialWeight)):
            raise InvalidInputError(f"initialWeight must be > 0; got {initialWeight}.")
        return from_parameters(self.mixtureParameters, initialWeight, self.getRegCovar())

    def update(
        self,
        dataset: Any,
        decayFactor: float | None = None,
        halfLife: float | None = None,
        timeUnit: str = "batches",
        stepSizeOffset: float | None = None,
        stepSizeExponent: float | None = None,
        passes: int = 1,
        initialWeight: float | None = None,
    ) -> GaussianMixtureModel:
        """A new model: this one with ``dataset``'s rows folded into its statistics.

        Parameters
        ----------
        dataset : pyspark.sql.DataFrame
            The new rows, in the model's feature columns (and ``weightCol`` if set).
        decayFactor, halfLife, timeUnit :
            Forgetting (MLlib ``StreamingKMeans``' convention): the past keeps
            ``decayFactor`` of its weight per batch (``timeUnit="batches"``) or per row
            (``"points"``); ``halfLife`` in batches or rows instead. Default: decay 1,
            nothing forgotten.
        stepSizeOffset, stepSizeExponent :
            Stepwise EM instead (Cappe & Moulines 2009): the batch gets the step
            ``(t + offset) ** -exponent`` at the t-th update, ``0.5 < exponent <= 1``.
        passes : int
            E-steps over the batch (default 1).
        initialWeight : float, optional
            Rows the model's parameters count for when it has no running statistics yet
            (see :meth:`runningStatistics`).

        The model's ``regCovar``, ``handleInvalid`` and ``handleMissing`` apply as in a
        fit. See :mod:`spark_gmm.incremental` for the algebra and the handling of a
        component that loses all its weight.
        """
        from spark_gmm.incremental import Schedule, update_parameters
        from spark_gmm.params import _OVERFLOW

        schedule = Schedule.from_params(
            decayFactor, halfLife, timeUnit, stepSizeOffset, stepSizeExponent
        )
        if int(passes) < 1:
            raise InvalidInputError(f"passes must be >= 1; got {passes}.")
        params = self.mixtureParameters
        running = self.runningStatistics(initialWeight)
        ensure_local_python_workers(dataset.sparkSession)
        spec, columns = self._features(dataset, n_features=params.n_features)
        if spec.n_features != params.n_features:
            raise InvalidInputError(
                f"The model has {params.n_features} features but inputCols names "
                f"{spec.n_features} columns."
            )
        shape = [(params.n_components, params.covariance_type)]
        data = self._prepare(dataset, spec, columns, shape, sample=False)
        try:
            result = update_parameters(
                data,
                params,
                running,
                self.updateCount,
                schedule,
                self.getRegCovar(),
                passes=int(passes),
                missing=self._marginalize(),
            )
        except FloatingPointError:
            raise InvalidInputError(_OVERFLOW) from None
        finally:
            data.release()
        model = self._copyValues(GaussianMixtureModel(result.params))
        model._feature_names = list(self._feature_names) or list(spec.names)
        model.logLikelihoodQuantiles = self.logLikelihoodQuantiles
        model._running = result.running
        model.updateCount = self.updateCount + 1
        model.updateRows = self.updateRows + data.n_rows
        model.updateSchedule = dict(
            schedule.to_dict(),
            passes=int(passes),
            batchRows=data.n_rows,
            batchMeanLogLikelihood=result.batch_log_likelihood,
        )
        log.info(
            "update %d: %d rows (mean log-likelihood %.6f before the update), %s",
            model.updateCount,
            data.n_rows,
            result.batch_log_likelihood,
            schedule.kind,
        )
        return model

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

    def setHandleMissing(self, value: str) -> GaussianMixtureModel:
        return self._set(handleMissing=value)

    def setImputedCol(self, value: str) -> GaussianMixtureModel:
        return self._set(imputedCol=value)

    def _transform(self, dataset: Any) -> Any:
        from pyspark.sql import functions as F

        from spark_gmm.scoring import row_based_input, scoring_column

        if self.getHandleInvalid() not in HANDLE_INVALID:
            raise InvalidInputError(
                f"handleInvalid must be one of {', '.join(HANDLE_INVALID)}; "
                f"got {self.getHandleInvalid()!r}."
            )
        if self.getHandleMissing() not in HANDLE_MISSING:
            raise InvalidInputError(
                f"handleMissing must be one of {', '.join(HANDLE_MISSING)}; "
                f"got {self.getHandleMissing()!r}."
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
        imputed_col = self.getImputedCol()
        column, probability, imputed = scoring_column(
            columns, spec, params, handle, imputed=imputed_col is not None
        )
        out = row_based_input(dataset, spec.names[0]).withColumn(tmp, column)
        if handle == "skip":
            out = out.where(F.col(f"{tmp}.prediction").isNotNull())
        out = out.withColumn(self.getPredictionCol(), F.col(f"{tmp}.prediction"))
        out = out.withColumn(self.getProbabilityCol(), probability(F.col(tmp)))
        ll_col = self.getLogLikelihoodCol()
        if ll_col:
            out = out.withColumn(ll_col, F.col(f"{tmp}.loglik"))
        if imputed_col:
            out = out.withColumn(imputed_col, imputed(F.col(tmp)))
        return out.drop(tmp)
