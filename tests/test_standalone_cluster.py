"""The fit and score jobs on a real standalone Spark cluster, library shipped with --py-files.

A master and two workers (1 core, 1g each) run on 127.0.0.1. The executors' Python is the
project's venv interpreter *without* spark_gmm (``python -S`` with only site-packages on
``PYTHONPATH``, so the editable install's ``.pth`` is never read): the jobs can only work
if ``spark-submit --py-files spark_gmm.zip`` (the zip ``make dist`` builds) ships the
library. The model fitted on the cluster must equal a local-mode fit of the same data.

Every process started here is stopped by its process group at the end, also on failure.
A missing prerequisite (java, Spark's scripts) fails the test with the reason; nothing is
skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import spark_probes as probes
from helpers import free_port, make_mixture, rel_err

from spark_gmm import GaussianMixtureModel
from spark_gmm.cli import FitConfig
from spark_gmm.jobs import build_fit_pipeline, read_input

ROOT = Path(__file__).resolve().parents[1]


def _load_zip_builder():
    """``scripts/build_pyfiles_zip.py``: the function ``make dist`` runs for the zip."""
    spec = importlib.util.spec_from_file_location(
        "build_pyfiles_zip", ROOT / "scripts" / "build_pyfiles_zip.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_pyfiles_zip


FEATURES = ["a", "b", "c"]
FIT_ARGS = ["--features", ",".join(FEATURES), "--k", "3", "--seed", "7", "--max-iter", "100"]
N_ROWS = 2000
START_TIMEOUT = 90.0  # seconds for the master and both workers to come up
JOB_TIMEOUT = 240.0  # seconds per spark-submit
# Short-lived JVMs on a small machine: the C1 compiler only and the serial collector cut
# the CPU the master, workers, executors and drivers burn at start-up.
JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


_clock = {"start": time.monotonic(), "last": time.monotonic()}


def _phase(name: str) -> None:
    """Print how long each step took (shown with ``pytest -s`` or on failure)."""
    now = time.monotonic()
    print(
        f"[standalone] {name}: {now - _clock['last']:.1f} s (total {now - _clock['start']:.1f} s)"
    )
    _clock["last"] = now


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"({path}: {exc})"


def _group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process is left in the process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel about the group as a whole
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _group_gone(proc: subprocess.Popen, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        proc.poll()  # reap the group leader (our child)
        if not _group_alive(proc.pid):
            return True
        time.sleep(0.2)
    return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we started (the JVM and its children), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if _group_gone(proc, wait):
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _spark_home() -> Path:
    import pyspark

    home = Path(pyspark.__file__).resolve().parent
    for script in ("bin/spark-class", "bin/spark-submit"):
        if not os.access(home / script, os.X_OK):
            pytest.fail(f"{home / script} is missing or not executable (pyspark pip wheel?)")
    return home


def _check_java() -> None:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        pytest.fail("java not found (set JAVA_HOME or put Java 17+ on PATH); Spark needs it")


def _make_executor_python(base: Path) -> SimpleNamespace:
    """A ``python-noproject`` wrapper: numpy/pandas/pyarrow/pyspark, but no spark_gmm.

    Each call appends its arguments to ``python-noproject.calls`` so the test can prove
    that the executors ran it.
    """
    site = sysconfig.get_paths()["purelib"]
    calls = base / "python-noproject.calls"
    wrapper = base / "python-noproject"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# The venv's interpreter without site processing: only site-packages on the path,\n"
        "# so the editable install of spark_gmm (a .pth finder) is not loaded.\n"
        f'echo "$$ $*" >> "{calls}"\n'
        f'PYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" -S "$@"\n'
    )
    wrapper.chmod(0o755)
    return SimpleNamespace(path=wrapper, calls=calls)


def _run_python(python: Path, code: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def _check_executor_python(py: SimpleNamespace, zip_path: Path, cwd: Path, env: dict) -> None:
    deps = _run_python(py.path, "import numpy, pandas, pyarrow, pyspark", cwd, env)
    if deps.returncode != 0:
        pytest.fail(f"{py.path} cannot import numpy/pandas/pyarrow/pyspark:\n{deps.stderr}")
    bare = _run_python(py.path, "import spark_gmm; print(spark_gmm.__file__)", cwd, env)
    if bare.returncode == 0 or "No module named 'spark_gmm'" not in bare.stderr:
        pytest.fail(
            f"{py.path} must not see spark_gmm, but import spark_gmm gave rc={bare.returncode} "
            f"{bare.stdout.strip()} {bare.stderr.strip()[-500:]}"
        )
    shipped = _run_python(
        py.path,
        "import spark_gmm.cli, spark_gmm.engine; print(spark_gmm.__file__)",
        cwd,
        {**env, "PYTHONPATH": str(zip_path)},
    )
    if shipped.returncode != 0 or str(zip_path) not in shipped.stdout:
        pytest.fail(f"spark_gmm does not import from {zip_path}:\n{shipped.stderr[-2000:]}")


def _wait_for_master(port: int, proc: subprocess.Popen, log: Path) -> None:
    """Until the master accepts connections (a worker started earlier would back off ~10 s)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the master exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"the master did not listen on 127.0.0.1:{port} in time:\n{_tail(log)}")


def _wait_for_workers(webui: int, n: int, procs: list, logs: list[Path]) -> dict:
    """Poll the master's JSON (loopback, no proxy) until n workers are ALIVE."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://127.0.0.1:{webui}/json/"
    deadline = time.monotonic() + START_TIMEOUT
    state: dict = {}
    last_error = ""
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs):
            if proc.poll() is not None:
                pytest.fail(f"{log.stem} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with opener.open(url, timeout=5) as response:
                state = json.load(response)
            alive = [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]
            if len(alive) >= n:
                return state
        except (OSError, ValueError) as exc:
            last_error = repr(exc)
        time.sleep(0.5)
    pytest.fail(
        f"{n} workers did not register within {START_TIMEOUT:.0f} s (master {url}: "
        f"{json.dumps(state)[:1000] or last_error});\n"
        + "\n".join(f"--- {log.name}\n{_tail(log, 1500)}" for log in logs)
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Zip + executor Python checked, then a master and two workers on 127.0.0.1."""
    _phase("before the cluster fixture (collection, local session)")
    _check_java()
    spark_home = _spark_home()
    base = tmp_path_factory.mktemp("standalone")
    conf_dir = base / "conf"  # empty: no spark-defaults.conf from elsewhere
    conf_dir.mkdir()
    zip_path = _load_zip_builder()(base / "dist" / "spark_gmm.zip")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYSPARK_", "SPARK_")) and k != "PYTHONPATH"
    }
    env.update(SPARK_HOME=str(spark_home), SPARK_CONF_DIR=str(conf_dir))
    env.update(SPARK_LOCAL_IP="127.0.0.1", SPARK_DAEMON_MEMORY="512m")
    env.update(SPARK_DAEMON_JAVA_OPTS=JVM_OPTS, SPARK_LAUNCHER_OPTS=JVM_OPTS)
    py = _make_executor_python(base)
    _check_executor_python(py, zip_path, base, env)
    _phase("zip and executor Python checked")

    spark_class = str(spark_home / "bin" / "spark-class")
    port, webui = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []

    def start(name: str, args: list[str], extra_env: dict) -> None:
        log_dir = base / name / "logs"
        log_dir.mkdir(parents=True)
        log = log_dir / f"{name}.log"
        with open(log, "wb") as out:
            procs.append(
                subprocess.Popen(
                    [spark_class, *args],
                    env={**env, "SPARK_LOG_DIR": str(log_dir), **extra_env},
                    cwd=base / name,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own process group, stopped as a whole
                )
            )
        logs.append(log)

    try:
        start(
            "master",
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
            + ["--port", str(port), "--webui-port", str(webui)],
            {},
        )
        _wait_for_master(port, procs[0], logs[0])
        worker_dirs = []
        for i in (1, 2):
            work = base / f"worker{i}" / "work"
            local = base / f"worker{i}" / "local"
            work.mkdir(parents=True)
            local.mkdir()
            worker_dirs.append(work)
            start(
                f"worker{i}",
                ["org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1"]
                + ["--cores", "1", "--memory", "1g", "--webui-port", str(free_port())]
                + ["--work-dir", str(work)],
                {"SPARK_WORKER_DIR": str(work), "SPARK_LOCAL_DIRS": str(local)},
            )
        _wait_for_workers(webui, 2, procs, logs)
        _phase("master and 2 workers up")
        yield SimpleNamespace(
            base=base,
            env=env,
            spark_home=spark_home,
            master_url=master_url,
            zip_path=zip_path,
            executor_python=py,
            worker_dirs=worker_dirs,
            workers=procs[1:],  # the two Worker JVMs (each its process group's leader)
            logs=logs,
        )
    finally:
        for proc in reversed(procs):  # workers (and their executors) first, then the master
            _stop(proc)
        _phase("cluster stopped")


def _start_job(cluster, name: str, script: str, args: list[str]) -> SimpleNamespace:
    """spark-submit a job to the cluster in the background; its output goes to a log file."""
    cmd = [
        str(cluster.spark_home / "bin" / "spark-submit"),
        "--master", cluster.master_url,
        "--deploy-mode", "client",
        "--py-files", str(cluster.zip_path),
        "--executor-memory", "1g",
        "--executor-cores", "1",
        "--total-executor-cores", "2",
        "--driver-memory", "1g",
        "--conf", "spark.ui.enabled=false",
        "--conf", f"spark.driver.extraJavaOptions={JVM_OPTS}",
        "--conf", f"spark.executor.extraJavaOptions={JVM_OPTS}",
        "--conf", "spark.driver.host=127.0.0.1",
        "--conf", "spark.driver.bindAddress=127.0.0.1",
        "--conf", f"spark.pyspark.python={cluster.executor_python.path}",
        "--conf", f"spark.pyspark.driver.python={sys.executable}",
        "--conf", f"spark.local.dir={cluster.base / name / 'local'}",
        str(ROOT / "jobs" / script),
        *args,
    ]  # fmt: skip
    work = cluster.base / name
    (work / "local").mkdir(parents=True)
    log = work / "spark-submit.log"
    env = {
        **cluster.env,
        "PYSPARK_PYTHON": str(cluster.executor_python.path),
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    return SimpleNamespace(proc=proc, log=log, script=script)


def _finish_job(cluster, job: SimpleNamespace) -> str:
    """Wait for a job of :func:`_start_job`; fails the test with the logs unless exit 0."""
    try:
        rc = job.proc.wait(timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        _stop(job.proc)  # the driver's Python child too, whatever happened
    if rc != 0:
        executor_logs = sorted(p for d in cluster.worker_dirs for p in d.glob("app-*/*/stderr"))
        pytest.fail(
            f"{job.script} on {cluster.master_url} "
            + ("timed out" if rc is None else f"exited with {rc}")
            + f":\n{_tail(job.log, 6000)}\n"
            + "\n".join(f"--- {p}\n{_tail(p, 2000)}" for p in executor_logs[-2:])
        )
    return job.log.read_text(errors="replace")


def _submit(cluster, name: str, script: str, args: list[str]) -> str:
    """spark-submit a job to the cluster and wait; fails the test unless exit 0."""
    return _finish_job(cluster, _start_job(cluster, name, script, args))


def _write_input(
    path: Path, n: int = N_ROWS, files: int = 2, seed: int = 2024, separation: float = 6.0
) -> np.ndarray:
    """``n`` rows of a 3-cluster mixture as ``files`` Parquet files (id, a, b, c)."""
    X, _ = make_mixture(n=n, d=3, k=3, seed=seed, separation=separation)
    path.mkdir()
    bounds = np.linspace(0, n, files + 1).astype(int)
    for part, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        table = pa.table(
            {
                "id": np.arange(lo, hi, dtype=np.int64),
                **{f: X[lo:hi, j] for j, f in enumerate(FEATURES)},
            }
        )
        pq.write_table(table, path / f"part-{part:05d}.parquet")
    return X


def _executor_dirs(cluster) -> dict[str, list[Path]]:
    """app id → executor working directories, over both workers."""
    apps: dict[str, list[Path]] = {}
    for work in cluster.worker_dirs:
        for exec_dir in work.glob("app-*/*"):
            apps.setdefault(exec_dir.parent.name, []).append(exec_dir)
    return apps


def test_fit_and_score_jobs_on_a_standalone_cluster(cluster, spark):
    data = cluster.base / "input"
    X = _write_input(data)
    model_dir = cluster.base / "model_cluster"
    scored_dir = cluster.base / "scored"

    # Same data and settings in local mode, for comparison: the fit job's own estimator and
    # reader on this process's local[2] session, run while the cluster jobs run (it mostly
    # overlaps their JVM start-ups).
    config = FitConfig(
        input=str(data), format="parquet", features=FEATURES, k=3, seed=7, max_iter=100
    )
    estimator, _ = build_fit_pipeline(config)
    with ThreadPoolExecutor(max_workers=1) as pool:
        local_fit = pool.submit(lambda: estimator.fit(read_input(spark, config)))
        fit_log = _submit(
            cluster,
            "fit",
            "fit_gmm.py",
            ["--input", str(data), *FIT_ARGS, "--output", str(model_dir)],
        )
        local = local_fit.result()
    _phase("fit job on the cluster, local fit alongside")
    assert "spark_gmm fit: k=3" in fit_log, fit_log[-3000:]
    assert (model_dir / "metadata").is_dir() and (model_dir / "data").is_dir()
    score_log = _submit(
        cluster,
        "score",
        "score_gmm.py",
        ["--input", str(data), "--model", str(model_dir), "--id-cols", "id"]
        + ["--output", str(scored_dir)],
    )
    _phase("score job")
    assert "scored rows written to" in score_log, score_log[-3000:]

    # The work ran on the cluster's executors, one per worker for each job, and their
    # Python was the wrapper without spark_gmm (the library came from the zip).
    apps = _executor_dirs(cluster)
    assert len(apps) == 2, apps
    for app, dirs in apps.items():
        workers = {d.parents[1] for d in dirs}
        assert workers == set(cluster.worker_dirs), f"{app} ran executors on {workers}"
    daemon_calls = [
        line
        for line in cluster.executor_python.calls.read_text().splitlines()
        if "pyspark.daemon" in line or "pyspark.worker" in line
    ]
    assert len(daemon_calls) >= 2, cluster.executor_python.calls.read_text()

    on_cluster = GaussianMixtureModel.load(str(model_dir))
    assert on_cluster.summary.numRows == local.summary.numRows == N_ROWS
    assert on_cluster.summary.numIter == local.summary.numIter
    errors = {
        name: rel_err(getattr(on_cluster, name), getattr(local, name))
        for name in ("means", "covariances", "weights")
    }
    print(f"[standalone] cluster vs local relative errors: {errors}")
    for name, err in errors.items():
        assert err <= 1e-9, f"{name}: cluster vs local relative error {err:.3g}"

    scored = pd.read_parquet(scored_dir).sort_values("id").reset_index(drop=True)
    assert scored["id"].tolist() == list(range(N_ROWS))
    assert list(scored.columns) == ["id", "prediction", "probability", "log_likelihood"]
    np.testing.assert_array_equal(scored["prediction"].to_numpy(), local.predict(X))
    proba = np.stack(scored["probability"].to_numpy())
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        scored["log_likelihood"].to_numpy(), local.score_samples(X), rtol=1e-9, atol=0
    )


# ---------------------------------------------------------------------------
# A worker lost in the middle of a fit
# ---------------------------------------------------------------------------

LOST_ROWS = 40_000
LOST_ITER = 25
_ITERATION = re.compile(r"EM iteration (\d+)/")
_STORED = re.compile(r"Block (rdd_\d+_\d+) stored")


def _iterations_logged(log: Path) -> list[int]:
    return [int(m) for m in _ITERATION.findall(log.read_text(errors="replace"))]


def _cached_blocks(exec_dir: Path) -> set[str]:
    """RDD blocks an executor stored (its log, INFO level: ``Block rdd_5_2 stored ...``)."""
    return set(_STORED.findall(_tail(exec_dir / "stderr", 10**7)))


def _executor_jvms(worker_pid: int) -> list[int]:
    return [
        pid
        for pid in probes.descendants(worker_pid)
        if "CoarseGrainedExecutorBackend" in probes.cmdline(pid)
    ]


def _python_processes(worker_pid: int) -> list[int]:
    """The pyspark daemon and its task workers under this worker's executor."""
    return [pid for pid in probes.descendants(worker_pid) if "pyspark" in probes.cmdline(pid)]


def test_fit_finishes_with_the_same_model_after_a_worker_dies(cluster, spark):
    """SIGKILL one Worker JVM after EM iteration 3: its executor exits with it (losing its
    cached blocks and any running task), the fit goes on on the other worker, recomputes
    the lost blocks from the input, and ends with the model of an uninterrupted fit."""
    data = cluster.base / "input_lost_worker"
    # Overlapping clusters and tol=0: EM still moves at the last iteration, so a pass that
    # counted a block twice or missed one would change the model and its history.
    _write_input(data, n=LOST_ROWS, files=4, seed=99, separation=1.5)
    model_dir = cluster.base / "model_lost_worker"
    settings = dict(k=3, seed=11, max_iter=LOST_ITER, tol=0.0, n_init=1)
    config = FitConfig(input=str(data), format="parquet", features=FEATURES, **settings)
    estimator, _ = build_fit_pipeline(config)
    args = ["--input", str(data), "--features", ",".join(FEATURES), "--k", "3", "--seed", "11"]
    args += ["--max-iter", str(LOST_ITER), "--tol", "0", "--n-init", "1"]
    args += ["--output", str(model_dir)]

    with ThreadPoolExecutor(max_workers=1) as pool:
        job = _start_job(cluster, "fit_lost_worker", "fit_gmm.py", args)
        # The uninterrupted reference: the same fit in this process's local session.
        reference = pool.submit(lambda: estimator.fit(read_input(spark, config)))
        try:
            assert probes.wait_for(
                lambda: 3 in _iterations_logged(job.log) or job.proc.poll() is not None,
                timeout=JOB_TIMEOUT,
                interval=0.05,
            ), _tail(job.log)
            assert job.proc.poll() is None, f"the job ended before iteration 3:\n{_tail(job.log)}"
            # The victim: the worker whose executor of this job holds cached blocks.
            app = max(_executor_dirs(cluster))  # app ids sort by start time
            held = {d.parents[1]: _cached_blocks(d) for d in _executor_dirs(cluster)[app]}
            victim_index = next(i for i, w in enumerate(cluster.worker_dirs) if held.get(w))
            victim = cluster.workers[victim_index]
            executors = _executor_jvms(victim.pid)
            assert len(executors) == 1, executors
            # Preferably while its executor runs a task (a Python worker computing).
            pythons = _python_processes(victim.pid)
            probes.wait_for(lambda: any(probes.state(p) == "R" for p in pythons), 10.0, 0.001)
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = max(_iterations_logged(job.log))
            # Spark's WorkerWatcher in the executor exits when its worker's connection drops.
            executor_exited = probes.wait_for(lambda: not probes.alive(executors[0]), 30.0)
        except BaseException:
            _stop(job.proc)
            raise
        fit_log = _finish_job(cluster, job)
        local = reference.result()
    _phase("fit job with a worker killed mid-fit, local fit alongside")

    assert executor_exited, f"executor {executors[0]} outlived its worker"
    assert killed_at < LOST_ITER, f"killed after iteration {killed_at}: not mid-fit"
    assert f"EM iteration {LOST_ITER}/{LOST_ITER}" in fit_log
    assert "Lost executor" in fit_log, fit_log[-5000:]
    # The surviving executor rebuilt the cached blocks the dead one held.
    dirs = {d.parents[1]: d for d in _executor_dirs(cluster)[app]}
    lost_dir = cluster.worker_dirs[victim_index]
    survivor = next(d for w, d in dirs.items() if w != lost_dir)
    recomputed = held[lost_dir] & _cached_blocks(survivor)
    print(
        f"[standalone] worker {victim.pid} killed after EM iteration {killed_at}; its executor "
        f"held {sorted(held[lost_dir])}; recomputed on the other worker: {sorted(recomputed)}"
    )
    assert recomputed == held[lost_dir], (held, _cached_blocks(survivor))
    # Whether a task was running on it depends on timing; shown, not asserted.
    print("[standalone] tasks lost with it:", re.findall(r"Lost task [^(]*", fit_log) or "none")

    recovered = GaussianMixtureModel.load(str(model_dir))
    assert recovered.summary.numIter == local.summary.numIter == LOST_ITER
    np.testing.assert_allclose(
        recovered.summary.logLikelihoodHistory,
        local.summary.logLikelihoodHistory,
        rtol=1e-12,
        atol=0,
    )
    errors = {
        name: rel_err(getattr(recovered, name), getattr(local, name))
        for name in ("means", "covariances", "weights")
    }
    print(f"[standalone] recovered vs uninterrupted relative errors: {errors}")
    for name, err in errors.items():
        assert err <= 1e-9, f"{name}: recovered vs uninterrupted relative error {err:.3g}"
