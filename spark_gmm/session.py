"""SparkSession helpers: the right Python for local workers, and a session for jobs/tests."""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["build_session", "connect_url", "ensure_local_python_workers"]


def _is_local(master: str | None) -> bool:
    return bool(master) and str(master).startswith("local")


def ensure_local_python_workers(spark: Any) -> None:
    """Make local-mode Python workers run this interpreter.

    Without ``PYSPARK_PYTHON`` a local session starts its workers with whatever
    ``python3`` is first on ``PATH`` — often the system Python, which lacks numpy/pyarrow
    when the driver runs from a virtualenv. In local mode the workers live on this
    machine, so the driver's own interpreter is the right one. Cluster sessions, and any
    session where the user chose a Python, are left alone.
    """
    from spark_gmm.engine import is_connect

    # Over Spark Connect the server starts the workers with its own $PYSPARK_PYTHON (the
    # Connect planner does not read spark.pyspark.python); nothing to do from the client.
    if is_connect(spark) or os.environ.get("PYSPARK_PYTHON"):
        return
    sc = spark.sparkContext
    if not _is_local(sc.master) or sc.getConf().get("spark.pyspark.python"):
        return
    # SparkContext reads PYSPARK_PYTHON once at start-up into ``pythonExec`` and ships
    # it with every Python function it serialises from then on.
    sc.pythonExec = sys.executable


def connect_url(remote: str | None, master: str | None) -> str | None:
    """The Spark Connect server to use: ``remote``, else ``$SPARK_REMOTE`` unless a master
    was given; None for a classic session."""
    if remote and master:
        raise ValueError(f"give a master ({master}) or a Connect server ({remote}), not both.")
    if remote:
        return remote
    env = os.environ.get("SPARK_REMOTE")
    if env and master:
        raise ValueError(
            f"SPARK_REMOTE={env} is set and a master ({master}) is configured: unset "
            "SPARK_REMOTE, or remove the master (or pass --remote to use the server)."
        )
    return env or None


def build_session(
    app_name: str = "spark_gmm",
    master: str | None = None,
    conf: dict[str, str] | None = None,
    remote: str | None = None,
) -> Any:
    """Get or create a SparkSession set up for spark_gmm.

    Parameters
    ----------
    app_name : str
    master : str, optional
        E.g. ``"local[*]"``. None leaves it to spark-submit (or ``local[*]`` when run
        outside spark-submit).
    conf : dict, optional
        Extra Spark settings.
    remote : str, optional
        A Spark Connect server, ``sc://host:port``; by default ``$SPARK_REMOTE`` when no
        master is given. The session then has no JVM in this process.
    """
    from pyspark.sql import SparkSession

    url = connect_url(remote, master)
    if url:
        # The server's application already runs; only session settings can be set here.
        builder = SparkSession.builder.remote(url)
        for key, value in (conf or {}).items():
            builder = builder.config(key, value)
        return builder.getOrCreate()
    builder = SparkSession.builder.appName(app_name)
    # Under spark-submit the JVM already runs with the submitted --master (and the driver
    # finds it through PYSPARK_GATEWAY_PORT): never override it. A plain ``python`` run
    # gets a local session.
    under_submit = bool(os.environ.get("PYSPARK_GATEWAY_PORT"))
    if master is None and not under_submit:
        master = "local[*]"
    if master is not None:
        builder = builder.master(master)
    if _is_local(master) and not os.environ.get("PYSPARK_PYTHON"):
        os.environ["PYSPARK_PYTHON"] = sys.executable
    builder = builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
    # Jobs log one line per EM iteration themselves; Spark's progress bars would garble it.
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    ensure_local_python_workers(spark)
    return spark
