# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv (if missing), install the project into it, and check Java first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test lint bench bench-quick bench-scale dist check-java venv clean

check-java:
	@bash scripts/check_java.sh

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "error: Python 3.10+ is needed; set PYTHON=python3.11 (or newer) and re-run.")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,plot]'
	@touch $(STAMP)

venv: $(STAMP)

demo: check-java $(STAMP)
	$(PY) jobs/fit_gmm.py --config conf/demo.toml
	$(PY) jobs/score_gmm.py --config conf/demo-score.toml
	$(PY) scripts/demo_summary.py out/demo/scored out/demo/report

test: check-java $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The library and model tests against PySpark 3.5 (the most deployed line on managed
# clusters), in a separate virtualenv.
VENV35 ?= .venv-spark35
test-spark35: check-java
	@test -x $(VENV35)/bin/python || $(PYTHON) -m venv $(VENV35)
	$(VENV35)/bin/python -m pip install --quiet "pyspark==3.5.7" "numpy<2.3" "pandas>=2,<3" pyarrow \
		scikit-learn pytest threadpoolctl matplotlib
	$(VENV35)/bin/python -m pip install --quiet --no-deps -e .
	$(VENV35)/bin/python -m pytest tests/test_gaussian.py tests/test_em.py tests/test_spark_fit.py \
		tests/test_spark_errors.py tests/test_model.py tests/test_session.py tests/test_jobs.py \
		tests/test_selection.py tests/test_checkpoint.py tests/test_incremental.py \
		tests/test_incremental_spark.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check spark_gmm jobs tests benchmarks
	$(PY) -m mypy

# The performance table (benchmarks/results/suite.md, medians of 5 interleaved rounds,
# about an hour); bench-quick: smaller sizes, one round, a few minutes (suite_quick.*).
bench: check-java $(STAMP)
	$(PY) benchmarks/bench_suite.py

bench-quick: check-java $(STAMP)
	$(PY) benchmarks/bench_suite.py --quick

# Inputs larger than executor memory, 1M..16M rows at 2g and 8g, MLlib beside
# (benchmarks/results/scale.md), then the constants of docs/scaling.md. SCALE_ARGS: the
# committed run's plan (about 75 minutes here); SCALE_ARGS= runs every size (2.5 hours).
SCALE_ARGS ?= --sizes 1M,4M,16M --mllib-sizes 1M,4M --none-size 1M --skip-8g-float32
bench-scale: check-java $(STAMP)
	$(PY) benchmarks/bench_scale.py $(SCALE_ARGS)
	$(PY) benchmarks/scale_model.py

# dist/spark_gmm-<version>-py3-none-any.whl (pip install on a cluster's Python) and
# dist/spark_gmm.zip (spark-submit --py-files). Rebuilt from scratch every time.
dist: $(STAMP)
	rm -f dist/spark_gmm-*.whl dist/spark_gmm.zip
	$(PY) -m pip wheel . --no-deps --quiet -w dist
	$(PY) scripts/build_pyfiles_zip.py dist/spark_gmm.zip

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache out
