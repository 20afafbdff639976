# stream-detector — the two commands: `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install services-up services-down services-status demo test test-unit test-integration test-chaos reliability lint bench bench-quality clean

help:
	@echo "make demo            install, start Kafka + Redis, train, publish, run a worker on simulated fraud, summary"
	@echo "make test            install and run the whole test suite (tests start their own Kafka + Redis)"
	@echo "make services-up     start the local Kafka (127.0.0.1:9092) and Redis (127.0.0.1:6379); services-down stops them"
	@echo "make reliability     the chaos suite's long form; writes docs/RELIABILITY.md"
	@echo "make lint            ruff + mypy --strict"
	@echo "make bench           throughput/latency benchmarks against a real broker → benchmarks/RESULTS.md"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,console-test]'
	@touch $(STAMP)

install: $(STAMP)

services-up:
	deploy/services.sh up

services-down:
	deploy/services.sh down

services-status:
	deploy/services.sh status

demo: install
	deploy/demo.sh

test: install
	deploy/install-browser.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

test-integration: install
	deploy/install-browser.sh
	$(BIN)/python -m pytest -q tests/integration

test-chaos: install
	$(BIN)/python -m pytest -q tests/chaos

# The chaos suite's long form (SD_CHAOS_ROUNDS=3): its figures become docs/RELIABILITY.md.
reliability: install
	SD_CHAOS_ROUNDS=$${SD_CHAOS_ROUNDS:-3} SD_RELIABILITY_REPORT=docs/RELIABILITY.md $(BIN)/python -m pytest -q tests/chaos

lint: install
	$(BIN)/ruff check stream_detector tests benchmarks
	$(BIN)/mypy stream_detector benchmarks

bench: install
	$(BIN)/python -m benchmarks throughput

bench-quality: install
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python -m benchmarks quality

clean:
	rm -rf demo-out .pytest_cache .mypy_cache .ruff_cache
