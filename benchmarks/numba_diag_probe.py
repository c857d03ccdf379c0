"""Would a compiled kernel close the diag gap? A fused numba E+M block kernel vs ours.

Not part of the suite and not a dependency: it answers one question for issue 5 (diag,
2M x 32, k=32, target 8x sklearn). It times, on one core, one 10,000 x 32 block with
k=32 diagonal components:

- ``spark_gmm.gaussian.block_statistics`` (the numpy kernel the engine runs), and
- a fused loop compiled by numba that does the same work in one pass per row: squared
  distances centred on each mean, log-sum-exp, responsibilities, and the statistics
  centred on the current means (``nk``, ``sum r (x - mu)``, ``sum r (x - mu)^2``),

and checks that both give the same log-likelihood and statistics.

Usage (numba is not installed by the project)::

    .venv/bin/python -m pip install numba
    .venv/bin/python benchmarks/numba_diag_probe.py
"""

from __future__ import annotations

import sys
import time

import numpy as np
import threadpoolctl

from spark_gmm.gaussian import MixtureParameters, block_statistics


def _fused_kernel(fastmath: bool):
    from numba import njit

    @njit(cache=False, fastmath=fastmath)
    def fused_diag(X, means, precisions, log_norm, nk, sum_r_diff, sum_r_diff2):  # pragma: no cover
        n, d = X.shape
        k = means.shape[0]
        diff = np.empty((k, d))
        log_prob = np.empty(k)
        log_likelihood = 0.0
        for i in range(n):
            top = -np.inf
            for c in range(k):
                s = 0.0
                for j in range(d):
                    t = X[i, j] - means[c, j]
                    diff[c, j] = t
                    s += t * t * precisions[c, j]
                v = log_norm[c] - 0.5 * s
                log_prob[c] = v
                top = max(top, v)
            total = 0.0
            for c in range(k):
                log_prob[c] = np.exp(log_prob[c] - top)
                total += log_prob[c]
            log_likelihood += top + np.log(total)
            for c in range(k):
                r = log_prob[c] / total
                if r == 0.0:
                    continue
                nk[c] += r
                for j in range(d):
                    rt = r * diff[c, j]
                    sum_r_diff[c, j] += rt
                    sum_r_diff2[c, j] += rt * diff[c, j]
        return log_likelihood

    return fused_diag


def _best(fn, repeats: int = 20) -> float:
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    try:
        import numba
    except ImportError:
        sys.exit("numba is not installed: .venv/bin/python -m pip install numba")
    threadpoolctl.threadpool_limits(1)
    n, d, k = 10_000, 32, 32
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)) * 2.0 + 5.0
    means = X[rng.choice(n, k, replace=False)]
    covariances = rng.uniform(0.5, 2.0, size=(k, d))
    weights = np.full(k, 1.0 / k)
    params = MixtureParameters.from_covariances(weights, means, covariances, "diag")
    precisions = 1.0 / covariances
    log_norm = np.log(weights) + 0.5 * np.log(precisions).sum(axis=1) - 0.5 * d * np.log(2 * np.pi)
    XF = np.asfortranarray(X)
    ours = block_statistics(XF, None, params)
    t_numpy = _best(lambda: block_statistics(XF, None, params))
    print(f"numba {numba.__version__}, numpy {np.__version__}; one {n:,} x {d} block, k={k}")
    print(f"numpy kernel (block_statistics): {t_numpy * 1e3:.1f} ms")
    for fastmath in (False, True):
        kernel = _fused_kernel(fastmath)
        nk, s1, s2 = np.zeros(k), np.zeros((k, d)), np.zeros((k, d))

        def run(kernel=kernel, nk=nk, s1=s1, s2=s2):
            nk[:] = 0.0
            s1[:] = 0.0
            s2[:] = 0.0
            return kernel(X, means, precisions, log_norm, nk, s1, s2)

        log_likelihood = run()  # compiles
        seconds = _best(run)
        errors = {
            "log-likelihood": abs(log_likelihood - ours.log_likelihood) / abs(ours.log_likelihood),
            "nk": np.abs(nk - ours.nk).max() / ours.nk.max(),
            "sum r (x - mu)^2": np.abs(s2 - ours.scatter).max() / np.abs(ours.scatter).max(),
        }
        print(
            f"numba fused, fastmath={fastmath}: {seconds * 1e3:.1f} ms, "
            f"{t_numpy / seconds:.2f}x the numpy kernel; relative differences "
            + ", ".join(f"{name} {err:.1e}" for name, err in errors.items())
        )


if __name__ == "__main__":
    main()
