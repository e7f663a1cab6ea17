# metricsflow — the command contract (docs: README.md, "Two commands"):
#   make test    install everything needed (.venv, Kafka jars, InfluxDB), lint, typecheck, pytest
#   make run     start Kafka, InfluxDB (and the gateway/worker once registered) in the foreground
#   make bench   run every bench/bench_*.py (each prints a table, writes bench/results/*.json)
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.metricsflow-deps
PYTEST_ARGS ?=

.PHONY: help deps infra-install test test-long lint format typecheck pytest coverage run bench clean distclean

help:
	@echo "make test       install deps + Kafka + InfluxDB, then lint, typecheck, pytest"
	@echo "make test-long  opt-in long tests (marker 'long', ~3.5 min): 1m tier vs Prometheus increase()"
	@echo "make run        Kafka + InfluxDB (+ app components) in the foreground; Ctrl-C stops"
	@echo "make lint       ruff check + ruff format --check + import contracts (lint-imports)"
	@echo "make typecheck  mypy (strict, config in pyproject.toml)"
	@echo "make coverage   line coverage of the checkpoint coordinator and restart strategies (unit tests)"
	@echo "make bench      every bench/bench_*.py"
	@echo "make clean      stop local servers, remove .run/ and caches (keeps .venv)"

# --- Python environment: .venv with uv; reinstalled when pyproject.toml changes -------------
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv

# The compiled line-protocol fast path (native/lp, Rust + PyO3, built by maturin with cargo
# from crates.io; docs/libraries.md): rebuilt when its sources change.
NATIVE := native/lp
NATIVE_SRC := $(NATIVE)/Cargo.toml $(NATIVE)/pyproject.toml $(NATIVE)/metricsflow_lp.pyi \
	$(wildcard $(NATIVE)/src/*.rs)

$(STAMP): pyproject.toml $(NATIVE_SRC) | $(BIN)/uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev,bench]'
	$(BIN)/uv pip install --quiet --python $(BIN)/python --reinstall-package metricsflow-lp \
		./$(NATIVE)
	touch $@

deps: $(STAMP)

# --- Local servers: Kafka jars (Maven, cached in ~/.cache/metricsflow), InfluxDB (apt) -------
infra-install: $(STAMP)
	$(BIN)/metricsflow infra install

# --- Checks -------------------------------------------------------------------------------
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) infra-install
	$(BIN)/pytest $(PYTEST_ARGS)

# Unit tests alone (no servers): the coordinator and the restart strategies must stay >= 90%.
COVERAGE_TESTS := tests/checkpointing/test_coordinator.py \
	tests/checkpointing/test_coordinator_completion.py \
	tests/checkpointing/test_coordinator_model.py tests/runtime/test_restart.py
coverage: $(STAMP)
	$(BIN)/pytest $(COVERAGE_TESTS) -q -p no:cacheprovider \
		--cov=metricsflow.checkpointing.coordinator --cov=metricsflow.runtime.restart \
		--cov-report=term-missing --cov-fail-under=90

test: $(STAMP) infra-install
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

# Opt-in long tests (pytest marker `long`, deselected by default in pyproject's addopts):
# tests/truth/test_prometheus_1m.py, a real Prometheus against the 1m tier (~3.5 minutes).
test-long: $(STAMP) infra-install
	$(BIN)/pytest -m long $(PYTEST_ARGS)

# --- Running ------------------------------------------------------------------------------
# Components are listed in metricsflow/infra/stack.py (RUN_COMPONENTS). Ports: README.md.
run: $(STAMP) infra-install
	$(BIN)/metricsflow infra run

bench: $(STAMP) infra-install
	@mkdir -p bench/results
	@shopt -s nullglob; scripts=(bench/bench_*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "no bench/bench_*.py yet"; exit 0; fi; \
	for script in "$${scripts[@]}"; do \
		echo "=== $$script"; $(BIN)/python "$$script" || exit $$?; \
	done

# --- Cleaning -----------------------------------------------------------------------------
clean:
	@if [ -x $(BIN)/metricsflow ]; then $(BIN)/metricsflow infra down || true; fi
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV) *.egg-info
