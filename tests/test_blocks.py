"""Blocks, without Spark: their size, how Arrow batches become blocks, how tasks join
them for the kernels, and how many partitions a pass runs over."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from spark_gmm.data import (
    BLOCK_HEADER_BYTES,
    block_rows,
    iter_blocks,
    make_spec,
    summarize_blocks,
)
from spark_gmm.engine import PARTITIONS_PER_CORE, CacheOptions, merge_target, storage_level
from spark_gmm.errors import InvalidInputError
from spark_gmm.kernels import KERNEL_BLOCK_ROWS, join_blocks, kernel_rows


def test_block_rows_leave_room_for_headers_and_weights():
    quarter = 256 * 1024
    assert block_rows(16, quarter) == (quarter - BLOCK_HEADER_BYTES) // 128 == 2016
    assert block_rows(16, quarter, "float32") == (quarter - BLOCK_HEADER_BYTES) // 64
    assert block_rows(16, quarter, has_weight=True) == (quarter - BLOCK_HEADER_BYTES) // 136
    # A row wider than the budget is a block of its own.
    assert block_rows(100_000, quarter) == 1
    # Four default blocks with their headers fit in one 1 MiB heap region.
    assert 4 * (block_rows(16, quarter) * 128 + BLOCK_HEADER_BYTES) <= 2**20


def _batch(X: np.ndarray, w: np.ndarray | None = None) -> pa.RecordBatch:
    cols = [pa.array(X[:, j]) for j in range(X.shape[1])]
    names = [f"_gmm_f{j}" for j in range(X.shape[1])]
    if w is not None:
        cols.append(pa.array(w))
        names.append("_gmm_w")
    return pa.RecordBatch.from_arrays(cols, names=names)


def test_iter_blocks_summaries_then_blocks_of_bounded_rows():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(25, 3))
    X[4, 1] = np.nan
    w = rng.uniform(size=25)
    spec = make_spec("columns", ["a", "b", "c"], 3, "w")
    out = list(iter_blocks([_batch(X[:20], w[:20]), _batch(X[20:], w[20:])], spec, True, 7))
    ns = [n for n, *_ in out]
    # Batch 1: summary, then its 19 valid rows in blocks of 7, 7, 5; batch 2: summary, 5.
    assert ns == [0, 7, 7, 5, 0, 5]
    rows = np.vstack([x for n, x, *_ in out if n])
    assert np.array_equal(rows, np.delete(X, 4, axis=0))
    weights = np.concatenate([wb for n, _x, wb, *_ in out if n])
    assert np.array_equal(weights, np.delete(w, 4))
    summary = summarize_blocks([s for *_, s, _bad in out], spec)
    assert summary.rows_read == 25 and summary.counts.tolist() == [0, 1, 0, 0]
    assert np.allclose(summary.col_min, np.delete(X, 4, axis=0).min(axis=0))


def test_iter_blocks_keeps_only_the_summary_of_a_batch_with_invalid_rows_when_not_skipping():
    X = np.ones((5, 2))
    X[0, 0] = np.inf
    spec = make_spec("columns", ["a", "b"], 2, None)
    out = list(iter_blocks([_batch(X)], spec, False, 100))
    assert [(n, bad) for n, _x, _w, _s, bad in out] == [(0, 1)]


def test_float32_blocks_round_each_value_once():
    X = np.array([[1.0 + 2**-30, 3.0], [1e-3, -7.25]])
    spec = make_spec("columns", ["a", "b"], 2, None)
    (_, _, _, _, _), (n, block, *_rest) = iter_blocks([_batch(X)], spec, True, 10, "float32")
    assert n == 2 and block.dtype == np.float32
    assert np.array_equal(block, X.astype(np.float32))
    assert np.max(np.abs(block - X) / np.abs(X)) <= 2**-24


def test_join_blocks_makes_column_major_blocks_of_kernel_size_keeping_float32():
    rng = np.random.default_rng(1)
    parts = [(rng.normal(size=(n, 4)).astype(np.float32), rng.uniform(size=n)) for n in (3, 4, 5)]
    joined = list(join_blocks(iter(parts), min_rows=6))
    assert [X.shape[0] for X, _ in joined] == [7, 5]
    X0, w0 = joined[0]
    # float32 stays float32 (the diag/spherical float32 compute path), column-major.
    assert X0.dtype == np.float32 and X0.flags.f_contiguous
    assert np.array_equal(X0, np.vstack([parts[0][0], parts[1][0]]))
    assert np.array_equal(w0, np.concatenate([parts[0][1], parts[1][1]]))
    # Other dtypes, or float32 joined with float64, become float64.
    mixed = [(parts[0][0], None), (rng.normal(size=(4, 4)), None), (np.ones((2, 4), int), None)]
    ((X1, _),) = join_blocks(iter(mixed), min_rows=9)
    assert X1.dtype == np.float64 and X1.flags.f_contiguous
    assert np.array_equal(X1, np.vstack([m[0] for m in mixed]).astype(np.float64))
    # A float64, column-major block that is large enough goes through without a copy.
    big = np.asfortranarray(rng.normal(size=(10, 4)))
    ((out, w),) = join_blocks(iter([(big, None)]), min_rows=6)
    assert out is big and w is None


def test_kernel_rows_bounded_by_rows_and_bytes():
    assert kernel_rows(16) == KERNEL_BLOCK_ROWS
    assert kernel_rows(1000) == (4 << 20) // 8000
    assert kernel_rows(1000, 4) == (4 << 20) // 4000  # float32: the same bytes
    assert kernel_rows(10**7) == 1


def test_merge_target_counts_and_byte_cap():
    mib = 2**20
    # Few partitions: no merge.
    assert merge_target([10 * mib] * 8, cores=2, max_partition_bytes=128 * mib) == 8
    # Many small partitions: PARTITIONS_PER_CORE per core.
    assert merge_target([mib] * 200, cores=2, max_partition_bytes=128 * mib) == 8
    # Big partitions: never more than 128 MiB per merged partition, even unevenly grouped.
    n = merge_target([100 * mib] * 1000, cores=2, max_partition_bytes=128 * mib)
    assert n == 1000  # 100 MiB each: no two fit under the cap
    n = merge_target([30 * mib] * 1000, cores=2, max_partition_bytes=128 * mib)
    assert n == 250  # four of 30 MiB per merged partition
    assert n >= PARTITIONS_PER_CORE * 2


def test_storage_levels_and_options_are_validated():
    assert storage_level("NONE") is None
    level = storage_level("memory_and_disk")
    assert (level.useDisk, level.useMemory, level.deserialized) == (True, True, True)
    assert storage_level("DISK_ONLY").useMemory is False
    with pytest.raises(InvalidInputError, match="cacheStorageLevel must be one of"):
        storage_level("MEMORY_PLUS_SSD")
    with pytest.raises(InvalidInputError, match="blockDtype"):
        CacheOptions(block_dtype="float16")
    with pytest.raises(InvalidInputError, match="maxBlockSizeInMB"):
        CacheOptions(max_block_bytes=-1)
