"""Memory guard: refuse, before any Spark job runs, a fit that cannot fit in memory.

One EM data pass keeps, in every task (one Python worker working through one
partition), a dense float64 block of rows, the broadcast parameters of every candidate,
per-block work arrays (log-densities, responsibilities, centred rows) and the statistics
vectors of every candidate; the driver receives the reduced statistics and runs the
M-step. For full covariances all of these grow as k·d², so a large k·d² fails late and
obscurely (an executor killed for memory, a driver OOM) unless it is caught up front.

:func:`estimate_memory` gives the bytes of one pass for a list of candidates (the
``nInit`` restarts, or a model-selection grid), :func:`check_memory` compares them with
limits, and :func:`memory_limits` derives those limits from the Spark conf:

* executor (per task): half of ``spark.executor.pyspark.memory`` when it is set (it
  bounds the Python workers), else half of ``spark.executor.memory`` (default 1g),
  divided by the tasks an executor runs at once (``spark.executor.cores`` /
  ``spark.task.cpus``, default 1). In local mode the workers run beside the driver, so
  ``spark.driver.memory`` stands in for ``spark.executor.memory``.
* driver: half of ``spark.driver.memory`` (default 1g).

Half, because the estimate counts only the large arrays: the interpreter, numpy,
pyarrow and Spark's own buffers need the rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from spark_gmm.errors import MemoryGuardError

__all__ = [
    "check_memory",
    "estimate_memory",
    "format_bytes",
    "full_cost_warning",
    "largest_sample_rows",
    "memory_limits",
]

_FLOAT = 8  # bytes per float64
_FRACTION = 0.5
_DEFAULT_MEMORY = "1g"
_COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def _sizes(k: int, covariance_type: str, d: int) -> tuple[int, int, int, int, int]:
    """Float counts of one candidate.

    Returns
    -------
    flat : int
        Its statistics vector (what travels to the driver; full/tied as upper triangles).
    scatter : int
        Its unpacked scatter (or covariance) arrays.
    params : int
        Its broadcast parameters (weights, means, Cholesky factors of the precisions).
    work : int
        Per-row work floats of its E-step and accumulation (times the block's rows).
    derived : int
        What a task derives from its parameters and keeps while it runs: for diag and
        spherical the GEMM coefficients in float64 and float32 and the centred means
        (``gaussian._DiagTerms``, ~4 k d); a block's accumulation adds as much again in
        (k, 2d) sums and (k, d) temporaries.
    """
    if covariance_type not in _COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {', '.join(_COVARIANCE_TYPES)}; "
            f"got {covariance_type!r}."
        )
    tri = d * (d + 1) // 2
    packed = {"full": k * tri, "tied": tri}.get(covariance_type, k * d)
    scatter = {"full": k * d * d, "tied": d * d}.get(covariance_type, k * d)
    chol = {"full": k * d * d, "tied": d * d, "diag": k * d}.get(covariance_type, k)
    flat = 2 + 2 * k + k * d + packed
    params = k + k * d + chol
    # log-densities, responsibilities, weighted responsibilities, log-sum-exp temporary
    # (n x k each); whitened / centred / scaled rows of one component (n x d each).
    work = 4 * k + 3 * d
    derived = 4 * k * d if covariance_type in ("diag", "spherical") else 0
    return flat, scatter, params, work, derived


def estimate_memory(
    shapes: Sequence[tuple[int, str]], n_features: int, *, block_rows: int, sample_rows: int = 0
) -> tuple[int, int]:
    """Peak bytes of one data pass computing the statistics of every candidate.

    Parameters
    ----------
    shapes : sequence of (k, covariance_type)
        The candidates advanced together in the pass (e.g. ``nInit`` copies of one shape,
        or a model-selection grid).
    n_features : int
        d, the dense length of a row.
    block_rows : int
        Rows per kernel call (:func:`spark_gmm.kernels.kernel_rows`).
    sample_rows : int
        Rows of the initialisation sample collected on the driver (``initSampleSize``).

    Returns
    -------
    executor_bytes : int
        In one task: the dense block (and its Arrow copy), the broadcast parameters
        (pickled and unpickled), the statistics vectors of all candidates, and the
        largest candidate's scatter arrays and per-block work arrays.
    driver_bytes : int
        The reduced statistics vectors (received, unpickled, summed), the broadcast
        parameters it pickles, for every candidate its M-step arrays (scatter,
        covariances, precisions and their Cholesky factors, temporaries), and the
        initialisation sample (rows, weights and hashes: received, unpacked, sorted).
    """
    d = int(n_features)
    n = max(1, int(block_rows))
    if d < 1 or not shapes:
        return 0, 0
    sizes = [_sizes(int(k), ct, d) for k, ct in shapes]
    total_flat = sum(s[0] for s in sizes)
    total_params = sum(s[2] for s in sizes)
    block = 2 * n * (d + 1)
    largest = max(s[1] + s[0] + n * s[3] + s[4] for s in sizes)
    derived = sum(s[4] for s in sizes)
    executor = block + 2 * total_params + derived + 3 * total_flat + largest
    m_step = sum(4 * s[1] + 2 * int(k) * d + int(k) for s, (k, _) in zip(sizes, shapes))
    sample = 3 * max(0, int(sample_rows)) * (d + 2)
    driver = 4 * total_flat + 2 * total_params + m_step + sample
    return executor * _FLOAT, driver * _FLOAT


def largest_sample_rows(
    shapes: Sequence[tuple[int, str]], n_features: int, *, block_rows: int, driver_limit: int
) -> int:
    """The most initialisation-sample rows the driver can hold beside the rest of a pass
    (:func:`estimate_memory` is linear in them); 0 when even no sample fits."""
    _, base = estimate_memory(shapes, n_features, block_rows=block_rows)
    per_row = 3 * _FLOAT * (int(n_features) + 2)
    return max(0, (int(driver_limit) - base) // per_row)


def format_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _describe(shapes: Sequence[tuple[int, str]]) -> str:
    distinct = list(dict.fromkeys((int(k), ct) for k, ct in shapes))
    text = ", ".join(f"k={k} {ct}" for k, ct in distinct[:4])
    if len(distinct) > 4:
        text += f", … ({len(distinct)} shapes)"
    return f"{len(shapes)} candidate(s) ({text})"


def check_memory(
    shapes: Sequence[tuple[int, str]],
    n_features: int,
    *,
    block_rows: int,
    executor_limit: int,
    driver_limit: int,
    sample_rows: int = 0,
) -> None:
    """Raise :class:`~spark_gmm.errors.MemoryGuardError` when a pass would not fit.

    Parameters
    ----------
    shapes, n_features, block_rows, sample_rows :
        As for :func:`estimate_memory`.
    executor_limit, driver_limit : int
        Bytes available to one executor task and to the driver (see :func:`memory_limits`).

    Raises
    ------
    MemoryGuardError
        With the estimated bytes per executor task and on the driver, both limits and
        what to try.
    """
    executor, driver = estimate_memory(
        shapes, n_features, block_rows=block_rows, sample_rows=sample_rows
    )
    if executor <= executor_limit and driver <= driver_limit:
        return
    d = int(n_features)
    sample = 3 * _FLOAT * max(0, int(sample_rows)) * (d + 2)
    hints = [
        "a smaller k",
        "covarianceType='diag'",
        "fewer features (e.g. PCA)",
        "more memory (spark.executor.memory / spark.executor.pyspark.memory, spark.driver.memory)",
    ]
    if driver > driver_limit and sample > driver / 2:
        hints.insert(0, f"a smaller initSampleSize (the sample takes {format_bytes(sample)})")
    raise MemoryGuardError(
        f"Not enough memory for {_describe(shapes)} on d={d} features (dense blocks of "
        f"{int(block_rows)} rows): one EM pass needs about {format_bytes(executor)} per "
        f"executor task (limit {format_bytes(executor_limit)}) and {format_bytes(driver)} "
        f"on the driver (limit {format_bytes(driver_limit)}). Try {', '.join(hints[:-1])} "
        f"or {hints[-1]}."
    )


# One core's time per row of the E-step and statistics, per unit of k·d² (full) and of
# k·d (diag), from benchmarks/results/kernels.md (float64; full 50x20: 6.21 µs per row
# for k·d² = 50,000; diag 256x64: 3.82 µs for k·d = 16,384, the dearer of its cases at
# d >= 256). Used to warn, not to refuse: a fit that is only slow is the user's call.
FULL_SECONDS_PER_KDD = 1.2e-10
DIAG_SECONDS_PER_KD = 2.4e-10
# Warn when full costs more than this per row and core (i.e. more than 50 core-seconds
# per iteration per million rows) ...
FULL_WARN_SECONDS_PER_ROW = 50e-6


def full_cost_warning(shapes: Sequence[tuple[int, str]], n_features: int) -> str | None:
    """The warning a full-covariance candidate deserves at this width, or None.

    ``covarianceType='full'`` costs ~k·d² multiply-adds per row and iteration against
    ~k·d for ``diag``: at embedding widths (d in the hundreds) that is hours of cores per
    iteration per million rows.
    """
    d = int(n_features)
    full = [int(k) for k, ct in shapes if ct == "full"]
    if not full:
        return None
    k = max(full)
    per_row = FULL_SECONDS_PER_KDD * k * d * d
    if per_row <= FULL_WARN_SECONDS_PER_ROW:
        return None
    diag = DIAG_SECONDS_PER_KD * k * d
    return (
        f"covarianceType='full' with k={k} on d={d} features costs about "
        f"{per_row * 1e3:.3g} ms per row per core for every EM iteration (k·d² = "
        f"{k * d * d:.3g} multiply-adds; {per_row * 1e6 / 3600:.3g} core-hours per "
        f"iteration per million rows, measured in benchmarks/results/kernels.md), against "
        f"about {diag * 1e6:.3g} µs for covarianceType='diag' ({per_row / diag:.0f}x less). "
        "Use 'diag' or 'spherical', or reduce the features first (a PCA stage in the "
        "Pipeline, e.g. to 32-64 dimensions) if correlations between features matter."
    )


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def _parse_memory(value: str, default_unit: str = "m") -> int:
    """A JVM memory string (``'512m'``, ``'2g'``, ``'1024'`` = MiB) in bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgtp]?)b?\s*", str(value).lower())
    if not match:
        raise ValueError(f"not a memory size: {value!r}")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit or default_unit])


def _conf(spark: Any, key: str) -> str | None:
    try:
        value = spark.conf.get(key, None)
    except Exception:  # a key the session cannot read (e.g. over Spark Connect)
        return None
    return None if value in (None, "") else str(value)


def memory_limits(spark: Any) -> tuple[int, int]:
    """(executor_limit, driver_limit) in bytes from the session's Spark conf.

    See the module docstring for the rule. Settings that cannot be read or parsed fall
    back to the defaults (1g).
    """

    def memory(key: str) -> int | None:
        value = _conf(spark, key)
        try:
            return None if value is None else _parse_memory(value)
        except ValueError:
            return None

    default = _parse_memory(_DEFAULT_MEMORY)
    driver = memory("spark.driver.memory") or default
    local = (_conf(spark, "spark.master") or "").startswith("local")
    executor = memory("spark.executor.pyspark.memory") or (
        driver if local else memory("spark.executor.memory") or default
    )
    tasks = 1
    if not local:
        try:
            cores = int(_conf(spark, "spark.executor.cores") or 1)
            tasks = max(1, cores // max(1, int(_conf(spark, "spark.task.cpus") or 1)))
        except ValueError:
            tasks = 1
    return int(_FRACTION * executor / tasks), int(_FRACTION * driver)
