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

The Arrow batch size is the session's (``spark.sql.execution.arrow.maxRecordsPerBatch``,
10,000 rows by default). ``benchmarks/bench_suite.py --cases score`` times our transform
at 50,000-row batches beside it: no gain beyond the noise (see
``benchmarks/results/scoring/suite.md``), so ``transform`` leaves the setting alone. It
could not set it per query anyway: Spark reads it when it plans the query, at the action,
not when ``transform`` returns.

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
from numpy.typing import NDArray

from spark_gmm import gaussian, missing
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
    arrays: list[pa.Array],
    spec: FeatureSpec,
    params: MixtureParameters,
    handle: str,
    imputed: bool = False,
) -> pa.StructArray:
    """Score one batch of feature arrays.

    Parameters
    ----------
    arrays : list of pyarrow.Array
        ``spec.n_features`` float64 arrays (``spec.source == "columns"``), or one list
        array of vectors.
    spec : FeatureSpec
        Under ``spec.allow_missing``, a row's null or NaN features are marginalised: its
        outputs come from the density of its observed features.
    params : MixtureParameters
    handle : {'error', 'skip', 'keep'}
    imputed : bool
        Also return each row with its missing values replaced by their conditional
        expectation under the model (:func:`spark_gmm.missing.impute`).

    Returns
    -------
    pyarrow.StructArray of (prediction int32, probability list<float64>, loglik float64)
        Then ``imputed list<float64>`` if asked for. Null children for rows that cannot
        be scored (invalid features, or so far from every component that their
        likelihood is not finite), unless ``handle='error'``.

    Raises
    ------
    InvalidInputError
        Under ``handle='error'``, for the first batch with such rows.
    """
    names = list(dict.fromkeys(spec.names))
    batch = pa.RecordBatch.from_arrays(arrays, names=[f"f{j}" for j in range(len(arrays))])
    X, _, bad, _ = batch_to_rows(batch, spec)
    n, k, d = batch.num_rows, params.n_components, params.n_features
    if handle == "error" and bad.any():
        missing_hint = (
            ""
            if spec.allow_missing
            else " To use rows with missing values, fit and score with handleMissing='marginalize'."
        )
        raise InvalidInputError(
            f"{int(bad.sum())} row(s) of a batch (the first found; others may follow) have "
            f"{_problem_words(spec)} features in {', '.join(repr(c) for c in names)}. Clean "
            "them, or set handleInvalid='skip' (drop the rows) or 'keep' (null outputs)."
            + missing_hint
        )
    ok = ~bad
    X_ok = X[ok] if bad.any() else X
    log_prob_norm, resp_t, X_imputed = _score_rows(X_ok, params, spec.allow_missing, imputed)
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
        if X_imputed is not None:
            X_imputed[~finite] = 0.0
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
        if X_imputed is not None:
            full_imputed = np.zeros((n, d))
            full_imputed[ok] = X_imputed
            X_imputed = full_imputed
        mask, list_mask = null, pa.array(null)
    else:
        mask, list_mask = None, None
    children = [
        pa.array(prediction, mask=mask),
        _list_rows(proba, list_mask),
        pa.array(log_prob_norm, mask=mask),
    ]
    fields = list(_OUTPUT_FIELDS)
    if X_imputed is not None:
        children.append(_list_rows(X_imputed, list_mask))
        fields.append(pa.field("imputed", pa.list_(pa.float64())))
    return pa.StructArray.from_arrays(children, fields=fields)


def _problem_words(spec: FeatureSpec) -> str:
    if spec.allow_missing:
        return "infinite, all-missing or wrongly sized"
    return "null, NaN, infinite or wrongly sized"


def _list_rows(values: NDArray[np.float64], mask: pa.Array | None) -> pa.ListArray:
    """The rows of a 2-D array as a ``list<double>`` array over one flat buffer."""
    n, width = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    return pa.ListArray.from_arrays(offsets, flat, mask=mask)


def _score_rows(
    X: NDArray[np.float64], params: MixtureParameters, allow_missing: bool, imputed: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64] | None]:
    """Log-likelihoods (n,), responsibilities (k, n) and, if asked, imputed rows (n, d).

    Complete rows take the E-step kernel; rows with missing values (NaN, only under
    ``allow_missing``) the marginal density of :mod:`spark_gmm.missing`.
    """
    incomplete = np.isnan(X).any(axis=1) if allow_missing else None
    if incomplete is None or not incomplete.any():
        log_prob_norm, resp_t = gaussian.score_t(np.ascontiguousarray(X.T), params)
        return log_prob_norm, resp_t, (np.array(X, dtype=np.float64) if imputed else None)
    complete = ~incomplete
    log_prob_norm = np.empty(X.shape[0])
    resp_t = np.empty((params.n_components, X.shape[0]))
    if complete.any():
        ll, r = gaussian.score_t(np.ascontiguousarray(X[complete].T), params)
        log_prob_norm[complete], resp_t[:, complete] = ll, r
    X_imputed = None
    if imputed:
        X_imputed = np.array(X, dtype=np.float64)
        ll, r, X_imputed[incomplete] = missing.score_and_impute(X[incomplete], params)
    else:
        ll, r = missing.score_and_proba_missing(X[incomplete], params)
    log_prob_norm[incomplete], resp_t[:, incomplete] = ll, r.T
    return log_prob_norm, resp_t, X_imputed


def scoring_column(
    columns: list[Any],
    spec: FeatureSpec,
    params: MixtureParameters,
    handle: str,
    imputed: bool = False,
) -> tuple[Any, Callable[[Any], Any], Callable[[Any], Any]]:
    """The UDF column scoring ``columns`` with ``params``, and how to read its outputs.

    ``columns`` are the feature columns of :func:`spark_gmm.data.resolve_features`:
    ``_gmm_f0..`` doubles, or one ``array<double>``.

    Returns
    -------
    column : pyspark.sql.Column
        A struct with fields ``prediction`` and ``loglik``, and the probabilities (and
        the imputed features when ``imputed``).
    probability, imputed_vector : callable
        Given a column holding that struct, the probabilities (the imputed features) as
        an ml Vector column, null where the prediction is null.
    """
    if has_arrow_udf():
        column = _arrow_column(columns, spec, params, handle, imputed)
        return column, lambda out: out["probability"], lambda out: out["imputed"]
    return _pandas_column(columns, spec, params, handle, imputed)


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


def _arrow_column(
    columns: list[Any], spec: FeatureSpec, params: Any, handle: str, imputed: bool
) -> Any:
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as T
    from pyspark.sql.functions import arrow_udf

    fields = [
        T.StructField("prediction", T.IntegerType()),
        T.StructField("probability", VectorUDT()),
        T.StructField("loglik", T.DoubleType()),
    ]
    if imputed:
        fields.append(T.StructField("imputed", VectorUDT()))
    returns = T.StructType(fields)

    def score(*arrays: pa.Array) -> pa.Array:
        out = score_arrays(list(arrays), spec, params, handle, imputed)
        children = [
            out.field("prediction"),
            dense_vectors(out.field("probability")),
            out.field("loglik"),
        ]
        if imputed:
            children.append(dense_vectors(out.field("imputed")))
        return pa.StructArray.from_arrays(children, names=returns.names)

    return arrow_udf(score, returns)(*columns)  # type: ignore[call-overload]


def _pandas_column(
    columns: list[Any], spec: FeatureSpec, params: Any, handle: str, imputed: bool
) -> tuple[Any, Callable[[Any], Any], Callable[[Any], Any]]:
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
        spec = make_spec(
            "columns",
            [spec.names[0]] * spec.n_features,
            spec.n_features,
            None,
            spec.allow_missing,
        )
    k, d = params.n_components, params.n_features
    ddl = "prediction int, loglik double, " + ", ".join(f"p{j} double" for j in range(k))
    if imputed:
        ddl += ", " + ", ".join(f"i{j} double" for j in range(d))

    # The type hints say "Series in, DataFrame out" (a scalar pandas UDF returning a
    # struct); pandas is imported at module level so that PySpark can resolve them.
    def score(*series: pd.Series) -> pd.DataFrame:
        arrays = [pa.Array.from_pandas(s, type=pa.float64()) for s in series]
        out = score_arrays(arrays, spec, params, handle, imputed)
        null = np.asarray(out.field("prediction").is_null(), dtype=bool)
        frame = {
            "prediction": pd.array(out.field("prediction").fill_null(0).to_numpy(), "Int32"),
            "loglik": out.field("loglik").to_numpy(zero_copy_only=False),
        }
        # .values keeps the (zero) entries under null rows, one row of k per input row.
        proba = out.field("probability").values.to_numpy().reshape(-1, k)
        for j in range(k):
            frame[f"p{j}"] = np.where(null, np.nan, proba[:, j])
        if imputed:
            filled = out.field("imputed").values.to_numpy().reshape(-1, d)
            for j in range(d):
                frame[f"i{j}"] = np.where(null, np.nan, filled[:, j])
        result = pd.DataFrame(frame)
        result.loc[null, "prediction"] = pd.NA
        return result

    def vector_of(prefix: str, size: int) -> Callable[[Any], Any]:
        def read(out: Any) -> Any:
            from pyspark.ml.functions import array_to_vector

            # array_to_vector fails on null: rows kept under handleInvalid='keep' have none.
            values = F.array(*[out[f"{prefix}{j}"] for j in range(size)])
            return F.when(out["prediction"].isNotNull(), array_to_vector(values))

        return read

    column = pandas_udf(score, ddl)(*columns)  # type: ignore[call-overload]
    return column, vector_of("p", k), vector_of("i", d)
