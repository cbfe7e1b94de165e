# ipsynergy front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-stamp
JARS_STAMP := .cache/ivy/.fetched
ARGS ?=

.DEFAULT_GOAL := help
MLFLOW_PORT ?= 5000
ENV_ARCHIVE := dist/ipsynergy-env.tar.gz
BENCH_SCALE ?= small
.PHONY: help setup lint run test test-slow train-sweep mlflow-ui package cluster-up cluster-down bench clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(SETUP_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

$(JARS_STAMP): $(SETUP_STAMP)
	$(PY) -m core.session --fetch-jars
	@touch $@

setup: $(SETUP_STAMP) $(JARS_STAMP) ## create .venv, install packages, cache the Delta jars (once)

lint: setup ## check that imports point down the layers (jobs -> evaluation -> ml -> transforms -> core) and are tidy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check jobs evaluation ml transforms core tests bench

run: setup ## run the whole pipeline on generated data into lake/, then its recovery of the planted truth (ARGS="--set key=value ...")
	$(PY) -m jobs.pipeline $(ARGS)
	$(PY) -m jobs.evaluate $(ARGS)

test: setup ## run the test suite (unit + integration; not the slow fault and cluster tests)
	$(PY) -m pytest -m "not slow and not cluster" --durations=12 $(ARGS)

test-slow: package ## run the slow tests: fault injection, and spark-submit to a standalone cluster
	$(PY) -m pytest -m "slow or cluster" --durations=12 $(ARGS)

train-sweep: setup ## train one revenue-model run per train.sweep entry on lake/ (after make run)
	$(PY) -m jobs.train --sweep $(ARGS)

mlflow-ui: setup ## open the MLflow UI on the runs of the configured lake at http://127.0.0.1:$(MLFLOW_PORT) (ARGS="--set lake.root=...")
	$(PY) -m jobs.mlflow_ui --port $(MLFLOW_PORT) $(ARGS)

$(ENV_ARCHIVE): $(SETUP_STAMP)
	$(PY) -m jobs.deploy package --with-env

package: setup $(ENV_ARCHIVE) ## build dist/ for spark-submit: code zip, entry point, Delta jars, packed env
	$(PY) -m jobs.deploy package

cluster-up: setup ## start a Spark standalone cluster (master + 2 workers) and an MLflow server on 127.0.0.1
	$(PY) -m jobs.deploy cluster-up $(ARGS)

cluster-down: ## stop the cluster and MLflow server of make cluster-up
	$(PY) -m jobs.deploy cluster-down

bench: setup ## benchmarks vs DuckDB / scikit-learn / in-process torch (BENCH_SCALE=small|1e7|1e8) -> bench/results/
	$(PY) -m bench.run --scale $(BENCH_SCALE) $(ARGS)

clean: ## remove the lake, caches of test runs and build output (keeps .venv and jars)
	rm -rf lake lake-cluster spark-warehouse .pytest_cache dist build *.egg-info .cache/cluster
