"""Shared fixtures: one local[2] SparkSession for the whole run, deterministic data."""

from __future__ import annotations

import logging
import os

import pytest
from helpers import make_mixture


def pytest_collection_modifyitems(session, config, items):
    """Run tests/test_docs.py last, and start its documented commands now, so that they
    overlap the rest of the suite (see test_docs.DocsRun)."""
    docs = [item for item in items if item.module.__name__ == "test_docs"]
    if not docs:
        return
    items[:] = [item for item in items if item not in docs] + docs
    if config.option.collectonly:
        return
    if any(item.name == "test_every_documented_command_runs_as_written" for item in docs):
        from test_docs import DocsRun

        config._spark_gmm_docs_run = DocsRun()
        config._spark_gmm_docs_run.start()


@pytest.fixture(scope="session")
def spark():
    """A bare ``local[2]`` session, as a user would build it.

    PYSPARK_PYTHON is deliberately *not* set: spark_gmm must make local workers use
    this interpreter by itself (tests/test_session.py checks that it does).
    """
    os.environ.pop("PYSPARK_PYTHON", None)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("spark_gmm-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def mixture_data():
    return make_mixture()


@pytest.fixture(autouse=True)
def _restore_spark_gmm_logger():
    """In-process ``cli.main`` calls attach a stderr handler; keep it from leaking."""
    logger = logging.getLogger("spark_gmm")
    state = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = state[0]
    logger.setLevel(state[1])  # clears the loggers' level caches too
    logger.propagate = state[2]


@pytest.fixture(params=[True, False], ids=["arrow_udf", "pandas_udf"])
def udf_path(request, monkeypatch):
    """Each scoring UDF path in turn: the Arrow UDF (Spark >= 4.1), then the pandas UDF
    that Spark 3.5 and 4.0 use (``transform`` picks by ``scoring.has_arrow_udf``)."""
    from spark_gmm import scoring

    if request.param and not scoring.has_arrow_udf():
        pytest.skip("this PySpark has no arrow_udf")
    monkeypatch.setattr(scoring, "has_arrow_udf", lambda: request.param)
    return request.param
