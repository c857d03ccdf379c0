"""Keep a model current from a Structured Streaming source, one micro-batch at a time.

:class:`StreamingGaussianMixture` is a ``foreachBatch`` function: every micro-batch is
folded into the model with :meth:`GaussianMixtureModel.update`, and the result is
committed to a *model directory* as a new version, ``<modelDir>/batch-<batchId>`` (a model
directory, saved atomically: written aside, renamed into place). The newest complete
version is the model; a version carries its running statistics and the batch id.

``foreachBatch`` is at-least-once: after a failure Spark runs the last batch again with
the same id. A batch whose id is not above the newest committed one is skipped (the log
says so), so a replay changes nothing. A restarted query (same ``checkpointLocation``)
resumes from the newest committed version; the initial model is only used while the
directory has none. Older versions beyond ``keepVersions`` are deleted after a commit.

On a classic session the versions are listed through Hadoop's FileSystem; over Spark
Connect (no listing API) through Spark's file reader, from their metadata files.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from spark_gmm.engine import is_connect
from spark_gmm.errors import InvalidInputError
from spark_gmm.incremental import Schedule
from spark_gmm.model import GaussianMixtureModel
from spark_gmm.persistence import delete_path, list_children

__all__ = ["StreamingGaussianMixture"]

log = logging.getLogger("spark_gmm")

_VERSION = re.compile(r"^batch-(\d{12})$")


def _connect_version_names(spark: Any, model_dir: str) -> list[str]:
    """The version directories that hold metadata, found by Spark's file reader (Spark
    Connect has no listing API): the parent directory of every metadata file."""
    from pyspark.sql import functions as F

    try:
        files = (
            spark.read.text(f"{model_dir}/batch-*/metadata")
            .select(F.input_file_name().alias("file"))
            .distinct()
            .collect()
        )
    except Exception as exc:
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            return []
        raise
    return sorted({row["file"].rstrip("/").split("/")[-3] for row in files})


class StreamingGaussianMixture:
    """Update a Gaussian mixture from every micro-batch of a streaming DataFrame.

    Parameters
    ----------
    modelDir : str
        Where the committed versions live (any Hadoop path the driver can list).
    initialModel : GaussianMixtureModel, optional
        The model to start from while ``modelDir`` has no version yet.
    decayFactor, halfLife, timeUnit, stepSizeOffset, stepSizeExponent, passes :
        As :meth:`GaussianMixtureModel.update` (default: decay 1, one pass).
    keepVersions : int
        Committed versions kept (the newest ones); default 3.

    Examples
    --------
    >>> sgm = StreamingGaussianMixture("/lake/models/events", initialModel=model,
    ...                                halfLife=7)                      # doctest: +SKIP
    >>> query = sgm.start(spark.readStream.table("events"),
    ...                   checkpointLocation="/lake/checkpoints/events")  # doctest: +SKIP
    """

    def __init__(
        self,
        modelDir: str,
        initialModel: GaussianMixtureModel | None = None,
        decayFactor: float | None = None,
        halfLife: float | None = None,
        timeUnit: str = "batches",
        stepSizeOffset: float | None = None,
        stepSizeExponent: float | None = None,
        passes: int = 1,
        keepVersions: int = 3,
    ) -> None:
        # Checked now, not at the first micro-batch.
        Schedule.from_params(decayFactor, halfLife, timeUnit, stepSizeOffset, stepSizeExponent)
        if keepVersions < 1:
            raise InvalidInputError(f"keepVersions must be >= 1; got {keepVersions}.")
        if passes < 1:
            raise InvalidInputError(f"passes must be >= 1; got {passes}.")
        self.modelDir = modelDir.rstrip("/")
        self.initialModel = initialModel
        self.keepVersions = int(keepVersions)
        self._update_args: dict[str, Any] = {
            "decayFactor": decayFactor,
            "halfLife": halfLife,
            "timeUnit": timeUnit,
            "stepSizeOffset": stepSizeOffset,
            "stepSizeExponent": stepSizeExponent,
            "passes": int(passes),
        }
        self._latest: tuple[int, GaussianMixtureModel] | None = None

    # -- committed versions -------------------------------------------------

    def _versions(self, spark: Any) -> list[int]:
        """Batch ids of the complete versions (a save in progress has another name)."""
        if is_connect(spark):
            names = _connect_version_names(spark, self.modelDir)
        else:
            names = list_children(spark, self.modelDir)
        return sorted(int(m.group(1)) for m in map(_VERSION.match, names) if m)

    def _path(self, batch_id: int) -> str:
        return f"{self.modelDir}/batch-{batch_id:012d}"

    def latest(self, spark: Any) -> tuple[int | None, GaussianMixtureModel]:
        """The newest committed ``(batchId, model)``; ``(None, initialModel)`` before the
        first commit."""
        if self._latest is not None:
            return self._latest
        versions = self._versions(spark)
        if versions:
            batch_id = versions[-1]
            model = GaussianMixtureModel.load(self._path(batch_id))
            self._latest = (batch_id, model)
            return self._latest
        if self.initialModel is None:
            raise InvalidInputError(
                f"{self.modelDir} holds no committed model and no initialModel was given: "
                "give the model to start from (e.g. a batch fit)."
            )
        return None, self.initialModel

    def latestModel(self, spark: Any) -> GaussianMixtureModel:
        """The current model (newest committed version, or the initial model)."""
        return self.latest(spark)[1]

    # -- the foreachBatch function -------------------------------------------

    def __call__(self, df: Any, batchId: int) -> None:
        self.process_batch(df, batchId)

    def process_batch(self, df: Any, batchId: int) -> None:
        """Fold one micro-batch in and commit the new version (skip a replayed id)."""
        spark = df.sparkSession
        batch_id = int(batchId)
        last, model = self.latest(spark)
        if last is not None and batch_id <= last:
            log.info(
                "streaming update: batch %d skipped: version batch-%012d is already "
                "committed (a replay)",
                batch_id,
                last,
            )
            return
        if df.isEmpty():
            log.info("streaming update: batch %d is empty; nothing to fold in", batch_id)
            return
        updated = model.update(df, **self._update_args)
        # Saved aside and renamed into place: a crash leaves the previous version newest.
        updated.write().save(self._path(batch_id))
        self._latest = (batch_id, updated)
        log.info(
            "streaming update: batch %d committed as %s (update %d, %d rows in total)",
            batch_id,
            self._path(batch_id),
            updated.updateCount,
            updated.updateRows,
        )
        for old in self._versions(spark)[: -self.keepVersions]:
            delete_path(spark, self._path(old))

    def start(
        self,
        stream: Any,
        checkpointLocation: str,
        trigger: dict[str, Any] | None = None,
        queryName: str | None = None,
    ) -> Any:
        """Start the streaming query; returns Spark's ``StreamingQuery``.

        Parameters
        ----------
        stream : pyspark.sql.DataFrame
            A streaming DataFrame with the model's feature columns.
        checkpointLocation : str
            Spark's own progress checkpoint (which batch ids are done).
        trigger : dict, optional
            Passed to ``DataStreamWriter.trigger``, e.g. ``{"availableNow": True}`` or
            ``{"processingTime": "1 minute"}``.
        """
        writer = stream.writeStream.foreachBatch(self.process_batch).option(
            "checkpointLocation", checkpointLocation
        )
        if queryName:
            writer = writer.queryName(queryName)
        if trigger:
            writer = writer.trigger(**trigger)
        return writer.start()
