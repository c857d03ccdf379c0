"""Long fits hold nothing beyond their cache, and release it also when they fail.

Each EM pass broadcasts the parameters and destroys the broadcast; the cached input is
unpersisted when ``fit`` returns or raises. Measured on the driver through
:mod:`spark_probes` (persisted RDDs, broadcast variables in the driver's BlockManager,
pyspark's broadcast files and objects, RSS), sampled at every ``EM iteration`` log line by
a logging handler — the library's code is not touched. ``benchmarks/soak.py`` does the
same over 200 iterations on 1M rows.
"""

from __future__ import annotations

import gc
import logging
import os
import threading

import pytest
import spark_probes as probes
from helpers import make_mixture

from spark_gmm import GaussianMixture

# tol=0 runs every iteration on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:EM did not converge")

N_ROWS = 20_000
MAX_ITER = 40
RSS_GROWTH_MIB = 25.0  # allowed Python driver RSS growth from iteration 10 to the end


class _Sampler(logging.Handler):
    """Calls ``on_iteration(i)`` at every ``EM iteration i/n`` log record."""

    def __init__(self, on_iteration) -> None:
        super().__init__(logging.INFO)
        self.on_iteration = on_iteration

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("EM iteration "):
            self.on_iteration(int(record.args[0]))  # type: ignore[index]


@pytest.fixture
def sampler():
    """Attach a :class:`_Sampler` to the ``spark_gmm`` logger for one test."""
    logger = logging.getLogger("spark_gmm")
    attached: list[logging.Handler] = []
    level = logger.level

    def attach(on_iteration) -> None:
        handler = _Sampler(on_iteration)
        logger.addHandler(handler)
        attached.append(handler)
        logger.setLevel(logging.INFO)

    yield attach
    for handler in attached:
        logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def frame(spark):
    X, _ = make_mixture(n=N_ROWS, d=3, k=3, seed=77, separation=2.0)
    return spark.createDataFrame([tuple(map(float, r)) for r in X], ["a", "b", "c"]).repartition(4)


def _broadcast_files(spark) -> set[str]:
    """pyspark writes each broadcast value to a file in its temp dir until destroyed."""
    return set(os.listdir(spark.sparkContext._temp_dir))


def _settled(spark, tracked: probes.TrackedBroadcasts, rdds_before: set[int]) -> bool:
    live = probes.driver_broadcast_ids(spark)
    return not (live & set(tracked.created)) and probes.persistent_rdd_ids(spark) == rdds_before


def test_a_long_fit_leaves_no_broadcast_cache_or_memory_behind(spark, frame, sampler):
    gm = GaussianMixture(k=3, inputCols=["a", "b", "c"], seed=3, maxIter=MAX_ITER, tol=0.0)
    gm.setNInit(1)
    rdds_before = probes.persistent_rdd_ids(spark)
    files_before = _broadcast_files(spark)
    samples: dict[int, probes.Resources] = {}
    with probes.TrackedBroadcasts(spark) as tracked:
        sampler(lambda i: samples.__setitem__(i, probes.resources(spark, tracked)))
        model = gm.fit(frame)
        settled = probes.wait_for(lambda: _settled(spark, tracked, rdds_before), 10.0)
    assert model.summary.numIter == MAX_ITER
    assert sorted(samples) == list(range(1, MAX_ITER + 1))
    # One broadcast per data pass: MAX_ITER iterations and the final scoring (the default
    # start, short EM on the driver's sample, needs no pass over the data).
    assert len(tracked.created) == MAX_ITER + 1, tracked.created
    # During the fit: exactly the one cache, and at most the last pass's broadcast still
    # on its way out (``destroy`` removes the blocks asynchronously).
    assert {s.persistent_rdds for s in samples.values()} == {len(rdds_before) + 1}
    assert max(s.tracked_live for s in samples.values()) <= 1, samples
    # Afterwards: the cache and every broadcast gone, on the JVM and in Python.
    assert settled, (probes.persistent_rdd_ids(spark), rdds_before, tracked.created)
    assert _broadcast_files(spark) == files_before
    gc.collect()
    assert not [r for r in tracked.objects if r() is not None]
    rss = [samples[i].rss_mib for i in range(10, MAX_ITER + 1)]
    print(f"[long run] driver RSS MiB at iterations 10..{MAX_ITER}: {rss[0]:.1f} .. {rss[-1]:.1f}")
    print(f"[long run] live broadcasts per iteration: {[s.broadcasts for s in samples.values()]}")
    assert max(rss) - rss[0] < RSS_GROWTH_MIB, rss


class _Interrupt(KeyboardInterrupt):
    """A Ctrl-C delivered between two passes (raised by the log handler)."""


def _interrupt_between_passes(spark, at: int):
    def on_iteration(i: int) -> None:
        if i == at:
            raise _Interrupt(f"interrupted after iteration {i}")

    return on_iteration, _Interrupt


def _cancel_during_a_pass(spark, at: int):
    """From another thread, cancel the first Spark job running after iteration ``at``."""
    sc = spark.sparkContext
    armed = threading.Event()

    def canceller() -> None:
        armed.wait(60)
        if probes.wait_for(lambda: bool(sc.statusTracker().getActiveJobsIds()), 30.0, 0.005):
            sc.cancelAllJobs()

    threading.Thread(target=canceller, daemon=True).start()

    def on_iteration(i: int) -> None:
        if i == at:
            armed.set()

    return on_iteration, Exception


@pytest.mark.parametrize("failure", [_interrupt_between_passes, _cancel_during_a_pass])
def test_a_failed_fit_releases_its_cache_and_broadcasts(spark, frame, sampler, failure):
    gm = GaussianMixture(k=3, inputCols=["a", "b", "c"], seed=3, maxIter=MAX_ITER, tol=0.0)
    gm.setNInit(1)
    rdds_before = probes.persistent_rdd_ids(spark)
    files_before = _broadcast_files(spark)
    during: list[int] = []
    on_iteration, expected = failure(spark, at=5)

    def sample_then_fail(i: int) -> None:
        during.append(len(probes.persistent_rdd_ids(spark)))
        on_iteration(i)

    sampler(sample_then_fail)
    with probes.TrackedBroadcasts(spark) as tracked:
        with pytest.raises(expected) as info:
            gm.fit(frame)
        settled = probes.wait_for(lambda: _settled(spark, tracked, rdds_before), 10.0)
    print(f"[failed fit] {type(info.value).__name__}: {str(info.value).splitlines()[0][:200]}")
    # It failed mid-fit, with its cache alive until then.
    assert 5 <= len(during) < MAX_ITER and set(during) == {len(rdds_before) + 1}, during
    if failure is _cancel_during_a_pass:
        assert "cancel" in str(info.value).lower(), info.value
        assert len(tracked.created) == len(during) + 1  # one per pass, the cancelled one too
    assert settled, (probes.persistent_rdd_ids(spark), rdds_before, tracked.created)
    assert _broadcast_files(spark) == files_before
