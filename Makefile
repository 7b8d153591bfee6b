# Two entry points for a fresh machine: `make demo` and `make test` (CI runs .ci/run -> make test).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit system-deps serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

## Run the bridge on embedded defaults (embedded recognizer + embedded Redis) and replay a fixture call.
demo: $(STAMP)
	$(BIN)/bridge demo

serve: $(STAMP)
	$(BIN)/bridge serve

system-deps:
	bash deploy/system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check bridge tests fixtures

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q -ra

## The whole test suite: lint, types, unit + integration + end-to-end + browser tests.
test: system-deps $(STAMP) lint typecheck unit

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
