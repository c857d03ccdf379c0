"""Saving and loading models and estimators without pickle.

A model directory holds

* ``metadata/``: one JSON line in Spark ML's ``DefaultParamsWriter`` layout (``class``,
  ``uid``, ``paramMap``, ``sparkVersion``...) plus ``spark_gmm`` fields: ``formatVersion``,
  ``libraryVersion``, ``k``, ``numFeatures``, ``covarianceType``, ``featureNames`` and the
  training summary. Spark's ``Pipeline`` reader finds the class there, so pipelines
  containing our stages round-trip;
* ``data/``: Parquet, one row per array: ``name`` (``weights``, ``means``,
  ``covariances``), ``shape`` (array<int>) and ``values`` (array<double>, row-major).

Nothing is pickled or evaluated: JSON and Parquet only. Everything goes through Spark's
readers and writers, so any Hadoop-compatible path works (local, HDFS, object stores).

A save writes into a sibling temporary directory and renames it into place at the end
(atomic on local and HDFS file systems), so an interrupted save leaves no directory that
:func:`load_model` accepts. Spark Connect has no file-system API, so there the save
writes in place with the metadata last (a directory without it is refused), and a save
that fails deletes what it wrote; existence is asked of the server's file reader and
deletion goes through the server's ML helper (Spark >= 4.0).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter

from spark_gmm.errors import GaussianMixtureError, short_error
from spark_gmm.gaussian import MixtureParameters, covariance_shape

__all__ = [
    "FORMAT_VERSION",
    "ModelFormatError",
    "atomic_save",
    "delete_path",
    "list_children",
    "load_any_model",
    "path_exists",
]

log = logging.getLogger("spark_gmm")

FORMAT_VERSION = 1
_ARRAY_NAMES = ("weights", "means", "covariances")
# An updated model's running statistics (spark_gmm.incremental), when it has them.
_RUNNING_NAMES = ("runningNk", "runningCentres", "runningScatter")
# Params that hold objects, not JSON values; saved separately or not at all.
_OBJECT_PARAMS = ("initialModel",)


class ModelFormatError(GaussianMixtureError):
    """A saved model directory is missing, incomplete, corrupt or of an unknown format."""


def _json_params(instance: Any) -> dict[str, Any]:
    return {p.name: v for p, v in instance._paramMap.items() if p.name not in _OBJECT_PARAMS}


def _hadoop_fs(spark: Any, path: str) -> tuple[Any, Any] | None:
    """The Hadoop FileSystem and Path of ``path``, or None without a JVM (Spark Connect)."""
    from spark_gmm.engine import is_connect

    if is_connect(spark):
        return None
    jpath = _jvm_path(spark, path)
    return jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), jpath


def _ml_context(spark: Any) -> Any:
    """What ``DefaultParamsWriter/Reader`` take: PySpark 3.5 needs the SparkContext (it
    writes through ``sc.parallelize``/``textFile``); 4.x takes either; Connect has only the
    session."""
    from spark_gmm.engine import is_connect

    return spark if is_connect(spark) else spark.sparkContext


def _jvm_path(spark: Any, path: str) -> Any:
    return spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path)


def _connect_exists(spark: Any, path: str) -> bool:
    """Whether ``path`` exists, asked of the Connect server's file reader.

    Resolving a file source checks that its path exists (``PATH_NOT_FOUND`` otherwise);
    the text source has a fixed schema, so nothing under the path is read.
    """
    try:
        spark.read.format("text").load(path).schema  # noqa: B018 - resolving is the check
    except Exception as exc:
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            return False
        raise
    return True


def _connect_delete(path: str) -> None:
    """Delete ``path`` on the Connect server (its ML helper's overwrite handling)."""
    from pyspark.ml.connect.readwrite import RemoteMLWriter

    try:
        RemoteMLWriter.handleOverwrite(path, True)
    except Exception as exc:
        raise ModelFormatError(
            f"cannot delete {path} over Spark Connect ({short_error(exc)}): the server needs "
            "Spark ML's Connect support (Spark >= 4.0). Delete it yourself, or write elsewhere."
        ) from None


def _exists(spark: Any, path: str) -> bool:
    fs = _hadoop_fs(spark, path)
    if fs is None:
        return _connect_exists(spark, path)
    return bool(fs[0].exists(fs[1]))


def path_exists(spark: Any, path: str) -> bool:
    """Whether ``path`` exists (any Hadoop file system; over Connect, on the server's)."""
    return _exists(spark, path.rstrip("/"))


def list_children(spark: Any, path: str) -> list[str]:
    """Names of the entries directly under ``path`` ([] when it does not exist).

    Needs the Hadoop FileSystem, so a classic session (Connect has no listing API).
    """
    fs = _hadoop_fs(spark, path.rstrip("/"))
    if fs is None:
        raise ModelFormatError(
            f"cannot list {path} over Spark Connect (it has no file-system API); run this "
            "from a classic session."
        )
    filesystem, jpath = fs
    if not filesystem.exists(jpath):
        return []
    return sorted(str(status.getPath().getName()) for status in filesystem.listStatus(jpath))


def delete_path(spark: Any, path: str) -> None:
    """Delete ``path`` recursively if it exists (any Hadoop file system, or over Connect)."""
    path = path.rstrip("/")
    fs = _hadoop_fs(spark, path)
    if fs is None:
        if _connect_exists(spark, path):
            _connect_delete(path)
    elif fs[0].exists(fs[1]):
        fs[0].delete(fs[1], True)


def _delete_after_failure(spark: Any, path: str) -> None:
    """Best effort after a failed Connect save; the save's own error is what the caller
    sees."""
    try:
        delete_path(spark, path)
    except Exception as exc:
        log.warning("could not delete the partial save at %s: %s", path, short_error(exc))


def atomic_save(
    spark: Any, path: str, write: Callable[[str], None], overwrite: bool = False
) -> None:
    """Run ``write(tmp_path)`` into ``<path>._tmp-<uuid>``, then rename it to ``path``.

    Readers see the directory complete or not at all (rename is atomic on local and HDFS
    file systems; on object stores it is a copy, still done only after the write
    succeeded). Over Spark Connect, which has no rename, an existing ``path`` is deleted
    first (with ``overwrite``), ``write`` goes straight to ``path``, and if it fails what
    it wrote is deleted: a failed save leaves no directory, never a partial one.
    """
    path = path.rstrip("/")
    if _exists(spark, path) and not overwrite:
        raise ModelFormatError(
            f"{path} already exists; use write().overwrite().save(path) to replace it."
        )
    fs = _hadoop_fs(spark, path)
    if fs is None:
        delete_path(spark, path)
        try:
            write(path)
        except BaseException:
            _delete_after_failure(spark, path)
            raise
        return
    filesystem, final = fs
    tmp = f"{path}._tmp-{uuid.uuid4().hex}"
    jtmp = _jvm_path(spark, tmp)
    try:
        write(tmp)
        if overwrite and filesystem.exists(final):
            filesystem.delete(final, True)
        if not filesystem.rename(jtmp, final):
            raise ModelFormatError(f"could not move the saved directory into place at {path}.")
    finally:
        if filesystem.exists(jtmp):
            filesystem.delete(jtmp, True)


class _AtomicWriter(MLWriter):
    """An ``MLWriter`` whose ``save`` goes through :func:`atomic_save`."""

    def __init__(self, instance: Any) -> None:
        super().__init__()
        self.instance = instance

    def save(self, path: str) -> None:
        atomic_save(self.sparkSession, path, self.saveImpl, overwrite=self.shouldOverwrite)


def _write_arrays(spark: Any, path: str, arrays: dict[str, np.ndarray]) -> None:
    """One Parquet row per array: name, shape, values (row-major)."""
    rows = [
        (name, [int(s) for s in np.shape(arr)], [float(v) for v in np.ravel(arr)])
        for name, arr in arrays.items()
    ]
    spark.createDataFrame(rows, "name string, shape array<int>, values array<double>").coalesce(
        1
    ).write.parquet(f"{path}/data")


class GaussianMixtureModelWriter(_AtomicWriter):
    def saveImpl(self, path: str) -> None:
        model = self.instance
        params: MixtureParameters = model.mixtureParameters
        spark = self.sparkSession
        arrays = {
            "weights": params.weights,
            "means": params.means,
            "covariances": params.covariances,
        }
        running = model._running
        if running is not None:
            arrays.update(
                runningNk=running.nk,
                runningCentres=running.centres,
                runningScatter=running.scatter,
            )
        _write_arrays(spark, path, arrays)
        summary = model._summary
        extra = {
            "formatVersion": FORMAT_VERSION,
            "libraryVersion": _library_version(),
            "k": params.n_components,
            "numFeatures": params.n_features,
            "covarianceType": params.covariance_type,
            "featureNames": list(model._feature_names),
            "trainingSummary": None if summary is None else summary.to_dict(),
            "logLikelihoodQuantiles": model.logLikelihoodQuantiles,
            "updateCount": model.updateCount,
            "updateRows": model.updateRows,
            "updateSchedule": model.updateSchedule,
            "runningTotalWeight": None if running is None else running.total_weight,
        }
        DefaultParamsWriter.saveMetadata(
            model, path, _ml_context(spark), extra, _json_params(model)
        )


def _library_version() -> str:
    from spark_gmm import __version__

    return __version__


def _load_metadata(path: str, spark: Any, expected: tuple[str, ...]) -> dict[str, Any]:
    """The metadata of a save of one of the ``expected`` classes (full dotted names)."""
    try:
        metadata = DefaultParamsReader.loadMetadata(path, _ml_context(spark))
    except Exception as exc:  # missing dir, empty or unparseable metadata
        raise ModelFormatError(
            f"{path} is not a complete spark_gmm save: its metadata is missing or unreadable "
            f"({short_error(exc)}). Save the model again."
        ) from None
    if metadata.get("class") not in expected:
        raise ModelFormatError(
            f"{path} holds a {metadata.get('class')!r} save, not a {expected[0]}."
        )
    version = metadata.get("formatVersion")
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"{path} has model format version {version!r}; this spark_gmm "
            f"({_library_version()}) reads version {FORMAT_VERSION}."
        )
    return metadata


# Where classes lived in earlier versions, as their saves name them.
_FORMER_MODULES = {"GaussianMixtureModel": "spark_gmm.estimator"}


def _class_names(cls: type) -> tuple[str, ...]:
    """The names a save of ``cls`` may carry: where it is now, where it was before."""
    names = [f"{cls.__module__}.{cls.__name__}"]
    former = _FORMER_MODULES.get(cls.__name__)
    if former:
        names.append(f"{former}.{cls.__name__}")
    return tuple(names)


def _load_arrays(
    path: str, spark: Any, names: tuple[str, ...] = _ARRAY_NAMES, optional: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    try:
        rows = spark.read.parquet(f"{path}/data").collect()
    except Exception as exc:
        raise ModelFormatError(
            f"{path}/data cannot be read ({short_error(exc)}); the model directory is "
            "incomplete or corrupt. Save the model again."
        ) from None
    arrays: dict[str, np.ndarray] = {}
    for row in rows:
        name, shape, values = row["name"], row["shape"], row["values"]
        if name in arrays or name not in names + optional:
            raise ModelFormatError(f"{path}/data has an unexpected or repeated array {name!r}.")
        if shape is None or values is None or any(v is None for v in values):
            raise ModelFormatError(f"{path}/data: array {name!r} has missing values.")
        if int(np.prod(shape)) != len(values):
            raise ModelFormatError(
                f"{path}/data: array {name!r} has {len(values)} values for shape {tuple(shape)}."
            )
        arrays[name] = np.asarray(values, dtype=np.float64).reshape(shape)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ModelFormatError(f"{path}/data lacks the arrays {missing}; it is incomplete.")
    return arrays


def _check_shapes(
    path: str, arrays: dict[str, Any], expected: dict[str, tuple[int, ...]], says: str
) -> None:
    """Each saved array has the shape its metadata (``says``) implies."""
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise ModelFormatError(
                f"{path}: {name} has shape {arrays[name].shape} but the metadata says "
                f"{says} (expected {shape})."
            )


def _restore_model(model: Any, metadata: dict[str, Any], summary_cls: Any) -> Any:
    """What every saved model carries beside its parameters: uid, params, feature names,
    log-likelihood quantiles and the training summary."""
    model._resetUid(metadata["uid"])
    DefaultParamsReader.getAndSetParams(model, metadata)
    model._feature_names = list(metadata.get("featureNames") or [])
    model.logLikelihoodQuantiles = metadata.get("logLikelihoodQuantiles")
    summary = metadata.get("trainingSummary")
    if summary:
        model._summary = summary_cls.from_dict(summary, model)
    return model


def _restore_running(
    path: str, model: Any, arrays: dict[str, np.ndarray], metadata: dict[str, Any]
) -> None:
    """The running statistics of an updated model (saves before them have none: the
    next update starts from the parameters, see ``GaussianMixtureModel.runningStatistics``)."""
    from spark_gmm.gaussian import SufficientStatistics

    model.updateCount = int(metadata.get("updateCount") or 0)
    model.updateRows = int(metadata.get("updateRows") or 0)
    model.updateSchedule = metadata.get("updateSchedule")
    present = [n for n in _RUNNING_NAMES if n in arrays]
    if not present:
        return
    if len(present) != len(_RUNNING_NAMES) or metadata.get("runningTotalWeight") is None:
        raise ModelFormatError(f"{path} has incomplete running statistics ({present}).")
    params = model.mixtureParameters
    k, d = params.n_components, params.n_features
    ct = params.covariance_type
    scatter_shape = {"full": (k, d, d), "tied": (d, d)}.get(ct, (k, d))
    expected = {"runningNk": (k,), "runningCentres": (k, d), "runningScatter": scatter_shape}
    _check_shapes(path, arrays, expected, f"k={k}, d={d}, {ct}")
    nk = arrays["runningNk"]
    model._running = SufficientStatistics(
        ct,
        arrays["runningCentres"],
        nk,
        np.zeros((k, d)),
        arrays["runningScatter"],
        0.0,
        float(metadata["runningTotalWeight"]),
        nk.copy(),
    )


class GaussianMixtureModelReader(MLReader[Any]):
    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        path = path.rstrip("/")
        spark = self.sparkSession
        metadata = _load_metadata(path, spark, _class_names(self.cls))
        arrays = _load_arrays(path, spark, optional=_RUNNING_NAMES)
        k, d = int(metadata["k"]), int(metadata["numFeatures"])
        covariance_type = metadata["covarianceType"]
        expected = {
            "weights": (k,),
            "means": (k, d),
            "covariances": covariance_shape(covariance_type, k, d),
        }
        _check_shapes(path, arrays, expected, f"k={k}, d={d}, {covariance_type}")
        try:
            params = MixtureParameters.from_covariances(
                arrays["weights"], arrays["means"], arrays["covariances"], covariance_type
            )
        except ValueError as exc:
            raise ModelFormatError(f"{path} holds invalid parameters: {exc}") from None
        from spark_gmm.model import GaussianMixtureSummary

        model = _restore_model(self.cls(params), metadata, GaussianMixtureSummary)
        _restore_running(path, model, arrays, metadata)
        return model


class GaussianMixtureWriter(_AtomicWriter):
    """Estimator params as JSON; an ``initialModel`` as a model directory beside them."""

    def saveImpl(self, path: str) -> None:
        estimator = self.instance
        initial = estimator.getInitialModel()
        DefaultParamsWriter.saveMetadata(
            estimator,
            path,
            _ml_context(self.sparkSession),
            {
                "formatVersion": FORMAT_VERSION,
                "libraryVersion": _library_version(),
                "hasInitialModel": initial is not None,
            },
            _json_params(estimator),
        )
        if initial is not None:
            GaussianMixtureModelWriter(initial).session(self.sparkSession).saveImpl(
                f"{path}/initialModel"
            )


class GaussianMixtureReader(MLReader[Any]):
    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        path = path.rstrip("/")
        metadata = _load_metadata(path, self.sparkSession, _class_names(self.cls))
        estimator = self.cls()
        estimator._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(estimator, metadata)
        if metadata.get("hasInitialModel"):
            from spark_gmm.model import GaussianMixtureModel

            initial = (
                GaussianMixtureModelReader(GaussianMixtureModel)
                .session(self.sparkSession)
                .load(f"{path}/initialModel")
            )
            estimator.setInitialModel(initial)
        return estimator


_POSTERIOR_ARRAYS = (
    "weight_concentration",
    "mean_precision",
    "means",
    "degrees_of_freedom",
    "covariances",
)


class BayesianModelWriter(_AtomicWriter):
    """A Bayesian model: the posterior's arrays (Parquet) and the priors (metadata)."""

    def saveImpl(self, path: str) -> None:
        model = self.instance
        posterior = model.posterior
        spark = self.sparkSession
        _write_arrays(spark, path, {n: getattr(posterior, n) for n in _POSTERIOR_ARRAYS})
        priors = model._priors
        extra = {
            "formatVersion": FORMAT_VERSION,
            "libraryVersion": _library_version(),
            "k": posterior.n_components,
            "numFeatures": posterior.n_features,
            "covarianceType": posterior.covariance_type,
            "priorType": posterior.prior_type,
            "priors": None
            if priors is None
            else {
                "weightConcentrationPrior": priors.weight_concentration_prior,
                "meanPrecisionPrior": priors.mean_precision_prior,
                "meanPrior": np.asarray(priors.mean_prior).tolist(),
                "degreesOfFreedomPrior": priors.degrees_of_freedom_prior,
                "covariancePrior": np.asarray(priors.covariance_prior).tolist(),
            },
            "featureNames": list(model._feature_names),
            "trainingSummary": None if model._summary is None else model._summary.to_dict(),
            "logLikelihoodQuantiles": model.logLikelihoodQuantiles,
        }
        DefaultParamsWriter.saveMetadata(
            model, path, _ml_context(spark), extra, _json_params(model)
        )


class BayesianModelReader(MLReader[Any]):
    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        from spark_gmm.gaussian import compute_precision_cholesky
        from spark_gmm.variational import Priors, VariationalParameters

        path = path.rstrip("/")
        spark = self.sparkSession
        metadata = _load_metadata(path, spark, _class_names(self.cls))
        arrays = _load_arrays(path, spark, _POSTERIOR_ARRAYS)
        k, d = int(metadata["k"]), int(metadata["numFeatures"])
        covariance_type, prior_type = metadata["covarianceType"], metadata["priorType"]
        expected = {
            "weight_concentration": (2, k) if prior_type == "dirichlet_process" else (k,),
            "mean_precision": (k,),
            "means": (k, d),
            "degrees_of_freedom": (k,),
            "covariances": covariance_shape(covariance_type, k, d),
        }
        _check_shapes(path, arrays, expected, f"k={k}, d={d}, {covariance_type}, {prior_type}")
        try:
            precisions_chol = compute_precision_cholesky(arrays["covariances"], covariance_type)
        except GaussianMixtureError as exc:
            raise ModelFormatError(f"{path} holds invalid parameters: {exc}") from None
        posterior = VariationalParameters(
            covariance_type=covariance_type,
            weight_concentration=arrays["weight_concentration"],
            mean_precision=arrays["mean_precision"],
            means=arrays["means"],
            degrees_of_freedom=arrays["degrees_of_freedom"],
            covariances=arrays["covariances"],
            precisions_chol=precisions_chol,
            prior_type=prior_type,
        )
        from spark_gmm.bayesian import BayesianGaussianMixtureSummary

        model = _restore_model(self.cls(posterior), metadata, BayesianGaussianMixtureSummary)
        priors = metadata.get("priors")
        if priors:
            model._priors = Priors(
                prior_type,
                float(priors["weightConcentrationPrior"]),
                float(priors["meanPrecisionPrior"]),
                np.asarray(priors["meanPrior"], dtype=np.float64),
                float(priors["degreesOfFreedomPrior"]),
                np.asarray(priors["covariancePrior"], dtype=np.float64),
            )
        return model


# Stage classes a saved PipelineModel may name. PySpark's reader imports the module a
# stage's metadata names, so an arbitrary name would import (run) arbitrary installed code.
_TRUSTED_CLASS_PREFIXES = ("pyspark.ml.", "org.apache.spark.ml.", "spark_gmm.")


def _check_stage_classes(path: str, spark: Any) -> None:
    """Refuse a pipeline whose stages name classes outside Spark ML and spark_gmm."""
    from pyspark.ml.pipeline import PipelineSharedReadWrite

    try:
        metadata = DefaultParamsReader.loadMetadata(path, _ml_context(spark))
        uids = metadata["paramMap"]["stageUids"]
    except Exception as exc:
        raise ModelFormatError(
            f"{path} is not a readable PipelineModel save ({short_error(exc)})."
        ) from None
    for index, uid in enumerate(uids):
        stage = PipelineSharedReadWrite.getStagePath(uid, index, len(uids), f"{path}/stages")
        try:
            cls = str(DefaultParamsReader.loadMetadata(stage, _ml_context(spark))["class"])
        except Exception as exc:
            raise ModelFormatError(
                f"{stage}: stage metadata is missing or unreadable ({short_error(exc)}). "
                "Save the model again."
            ) from None
        if not cls.startswith(_TRUSTED_CLASS_PREFIXES):
            raise ModelFormatError(
                f"{stage} names the class {cls!r}, which is neither Spark ML nor spark_gmm; "
                "refusing to import it. Only load models from trusted writers."
            )


def load_any_model(path: str, spark: Any) -> Any:
    """Load a saved ``GaussianMixtureModel`` or a ``PipelineModel`` ending with one.

    Returns
    -------
    model : GaussianMixtureModel or PipelineModel
    gmm : GaussianMixtureModel
        The mixture itself (the last stage of a pipeline).
    """
    from pyspark.ml import PipelineModel

    from spark_gmm.model import GaussianMixtureModel

    try:
        metadata = DefaultParamsReader.loadMetadata(path.rstrip("/"), _ml_context(spark))
    except Exception as exc:
        raise ModelFormatError(
            f"{path} is not a saved model: its metadata is missing or unreadable "
            f"({short_error(exc)})."
        ) from None
    cls = metadata.get("class", "")
    if cls.endswith("BayesianGaussianMixtureModel") and cls.startswith("spark_gmm"):
        from spark_gmm.bayesian import BayesianGaussianMixtureModel

        bayesian = BayesianGaussianMixtureModel.load(path)
        return bayesian, bayesian
    if cls.endswith("GaussianMixtureModel") and cls.startswith("spark_gmm"):
        model = GaussianMixtureModel.load(path)
        return model, model
    if cls.endswith("PipelineModel"):
        _check_stage_classes(path.rstrip("/"), spark)
        pipeline = PipelineModel.load(path)
        last = pipeline.stages[-1] if pipeline.stages else None
        if isinstance(last, GaussianMixtureModel):
            return pipeline, last
    raise ModelFormatError(
        f"{path} holds a {cls or 'unknown'} model, not a spark_gmm GaussianMixtureModel "
        "(or a PipelineModel ending with one)."
    )
