"""``transform``: score rows inside Spark, Arrow in and Arrow out.

The scoring UDF receives the feature columns as Arrow arrays (numeric columns, or one
``array<double>`` column), validates them like the fit's input
(:func:`spark_gmm.data.batch_to_rows`), runs the E-step kernel on the whole batch, and
returns one struct column ``(prediction int, probability array<double>, loglik double)``
built from flat buffers: the probabilities are one float64 buffer plus offsets, with no
Python object per row.

* Spark >= 4.1: an Arrow UDF (``pyspark.sql.functions.arrow_udf``): ``pyarrow.Array``
  in, ``pyarrow.StructArray`` out. The probabilities leave the UDF already as ml Vectors:
  a ``VectorUDT`` value is stored in Spark as its ``sqlType`` struct
  ``(type, size, indices, values)``, so the UDF fills that struct (``type`` 1, dense)
  around the flat buffer. Returning ``array<double>`` and converting with
  ``array_to_vector`` instead cost a JVM function call and two copies per row: measured
  0.4-0.5 s of a 1M x 16 transform that took 2.5 s.
* Spark 3.5 / 4.0: a pandas UDF over numeric columns only (a vector column is split into
  its d doubles in the JVM first) returning numeric columns only (one double per
  component, joined into the array and converted to a Vector in the JVM): PySpark
  converts array columns between pandas and Arrow row by row, numeric ones a column at a
  time.

Spark 4.3 feeds Arrow UDFs straight from a columnar scan (Parquet, ORC) when
``spark.sql.execution.arrow.pythonUDF.columnarInput.enabled`` is on, its default; that
path fails on any ``VectorUDT`` in the rows, whether a passed-through ``features`` column
or the UDF's own output ("Unsupported data type UDT"). :func:`row_based_input` keeps the
scan row-based under the UDF when that option is on.

Rows the model cannot score follow ``handleInvalid``: ``error`` raises (naming the
columns and the count in the batch), ``skip`` and ``keep`` give null outputs (``skip``
then drops them in the JVM).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from spark_gmm import gaussian
from spark_gmm.data import FeatureSpec, batch_to_rows
from spark_gmm.errors import InvalidInputError
from spark_gmm.gaussian import MixtureParameters

__all__ = [
    "OUTPUT_DDL",
    "dense_vectors",
    "has_arrow_udf",
    "row_based_input",
    "score_arrays",
    "scoring_column",
]

_COLUMNAR_INPUT = "spark.sql.execution.arrow.pythonUDF.columnarInput.enabled"

OUTPUT_DDL = "prediction int, probability array<double>, loglik double"
_OUTPUT_FIELDS = [
    pa.field("prediction", pa.int32()),
    pa.field("probability", pa.list_(pa.float64())),
    pa.field("loglik", pa.float64()),
]
# VectorUDT's sqlType; a dense vector has type 1, null size and indices, and its values.
_DENSE_VECTOR = pa.struct(
    [
        pa.field("type", pa.int8(), nullable=False),
        pa.field("size", pa.int32()),
        pa.field("indices", pa.list_(pa.int32())),
        pa.field("values", pa.list_(pa.float64())),
    ]
)


def has_arrow_udf() -> bool:
    """Whether this PySpark has Arrow UDFs (``pyspark.sql.functions.arrow_udf``, 4.1+)."""
    try:
        from pyspark.sql.functions import arrow_udf  # noqa: F401
    except ImportError:
        return False
    return True


def row_based_input(dataset: Any, column: str) -> Any:
    """``dataset``, with its rows reaching the scoring UDF row by row.

    Under Spark's columnar UDF input (see the module docstring) the rows get a filter
    that keeps every row, ``column IS NULL OR column IS NOT NULL``: a filter is a
    row-based operator, so the scan under it converts its batches to rows as it does
    for any other Python UDF. The optimizer keeps it (it only pushes it into the scan as
    a data filter, which skips nothing). Without that option, or on Spark versions
    without it, ``dataset`` is returned unchanged.
    """
    from pyspark.sql import functions as F

    try:
        # No default argument: given one, Spark returns it for a key nobody set, instead
        # of the key's own default.
        enabled = str(dataset.sparkSession.conf.get(_COLUMNAR_INPUT)).lower()
    except Exception:  # a Spark that does not know the key
        enabled = "false"
    if enabled != "true":
        return dataset
    c = F.col(f"`{column}`")
    return dataset.where(c.isNull() | c.isNotNull())


def score_arrays(
    arrays: list[pa.Array], spec: FeatureSpec, params: MixtureParameters, handle: str
) -> pa.StructArray:
    """Score one batch of feature arrays.

    Parameters
    ----------
    arrays : list of pyarrow.Array
        ``spec.n_features`` float64 arrays (``spec.source == "columns"``), or one list
        array of vectors.
    spec : FeatureSpec
    params : MixtureParameters
    handle : {'error', 'skip', 'keep'}

    Returns
    -------
    pyarrow.StructArray of (prediction int32, probability list<float64>, loglik float64)
        Null children for rows that cannot be scored (invalid features, or so far from
        every component that their likelihood is not finite), unless ``handle='error'``.

    Raises
    ------
    InvalidInputError
        Under ``handle='error'``, for the first batch with such rows.
    """
    names = list(dict.fromkeys(spec.names))
    batch = pa.RecordBatch.from_arrays(arrays, names=[f"f{j}" for j in range(len(arrays))])
    X, _, bad, _ = batch_to_rows(batch, spec)
    n, k = batch.num_rows, params.n_components
    if handle == "error" and bad.any():
        raise InvalidInputError(
            f"{int(bad.sum())} row(s) of a batch (the first found; others may follow) have "
            f"null, NaN, infinite or wrongly sized features in "
            f"{', '.join(repr(c) for c in names)}. Clean them, or set handleInvalid='skip' "
            "(drop the rows) or 'keep' (null outputs)."
        )
    ok = ~bad
    XT = np.ascontiguousarray((X[ok] if bad.any() else X).T)
    log_prob_norm, resp_t = gaussian.score_t(XT, params)
    # Rows so far from every component (e.g. values near 1e300) that their densities
    # overflow: no probabilities exist for them; never emit NaN.
    finite = np.isfinite(log_prob_norm) & np.isfinite(resp_t).all(axis=0)
    if not finite.all():
        if handle == "error":
            raise InvalidInputError(
                f"{int((~finite).sum())} row(s) of a batch have features in "
                f"{', '.join(repr(c) for c in names)} so far from every component (e.g. "
                "values near 1e300) that their likelihood is not finite. Scale them like "
                "the training data, or set handleInvalid='skip' or 'keep'."
            )
        resp_t[:, ~finite] = 0.0
        log_prob_norm[~finite] = 0.0
    prediction = np.argmax(resp_t, axis=0).astype(np.int32)
    proba = resp_t.T  # (rows, k), row-major: one flat buffer of values
    if bad.any() or not finite.all():
        null = bad.copy()
        null[np.flatnonzero(ok)[~finite]] = True
        full_pred = np.zeros(n, dtype=np.int32)
        full_pred[ok] = prediction
        full_proba = np.zeros((n, k))
        full_proba[ok] = proba
        full_ll = np.zeros(n)
        full_ll[ok] = log_prob_norm
        prediction, proba, log_prob_norm = full_pred, full_proba, full_ll
        mask, list_mask = null, pa.array(null)
    else:
        mask, list_mask = None, None
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(proba).reshape(-1))
    return pa.StructArray.from_arrays(
        [
            pa.array(prediction, mask=mask),
            pa.ListArray.from_arrays(offsets, values, mask=list_mask),
            pa.array(log_prob_norm, mask=mask),
        ],
        fields=_OUTPUT_FIELDS,
    )


def scoring_column(
    columns: list[Any], spec: FeatureSpec, params: MixtureParameters, handle: str
) -> tuple[Any, Callable[[Any], Any]]:
    """The UDF column scoring ``columns`` with ``params``, and how to read its outputs.

    ``columns`` are the feature columns of :func:`spark_gmm.data.resolve_features`:
    ``_gmm_f0..`` doubles, or one ``array<double>``.

    Returns
    -------
    column : pyspark.sql.Column
        A struct with fields ``prediction`` and ``loglik``, and the probabilities.
    probability : callable
        Given a column holding that struct, the probabilities as an ml Vector column
        (null where the prediction is null).
    """
    if has_arrow_udf():
        return _arrow_column(columns, spec, params, handle), lambda out: out["probability"]
    return _pandas_column(columns, spec, params, handle)


def dense_vectors(lists: pa.ListArray) -> pa.StructArray:
    """``list<double>`` rows as ``VectorUDT`` values (dense), without copying the values.

    A null list gives a null vector.
    """
    n = len(lists)
    mask = lists.is_null() if lists.null_count else None
    return pa.StructArray.from_arrays(
        [
            pa.array(np.ones(n, dtype=np.int8)),
            pa.nulls(n, pa.int32()),
            pa.nulls(n, _DENSE_VECTOR.field("indices").type),
            lists,
        ],
        fields=list(_DENSE_VECTOR),
        mask=mask,
    )


def _arrow_column(columns: list[Any], spec: FeatureSpec, params: Any, handle: str) -> Any:
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as T
    from pyspark.sql.functions import arrow_udf

    returns = T.StructType(
        [
            T.StructField("prediction", T.IntegerType()),
            T.StructField("probability", VectorUDT()),
            T.StructField("loglik", T.DoubleType()),
        ]
    )

    def score(*arrays: pa.Array) -> pa.Array:
        out = score_arrays(list(arrays), spec, params, handle)
        return pa.StructArray.from_arrays(
            [out.field("prediction"), dense_vectors(out.field("probability")), out.field("loglik")],
            names=returns.names,
        )

    return arrow_udf(score, returns)(*columns)  # type: ignore[call-overload]


def _pandas_column(
    columns: list[Any], spec: FeatureSpec, params: Any, handle: str
) -> tuple[Any, Callable[[Any], Any]]:
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    from spark_gmm.data import make_spec

    if spec.source == "vector":
        # d double columns instead of one array column. A null or short vector gives
        # nulls, counted as invalid rows under the vector's name.
        vector = columns[0]
        size_ok = F.size(vector) == spec.n_features
        columns = [
            F.when(size_ok, vector.getItem(j)).alias(f"_gmm_f{j}") for j in range(spec.n_features)
        ]
        spec = make_spec("columns", [spec.names[0]] * spec.n_features, spec.n_features, None)
    k = params.n_components
    ddl = "prediction int, loglik double, " + ", ".join(f"p{j} double" for j in range(k))

    # The type hints say "Series in, DataFrame out" (a scalar pandas UDF returning a
    # struct); pandas is imported at module level so that PySpark can resolve them.
    def score(*series: pd.Series) -> pd.DataFrame:
        arrays = [pa.Array.from_pandas(s, type=pa.float64()) for s in series]
        out = score_arrays(arrays, spec, params, handle)
        null = np.asarray(out.field("prediction").is_null(), dtype=bool)
        frame = {
            "prediction": pd.array(out.field("prediction").fill_null(0).to_numpy(), "Int32"),
            "loglik": out.field("loglik").to_numpy(zero_copy_only=False),
        }
        # .values keeps the (zero) entries under null rows, one row of k per input row.
        proba = out.field("probability").values.to_numpy().reshape(-1, k)
        for j in range(k):
            frame[f"p{j}"] = np.where(null, np.nan, proba[:, j])
        result = pd.DataFrame(frame)
        result.loc[null, "prediction"] = pd.NA
        return result

    def probability(out: Any) -> Any:
        from pyspark.ml.functions import array_to_vector

        # array_to_vector fails on null: rows kept under handleInvalid='keep' have none.
        proba = F.array(*[out[f"p{j}"] for j in range(k)])
        return F.when(out["prediction"].isNotNull(), array_to_vector(proba))

    return pandas_udf(score, ddl)(*columns), probability  # type: ignore[call-overload]
