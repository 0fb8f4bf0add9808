# The two front-door commands: `make run` and `make test`. Both set up everything they need.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OPENBLAS_NUM_THREADS := 1

.PHONY: run test test-fast install dynamodb-local-fetch lint clean airflow airflow-down

$(STAMP): pyproject.toml constraints.txt
	@echo "==> creating $(VENV) with pinned dependencies (constraints.txt)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

dynamodb-local-fetch: install
	$(BIN)/recsys dynamodb-local fetch

## run: the main job on the embedded defaults (DynamoDB Local, demo store, one nightly run, lookups)
run: install
	$(BIN)/recsys demo

## test: the whole test suite (starts its own DynamoDB Local; PostgreSQL and Redis too when none answers)
test: dynamodb-local-fetch
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## test-fast: pure, SQL and single-stage tests (no whole-DAG run, no Airflow stack): under 3 minutes
test-fast: dynamodb-local-fetch
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

## lint: ruff on everything, mypy (strict) on the package
lint: install
	$(BIN)/ruff check recsys dags plugins tests bench scripts
	$(BIN)/mypy

## airflow: a real Airflow 3 in the background (PostgreSQL metadata; RECSYS_AIRFLOW_EXECUTOR=CeleryExecutor for Redis workers)
airflow: dynamodb-local-fetch
	$(BIN)/recsys dynamodb-local start
	$(BIN)/recsys airflow up

airflow-down:
	-$(BIN)/recsys airflow down

clean: airflow-down
	-$(BIN)/recsys dynamodb-local stop
	rm -rf var
