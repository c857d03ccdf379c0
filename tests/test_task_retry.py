"""A Python worker killed inside a task: Spark retries the task and the fit is unchanged.

The fit runs in a child process with its own ``local[2,4]`` session (two cores, up to 4
attempts per task: the shared ``local[2]`` session of the other tests gives a task one
attempt only). Once the fit logs EM iteration 3, the test SIGKILLs one of the session's
Python worker processes while it computes (state R in ``/proc``: an idle worker sleeps
on its socket), checks in the Spark log that a task failed because of it and was retried,
and compares the final model with an uninterrupted fit of the same files.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import spark_probes as probes
from helpers import make_mixture, rel_err

from spark_gmm import GaussianMixture

pytestmark = [
    pytest.mark.skipif(
        not Path("/proc/self/stat").exists(), reason="finds the Python workers through /proc"
    ),
    pytest.mark.filterwarnings("ignore:EM did not converge"),  # tol=0 on purpose
]

FEATURES = ["a", "b", "c"]
N_ROWS = 80_000
PARTS = 4
MAX_ITER = 20
# Overlapping clusters: EM still moves at iteration 20 (tol=0), so a wrong pass would show.
PARAMS = dict(k=4, seed=5, maxIter=MAX_ITER, tol=0.0, nInit=1, inputCols=FEATURES)
TIMEOUT = 240.0

DRIVER = """
import json, logging, sys
from pyspark.sql import SparkSession
from spark_gmm import GaussianMixture

path, params = sys.argv[1], json.loads(sys.argv[2])
spark = (
    SparkSession.builder.master("local[2,4]")  # 2 cores, spark.task.maxFailures=4
    .config("spark.ui.enabled", "false")
    .config("spark.sql.shuffle.partitions", "4")
    .config("spark.default.parallelism", "4")
    .getOrCreate()
)
handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
logging.getLogger("spark_gmm").addHandler(handler)
logging.getLogger("spark_gmm").setLevel(logging.INFO)
model = GaussianMixture(**params).fit(spark.read.parquet(path))
print(json.dumps({
    "weights": list(model.weights),
    "means": model.means.tolist(),
    "covariances": model.covariances.tolist(),
    "numIter": model.summary.numIter,
    "history": model.summary.logLikelihoodHistory,
}))
spark.stop()
"""


def _write_parquet(path: Path) -> None:
    X, _ = make_mixture(n=N_ROWS, d=len(FEATURES), k=4, seed=31, separation=1.5)
    path.mkdir()
    bounds = np.linspace(0, N_ROWS, PARTS + 1).astype(int)
    for part, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        table = pa.table({f: X[lo:hi, j] for j, f in enumerate(FEATURES)})
        pq.write_table(table, path / f"part-{part:05d}.parquet")


def _python_workers(driver_pid: int) -> list[int]:
    """Forked task workers: ``pyspark.daemon`` processes whose parent is the daemon."""
    daemons = {
        pid for pid in probes.descendants(driver_pid) if "pyspark.daemon" in probes.cmdline(pid)
    }
    return [pid for pid in daemons if any(pid in probes.children(d) for d in daemons)]


def _kill_a_busy_worker(driver_pid: int, timeout: float = 30.0) -> int | None:
    """SIGKILL the first Python worker seen computing (state R); its pid, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _python_workers(driver_pid):
            if probes.state(pid) == "R":
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.002)
    return None


def test_a_python_worker_killed_inside_a_task_is_retried(spark, tmp_path):
    data = tmp_path / "input"
    _write_parquet(data)
    err_path = tmp_path / "driver.err"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
    env["PYSPARK_PYTHON"] = sys.executable
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(data), json.dumps(PARAMS)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        # The uninterrupted fit of the same files, in the shared session, meanwhile.
        future = pool.submit(lambda: GaussianMixture(**PARAMS).fit(spark.read.parquet(str(data))))

        def log() -> str:
            return err_path.read_text(errors="replace")

        assert probes.wait_for(
            lambda: "EM iteration 3/" in log() or proc.poll() is not None, TIMEOUT, 0.05
        ), log()[-3000:]
        assert proc.poll() is None, f"the fit ended before iteration 3:\n{log()[-3000:]}"
        # A kill may land just after a task's result was sent (nothing fails then: the
        # dead idle worker is not reused); try again until a task is seen failing.
        killed: list[int] = []
        for _ in range(5):
            pid = _kill_a_busy_worker(proc.pid)
            assert pid is not None, "no Python worker was seen computing"
            killed.append(pid)
            if probes.wait_for(lambda: "Lost task" in log(), 3.0):
                break
        iteration_at_kill = max(int(i) for i in re.findall(r"EM iteration (\d+)/", log()))
        out, _ = proc.communicate(timeout=TIMEOUT)
        reference = future.result()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        pool.shutdown()
    text = log()
    assert proc.returncode == 0, text[-5000:]
    lost = [line for line in text.splitlines() if "Lost task" in line]
    print(f"[task retry] killed Python workers {killed} after iteration {iteration_at_kill}")
    print("\n".join(lost))
    assert lost, text[-5000:]
    assert "Python worker exited unexpectedly" in lost[0], lost
    assert iteration_at_kill < MAX_ITER
    # The retry of the failed attempt 0 (e.g. "task 2.0 in stage 9.0") succeeded.
    task, stage = re.search(r"Lost task (\d+)\.0 in stage (\d+\.\d+)", lost[0]).groups()  # type: ignore[union-attr]
    assert not re.search(rf"Lost task {task}\.[1-3] in stage {stage}\b", text), lost

    fitted = json.loads(out.decode().strip().splitlines()[-1])
    assert fitted["numIter"] == reference.summary.numIter == MAX_ITER
    # Every pass, the one with the retried task included, gave the same log-likelihood.
    np.testing.assert_allclose(
        fitted["history"], reference.summary.logLikelihoodHistory, rtol=1e-12, atol=0
    )
    errors = {
        name: rel_err(fitted[name], getattr(reference, name))
        for name in ("means", "covariances", "weights")
    }
    print(f"[task retry] retried vs uninterrupted relative errors: {errors}")
    for name, err in errors.items():
        assert err <= 1e-9, f"{name}: retried vs uninterrupted relative error {err:.3g}"
