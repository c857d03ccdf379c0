# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv (if missing), install the project into it, and check Java first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test lint bench bench-quick check-java venv clean

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

lint: $(STAMP)
	$(PY) -m ruff check spark_gmm jobs tests benchmarks
	$(PY) -m mypy

bench: check-java $(STAMP)
	$(PY) benchmarks/bench_iteration.py

bench-quick: check-java $(STAMP)
	$(PY) benchmarks/bench_iteration.py --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache out
