"""Spark plumbing: convert the input once into packed blocks, then run data passes.

A data pass ships a list of tasks (:mod:`spark_gmm.kernels`) to the executors — by
broadcast in a classic session, inside the function's closure over Spark Connect — runs
them over every block of a partition, and brings back one small record per partition,
which the driver adds up (through ``treeReduce`` with ``aggregationDepth`` levels when
there are many partitions).

Memory. Everything a task holds at once is bounded by the size of one *block* (at most
``maxBlockSizeInMB`` of features, :func:`spark_gmm.data.block_rows`), never by the size
of a partition or of the table: blocks are produced, cached and consumed as streams.
Blocks stay well below half of G1's smallest heap region (1 MiB), so the JVM never
stores them as "humongous" objects: Spark's serialized caches write 1 MiB chunks, which
G1 stores in two 1 MiB regions (heaps under 4 GiB) or one 2 MiB region (4 to 8 GiB), so
they occupy twice the memory Spark accounts for; that, not the data, is what ran an
8M x 16 fit out of a 2 GiB heap (see docs/scaling.md).

Three interchangeable block stores, chosen by :func:`prepare`:

* ``RddBlocks`` (classic sessions): a persisted RDD of blocks at the input's own
  partitioning, at ``cacheStorageLevel`` (``MEMORY_AND_DISK`` by default: one byte array
  per block in the executors' storage memory, the rest spilled to local disk in the same
  compact form and read back from there by every pass). Passes run over a coalesced view
  of it, so there are not many more Python tasks than cores (each costs tens of ms).
* ``DataFrameBlocks`` (Spark Connect, which has no RDD API): the same blocks in a
  persisted DataFrame, scanned with ``mapInArrow``.
* ``SourceBlocks`` (``cacheStorageLevel="NONE"``): nothing is cached; every pass reads
  the input again and packs it inside the pass's own task, for inputs larger than the
  cluster's memory and disk.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from spark_gmm import kernels
from spark_gmm.data import (
    PACKED_SCHEMA_DDL,
    FeatureSpec,
    InputSummary,
    all_invalid_message,
    block_rows,
    check_magnitude,
    iter_blocks,
    pack_batches,
    summarize_blocks,
    unobserved_features_message,
    unpack_block,
)
from spark_gmm.errors import InvalidInputError

__all__ = [
    "BLOCK_DTYPES",
    "STORAGE_LEVELS",
    "CacheOptions",
    "PreparedData",
    "is_connect",
    "merge_target",
    "prepare",
    "session_conf",
]

log = logging.getLogger("spark_gmm")

Array = NDArray[np.float64]
Blocks = Iterator[tuple[Array, Array | None]]
PassFn = Callable[[Blocks, Any], Array]

# (useDisk, useMemory, useOffHeap, deserialized, replication), as Scala's StorageLevel
# defines them: the cached records are JVM byte arrays, so the JVM's meaning of
# "deserialized" applies (one array per block), not PySpark's.
_STORAGE_LEVELS: dict[str, tuple[bool, bool, bool, bool, int] | None] = {
    "MEMORY_AND_DISK": (True, True, False, True, 1),
    "MEMORY_AND_DISK_2": (True, True, False, True, 2),
    "MEMORY_AND_DISK_SER": (True, True, False, False, 1),
    "MEMORY_ONLY": (False, True, False, True, 1),
    "MEMORY_ONLY_2": (False, True, False, True, 2),
    "MEMORY_ONLY_SER": (False, True, False, False, 1),
    "DISK_ONLY": (True, False, False, False, 1),
    "DISK_ONLY_2": (True, False, False, False, 2),
    "DISK_ONLY_3": (True, False, False, False, 3),
    "OFF_HEAP": (True, True, True, False, 1),
    "NONE": None,
}
STORAGE_LEVELS = tuple(_STORAGE_LEVELS)
BLOCK_DTYPES = ("float64", "float32")

# Default block size when maxBlockSizeInMB is 0 (auto): a quarter of G1's smallest heap
# region (see the module docstring and data.block_rows).
DEFAULT_BLOCK_BYTES = 256 * 1024

# At most this many partitions per core in a pass: every pass runs one Python task per
# partition, and a task costs tens of milliseconds before any arithmetic.
PARTITIONS_PER_CORE = 4

# Merged pass partitions stay below this many bytes of blocks unless the session sets
# spark.sql.files.maxPartitionBytes (the same convention as Spark's file splits).
DEFAULT_MAX_PARTITION_BYTES = 128 * 1024 * 1024


def is_connect(obj: Any) -> bool:
    """True for Spark Connect DataFrames/sessions (no SparkContext, no RDD API)."""
    return type(obj).__module__.startswith("pyspark.sql.connect")


def storage_level(name: str) -> Any:
    """The ``pyspark.StorageLevel`` of a ``cacheStorageLevel`` name; None for ``"NONE"``.

    Raises
    ------
    InvalidInputError
        For a name that is not one of :data:`STORAGE_LEVELS`.
    """
    from pyspark import StorageLevel

    key = str(name).upper()
    if key not in _STORAGE_LEVELS:
        raise InvalidInputError(
            f"cacheStorageLevel must be one of {', '.join(STORAGE_LEVELS)}; got {name!r}."
        )
    flags = _STORAGE_LEVELS[key]
    return None if flags is None else StorageLevel(*flags)


@dataclass(frozen=True)
class CacheOptions:
    """How the validated input is kept between passes.

    Attributes
    ----------
    storage_level : str
        One of :data:`STORAGE_LEVELS` (``"NONE"``: no cache, every pass re-reads).
    block_dtype : {"float64", "float32"}
        Precision of the cached features; statistics are float64 either way.
    max_block_bytes : int
        Bytes of features per block (0: :data:`DEFAULT_BLOCK_BYTES`).
    """

    storage_level: str = "MEMORY_AND_DISK"
    block_dtype: str = "float64"
    max_block_bytes: int = 0

    def __post_init__(self) -> None:
        storage_level(self.storage_level)
        if self.block_dtype not in BLOCK_DTYPES:
            raise InvalidInputError(
                f"blockDtype must be one of {', '.join(BLOCK_DTYPES)}; got {self.block_dtype!r}."
            )
        if self.max_block_bytes < 0:
            raise InvalidInputError(
                f"maxBlockSizeInMB must be >= 0 (0: automatic); got "
                f"{self.max_block_bytes / 2**20:g}."
            )

    def rows_per_block(self, n_features: int, has_weight: bool = False) -> int:
        return block_rows(
            n_features, self.max_block_bytes or DEFAULT_BLOCK_BYTES, self.block_dtype, has_weight
        )


@contextmanager
def job_description(spark: Any, text: str) -> Iterator[None]:
    """Label the Spark jobs run inside the block (visible in the Spark UI).

    Spark Connect has no job description: there the operations get a tag instead (shown
    in the jobs' tags, and usable with ``spark.interruptTag``).
    """
    if is_connect(spark):
        tag = f"spark_gmm: {text}".replace(",", ";")  # a tag cannot contain ","
        added = tag not in spark.getTags()
        spark.addTag(tag)
        try:
            yield
        finally:
            if added:
                spark.removeTag(tag)
        return
    sc = spark.sparkContext
    previous = sc.getLocalProperty("spark.job.description")
    sc.setJobDescription(f"spark_gmm: {text}")
    try:
        yield
    finally:
        sc.setJobDescription(previous)


@contextmanager
def session_conf(spark: Any, values: dict[str, str]) -> Iterator[None]:
    """Set SQL confs for the duration of the block, then restore the caller's values."""
    conf = spark.conf
    previous = {key: conf.get(key, None) for key in values}
    for key, value in values.items():
        conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                conf.unset(key)
            else:
                conf.set(key, value)


def merge_target(partition_bytes: Sequence[int], cores: int, max_partition_bytes: int) -> int:
    """How many partitions a pass should run over.

    No merge (the current count) while there are at most ``PARTITIONS_PER_CORE`` per
    core; otherwise that many, or more when needed to keep every merged partition under
    ``max_partition_bytes``, sized from the largest input partition so that even an
    uneven grouping stays under the cap.

    Parameters
    ----------
    partition_bytes : sequence of int
        Bytes of blocks in each cached partition.
    cores : int
    max_partition_bytes : int

    Returns
    -------
    int
        The number of pass partitions (``len(partition_bytes)`` when no merge).
    """
    n = len(partition_bytes)
    limit = PARTITIONS_PER_CORE * max(1, cores)
    if n <= limit:
        return n
    largest = max(max(partition_bytes), 1)
    per_group = max(1, int(max_partition_bytes) // largest)
    return min(n, max(limit, math.ceil(n / per_group)))


# ---------------------------------------------------------------------------
# Executor-side functions. Module-level so cloudpickle ships them by reference.
# ---------------------------------------------------------------------------


# Every pass reads blocks through kernels.join_blocks: small cached blocks become
# kernel-sized blocks. float32 ones stay float32: the diag and spherical kernels compute
# in float32 on them (their statistics are still summed in float64); other tasks widen
# them.


def _rdd_blocks(records: Iterable[tuple]) -> Blocks:
    return kernels.join_blocks((X, w) for n, X, w, _summary, _n_bad in records if n)


def _unpack_row(row: Any, d: int, dtype: str) -> tuple[int, NDArray[Any], Array | None, bytes, int]:
    n, x, w, summary, n_bad = row
    if not n:
        return 0, np.empty((0, d)), None, summary, n_bad
    # Column-major views: the kernels work on X.T (see spark_gmm.gaussian), which is then
    # free instead of a transposed copy in every block of every pass.
    X, weights = unpack_block(n, x, w, d, dtype)
    return n, X, weights, summary, n_bad


def _partition_summary(
    records: Iterable[tuple[int, Any, Any, bytes, int]], spec: FeatureSpec, itemsize: int
) -> tuple[int, int, bytes, int]:
    """(valid rows, bytes of their blocks, merged input summary, invalid rows) of one
    partition, from the summary records of :func:`spark_gmm.data.iter_blocks`."""
    n_bad = 0
    raws = []
    for _n, _X, _w, summary, bad in records:
        if summary:
            raws.append(summary)
            n_bad += int(bad)
    merged = summarize_blocks(raws, spec)
    rows = merged.rows_read - n_bad
    size = rows * (spec.n_features * itemsize + (8 if spec.has_weight else 0))
    return rows, size, merged.to_bytes(), n_bad


def _arrow_records(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[int, Any, Any, bytes, int]]:
    for batch in batches:
        ns = batch.column("n").to_pylist()
        xs, ws = batch.column("x"), batch.column("w")
        summaries = batch.column("bad").to_pylist()
        bads = batch.column("n_bad").to_pylist()
        for i, n in enumerate(ns):
            yield n, xs[i], ws[i], summaries[i], bads[i]


def _arrow_unpacked(batches: Iterator[pa.RecordBatch], d: int, dtype: str) -> Iterator[tuple]:
    for batch in batches:
        ns = batch.column("n").to_pylist()
        xs, ws = batch.column("x"), batch.column("w")
        for i, n in enumerate(ns):
            if n:
                yield unpack_block(n, xs[i].as_buffer(), ws[i].as_buffer(), d, dtype)


def _arrow_blocks(batches: Iterator[pa.RecordBatch], d: int, dtype: str) -> Blocks:
    return kernels.join_blocks(_arrow_unpacked(batches, d, dtype))


def _source_blocks(
    batches: Iterator[pa.RecordBatch], spec: FeatureSpec, skip: bool, rows: int, dtype: str
) -> Blocks:
    records = iter_blocks(batches, spec, skip, rows, dtype)
    return kernels.join_blocks((X, w) for n, X, w, _summary, _n_bad in records if n)


_SUMMARY_SCHEMA = "rows long, bytes long, summary binary, n_bad long"


def _summary_batch(part: tuple[int, int, bytes, int]) -> pa.RecordBatch:
    rows, size, summary, n_bad = part
    return pa.RecordBatch.from_arrays(
        [
            pa.array([rows], pa.int64()),
            pa.array([size], pa.int64()),
            pa.array([summary], pa.binary()),
            pa.array([n_bad], pa.int64()),
        ],
        names=["rows", "bytes", "summary", "n_bad"],
    )


def _to_binary_batch(payload: bytes) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([payload], pa.binary())], names=["out"])


def _sum_bytes(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    total = None
    for batch in batches:
        for value in batch.column(0).to_pylist():
            vec = np.frombuffer(value, dtype=np.float64)
            total = vec.copy() if total is None else total + vec
    if total is not None:
        yield _to_binary_batch(total.tobytes())


def _sum_collected(df: Any, n_partitions: int | None, aggregation_depth: int) -> Array:
    """Add up a DataFrame of float64 vectors (column ``out``) on the way to the driver."""
    if aggregation_depth > 1 and n_partitions is not None and n_partitions > 16:
        # An intermediate level of executors adds the partition records so the driver
        # receives ~sqrt(P) of them instead of P.
        df = df.repartition(max(2, int(math.sqrt(n_partitions)))).mapInArrow(
            _sum_bytes, "out binary"
        )
    total = None
    for row in df.collect():
        vec = np.frombuffer(row[0], dtype=np.float64)
        total = vec.copy() if total is None else total + vec
    assert total is not None
    return total


def _encode_stats(stats: Any) -> bytes:
    return np.asarray(stats, dtype=np.float64).tobytes()


# ---------------------------------------------------------------------------
# Block stores
# ---------------------------------------------------------------------------


class RddBlocks:
    """Blocks in a persisted RDD of ``(n, X ndarray, w ndarray | None, summary, n_bad)``.

    The RDD keeps the input's partitioning (so no cached partition is ever larger than
    an input partition); passes run over ``scan``, a coalesced view with at most
    ``PARTITIONS_PER_CORE`` partitions per core, each under the byte cap.
    """

    def __init__(self, packed_df: Any, spec: FeatureSpec, level: Any, dtype: str) -> None:
        self.spec = spec
        self.itemsize = np.dtype(dtype).itemsize
        self._sc = packed_df.sparkSession.sparkContext
        d = spec.n_features
        self.rdd = packed_df.rdd.map(lambda row: _unpack_row(row, d, dtype)).persist(level)
        self.scan = self.rdd
        self.num_partitions = self.rdd.getNumPartitions()

    def metadata(self, max_partition_bytes: int) -> list[tuple[int, int, bytes, int]]:
        """Fill the cache (one pass over the input) and return each partition's summary;
        then choose the partitions the passes run over."""
        spec, itemsize = self.spec, self.itemsize

        def summarize(records):
            yield _partition_summary(records, spec, itemsize)

        parts = self.rdd.mapPartitions(summarize).collect()
        self._merge([p[1] for p in parts], max_partition_bytes)
        return parts

    def placement(self) -> tuple[int, int] | None:
        """(bytes in executor memory, bytes on executor disks) of the cache, if known."""
        try:
            for info in self._sc._jsc.sc().getRDDStorageInfo():
                if info.id() == self.rdd.id():
                    return int(info.memSize()), int(info.diskSize())
        except Exception:  # a developer API; absent or changed in some Spark versions
            return None
        return 0, 0

    def _merge(self, partition_bytes: list[int], max_partition_bytes: int) -> None:
        cores = max(1, self._sc.defaultParallelism)
        target = merge_target(partition_bytes, cores, max_partition_bytes)
        if target >= len(partition_bytes):
            return
        scan = self.rdd.coalesce(target)
        groups = _coalesced_groups(scan)
        largest = max((sum(partition_bytes[i] for i in g) for g in groups), default=0)
        log.info(
            "passes run over %d partitions merged from %d (largest %.1f MiB%s)",
            target,
            len(partition_bytes),
            largest / 2**20,
            "" if groups else ", grouping not visible",
        )
        self.scan = scan
        self.num_partitions = target

    def run(self, fn: PassFn, payload: Any, aggregation_depth: int) -> Array:
        bc = self._sc.broadcast(payload)
        try:

            def per_partition(records):
                yield fn(_rdd_blocks(records), bc.value)

            return self.scan.mapPartitions(per_partition).treeReduce(
                np.add, depth=max(1, aggregation_depth)
            )
        finally:
            bc.destroy()

    def collect(self, fn: Callable[[Blocks, Any], bytes], payload: Any) -> list[bytes]:
        def per_partition(records):
            yield fn(_rdd_blocks(records), payload)

        return self.scan.mapPartitions(per_partition).collect()

    def release(self) -> None:
        self.rdd.unpersist()


def _coalesced_groups(rdd: Any) -> list[list[int]]:
    """The input partitions each partition of a coalesced RDD reads (empty if unknown)."""
    try:
        return [list(p.parentsIndices()) for p in rdd._jrdd.rdd().partitions()]
    except Exception:  # not a CoalescedRDD seen through py4j (e.g. another Spark version)
        return []


class DataFrameBlocks:
    """Packed blocks in a persisted DataFrame, scanned with ``mapInArrow`` (Spark Connect)."""

    def __init__(self, packed_df: Any, spec: FeatureSpec, level: Any, dtype: str) -> None:
        self.spec = spec
        self.dtype = dtype
        self.itemsize = np.dtype(dtype).itemsize
        self.spark = packed_df.sparkSession
        # One block per cached column batch: a batch of many blocks would be one large
        # array per column (the default batch is 10,000 rows, here 10,000 blocks).
        with session_conf(self.spark, {"spark.sql.inMemoryColumnarStorage.batchSize": "1"}):
            self.df = packed_df.persist(level)
        # Spark Connect cannot tell the partition count without running a job.
        self.num_partitions = None if is_connect(packed_df) else packed_df.rdd.getNumPartitions()

    def placement(self) -> tuple[int, int] | None:
        return None

    def metadata(self, max_partition_bytes: int) -> list[tuple[int, int, bytes, int]]:
        spec, itemsize = self.spec, self.itemsize

        def summarize(batches):
            yield _summary_batch(_partition_summary(_arrow_records(batches), spec, itemsize))

        with session_conf(self.spark, {"spark.sql.inMemoryColumnarStorage.batchSize": "1"}):
            rows = self.df.mapInArrow(summarize, _SUMMARY_SCHEMA).collect()
        return [(r["rows"], r["bytes"], r["summary"], r["n_bad"]) for r in rows]

    def _map(self, fn: Callable[[Blocks, Any], Any], payload: Any, encode: Callable) -> Any:
        d, dtype = self.spec.n_features, self.dtype

        def per_partition(batches):
            yield _to_binary_batch(encode(fn(_arrow_blocks(batches, d, dtype), payload)))

        return self.df.select("n", "x", "w").mapInArrow(per_partition, "out binary")

    def _small_arrow_batches(self) -> Any:
        """Send the cached blocks a few at a time: with the default 10,000 records per
        Arrow batch a whole partition of blocks would become one Arrow batch."""
        return session_conf(self.spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": "16"})

    def run(self, fn: PassFn, payload: Any, aggregation_depth: int) -> Array:
        with self._small_arrow_batches():
            out = self._map(fn, payload, _encode_stats)
            return _sum_collected(out, self.num_partitions, aggregation_depth)

    def collect(self, fn: Callable[[Blocks, Any], bytes], payload: Any) -> list[bytes]:
        with self._small_arrow_batches():
            return [row[0] for row in self._map(fn, payload, lambda b: b).collect()]

    def release(self) -> None:
        self.df.unpersist()


class SourceBlocks:
    """No cache (``cacheStorageLevel="NONE"``): every pass reads the input again and
    validates and packs it inside the pass's own task, block by block.

    The input must give the same rows on every read (files, a table snapshot, a cached
    DataFrame), as any Spark job that reads its input more than once requires.
    """

    def __init__(
        self, source: Any, spec: FeatureSpec, skip: bool, rows_per_block: int, dtype: str
    ) -> None:
        self.spec = spec
        self.skip = skip
        self.rows_per_block = rows_per_block
        self.dtype = dtype
        self.itemsize = np.dtype(dtype).itemsize
        self.source = source
        self.num_partitions = None if is_connect(source) else source.rdd.getNumPartitions()

    def metadata(self, max_partition_bytes: int) -> list[tuple[int, int, bytes, int]]:
        spec, skip, rows, dtype, itemsize = (
            self.spec,
            self.skip,
            self.rows_per_block,
            self.dtype,
            self.itemsize,
        )

        def summarize(batches):
            records = iter_blocks(batches, spec, skip, rows, dtype, summaries_only=True)
            yield _summary_batch(_partition_summary(records, spec, itemsize))

        parts = [
            (r["rows"], r["bytes"], r["summary"], r["n_bad"])
            for r in self.source.mapInArrow(summarize, _SUMMARY_SCHEMA).collect()
        ]
        if self.num_partitions is not None:
            cores = max(1, self.source.sparkSession.sparkContext.defaultParallelism)
            target = merge_target([p[1] for p in parts], cores, max_partition_bytes)
            if target < self.num_partitions:
                log.info("passes read the input in %d partitions (from %d)", target, len(parts))
                self.source = self.source.coalesce(target)
                self.num_partitions = target
        return parts

    def _map(self, fn: Callable[[Blocks, Any], Any], payload: Any, encode: Callable) -> Any:
        spec, skip, rows, dtype = self.spec, self.skip, self.rows_per_block, self.dtype

        def per_partition(batches):
            blocks = _source_blocks(batches, spec, skip, rows, dtype)
            yield _to_binary_batch(encode(fn(blocks, payload)))

        return self.source.mapInArrow(per_partition, "out binary")

    def run(self, fn: PassFn, payload: Any, aggregation_depth: int) -> Array:
        out = self._map(fn, payload, _encode_stats)
        return _sum_collected(out, self.num_partitions, aggregation_depth)

    def collect(self, fn: Callable[[Blocks, Any], bytes], payload: Any) -> list[bytes]:
        return [row[0] for row in self._map(fn, payload, lambda b: b).collect()]

    def placement(self) -> tuple[int, int] | None:
        return None

    def release(self) -> None:
        pass


BlockStore = RddBlocks | DataFrameBlocks | SourceBlocks


# ---------------------------------------------------------------------------
# Prepared data
# ---------------------------------------------------------------------------


@dataclass
class PreparedData:
    """The validated input of a fit, and where its blocks live between passes.

    Attributes
    ----------
    spec : FeatureSpec
    n_rows : int
        Rows used by the fit.
    n_skipped : int
        Invalid rows dropped under ``handleInvalid='skip'``.
    summary : InputSummary or None
        Rows read, problem counts and the range of every feature.
    n_bytes : int
        Bytes of the blocks (features in the block dtype, plus weights).
    init_sample_size : int or None
        Rows of the driver's initialisation sample, when the estimator chose it (a
        default ``initSampleSize`` shrunk to fit the driver); None: ``initSampleSize``.
    """

    spark: Any
    spec: FeatureSpec
    n_rows: int
    n_skipped: int
    cache: BlockStore
    aggregation_depth: int = 2
    summary: InputSummary | None = None
    n_bytes: int = 0
    init_sample_size: int | None = None

    @property
    def n_features(self) -> int:
        return self.spec.n_features

    def statistics(self, tasks: Sequence[kernels.Task], description: str) -> Array:
        """One data pass: the flat statistics of every task, summed over all rows."""
        with job_description(self.spark, description):
            return self.cache.run(_tasks_statistics, list(tasks), self.aggregation_depth)

    def sample(self, size: int, seed: int) -> tuple[Array, Array]:
        """About ``size`` rows chosen by content hash (independent of partitioning)."""
        fraction = min(1.0, size / max(1, self.n_rows))
        with job_description(self.spark, "sample rows for initialisation"):
            parts = self.cache.collect(_sample_bytes, (seed, fraction))
        d = self.n_features
        xs, ws, us = [np.empty((0, d))], [np.empty(0)], [np.empty(0)]
        for raw in parts:
            rec = np.frombuffer(raw, dtype=np.float64).reshape(-1, d + 2)
            xs.append(rec[:, :d])
            ws.append(rec[:, d])
            us.append(rec[:, d + 1])
        return kernels.order_sample(np.concatenate(xs), np.concatenate(ws), np.concatenate(us))

    def fingerprint(self) -> dict[str, Any]:
        """Rows and an order-independent hash of their content (one pass)."""
        with job_description(self.spark, "fingerprint the input (checkpoints)"):
            parts = self.cache.collect(_fingerprint_bytes, None)
        return kernels.combine_fingerprints(parts)

    def release(self) -> None:
        self.cache.release()


def _fingerprint_bytes(blocks: Blocks, payload: Any) -> bytes:
    return kernels.fingerprint_bytes(blocks)


def _tasks_statistics(blocks: Blocks, tasks: Sequence[kernels.Task]) -> Array:
    return kernels.tasks_statistics(blocks, tasks)


def _sample_bytes(blocks: Blocks, payload: tuple[int, float]) -> bytes:
    seed, fraction = payload
    X, w, u = kernels.sample_rows(blocks, seed, fraction)
    if X.size == 0:
        return b""
    return np.column_stack([X, w, u]).tobytes()


def _max_partition_bytes(spark: Any) -> int:
    from spark_gmm.guards import _parse_memory

    try:
        value = spark.conf.get("spark.sql.files.maxPartitionBytes", None)
        return _parse_memory(value, default_unit="b") if value else DEFAULT_MAX_PARTITION_BYTES
    except Exception:  # unreadable over some Connect servers, or not a size
        return DEFAULT_MAX_PARTITION_BYTES


def _block_store(
    source: Any,
    spec: FeatureSpec,
    skip: bool,
    rows_per_block: int,
    dtype: str,
    level: Any,
    use_rdd: bool,
) -> BlockStore:
    if level is None:
        # Nothing is cached, so no JVM holds these blocks: cut them at kernel size.
        rows = max(rows_per_block, kernels.kernel_rows(spec.n_features))
        return SourceBlocks(source, spec, skip, rows, dtype)

    def pack(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return pack_batches(batches, spec, skip, rows_per_block, dtype)

    packed = source.mapInArrow(pack, PACKED_SCHEMA_DDL)
    return (RddBlocks if use_rdd else DataFrameBlocks)(packed, spec, level, dtype)


def prepare(
    df: Any,
    spec: FeatureSpec,
    columns: list,
    handle_invalid: str,
    aggregation_depth: int = 2,
    use_rdd: bool | None = None,
    options: CacheOptions | None = None,
) -> PreparedData:
    """Validate and convert the input (and cache it); raise before any EM pass if it is
    unusable.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
    spec, columns :
        From :func:`spark_gmm.data.resolve_features`.
    handle_invalid : {'error', 'skip', 'keep'}
    use_rdd : bool or None
        Force the cache kind; None picks the RDD cache when the session has one.
    options : CacheOptions, optional
        Storage level, block dtype and block size (defaults: ``MEMORY_AND_DISK``,
        float64, automatic).

    Raises
    ------
    InvalidInputError
        Invalid rows under ``handleInvalid='error'`` (with a count per column), a column
        with no usable value, no usable rows at all, or values whose squares overflow.
    """
    options = options or CacheOptions()
    skip = handle_invalid in ("skip", "keep")
    rows_per_block = options.rows_per_block(spec.n_features, spec.has_weight)
    dtype = options.block_dtype
    level = storage_level(options.storage_level)
    source = df.select(*columns)
    spark = df.sparkSession
    if use_rdd is None:
        use_rdd = not is_connect(df)
    action = "validate the input" if level is None else "validate and cache the input"
    # Inside the description: counting an input's partitions can run a job (e.g. after a
    # repartition), and every job of a fit is labelled.
    with job_description(spark, action):
        cache = _block_store(source, spec, skip, rows_per_block, dtype, level, use_rdd)
        try:
            meta = cache.metadata(_max_partition_bytes(spark))
        except Exception:
            cache.release()
            raise
    n_rows = sum(int(m[0]) for m in meta)
    n_bytes = sum(int(m[1]) for m in meta)
    n_bad = sum(int(m[3]) for m in meta)
    summary = summarize_blocks([m[2] for m in meta], spec)
    counts = summary.counts
    try:
        whole = all_invalid_message(spec, summary) if n_bad and (n_rows == 0 or not skip) else None
        if whole:
            raise InvalidInputError(whole)
        if n_bad and not skip:
            details = "; ".join(
                f"{label}: {int(c)}" for label, c in zip(spec.problem_labels, counts) if c
            )
            raise InvalidInputError(
                f"{n_bad} input rows have invalid features or weights ({details}). Clean or "
                "filter them, or set handleInvalid='skip' to drop them (they are counted in "
                "summary.numSkippedRows)."
            )
        if n_rows == 0:
            extra = f" after skipping {n_bad} invalid rows" if n_bad else ""
            raise InvalidInputError(
                f"The input has no rows to fit{extra}. Check the input path, table or filter."
            )
        check_magnitude(spec, summary, n_rows)
        unseen = unobserved_features_message(spec, summary)
        if unseen:
            raise InvalidInputError(unseen)
    except Exception:
        cache.release()
        raise
    if n_bad:
        log.warning(
            "skipped %d invalid rows (%s)",
            n_bad,
            ", ".join(f"{label}: {int(c)}" for label, c in zip(spec.problem_labels, counts) if c),
        )
    if summary.missing.any():
        log.info(
            "%d missing values (marginalised): %s",
            int(summary.missing.sum()),
            ", ".join(
                f"{spec.feature_name(j)}: {int(c)}" for j, c in enumerate(summary.missing) if c
            ),
        )
    placement = cache.placement()
    log.info(
        "%s %d rows: %.1f MiB of %s blocks of up to %d rows (%s%s)",
        "read" if level is None else "cached",
        n_rows,
        n_bytes / 2**20,
        dtype,
        rows_per_block,
        options.storage_level,
        ""
        if placement is None
        else f": {placement[0] / 2**20:.1f} MiB in memory, {placement[1] / 2**20:.1f} MiB on disk",
    )
    return PreparedData(spark, spec, n_rows, n_bad, cache, aggregation_depth, summary, n_bytes)
