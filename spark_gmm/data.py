"""Input columns → validated float64 row blocks.

Two halves:

* driver side, :func:`resolve_features`: checks the schema (column exists, numeric type,
  vector size) and returns the Spark column expressions to read, before any job runs;
* executor side, :func:`pack_batches`: turns each Arrow batch of those columns into one
  block (row-major float64 bytes), counting invalid values (null, NaN, ±Inf, wrong vector
  length, negative or missing weight) per input column, and recording the rows read and
  each feature's range, so the driver can name all-null columns and values whose squares
  overflow float64 (:func:`summarize_blocks`, :func:`check_magnitude`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from spark_gmm.errors import InvalidInputError

__all__ = [
    "PACKED_SCHEMA_DDL",
    "FeatureSpec",
    "InputSummary",
    "block_rows",
    "check_magnitude",
    "iter_blocks",
    "pack_batches",
    "resolve_features",
    "summarize_blocks",
]

# One row per block of ``n`` rows (``x``: features column by column, ``w``: weights or
# empty), or per input batch for its summary record (``n`` = 0): ``bad`` then holds an
# int64 count per entry of FeatureSpec.problem_labels, the rows read (int64), then each
# feature's min and max over the valid rows (float64, d each), and ``n_bad`` the invalid
# rows; see pack_batches and summarize_blocks.
PACKED_SCHEMA_DDL = "n long, x binary, w binary, bad binary, n_bad long"
_PACKED_ARROW_SCHEMA = pa.schema(
    [
        ("n", pa.int64()),
        ("x", pa.binary()),
        ("w", pa.binary()),
        ("bad", pa.binary()),
        ("n_bad", pa.int64()),
    ]
)

FEATURE_PREFIX = "_gmm_f"
WEIGHT_ALIAS = "_gmm_w"


@dataclass(frozen=True)
class FeatureSpec:
    """How the features (and weight) are read from the input.

    Attributes
    ----------
    n_features : int
    source : str
        ``"columns"`` (one numeric column per feature, from ``inputCols``) or
        ``"vector"`` (one vector/array column, from ``featuresCol``).
    names : list of str
        Input column names: the ``inputCols``, or ``[featuresCol]``.
    weight_col : str or None
    problem_labels : list of str
        What each invalid-row count of :func:`batch_to_rows` counts.
    allow_missing : bool
        ``handleMissing="marginalize"``: a null or NaN feature is a missing value, kept
        as NaN, not a reason to refuse the row; a row is invalid only when every feature
        is missing (or one is infinite, or the vector is null or of the wrong length).
        The counts then end with the number of missing values of each feature.
    """

    n_features: int
    source: str
    names: list[str]
    weight_col: str | None = None
    problem_labels: list[str] = field(default_factory=list)
    allow_missing: bool = False

    @property
    def n_counts(self) -> int:
        """Length of the counts of :func:`batch_to_rows`: problems, then missing values."""
        return len(self.problem_labels) + (self.n_features if self.allow_missing else 0)

    @property
    def has_weight(self) -> bool:
        return self.weight_col is not None

    def feature_name(self, j: int) -> str:
        """How feature ``j`` is named in messages: its column, or ``vector[j]``."""
        return self.names[j] if self.source == "columns" else f"{self.names[0]}[{j}]"


def _problem_labels(
    source: str, names: list[str], weight_col: str | None, allow_missing: bool = False
) -> list[str]:
    if source == "columns" and allow_missing:
        labels = [f"column '{c}': infinite values" for c in names]
        labels.append("rows with every feature null or NaN")
    elif source == "columns":
        labels = [f"column '{c}': null, NaN or infinite values" for c in names]
    else:
        c = names[0]
        labels = [
            f"column '{c}': null vectors",
            f"column '{c}': vectors with infinite entries"
            if allow_missing
            else f"column '{c}': vectors with NaN, infinite or null entries",
            f"column '{c}': vectors of a different length",
        ]
        if allow_missing:
            labels.append(f"column '{c}': vectors with every entry null or NaN")
    if weight_col is not None:
        labels.append(f"weight column '{weight_col}': null, NaN, infinite or negative weights")
    return labels


def make_spec(
    source: str,
    names: list[str],
    n_features: int,
    weight_col: str | None,
    allow_missing: bool = False,
) -> FeatureSpec:
    return FeatureSpec(
        n_features,
        source,
        names,
        weight_col,
        _problem_labels(source, names, weight_col, allow_missing),
        allow_missing,
    )


# ---------------------------------------------------------------------------
# Driver side: schema checks, column expressions
# ---------------------------------------------------------------------------


def resolve_features(
    df,
    input_cols: list[str] | None,
    features_col: str,
    weight_col: str | None,
    n_features: int | None = None,
    allow_missing: bool = False,
):
    """Check the input schema and build the columns the fit reads.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
    input_cols : list of str or None
        Numeric columns used directly as features; when None, ``features_col`` is used.
    features_col : str
        A ``pyspark.ml`` vector column or an ``array<numeric>`` column.
    weight_col : str or None
    n_features : int, optional
        The expected vector length when already known (scoring with a fitted model);
        otherwise it is read from the column's ML metadata or its first row.
    allow_missing : bool
        Null and NaN features are missing values (``handleMissing="marginalize"``).

    Returns
    -------
    spec : FeatureSpec
    columns : list of pyspark.sql.Column
        ``_gmm_f0..`` doubles (or one ``array<double>``, ``array<float>`` for an array of
        floats), then the weight as ``_gmm_w``.
    """
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    fields = {f.name: f for f in df.schema.fields}

    def field_of(name: str, role: str) -> T.StructField:
        if name not in fields:
            raise InvalidInputError(
                f"{role} column '{name}' is not in the input; available columns: "
                f"{', '.join(sorted(fields)) or '(none)'}."
            )
        return fields[name]

    def is_numeric(dt: T.DataType) -> bool:
        return isinstance(dt, T.NumericType)

    columns = []
    if input_cols:
        if len(set(input_cols)) != len(input_cols):
            raise InvalidInputError(f"inputCols has duplicate names: {input_cols}.")
        for j, name in enumerate(input_cols):
            f = field_of(name, "Feature")
            if not is_numeric(f.dataType):
                raise InvalidInputError(
                    f"Feature column '{name}' has type {f.dataType.simpleString()}; "
                    "features must be numeric. Cast it (e.g. col.cast('double')) or "
                    "drop it from inputCols."
                )
            columns.append(F.col(f"`{name}`").cast("double").alias(f"{FEATURE_PREFIX}{j}"))
        source, names, d = "columns", list(input_cols), len(input_cols)
    else:
        f = field_of(features_col, "Features")
        dt = f.dataType
        if isinstance(dt, VectorUDT):
            vector = F.col(f"`{features_col}`")
            # vector_to_array raises on a null vector: keep it null, so that it is counted
            # (and skipped, kept or refused) like any invalid row.
            expr = F.when(vector.isNotNull(), vector_to_array(vector, "float64"))
        elif isinstance(dt, T.ArrayType) and is_numeric(dt.elementType):
            # array<float> (how embeddings are stored) travels to Python as float32, half
            # the bytes of double; it is widened there, exactly.
            single = isinstance(dt.elementType, T.FloatType)
            expr = F.col(f"`{features_col}`").cast("array<float>" if single else "array<double>")
        else:
            raise InvalidInputError(
                f"Features column '{features_col}' has type {dt.simpleString()}; it must be "
                "a vector (pyspark.ml.linalg) or an array of numbers. Use inputCols for "
                "numeric columns, or VectorAssembler."
            )
        d = n_features if n_features is not None else _vector_size(df, f, expr)
        columns.append(expr.alias(f"{FEATURE_PREFIX}0"))
        source, names = "vector", [features_col]
    if weight_col:
        wf = field_of(weight_col, "Weight")
        if not is_numeric(wf.dataType):
            raise InvalidInputError(
                f"Weight column '{weight_col}' has type {wf.dataType.simpleString()}; "
                "weights must be numeric."
            )
        columns.append(F.col(f"`{weight_col}`").cast("double").alias(WEIGHT_ALIAS))
    return make_spec(source, names, d, weight_col or None, allow_missing), columns


def _vector_size(df, field, expr) -> int:
    """Length of the feature vectors: from ML attribute metadata, else the first row."""
    from pyspark.sql import functions as F

    attrs = (field.metadata or {}).get("ml_attr", {})
    if isinstance(attrs.get("num_attrs"), int) and attrs["num_attrs"] > 0:
        return int(attrs["num_attrs"])
    first = df.select(F.size(expr).alias("d")).where(F.col("d") > 0).limit(1).collect()
    if not first:
        raise InvalidInputError(
            f"Features column '{field.name}' has no non-empty vector: the input is empty "
            "or every vector is null. Check the input path/filter."
        )
    return int(first[0]["d"])


# ---------------------------------------------------------------------------
# Executor side: Arrow batches → packed blocks
# ---------------------------------------------------------------------------


def _float_column(arr: pa.Array) -> NDArray[np.float64]:
    """A float64 Arrow column as numpy, nulls as NaN."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)


def batch_to_rows(
    batch: pa.RecordBatch, spec: FeatureSpec
) -> tuple[NDArray[np.float64], NDArray[np.float64] | None, NDArray[np.bool_], list[int]]:
    """Features, weights, a mask of invalid rows and the per-problem counts of one batch.

    Returns
    -------
    X : ndarray of shape (n, d)
        Rows that are invalid hold arbitrary values. Under ``spec.allow_missing``, a
        missing value (null or NaN) of a valid row is NaN.
    w : ndarray of shape (n,) or None
    bad : ndarray of bool, shape (n,)
    counts : list of int
        One count per entry of ``spec.problem_labels``, then (``spec.allow_missing``)
        the missing values of each feature among the valid rows.
    """
    n, d = batch.num_rows, spec.n_features
    bad = np.zeros(n, dtype=bool)
    counts: list[int] = []
    # Under allow_missing only an infinity is invalid; NaN (and null, read as NaN) is kept.
    invalid_value = np.isinf if spec.allow_missing else lambda a: ~np.isfinite(a)
    if spec.source == "columns":
        # Column-major: each column is written contiguously, and the kernels work on X.T.
        X = np.empty((n, d), order="F")
        for j in range(d):
            X[:, j] = _float_column(batch.column(j))
            invalid = invalid_value(X[:, j])
            counts.append(int(invalid.sum()))
            bad |= invalid
        if spec.allow_missing:
            unobserved = np.isnan(X).all(axis=1)
            counts.append(int(unobserved.sum()))
            bad |= unobserved
    else:
        lists = batch.column(0)
        is_null = np.asarray(lists.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        lengths = np.asarray(lists.value_lengths().fill_null(0).to_numpy(), dtype=np.int64)
        flat = _float_column(lists.flatten())
        wrong_len = ~is_null & (lengths != d)
        ok = ~is_null & ~wrong_len
        X = np.zeros((n, d))
        if ok.all():
            X = flat.reshape(n, d)
        elif ok.any():
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            X[ok] = flat[starts[ok][:, None] + np.arange(d)]
        nonfinite = ok & invalid_value(X).any(axis=1)
        counts += [int(is_null.sum()), int(nonfinite.sum()), int(wrong_len.sum())]
        bad |= is_null | wrong_len | nonfinite
        if spec.allow_missing:
            unobserved = ok & np.isnan(X).all(axis=1)
            counts.append(int(unobserved.sum()))
            bad |= unobserved
    w = None
    if spec.has_weight:
        w = _float_column(batch.column(batch.num_columns - 1))
        invalid = ~(np.isfinite(w) & (w >= 0))
        counts.append(int(invalid.sum()))
        bad |= invalid
    if spec.allow_missing:
        counts += [int(c) for c in np.isnan(X[~bad]).sum(axis=0)]
    return X, w, bad, counts


# Room left in a block's byte budget for what travels with its features (the weights
# are counted separately) in the JVM: the pickle and array headers of the record.
BLOCK_HEADER_BYTES = 4096


def block_rows(
    n_features: int, max_block_bytes: int, dtype: str = "float64", has_weight: bool = False
) -> int:
    """Rows per cached block: as many as fit in ``max_block_bytes`` with their headers.

    The block is the unit of memory of the whole engine: one Spark record in the cache,
    one Arrow cell over Spark Connect, a slice of what one kernel call works on. Its
    bytes, not the table's or a partition's size, bound what a task holds at once.
    ``BLOCK_HEADER_BYTES`` are kept for the record's headers, so that blocks of a
    quarter MiB pack four to a 1 MiB region of the JVM's heap instead of three.
    """
    itemsize = np.dtype(dtype).itemsize
    row_bytes = itemsize * max(1, int(n_features)) + (8 if has_weight else 0)
    budget = int(max_block_bytes)
    if budget > 2 * BLOCK_HEADER_BYTES:
        budget -= BLOCK_HEADER_BYTES
    return max(1, budget // row_bytes)


def iter_blocks(
    batches: Iterable[pa.RecordBatch],
    spec: FeatureSpec,
    skip_invalid: bool,
    rows_per_block: int = 10_000,
    dtype: str = "float64",
    summaries_only: bool = False,
) -> Iterator[tuple[int, NDArray[Any], NDArray[np.float64] | None, bytes, int]]:
    """The input's Arrow batches as validated blocks ``(n, X, w, summary, n_bad)``.

    Every input batch gives one *summary record* (``n`` = 0, no rows; ``summary`` holds
    its problem counts, rows read and feature ranges, see :func:`summarize_blocks`;
    ``n_bad`` its invalid rows) followed by its valid rows in blocks of at most
    ``rows_per_block`` rows, with features stored as ``dtype`` (``"float64"``, or
    ``"float32"`` to halve the cache; weights stay float64).

    With ``skip_invalid`` false, a batch that has invalid rows keeps only its summary:
    the fit will stop with an error naming them, so its rows are not worth keeping.
    ``summaries_only`` yields the summary records alone.
    """
    step = max(1, int(rows_per_block))
    d = spec.n_features
    for batch in batches:
        if batch.num_rows == 0:
            continue
        X, w, bad, counts = batch_to_rows(batch, spec)
        n_bad = int(bad.sum())
        if n_bad:
            X, w = X[~bad], None if w is None else w[~bad]
        summary = _block_summary_bytes(X, counts, batch.num_rows)
        yield 0, np.empty((0, d), dtype=dtype), None, summary, n_bad
        if summaries_only or (n_bad and not skip_invalid):
            continue
        for start in range(0, X.shape[0], step):
            x = np.asfortranarray(X[start : start + step], dtype=dtype)
            yield x.shape[0], x, None if w is None else w[start : start + step], b"", 0


def pack_batches(
    batches: Iterable[pa.RecordBatch],
    spec: FeatureSpec,
    skip_invalid: bool,
    rows_per_block: int = 10_000,
    dtype: str = "float64",
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` function: :func:`iter_blocks` as one packed record per block (see
    PACKED_SCHEMA_DDL)."""
    for n, X, w, summary, n_bad in iter_blocks(batches, spec, skip_invalid, rows_per_block, dtype):
        wb = b"" if w is None else np.ascontiguousarray(w, dtype=np.float64).tobytes()
        # Column-major bytes (X.T is C-contiguous): unpacked without a copy, see unpack_block.
        yield _packed_record(n, X.T.tobytes() if n else b"", wb, summary, n_bad)


def _packed_record(n: int, x: bytes, w: bytes, summary: bytes, n_bad: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [
            pa.array([n], pa.int64()),
            pa.array([x], pa.binary()),
            pa.array([w], pa.binary()),
            pa.array([summary], pa.binary()),
            pa.array([n_bad], pa.int64()),
        ],
        schema=_PACKED_ARROW_SCHEMA,
    )


def _block_summary_bytes(valid: NDArray[np.float64], counts: list[int], rows_read: int) -> bytes:
    """Problem counts, rows read and per-feature min/max of a block's valid rows."""
    d = valid.shape[1]
    if valid.shape[0]:
        # fmin/fmax skip NaN (missing values); a feature missing in every row gives NaN.
        lo, hi = np.fmin.reduce(valid, axis=0), np.fmax.reduce(valid, axis=0)
        lo[np.isnan(lo)], hi[np.isnan(hi)] = np.inf, -np.inf
    else:
        lo, hi = np.full(d, np.inf), np.full(d, -np.inf)
    return (
        np.asarray([*counts, rows_read], dtype=np.int64).tobytes()
        + np.ascontiguousarray(lo, dtype=np.float64).tobytes()
        + np.ascontiguousarray(hi, dtype=np.float64).tobytes()
    )


@dataclass
class InputSummary:
    """What the validation pass learnt about the whole input (summed over blocks).

    Attributes
    ----------
    counts : ndarray of int64
        One count per entry of ``FeatureSpec.problem_labels``.
    rows_read : int
        Rows read, valid or not.
    col_min, col_max : ndarray of shape (d,)
        Range of each feature over the valid rows (+inf/-inf when there is none).
    missing : ndarray of int64 of shape (d,)
        Missing values of each feature in the valid rows (``FeatureSpec.allow_missing``;
        zeros otherwise).
    """

    counts: NDArray[np.int64]
    rows_read: int
    col_min: NDArray[np.float64]
    col_max: NDArray[np.float64]
    missing: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def to_bytes(self) -> bytes:
        """The encoding :func:`summarize_blocks` reads (so partial summaries merge)."""
        return (
            np.asarray([*self.counts, *self.missing, self.rows_read], dtype=np.int64).tobytes()
            + np.ascontiguousarray(self.col_min, dtype=np.float64).tobytes()
            + np.ascontiguousarray(self.col_max, dtype=np.float64).tobytes()
        )


def summarize_blocks(raws: Iterable[bytes], spec: FeatureSpec) -> InputSummary:
    """Merge the summaries written by :func:`pack_batches` (empty ones are skipped)."""
    n_labels, n_counts, d = len(spec.problem_labels), spec.n_counts, spec.n_features
    counts = np.zeros(n_counts, dtype=np.int64)
    rows_read = 0
    col_min, col_max = np.full(d, np.inf), np.full(d, -np.inf)
    for raw in raws:
        if not raw:
            continue
        ints = np.frombuffer(raw, dtype=np.int64, count=n_counts + 1)
        floats = np.frombuffer(raw, dtype=np.float64, offset=8 * (n_counts + 1))
        counts += ints[:n_counts]
        rows_read += int(ints[n_counts])
        col_min = np.minimum(col_min, floats[:d])
        col_max = np.maximum(col_max, floats[d:])
    return InputSummary(counts[:n_labels], rows_read, col_min, col_max, counts[n_labels:])


def all_invalid_message(spec: FeatureSpec, summary: InputSummary) -> str | None:
    """A message naming the columns with no usable value in any row, or None."""
    if summary.rows_read == 0:
        return None
    whole = [
        label
        for label, count in zip(spec.problem_labels, summary.counts)
        if count == summary.rows_read
    ]
    if not whole:
        return None
    return (
        f"Nothing to fit: {'; '.join(whole)} in all {summary.rows_read} rows, so that column "
        "has no usable value (e.g. it is entirely null). Drop it from the features (or "
        "weightCol), or fix the input."
    )


def unobserved_features_message(spec: FeatureSpec, summary: InputSummary) -> str | None:
    """Under ``allow_missing``: a message naming the features missing in every usable
    row (EM can learn nothing about them), or None."""
    if not spec.allow_missing:
        return None
    unseen = [spec.feature_name(j) for j in range(spec.n_features) if summary.col_min[j] == np.inf]
    if not unseen:
        return None
    listed = ", ".join(repr(name) for name in unseen[:5])
    more = f" and {len(unseen) - 5} more" if len(unseen) > 5 else ""
    return (
        f"Features {listed}{more} are missing (null or NaN) in every usable row, so EM "
        "has nothing to estimate their means and variances from. Drop them from the "
        "features, or fix the input."
    )


def magnitude_limit(n_rows: int, n_features: int) -> float:
    """Largest |x| whose squared deviations, summed over all rows, stay finite in float64.

    (x - c)^2 <= 4 max|x|^2, summed over n rows (and over d features in the k-means
    distances), with a further factor 4 of margin.
    """
    return float(np.sqrt(np.finfo(np.float64).max / (16.0 * max(n_rows, n_features, 1))))


def check_magnitude(spec: FeatureSpec, summary: InputSummary, n_rows: int) -> None:
    """Raise when a feature's values are so large that EM's squared deviations overflow.

    Raises
    ------
    InvalidInputError
        Naming each such feature and its largest magnitude, and how to rescale it.
    """
    limit = magnitude_limit(n_rows, spec.n_features)
    biggest = np.maximum(np.abs(summary.col_min), np.abs(summary.col_max))
    biggest[~np.isfinite(biggest)] = 0.0  # features with no valid row
    over = np.flatnonzero(biggest > limit)
    if over.size == 0:
        return
    listed = ", ".join(f"'{spec.feature_name(int(j))}' up to {biggest[j]:.3g}" for j in over[:5])
    scale = 10.0 ** np.floor(np.log10(biggest[over].max()))
    raise InvalidInputError(
        f"Feature values too large for float64: {listed} in magnitude (limit {limit:.3g} for "
        f"{n_rows} rows); their squared deviations would overflow to infinity. Rescale those "
        f"columns first, e.g. divide by {scale:.0e} or take a log. (--standardize / "
        "StandardScaler cannot help here: it squares the values too.)"
    )


def tiny_scale_features(
    spec: FeatureSpec, summary: InputSummary, reg_covar: float
) -> list[tuple[str, float]]:
    """Features that vary, but on a scale regCovar swamps (or that squares underflow).

    A feature whose range is below ``1e-3 * sqrt(regCovar)`` (or below 1e-150, where its
    squared differences underflow) looks constant to EM.

    Returns
    -------
    list of (name, range)
    """
    span = summary.col_max - summary.col_min
    threshold = max(1e-3 * float(np.sqrt(max(reg_covar, 0.0))), 1e-150)
    return [
        (spec.feature_name(j), float(span[j]))
        for j in range(spec.n_features)
        if np.isfinite(span[j]) and 0.0 < span[j] < threshold
    ]


def unpack_block(
    n: int, x: bytes, w: bytes, d: int, dtype: str = "float64"
) -> tuple[NDArray[Any], NDArray[np.float64] | None]:
    """Inverse of the packing: zero-copy, column-major views over the bytes (features in
    ``dtype``, stored column by column)."""
    X = np.frombuffer(x, dtype=dtype).reshape(d, n).T
    return X, (np.frombuffer(w, dtype=np.float64) if w else None)
