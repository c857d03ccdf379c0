"""Test helpers: generated mixtures with known parameters, tolerance checks."""

from __future__ import annotations

import socket

import numpy as np


def make_mixture(
    n: int = 1500,
    d: int = 3,
    k: int = 3,
    seed: int = 0,
    separation: float = 6.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows from a mixture of k elliptical Gaussians with known labels.

    Returns
    -------
    X : ndarray of shape (n, d)
    labels : ndarray of shape (n,)
    """
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=separation, size=(k, d))
    labels = rng.choice(k, size=n, p=np.arange(1, k + 1) / np.arange(1, k + 1).sum())
    X = np.empty((n, d))
    for j in range(k):
        a = rng.normal(size=(d, d)) / np.sqrt(d)
        cov = a @ a.T + 0.2 * np.eye(d)
        rows = labels == j
        X[rows] = rng.multivariate_normal(means[j], cov, size=int(rows.sum()))
    return X, labels


def rel_err(actual, expected, floor: float = 1e-6) -> float:
    """Largest element-wise relative difference, ``|a - e| / max(|e|, floor)``.

    Every entry is held to the tolerance relative to its own size, so small entries are
    not hidden behind a large one; entries of ``expected`` smaller than ``floor`` (in
    absolute value) are compared to ``floor`` instead, so that exact zeros compare.
    """
    actual = np.asarray(actual, dtype=float)
    expected = np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), floor)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers the tests start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
