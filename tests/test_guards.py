"""The memory guard (spark_gmm.guards), without Spark."""

from __future__ import annotations

import pytest

from spark_gmm.errors import InvalidInputError, MemoryGuardError
from spark_gmm.gaussian import SufficientStatistics
from spark_gmm.guards import check_memory, estimate_memory, format_bytes, memory_limits

GIB = 1 << 30


def test_estimate_counts_the_statistics_and_the_block():
    k, d, rows = 8, 50, 1000
    executor, driver = estimate_memory([(k, "full")], d, block_rows=rows)
    flat = SufficientStatistics.flat_size("full", k, d) * 8
    block = rows * d * 8
    # At least the block, the statistics vector and the k unpacked d x d scatters.
    assert executor >= block + flat + k * d * d * 8, executor
    assert driver >= flat + k * d * d * 8, driver
    # ... and not absurdly more (a small multiple of the big arrays).
    assert executor < 10 * (block + flat + k * d * d * 8), executor


def test_estimate_grows_with_candidates_and_covariance_type():
    one = estimate_memory([(10, "full")], 100, block_rows=100)
    four = estimate_memory([(10, "full")] * 4, 100, block_rows=100)
    assert four[0] > one[0] and four[1] > 3 * one[1], (one, four)
    sizes = [estimate_memory([(10, ct)], 100, block_rows=100)[1] for ct in ("full", "diag")]
    assert sizes[0] > 20 * sizes[1], sizes  # k*d^2 against k*d
    # A grid of shapes is the sum of its parts on the driver.
    grid = estimate_memory([(5, "full"), (10, "diag")], 100, block_rows=100)[1]
    parts = sum(estimate_memory([s], 100, block_rows=100)[1] for s in [(5, "full"), (10, "diag")])
    assert grid == parts


def test_estimate_quadratic_in_d_for_full():
    small = estimate_memory([(4, "full")], 500, block_rows=10)[1]
    large = estimate_memory([(4, "full")], 1000, block_rows=10)[1]
    assert 3.5 < large / small < 4.5, large / small


def test_estimate_rejects_unknown_covariance_type():
    with pytest.raises(ValueError, match="covariance_type must be one of"):
        estimate_memory([(2, "banana")], 3, block_rows=10)


def test_check_memory_passes_small_and_names_everything_when_too_large():
    check_memory([(3, "full")] * 4, 10, block_rows=10_000, executor_limit=GIB, driver_limit=GIB)
    with pytest.raises(MemoryGuardError) as info:
        check_memory(
            [(100, "full")] * 4, 2000, block_rows=10_000, executor_limit=GIB, driver_limit=GIB
        )
    msg = str(info.value)
    assert isinstance(info.value, InvalidInputError)
    assert "\n" not in msg
    executor, driver = estimate_memory([(100, "full")] * 4, 2000, block_rows=10_000)
    assert f"{format_bytes(executor)} per executor task (limit 1.0 GiB)" in msg, msg
    assert f"{format_bytes(driver)} on the driver (limit 1.0 GiB)" in msg, msg
    assert "4 candidate(s) (k=100 full) on d=2000 features" in msg
    for hint in ("smaller k", "covarianceType='diag'", "PCA", "spark.executor.memory"):
        assert hint in msg, msg


def test_check_memory_counts_the_rows_of_a_kernel_block():
    # A sparse vector column of size 1e6 densified in blocks of 10,000 rows: 80 GB per
    # task; in the one-row blocks the engine uses at that width, it passes.
    with pytest.raises(MemoryGuardError, match="dense blocks of 10000 rows") as info:
        check_memory(
            [(1, "diag")], 1_000_000, block_rows=10_000, executor_limit=GIB, driver_limit=GIB
        )
    assert "more memory" in str(info.value)
    check_memory([(1, "diag")], 1_000_000, block_rows=1, executor_limit=GIB, driver_limit=GIB)


def test_check_memory_driver_limit_alone():
    executor, driver = estimate_memory([(20, "full")], 300, block_rows=100)
    check_memory([(20, "full")], 300, block_rows=100, executor_limit=executor, driver_limit=driver)
    with pytest.raises(MemoryGuardError, match="on the driver"):
        check_memory(
            [(20, "full")], 300, block_rows=100, executor_limit=executor, driver_limit=driver - 1
        )


class _Conf:
    def __init__(self, values):
        self.values = values

    def get(self, key, default=None):
        return self.values.get(key, default)


class _Session:
    def __init__(self, **values):
        self.conf = _Conf({k.replace("_", "."): v for k, v in values.items()})


def test_memory_limits_from_the_conf():
    # Defaults: 1g each, half of it.
    assert memory_limits(_Session()) == (GIB // 2, GIB // 2)
    cluster = _Session(
        spark_master="spark://h:7077",
        spark_executor_memory="8g",
        spark_executor_cores="4",
        spark_driver_memory="4096m",
    )
    assert memory_limits(cluster) == (GIB, 2 * GIB)  # 8g / 2 / 4 tasks; 4g / 2
    # spark.executor.pyspark.memory bounds the Python workers when set; cpus per task count.
    py = _Session(
        spark_master="yarn",
        spark_executor_memory="8g",
        spark_executor_pyspark_memory="2g",
        spark_executor_cores="4",
        spark_task_cpus="2",
    )
    assert memory_limits(py)[0] == GIB // 2
    # Local mode: the workers run beside the driver; its memory stands in.
    local = _Session(spark_master="local[2]", spark_driver_memory="2g")
    assert memory_limits(local) == (GIB, GIB)
    # Unparseable values fall back to the default.
    assert memory_limits(_Session(spark_driver_memory="lots"))[1] == GIB // 2


def test_check_memory_counts_the_initialisation_sample_on_the_driver():
    # 100,000 sampled rows of 5,000 features: ~12 GB on the driver for a small model.
    check_memory([(2, "diag")], 5_000, block_rows=800, executor_limit=GIB, driver_limit=GIB)
    with pytest.raises(MemoryGuardError, match="a smaller initSampleSize") as info:
        check_memory(
            [(2, "diag")],
            5_000,
            block_rows=800,
            executor_limit=GIB,
            driver_limit=GIB,
            sample_rows=100_000,
        )
    assert "on the driver (limit 1.0 GiB)" in str(info.value)


@pytest.mark.parametrize(
    "covariance_type, d, k, dtype",
    [
        ("diag", 768, 256, "float64"),
        ("diag", 768, 256, "float32"),
        ("spherical", 768, 256, "float64"),
        ("diag", 256, 64, "float64"),
        ("full", 64, 16, "float64"),
    ],
)
def test_estimate_covers_the_measured_peak_of_a_kernel_block(covariance_type, d, k, dtype):
    """The executor estimate is at least the peak numpy allocates (tracemalloc) while a
    task holds its block and parameters and runs the kernel on it, at embedding widths
    too (the k x d terms derived from the parameters, the (k, n) responsibilities, the
    (2d, n) features); and within a small multiple of it."""
    import pickle
    import tracemalloc

    import numpy as np

    from spark_gmm.gaussian import MixtureParameters, block_statistics
    from spark_gmm.kernels import EMTask, kernel_rows

    rng = np.random.default_rng(0)
    n = kernel_rows(d)
    means = rng.normal(size=(k, d))
    covariances = {
        "diag": rng.uniform(0.5, 2.0, size=(k, d)),
        "spherical": rng.uniform(0.5, 2.0, size=k),
        "full": np.repeat(np.eye(d)[None], k, axis=0),
    }[covariance_type]
    params = MixtureParameters.from_covariances(
        np.full(k, 1 / k), means, covariances, covariance_type
    )
    payload = pickle.dumps(EMTask(params))
    tracemalloc.start()
    try:
        X = np.asfortranarray(rng.normal(size=(n, d)), dtype=dtype)
        task = pickle.loads(payload)  # the broadcast, as a task unpickles it
        flat = task.statistics(X, None).to_flat()
        block_statistics(X, None, task.params)  # a second block: the cached terms reused
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert flat.size == task.flat_size
    executor, _ = estimate_memory([(k, covariance_type)], d, block_rows=n)
    assert peak <= executor, (format_bytes(peak), format_bytes(executor))
    assert executor < 4 * peak, (format_bytes(peak), format_bytes(executor))


def test_full_at_embedding_width_warns_with_its_cost_and_the_alternatives(spark):
    """covarianceType='full' at d=768 warns (before any pass) with the cost per row and
    per million rows, pointing to diag/spherical or a PCA stage; d=64 does not."""
    import warnings

    from spark_gmm.errors import CostWarning
    from spark_gmm.guards import FULL_SECONDS_PER_KDD, full_cost_warning
    from spark_gmm.kernels import kernel_rows
    from spark_gmm.params import _check_memory

    assert full_cost_warning([(16, "full")], 64) is None
    assert full_cost_warning([(256, "diag")], 768) is None
    msg = full_cost_warning([(8, "full"), (8, "diag")], 768)
    assert msg is not None
    per_row_ms = FULL_SECONDS_PER_KDD * 8 * 768**2 * 1e3
    assert f"{per_row_ms:.3g} ms per row" in msg, msg
    assert "k·d² = 4.72e+06" in msg and "'diag'" in msg and "PCA" in msg, msg
    with pytest.warns(CostWarning, match="covarianceType='full' with k=8 on d=768"):
        _check_memory(spark, [(8, "full")], 768, kernel_rows(768), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_memory(spark, [(8, "diag")], 768, kernel_rows(768), 0)


def test_default_init_sample_shrinks_to_fit_the_driver_on_wide_tables(spark):
    """At d=768, k=256 (an embedding table) the default initSampleSize (100,000 rows,
    1.7 GiB with its copies) does not fit the 2g test driver's guard: the default
    shrinks to the largest sample that does; a value the user set is kept and refused
    with a message naming initSampleSize. At d=16 the default is unchanged."""
    from spark_gmm import GaussianMixture
    from spark_gmm.kernels import kernel_rows
    from spark_gmm.params import MIN_DEFAULT_SAMPLE_PER_COMPONENT, _check_memory

    shapes, d = [(256, "diag")], 768
    est = GaussianMixture(k=256, covarianceType="diag")
    rows = est._init_sample_rows(spark, shapes, d)
    assert MIN_DEFAULT_SAMPLE_PER_COMPONENT * 256 <= rows < 100_000, rows
    _check_memory(spark, shapes, d, kernel_rows(d), rows)  # fits
    with pytest.raises(MemoryGuardError, match="a smaller initSampleSize"):
        _check_memory(spark, shapes, d, kernel_rows(d), rows + 5_000)
    chosen = GaussianMixture(k=256, covarianceType="diag", initSampleSize=100_000)
    assert chosen._init_sample_rows(spark, shapes, d) == 100_000
    with pytest.raises(MemoryGuardError, match="a smaller initSampleSize"):
        _check_memory(spark, shapes, d, kernel_rows(d), 100_000)
    assert GaussianMixture(k=8)._init_sample_rows(spark, [(8, "full")], 16) == 100_000
