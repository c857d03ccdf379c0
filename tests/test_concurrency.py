"""Two fits at the same time in one SparkSession, from two threads.

Each thread fits its own data (different sizes, dimensions, k and covariance types). The
models must be bitwise equal to the same fits run one at a time, and the Spark jobs of
each thread must carry that thread's own descriptions: PySpark's pinned thread mode (the
default since 3.2) gives every Python thread its own JVM thread, so the job description
spark_gmm sets for a pass is a thread-local property. The jobs are read back from Spark's
status store, grouped by a job group each thread sets for itself.
"""

from __future__ import annotations

import os
import re
import threading

import numpy as np
import pytest
from helpers import make_mixture

from spark_gmm import GaussianMixture

# tol=0 runs every iteration on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:EM did not converge")

FITS = {
    # name: (rows, d, k, covarianceType, maxIter)
    "left": (8_000, 3, 3, "full", 12),
    "right": (6_000, 5, 2, "diag", 15),
}


@pytest.fixture(scope="module")
def frames(spark):
    out = {}
    for i, (name, (n, d, k, _, _)) in enumerate(FITS.items()):
        X, _ = make_mixture(n=n, d=d, k=k, seed=40 + i, separation=1.5)
        cols = [f"x{j}" for j in range(d)]
        out[name] = spark.createDataFrame([tuple(map(float, r)) for r in X], cols).repartition(3)
    return out


def _fit(frames, name):
    _, d, k, covariance_type, max_iter = FITS[name]
    gm = GaussianMixture(
        k=k,
        inputCols=[f"x{j}" for j in range(d)],
        covarianceType=covariance_type,
        maxIter=max_iter,
        tol=0.0,
        nInit=2,
        seed=8,
    )
    return gm.fit(frames[name])


def _jobs_of_group(spark, group: str) -> list[tuple[str, int, int]]:
    """(description, submission ms, completion ms) of the group's jobs, from the status store."""
    jobs = spark.sparkContext._jsc.sc().statusStore().jobsList(None)
    out = []
    for i in range(jobs.size()):
        job = jobs.apply(i)
        if job.jobGroup().isDefined() and job.jobGroup().get() == group:
            description = job.description().get() if job.description().isDefined() else ""
            out.append(
                (
                    description,
                    int(job.submissionTime().get().getTime()),
                    int(job.completionTime().get().getTime()),
                )
            )
    return out


def test_two_fits_in_two_threads_do_not_interfere(spark, frames):
    assert os.environ.get("PYSPARK_PIN_THREAD", "true").lower() == "true"
    alone = {name: _fit(frames, name) for name in FITS}

    sc = spark.sparkContext
    results: dict[str, object] = {}
    barrier = threading.Barrier(len(FITS))

    def run(name: str) -> None:
        try:
            sc.setJobGroup(f"spark_gmm-concurrency-{name}", f"concurrent fit {name}")
            barrier.wait(timeout=60)
            results[name] = _fit(frames, name)
        except BaseException as exc:  # reported below, in the test's thread
            results[name] = exc
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)

    threads = [threading.Thread(target=run, args=(name,)) for name in FITS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a fit did not finish"

    for name in FITS:
        together = results[name]
        assert not isinstance(together, BaseException), f"{name}: {together!r}"
        for attr in ("weights", "means", "covariances"):
            np.testing.assert_array_equal(
                getattr(together, attr), getattr(alone[name], attr), err_msg=f"{name}.{attr}"
            )
        assert together.summary.logLikelihoodHistory == alone[name].summary.logLikelihoodHistory, (
            name
        )

    spans = {}
    for name, (_, _, _, _, max_iter) in FITS.items():
        jobs = _jobs_of_group(spark, f"spark_gmm-concurrency-{name}")
        descriptions = [d for d, _, _ in jobs]
        iterations = [
            m.groups()
            for d in descriptions
            if (m := re.fullmatch(r"spark_gmm: EM iteration (\d+)/(\d+)", d))
        ]
        # Every EM pass of this thread, labelled with this thread's maxIter, and no other.
        assert sorted(int(i) for i, _ in iterations) == list(range(1, max_iter + 1)), descriptions
        assert {int(n) for _, n in iterations} == {max_iter}, descriptions
        assert all(d.startswith("spark_gmm: ") for d in descriptions), [
            d for d in descriptions if not d.startswith("spark_gmm: ")
        ]
        spans[name] = (min(s for _, s, _ in jobs), max(c for _, _, c in jobs))
    (a0, a1), (b0, b1) = spans.values()
    print(f"[concurrency] job spans (ms): {spans}")
    assert a0 < b1 and b0 < a1, f"the two fits did not overlap in time: {spans}"
