"""Weighted k-means on the driver, used to initialise EM from a sample of the rows.

Pure numpy. The sample it runs on is chosen by a hash of each row's content (see
:mod:`spark_gmm.engine`), so the centres depend on the data and the seed only, never on
how the rows are split into partitions.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from spark_gmm.errors import InvalidInputError
from spark_gmm.gaussian import nearest_centre

__all__ = ["kmeans", "kmeans_plusplus"]

Array = NDArray[np.float64]


class _Distances:
    """Squared distances from every row to some of the rows, as one GEMM.

    ``|x - c|^2 = |x|^2 - 2 x.c + |c|^2`` on rows centred on their mean: one (n, d) x
    (d, m) product instead of m passes of n x d residuals (at d = 768 the seeding spent
    40 s of a 60 s initialisation in those). The product is read from a float32 copy of
    the centred rows: each seeding step reads all of them (a skinny GEMM, bound by memory
    bandwidth), and half the bytes is half the time; the distances only weigh a random
    draw. Its rounding is ~1e-7 (|x|^2 + |c|^2): distances below 1e-4 of that are
    recomputed in float64 from the rows, so a row's distance to itself, or to a
    duplicate, is exactly 0 (which the seeding's "fewer distinct rows than k" check
    relies on)."""

    def __init__(self, X: Array) -> None:
        self.X = X
        self.centred = (X - X.mean(axis=0)).astype(np.float32)
        self.norms = np.einsum("ij,ij->i", self.centred, self.centred, dtype=np.float64)

    def to_rows(self, rows: NDArray[np.intp]) -> Array:
        """(n, len(rows)) squared distances to ``X[rows]``."""
        scale = self.norms[:, None] + self.norms[rows][None, :]
        sq = scale - 2.0 * (self.centred @ self.centred[rows].T)
        near_i, near_j = np.nonzero(sq <= 1e-4 * scale)
        if near_i.size:
            diff = self.X[near_i] - self.X[rows[near_j]]
            sq[near_i, near_j] = np.einsum("ij,ij->i", diff, diff)
        return sq


def kmeans_plusplus(X: Array, sample_weight: Array, k: int, rng: np.random.Generator) -> Array:
    """Greedy weighted k-means++ seeding.

    Each new centre is the best (lowest potential) of ``2 + log(k)`` candidates drawn
    with probability proportional to weight times squared distance to the closest centre
    already chosen.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
    sample_weight : ndarray of shape (n_samples,)
    k : int
    rng : numpy Generator

    Returns
    -------
    centres : ndarray of shape (k, d)
    """
    n = X.shape[0]
    n_trials = 2 + int(math.log(k))
    prob = sample_weight / sample_weight.sum()
    first = rng.choice(n, p=prob)
    centres = [X[first]]
    distances = _Distances(X)
    closest = distances.to_rows(np.array([first]))[:, 0]
    for _ in range(1, k):
        potential = sample_weight * closest
        total = potential.sum()
        if total <= 0:
            raise InvalidInputError(
                f"k={k} but the rows have fewer than {k} distinct values; use a smaller k."
            )
        candidates = np.searchsorted(np.cumsum(potential), rng.random(n_trials) * total)
        candidates = np.minimum(candidates, n - 1)
        best_closest, best_score, best = closest, np.inf, candidates[0]
        trials = np.minimum(closest[:, None], distances.to_rows(candidates))
        scores = sample_weight @ trials
        for i, c in enumerate(candidates):
            if scores[i] < best_score:
                best_closest, best_score, best = trials[:, i], float(scores[i]), c
        centres.append(X[best])
        closest = best_closest
    return np.array(centres)


def _lloyd(
    X: Array, sample_weight: Array, centres: Array, max_iter: int, tol: float
) -> tuple[Array, float]:
    """Weighted Lloyd iterations from ``centres``; returns centres and inertia."""
    k = centres.shape[0]
    # Relative tolerance on centre movement, as scikit-learn: tol times the mean variance.
    threshold = tol * float(np.mean(np.var(X, axis=0)))
    # Columns of the weighted rows, contiguous, for the per-column bincount below
    # (bincount adds in row order like ``np.add.at``, which was 45% of the run time).
    weighted_cols = np.ascontiguousarray((X * sample_weight[:, None]).T)
    for _ in range(max_iter):
        labels = nearest_centre(X, centres)
        wsum = np.bincount(labels, weights=sample_weight, minlength=k)
        new: Array = np.column_stack(
            [np.bincount(labels, weights=col, minlength=k) for col in weighted_cols]
        ).astype(np.float64, copy=False)
        empty = wsum <= 0
        new[~empty] /= wsum[~empty, None]
        if empty.any():
            # Re-seed an empty cluster at the row farthest from its centre.
            far = np.argsort(-_sq_dist_to_assigned(X, centres, labels))
            new[empty] = X[far[: int(empty.sum())]]
        shift = float(np.sum((new - centres) ** 2))
        centres = new
        if shift <= threshold:
            break
    labels = nearest_centre(X, centres)
    inertia = float(sample_weight @ _sq_dist_to_assigned(X, centres, labels))
    return centres, inertia


def _sq_dist_to_assigned(X: Array, centres: Array, labels: NDArray[np.intp]) -> Array:
    diff = X - centres[labels]
    return np.einsum("ij,ij->i", diff, diff)


def kmeans(
    X: Array,
    sample_weight: Array,
    k: int,
    rng: np.random.Generator,
    n_restarts: int = 3,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> Array:
    """Best of ``n_restarts`` weighted k-means++ + Lloyd runs (lowest inertia).

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
    sample_weight : ndarray of shape (n_samples,)
    k : int
    rng : numpy Generator
    n_restarts : int
        Restarts cost only driver time on the sample, no pass over the data.

    Returns
    -------
    centres : ndarray of shape (k, d)
    """
    best, best_inertia = None, np.inf
    for _ in range(n_restarts):
        centres, inertia = _lloyd(
            X, sample_weight, kmeans_plusplus(X, sample_weight, k, rng), max_iter, tol
        )
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    assert best is not None
    return best
