# jobbalancer — `make run` starts everything on SQLite, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8080
WORKERS ?= 2
# pytest processes for `make test` (pytest-xdist); PYTEST_JOBS=0 runs the suite in one.
PYTEST_JOBS ?= 3

.PHONY: install run test lint typecheck unit clean bench

$(BIN)/python:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "python3-venv is missing; installing it with apt-get"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[postgres,mysql,dev]'
	@touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/jobbalancer up --port $(PORT) --workers $(WORKERS)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

test: install lint typecheck
	$(BIN)/python -m pytest -n $(PYTEST_JOBS) --dist loadgroup $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (see bench/__main__.py): BENCH_ARGS="--quick --backend sqlite" for a short run.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)
