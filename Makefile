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
.PHONY: help setup run test train-sweep mlflow-ui clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(SETUP_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

$(JARS_STAMP): $(SETUP_STAMP)
	$(PY) -m jobs.session --fetch-jars
	@touch $@

setup: $(SETUP_STAMP) $(JARS_STAMP) ## create .venv, install packages, cache the Delta jars (once)

run: setup ## run the whole pipeline on generated data into lake/ (ARGS="--set key=value ...")
	$(PY) -m jobs.pipeline $(ARGS)

test: setup ## run the test suite (unit + integration)
	$(PY) -m pytest $(ARGS)

train-sweep: setup ## train one revenue-model run per train.sweep entry on lake/ (after make run)
	$(PY) -m jobs.train --sweep $(ARGS)

mlflow-ui: setup ## open the MLflow UI on the lake's runs at http://127.0.0.1:$(MLFLOW_PORT)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/lake/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

clean: ## remove the lake, caches of test runs and build output (keeps .venv and jars)
	rm -rf lake spark-warehouse .pytest_cache dist build *.egg-info
