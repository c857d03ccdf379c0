"""Per-partition work shipped to the executors: statistics of a batch of candidates,
row hashes for the partition-independent sample, and packing of Arrow batches.

Pure numpy/pyarrow, no Spark import, so the same functions serve the Spark engine
(:mod:`spark_gmm.engine`) and the in-memory engine used on the driver and in tests.

A *task* describes one candidate model's work in a data pass:

* ``EMTask(params, missing)``: E-step under ``params``, statistics centred on its means;
  with ``missing``, NaN features are marginalised (:mod:`spark_gmm.missing`).
* ``HardTask(centres, covariance_type)``: rows go to their nearest centre (k-means
  initialisation); statistics centred on the centres.
* ``RandomTask(centre, k, seed, covariance_type)``: responsibilities drawn from a hash of
  the row's content and the seed (sklearn's ``init_params='random'``), so they do not
  depend on partitioning either.
* ``ScoreTask(params, missing)``: E-step only (log-likelihood, cluster sizes), for a
  fit's final pass.
* ``VariationalTask(params)``: the E-step of a variational posterior (the Bayesian
  mixture): the EM statistics plus ``sum r log r``.

The two initialisation tasks see a missing value (NaN, ``handleMissing="marginalize"``)
as the value of the centre the row is compared with: the nearest centre is the nearest
over the observed features, and the statistics complete the row with that centre (the
k-means-with-missing-values step); the EM iterations then marginalise properly.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from spark_gmm.gaussian import (
    MixtureParameters,
    SufficientStatistics,
    block_statistics,
    hard_assignment_statistics,
    score_and_proba,
)
from spark_gmm.missing import block_statistics_missing, score_and_proba_missing

Array = NDArray[np.float64]


def _strip_covariances(task: EMTask | ScoreTask | VariationalTask) -> None:
    """Only weights, means and Cholesky factors travel to the executors: the covariances
    are needed by the M-step alone, which runs on the driver."""
    if task.params.covariances.size:
        object.__setattr__(task, "params", replace(task.params, covariances=np.empty(0)))


@dataclass(frozen=True)
class EMTask:
    params: MixtureParameters
    missing: bool = False

    def __post_init__(self) -> None:
        _strip_covariances(self)

    @property
    def flat_size(self) -> int:
        p = self.params
        return SufficientStatistics.flat_size(p.covariance_type, p.n_components, p.n_features)

    def statistics(self, X: Array, w: Array | None) -> SufficientStatistics:
        if self.missing:  # a block with nothing missing goes to block_statistics there
            return block_statistics_missing(as_float64(X), w, self.params)
        # float32 blocks stay float32 for diag and spherical (the float32 compute path);
        # block_statistics widens them for full and tied.
        return block_statistics(X, w, self.params)

    def unflatten(self, flat: Array) -> SufficientStatistics:
        return SufficientStatistics.from_flat(flat, self.params.covariance_type, self.params.means)


@dataclass(frozen=True)
class VariationalTask:
    """E-step of a variational posterior (``params`` from
    :func:`spark_gmm.variational.scoring_parameters`): the EM statistics plus
    ``sum r log r`` for the lower bound, shipped as one more number; with
    ``merge_pairs``, also the per-component and merged entropy terms that weigh those
    merges (``k + n_pairs`` more numbers)."""

    params: MixtureParameters
    merge_pairs: NDArray[np.intp] | None = None

    def __post_init__(self) -> None:
        _strip_covariances(self)

    @property
    def flat_size(self) -> int:
        p = self.params
        size = SufficientStatistics.flat_size(p.covariance_type, p.n_components, p.n_features)
        if self.merge_pairs is not None:
            size += p.n_components + len(self.merge_pairs)
        return size + 1

    def statistics(self, X: Array, w: Array | None) -> _WithEntropy:
        # float64 arithmetic: the variational bound is compared across passes to ~1e-10.
        return _WithEntropy(
            block_statistics(
                as_float64(X), w, self.params, resp_log_resp=True, merge_pairs=self.merge_pairs
            )
        )

    def unflatten(self, flat: Array) -> SufficientStatistics:
        p = self.params
        base = SufficientStatistics.flat_size(p.covariance_type, p.n_components, p.n_features)
        stats = SufficientStatistics.from_flat(flat[:base], p.covariance_type, p.means)
        stats.resp_log_resp = float(flat[-1])
        if self.merge_pairs is not None:
            k = p.n_components
            stats.merge_pairs = self.merge_pairs
            stats.resp_log_resp_by_component = flat[base : base + k].copy()
            stats.merged_resp_log_resp = flat[base + k : -1].copy()
        return stats


@dataclass(frozen=True)
class _WithEntropy:
    stats: SufficientStatistics

    def to_flat(self) -> Array:
        s = self.stats
        parts = [s.to_flat()]
        if s.merged_resp_log_resp is not None:
            assert s.resp_log_resp_by_component is not None
            parts += [s.resp_log_resp_by_component, s.merged_resp_log_resp]
        return np.concatenate([*parts, [s.resp_log_resp]])


@dataclass(frozen=True)
class HardTask:
    centres: Array
    covariance_type: str

    @property
    def flat_size(self) -> int:
        k, d = self.centres.shape
        return SufficientStatistics.flat_size(self.covariance_type, k, d)

    def statistics(self, X: Array, w: Array | None) -> SufficientStatistics:
        X = as_float64(X)
        if np.isnan(X).any():
            X = _complete_with_nearest(X, self.centres)
        return hard_assignment_statistics(X, w, self.centres, self.covariance_type)

    def unflatten(self, flat: Array) -> SufficientStatistics:
        return SufficientStatistics.from_flat(flat, self.covariance_type, self.centres)


@dataclass(frozen=True)
class RandomTask:
    centre: Array
    k: int
    seed: int
    covariance_type: str

    @property
    def centres(self) -> Array:
        return np.repeat(self.centre[None, :], self.k, axis=0)

    @property
    def flat_size(self) -> int:
        return SufficientStatistics.flat_size(self.covariance_type, self.k, self.centre.shape[0])

    def statistics(self, X: Array, w: Array | None) -> SufficientStatistics:
        X = as_float64(X)
        base = row_hash(X, w, self.seed)
        resp = np.empty((X.shape[0], self.k))
        for j in range(self.k):
            with np.errstate(over="ignore"):
                salt = np.uint64(j + 1) * _GOLDEN
            resp[:, j] = hash_to_unit(mix64(base ^ salt))
        resp /= resp.sum(axis=1, keepdims=True)
        if np.isnan(X).any():
            X = np.where(np.isnan(X), self.centre, X)
        return hard_assignment_statistics(X, w, self.centres, self.covariance_type, resp=resp)

    def unflatten(self, flat: Array) -> SufficientStatistics:
        return SufficientStatistics.from_flat(flat, self.covariance_type, self.centres)


@dataclass(frozen=True)
class _Score:
    """What :class:`ScoreTask` ships: ``[log_likelihood, total_weight, counts...]``."""

    flat: Array

    def to_flat(self) -> Array:
        return self.flat


@dataclass(frozen=True)
class ScoreTask:
    """E-step only: log-likelihood, total weight and cluster sizes under ``params``.

    The final pass of a fit needs no second moments; skipping them halves its cost.
    """

    params: MixtureParameters
    missing: bool = False

    def __post_init__(self) -> None:
        _strip_covariances(self)

    @property
    def flat_size(self) -> int:
        return 2 + self.params.n_components

    def statistics(self, X: Array, w: Array | None) -> _Score:
        X = as_float64(X)
        if self.missing and np.isnan(X).any():
            log_prob_norm, resp = score_and_proba_missing(X, self.params)
        else:
            log_prob_norm, resp = score_and_proba(X, self.params)
        weights = np.ones(X.shape[0]) if w is None else w
        counts = np.bincount(np.argmax(resp, axis=1), minlength=self.params.n_components)
        return _Score(
            np.concatenate([[weights @ log_prob_norm, weights.sum()], counts.astype(np.float64)])
        )

    def unflatten(self, flat: Array) -> SufficientStatistics:
        """Statistics with only ``log_likelihood``, ``total_weight`` and ``counts`` set."""
        p = self.params
        stats = SufficientStatistics.zeros(p.covariance_type, p.means)
        stats.log_likelihood = float(flat[0])
        stats.total_weight = float(flat[1])
        stats.counts = np.array(flat[2:])
        return stats


@dataclass(frozen=True)
class Moments:
    """Weighted mean and covariance of the rows (``ddof=1``: as ``np.cov`` on the rows
    repeated by their weights), from sums centred on a reference point."""

    total_weight: float
    centre: Array
    sum: Array
    scatter: Array

    @property
    def mean(self) -> Array:
        return self.centre + self.sum / self.total_weight

    @property
    def covariance(self) -> Array:
        s = self.sum
        return (self.scatter - np.outer(s, s) / self.total_weight) / (self.total_weight - 1.0)

    def to_flat(self) -> Array:
        return np.concatenate([[self.total_weight], self.sum, self.scatter.ravel()])


@dataclass(frozen=True)
class MomentsTask:
    """The data's mean and covariance (the Bayesian mixture's default priors), centred on
    ``centre`` (e.g. each feature's mid-range), so no large sum is subtracted."""

    centre: Array

    @property
    def flat_size(self) -> int:
        d = self.centre.shape[0]
        return 1 + d + d * d

    def statistics(self, X: Array, w: Array | None) -> Moments:
        Xc = as_float64(X) - self.centre
        weights = np.ones(X.shape[0]) if w is None else w
        scatter = (Xc * weights[:, None]).T @ Xc
        return Moments(float(weights.sum()), self.centre, weights @ Xc, scatter)

    def unflatten(self, flat: Array) -> Moments:
        d = self.centre.shape[0]
        return Moments(
            float(flat[0]), self.centre, np.array(flat[1 : 1 + d]), flat[1 + d :].reshape(d, d)
        )


def _complete_with_nearest(X: Array, centres: Array) -> Array:
    """``X`` with each missing value (NaN) taken from the centre nearest to the row over
    its observed features."""
    missing = np.isnan(X)
    observed = np.where(missing, 0.0, X)
    # |x_o - c_o|^2 = |x_o|^2 - 2 x_o.c_o + |c_o|^2; the first term is the same for
    # every centre, so it is left out of the comparison.
    cross = observed @ centres.T
    norms = (~missing).astype(np.float64) @ (centres * centres).T
    nearest = np.argmin(norms - 2.0 * cross, axis=1)
    return np.where(missing, centres[nearest], X)


Task = EMTask | HardTask | RandomTask | ScoreTask | VariationalTask | MomentsTask

# Rows per kernel call. Cached blocks are small (a few hundred KiB, see
# spark_gmm.engine), but the kernels lose up to 1.5x per row on blocks of 1-2k rows at
# d=16 against 8k rows (numpy call overheads; benchmarks/results/scale.md), so a task
# joins consecutive blocks into kernel blocks of up to this many rows and bytes.
KERNEL_BLOCK_ROWS = 8192
KERNEL_BLOCK_BYTES = 4 << 20


def kernel_rows(n_features: int, itemsize: int = 8) -> int:
    """Rows of a kernel block for d features of ``itemsize`` bytes
    (:data:`KERNEL_BLOCK_ROWS`, fewer when wide; float32 blocks get twice the rows of
    float64 ones within the same bytes, and their work arrays are float32 too)."""
    budget = KERNEL_BLOCK_BYTES // (itemsize * max(1, n_features))
    return max(1, min(KERNEL_BLOCK_ROWS, budget))


def join_blocks(
    blocks: Iterable[tuple[NDArray[Any], Array | None]], min_rows: int | None = None
) -> Iterator[tuple[NDArray[Any], Array | None]]:
    """Consecutive blocks joined into column-major blocks of ``min_rows`` or more.

    float32 blocks stay float32 (the diag and spherical kernels compute in float32 on
    them; every other task widens them, see :func:`as_float64`); anything else becomes
    float64. A block that is already large enough, of one of those dtypes and
    column-major passes through without a copy; smaller ones are copied once into a new
    block.

    Parameters
    ----------
    blocks : iterable of (X, w)
        ``X`` of shape (n, d), float64 or float32; ``w`` of shape (n,) or None.
    min_rows : int, optional
        Defaults to :func:`kernel_rows` of the first block's width.
    """
    pending: list[tuple[NDArray[Any], Array | None]] = []
    rows = 0
    target = min_rows
    for X, w in blocks:
        if X.shape[0] == 0:
            continue
        if target is None:
            target = kernel_rows(X.shape[1], 4 if X.dtype == np.float32 else 8)
        if not pending and X.shape[0] >= target:
            yield _column_major(X), w
            continue
        pending.append((X, w))
        rows += X.shape[0]
        if rows >= target:
            yield _join(pending, rows)
            pending, rows = [], 0
    if pending:
        yield _join(pending, rows)


def as_float64(X: NDArray[Any]) -> Array:
    """``X`` as a float64 array of the same layout (no copy when it already is one)."""
    if X.dtype == np.float64:
        return X
    return np.asarray(X, dtype=np.float64, order="F" if X.flags.f_contiguous else "C")


def _kernel_dtype(dtype: np.dtype[Any]) -> type[np.floating[Any]]:
    return np.float32 if dtype == np.float32 else np.float64


def _column_major(X: NDArray[Any]) -> NDArray[Any]:
    dtype = _kernel_dtype(X.dtype)
    if X.dtype == dtype and X.flags.f_contiguous:
        return X
    return np.asfortranarray(X, dtype=dtype)


def _join(
    parts: list[tuple[NDArray[Any], Array | None]], rows: int
) -> tuple[NDArray[Any], Array | None]:
    d = parts[0][0].shape[1]
    float32 = all(X.dtype == np.float32 for X, _ in parts)
    # (d, rows) C-order is (rows, d) column-major: what the kernels want (X.T is free).
    XT = np.empty((d, rows), dtype=np.float32 if float32 else np.float64)
    w = None if parts[0][1] is None else np.empty(rows)
    pos = 0
    for X, wp in parts:
        n = X.shape[0]
        XT[:, pos : pos + n] = X.T
        if w is not None:
            w[pos : pos + n] = wp
        pos += n
    return XT.T, w


def tasks_statistics(blocks: Iterable[tuple[Array, Array | None]], tasks: Sequence[Task]) -> Array:
    """Statistics of every task over a sequence of blocks, as one flat float64 vector.

    The data are read once; every block is used by all tasks before the next is taken.
    The vector ends with one entry per task: the seconds spent computing that task's
    statistics (summed over blocks, and over executors by the reduce), which is how a
    pass shared by many candidates charges each its own cost.
    """
    sizes = [t.flat_size for t in tasks]
    total = np.zeros(sum(sizes) + len(tasks))
    seconds = total[sum(sizes) :]
    for X, w in blocks:
        if X.shape[0] == 0:
            continue
        pos = 0
        for i, (task, size) in enumerate(zip(tasks, sizes)):
            start = time.perf_counter()
            total[pos : pos + size] += task.statistics(X, w).to_flat()
            seconds[i] += time.perf_counter() - start
            pos += size
    return total


def split_statistics(flat: Array, tasks: Sequence[Task]) -> list[Any]:
    """Cut a vector produced by :func:`tasks_statistics` back into one result per task."""
    out, pos = [], 0
    for t in tasks:
        out.append(t.unflatten(flat[pos : pos + t.flat_size]))
        pos += t.flat_size
    return out


def task_seconds(flat: Array, tasks: Sequence[Task]) -> Array:
    """Compute seconds of each task, from the tail of a :func:`tasks_statistics` vector.

    Returns
    -------
    seconds : ndarray of shape (len(tasks),)
    """
    return np.array(flat[len(flat) - len(tasks) :])


# ---------------------------------------------------------------------------
# Content hashes: a sample and random responsibilities that ignore partitioning
# ---------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64 finaliser, vectorised (wrap-around multiplication is intended)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def row_hash(X: Array, w: Array | None, seed: int) -> NDArray[np.uint64]:
    """64-bit hash of each row's values (and weight) and the seed.

    Depends on the content only: the same row hashes the same in any partition. ``-0.0``
    and ``0.0`` hash alike.
    """
    n, d = X.shape
    # float32 values hash as the float64 they widen to (exactly), as before blocks
    # kept their dtype.
    bits = (np.ascontiguousarray(X, dtype=np.float64) + 0.0).view(np.uint64)
    with np.errstate(over="ignore"):
        h = np.full(n, mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0])
        for j in range(d):
            h = mix64(np.bitwise_xor(h, bits[:, j] + _GOLDEN * np.uint64(j + 1)))
        if w is not None:
            h = mix64(np.bitwise_xor(h, np.ascontiguousarray(w + 0.0).view(np.uint64)))
    return h


def hash_to_unit(h: NDArray[np.uint64]) -> Array:
    """Map 64-bit hashes to floats uniform in [0, 1)."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def sample_rows(
    blocks: Iterable[tuple[Array, Array | None]], seed: int, fraction: float
) -> tuple[Array, Array, Array]:
    """Rows whose hash maps below ``fraction``, with their weights and hash values.

    Returns
    -------
    X : ndarray of shape (m, d)
    w : ndarray of shape (m,)
    u : ndarray of shape (m,)
        The uniform value of each row's hash, used to order the sample.
    """
    xs, ws, us = [], [], []
    for X, w in blocks:
        u = hash_to_unit(row_hash(X, w, seed))
        keep = u < fraction
        xs.append(as_float64(X[keep]))
        ws.append(np.ones(int(keep.sum())) if w is None else w[keep])
        us.append(u[keep])
    if not xs:
        return np.empty((0, 0)), np.empty(0), np.empty(0)
    return np.concatenate(xs), np.concatenate(ws), np.concatenate(us)


def fingerprint_bytes(blocks: Iterable[tuple[Array, Array | None]]) -> bytes:
    """Order-independent fingerprint of some blocks: (sum of row hashes mod 2**64, rows).

    Sums of per-partition results give the fingerprint of all the rows, whatever the
    partitioning. Returned as 16 bytes (two uint64) for the collect.
    """
    total = np.uint64(0)
    rows = 0
    with np.errstate(over="ignore"):
        for X, w in blocks:
            if X.shape[0]:
                total += np.sum(row_hash(X, w, 0), dtype=np.uint64)
                rows += X.shape[0]
    return np.array([total, rows], dtype=np.uint64).tobytes()


def combine_fingerprints(parts: Iterable[bytes]) -> dict[str, Any]:
    """The input fingerprint (JSON values) from :func:`fingerprint_bytes` of every part."""
    total = np.uint64(0)
    rows = 0
    with np.errstate(over="ignore"):
        for raw in parts:
            if raw:
                h, n = np.frombuffer(raw, dtype=np.uint64)
                total += h
                rows += int(n)
    return {"rows": rows, "content_hash": f"{int(total):016x}"}


def order_sample(X: Array, w: Array, u: Array) -> tuple[Array, Array]:
    """Sort a sample by hash value, then by content, so its order is reproducible."""
    keys = [w] + [X[:, j] for j in range(X.shape[1] - 1, -1, -1)] + [u]
    order = np.lexsort(keys)
    return X[order], w[order]
