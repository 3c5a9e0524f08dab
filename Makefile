# Two commands for a newcomer:  `make run` (set up and run the gateway on config.example.yaml)
#                               `make test` (set up everything the tests need, then run them)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test services lint bench docs clean

$(BIN)/gateway: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

run: $(BIN)/gateway
	$(BIN)/gateway run -c config.example.yaml

services:
	bash scripts/test-services.sh

test: $(BIN)/gateway services
	$(BIN)/python -m pytest

lint: $(BIN)/gateway
	$(BIN)/ruff check .

bench: $(BIN)/gateway
	$(BIN)/python -m bench

docs: $(BIN)/gateway
	$(BIN)/gateway schema
	$(BIN)/gateway connectors --markdown > docs/connectors.md

clean:
	rm -rf $(VENV) var .pytest_cache
