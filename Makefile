# Quick start: `make demo` sets up .venv and runs the default compression search on CPU (rerun it:
# it shows the finished run; `make demo ARGS="--threads 1"` passes flags to the search);
# `make test` sets up .venv and runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup demo test lint clean distclean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,ray]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) train_agent.py --algo reinforce --out runs/demo --resume $(ARGS)

# Two test processes (one core each), a test file's tests in one of them, so that a file's
# shared fixtures (a benchmark's runs, a trained student) are built once; the longest files first
# (tests/conftest.py orders them); `-p no:xdist` runs everything in one process.
test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# What runs made; `make distclean` also removes the virtual environment.
clean:
	rm -rf .pytest_cache runs

distclean: clean
	rm -rf $(VENV)
