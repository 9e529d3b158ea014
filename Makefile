# dynpt: every target does its own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN_DIR  ?= runs/demo
DATA_DIR ?= data/toy
PYTEST_ARGS ?=

.PHONY: setup test lint demo bench clean

$(STAMP): requirements.txt requirements-test.txt setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check dynpt tasks tools tests bench
	$(VENV)/bin/lint-imports

test: $(STAMP) lint
	$(PY) -m pytest -q -n 2 --durations=15 tests $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) tools/demo.py --run_dir=$(RUN_DIR) --data_dir=$(DATA_DIR)

bench: $(STAMP)
	$(PY) -m pip install -q -r requirements-bench.txt
	$(PY) bench/run_all.py

clean:
	rm -rf runs build *.egg-info .pytest_cache
