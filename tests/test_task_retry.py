"""A Python worker killed inside a task: Spark retries the task and the fit is unchanged.

The fit runs in a child process with its own ``local[2,4]`` session (two cores, up to 4
attempts per task: the shared ``local[2]`` session of the other tests gives a task one
attempt only). Catching a worker "while it computes" by polling ``/proc`` is a race that
a loaded machine loses (an EM task here lasts milliseconds), so the child's workers run a
thin wrapper around pyspark's worker (``spark.python.worker.module``): once a task's
bytes have arrived, a worker that claims the trigger file writes its pid and waits inside
that task. After EM iteration 3 the test creates the trigger, SIGKILLs the pid it gets,
checks in the Spark log that the task failed because of it and was retried, and compares
the final model with an uninterrupted fit of the same files.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
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
        not Path("/proc/self/stat").exists(), reason="checks the Python workers through /proc"
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

# pyspark's daemon only accepts a worker module whose name starts with "pyspark".
WORKER_MODULE = "pyspark_gmm_test_worker"
WORKER = """
import os
import time

from pyspark.worker import main as pyspark_main


def main(infile, outfile):
    infile.peek(1)  # blocks until the JVM sends a task: from here on we are inside it
    trigger = os.environ["SPARK_GMM_TEST_TRIGGER"]
    try:
        os.rename(trigger, trigger + ".claimed")  # atomic: exactly one worker claims it
    except FileNotFoundError:
        return pyspark_main(infile, outfile)
    with open(trigger + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(trigger + ".tmp", trigger + ".pid")
    time.sleep(600)  # the test kills us here
"""

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
    .config("spark.python.worker.module", sys.argv[3])
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


def test_a_python_worker_killed_inside_a_task_is_retried(spark, tmp_path):
    data = tmp_path / "input"
    _write_parquet(data)
    err_path = tmp_path / "driver.err"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    (tmp_path / f"{WORKER_MODULE}.py").write_text(WORKER)
    trigger = tmp_path / "kill-the-next-task"
    pid_file = tmp_path / "kill-the-next-task.pid"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    env["SPARK_GMM_TEST_TRIGGER"] = str(trigger)
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(data), json.dumps(PARAMS), WORKER_MODULE],
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
        trigger.touch()
        assert probes.wait_for(lambda: pid_file.exists() or proc.poll() is not None, TIMEOUT)
        assert pid_file.exists(), f"no task reached a Python worker:\n{log()[-3000:]}"
        pid = int(pid_file.read_text())
        # It is one of the child's forked Python workers, and it holds a task: the pass
        # cannot finish, so the iteration logged last is the one the kill interrupts.
        assert pid in probes.descendants(proc.pid), pid
        assert "pyspark.daemon" in probes.cmdline(pid), probes.cmdline(pid)
        iteration_at_kill = max(int(i) for i in re.findall(r"EM iteration (\d+)/", log()))
        os.kill(pid, signal.SIGKILL)
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
    print(f"[task retry] killed Python worker {pid} after iteration {iteration_at_kill}")
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
