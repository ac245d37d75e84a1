# Two commands set everything up on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
SCENARIO ?=

.PHONY: run test test-fast lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/gateway dev

# every tier: tests/unit (no database), tests/db (one PostgreSQL), tests/cluster (processes)
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# unit + db: no gateway processes, PgBouncer or browser (the tiers a change runs first)
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit tests/db $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench alembic
	$(BIN)/ruff format --check gateway tests bench alembic

format: $(STAMP)
	$(BIN)/ruff format gateway tests bench alembic
	$(BIN)/ruff check --fix gateway tests bench alembic

# Benchmarks (docs/performance.md). `make bench` runs every scenario at full size (or
# SCENARIO=name), merges the figures into bench/results/latest.json and renders the doc;
# `make bench-smoke` runs every scenario at its least size, as CI does (no figures kept).
.PHONY: bench-smoke bench-render
bench: $(STAMP)
	$(BIN)/python -m bench $(if $(SCENARIO),--scenario $(SCENARIO),)

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --smoke

bench-render: $(STAMP)
	$(BIN)/python -m bench.render

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
