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

# The TypeScript client (clients/js/README.md): `make client` installs its lockfile and
# builds dist/; `make client-test` also runs its Node tests against real gateway processes
# (tests/support/js_launcher.py). Without node or npm both say so and do nothing.
.PHONY: client client-test
NODE_OK = command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1

client:
	@if $(NODE_OK); then cd clients/js && npm ci --no-audit --no-fund && npm run build; \
	else echo "skipped: node or npm is missing, the TypeScript client (clients/js) is not built"; fi

client-test: $(STAMP) client
	@if $(NODE_OK); then cd clients/js && npm test; \
	else echo "skipped: node or npm is missing, the TypeScript client's tests do not run"; fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache clients/js/node_modules clients/js/dist
