# lethe — make help lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.DEFAULT_GOAL := help
.PHONY: help setup demo test ci services lint bench chaos

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[all,test]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP) ## create .venv with lethe, every store's extra and the test dependencies

demo: setup ## run lethe demo: a synthetic estate erased through the real pipeline, no service needed
	$(BIN)/lethe demo

# Two processes, one per core: much of the suite waits on subprocesses, servers and the network. Each has
# Redis databases and a RabbitMQ vhost of its own (tests/fixtures/services.py; `make services` makes the vhosts).
TEST_PROCESSES ?= 2

test: setup ## run the whole test suite (needs Redis, PostgreSQL, RabbitMQ, MariaDB: `make services`)
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist worksteal

services: ## start Redis, PostgreSQL, RabbitMQ and MariaDB if down (installing them and Chromium if absent)
	bash .ci/services.sh

ci: services test ## what CI runs: services, then the whole suite

lint: setup ## ruff and mypy
	$(BIN)/ruff check orchestrator workers tests
	$(BIN)/mypy

chaos: setup ## erasures under fire (worker kills, broker restarts, S3 faults, ledger cuts), then the invariants
	$(BIN)/python -m tests.chaos

bench: setup ## benchmarks, as ratios against baselines measured in the same run (results in bench-out/)
	$(BIN)/python -m tests.bench --out bench-out
