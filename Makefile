# stream-detector — the two commands: `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install services-up services-down services-status demo test test-unit test-integration test-long test-chaos test-failover test-failover-smoke reliability soak lint bench bench-quality clean

help:
	@echo "make demo            install, start Kafka + Redis; raw card events, history and delayed labels: precision with and without labels"
	@echo "make test            install and run the test suite (tests start their own Kafka + Redis); CI runs it"
	@echo "make services-up     start the local Kafka (127.0.0.1:9092) and Redis (127.0.0.1:6379); services-down stops them"
	@echo "make reliability     the chaos + failover tiers' long form (3-broker cluster, Sentinel); writes docs/RELIABILITY.md"
	@echo "make test-long       the long tier make test leaves out (marked long_tier): second clients, timing variants, slow scenarios"
	@echo "make test-chaos      the chaos tier: the storms (~6 min), test_chaos.py's long_tier variants and test_entity_freeze.py (~1.5 min per case: both SD_ENTITY_SOLE_OWNER settings on kafka-python, the mode off on confluent); make test runs each guarantee once"
	@echo "make test-failover   every failover scenario once (~8-10 min); make test-failover-smoke: an alerts-partition leader killed mid-transaction (~2-3 min)"
	@echo "make soak            SOAK_MINUTES (60) at SOAK_RATE (20000) events/s, entity path on → docs/RELIABILITY.md"
	@echo "make lint            ruff + mypy --strict + import-linter layer contracts (docs/architecture.md)"
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

# tests/unit is pure logic and CPU-bound: spread over the cores (pytest-xdist; -n auto: one process a
# core). The services tiers run in one process: their timing waits on Kafka and Redis, not the CPU.
test: install
	deploy/install-browser.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider -n auto tests/unit
	$(BIN)/python -m pytest -q -p no:cacheprovider tests --ignore=tests/unit --ignore=tests/failover

test-unit: install
	$(BIN)/python -m pytest -q -n auto tests/unit

test-integration: install
	deploy/install-browser.sh
	$(BIN)/python -m pytest -q tests/integration

# The long tier: tests marked long_tier (tests/conftest.py), deselected by make test to keep CI within
# its 25 minutes: a guarantee make test checks once, checked again on the other client, delivery mode
# or timing setting (~10 min on 2 cores, ~5 of them tests/chaos/test_entity_freeze.py).
test-long: install
	SD_LONG_TIER=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m long_tier tests --ignore=tests/unit --ignore=tests/failover

test-chaos: install
	SD_CHAOS_STORMS=1 $(BIN)/python -m pytest -q tests/chaos

# Every failover scenario once; test-failover-smoke: one scenario, ~2 min (tests/failover/test_failover.py).
test-failover: install
	SD_FAILOVER_TIER=$${SD_FAILOVER_TIER:-short} $(BIN)/python -m pytest -q tests/failover

test-failover-smoke: install
	SD_FAILOVER_TIER=smoke $(BIN)/python -m pytest -q tests/failover

# The chaos and failover tiers' long form (SD_CHAOS_ROUNDS=3; every storm at least 1M events with 10k
# anomalies; both delivery modes for every failover scenario): their figures become docs/RELIABILITY.md
# (the soak section there is kept).
reliability: install
	SD_CHAOS_STORMS=1 SD_CHAOS_ROUNDS=$${SD_CHAOS_ROUNDS:-3} SD_CHAOS_MIN_EVENTS=$${SD_CHAOS_MIN_EVENTS:-1000000} \
	  SD_CHAOS_MIN_ANOMALIES=$${SD_CHAOS_MIN_ANOMALIES:-10000} SD_FAILOVER_TIER=long SD_RELIABILITY_REPORT=docs/RELIABILITY.md \
	  $(BIN)/python -m pytest -q tests/chaos tests/failover

# An hour at 20k events/s offered by default; SOAK_MINUTES=5 SOAK_RATE=2000 for a short check.
SOAK_MINUTES ?= 60
SOAK_RATE ?= 20000
soak: install
	$(BIN)/python -m tests.soak --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE) --report docs/RELIABILITY.md \
	  --note "$${SOAK_NOTE:-}"

lint: install
	$(BIN)/ruff check stream_detector tests benchmarks
	$(BIN)/mypy stream_detector benchmarks
	$(BIN)/lint-imports

bench: install
	$(BIN)/python -m benchmarks throughput

bench-quality: install
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python -m benchmarks quality

clean:
	rm -rf demo-out .pytest_cache .mypy_cache .ruff_cache
