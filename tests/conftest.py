"""Shared test fixtures: tiny configs so that every test runs in seconds on 2 CPU cores.

Compilation dominates the suite's time on 2 cores (the tiny train step compiles in ~13 s), and many tests
compile the same program, often in subprocesses (the runner, the parallel workers, the device suite's dry
run). This module therefore points JAX's persistent compilation cache at one fresh folder per test session,
through the environment, so that subprocesses share it; an entry is written once (the eviction size enables
JAX's file lock, so concurrent processes never read a half-written entry) and removed when the session ends.
Nothing is reused between sessions: every program still compiles at least once per run. A cache that the
caller set (``JAX_COMPILATION_CACHE_DIR``) is left as it is.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import pytest

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # before anything imports jax
    _cache = tempfile.mkdtemp(prefix="jaxgan-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

# XLA:CPU compiles the tests' programs at LLVM optimisation level 0 (XLA's default is 3), set through the
# environment so that the subprocesses compile at it too: the tiny train step compiles in 8.9 s instead of 14.4
# and steps in 24 ms instead of 13-16; the suite took 15:53 instead of 19:17 (level 1: 17:55) in the work tree
# (2 cores, 2026-12-02, one run each; in CI's clean clone the difference is within the run-to-run spread).
# Every test compares programs compiled at the same level (values at level 0 differ from level 3's in the last
# bits; tests/test_train.py compares init_train_state with XLA's default explicitly). JAXGAN_TEST_XLA_OPT=default
# runs the suite at XLA's default instead.
_level = os.environ.get("JAXGAN_TEST_XLA_OPT", "0")
if _level not in ("default", "0", "1", "2", "3"):
    raise pytest.UsageError(f"JAXGAN_TEST_XLA_OPT={_level!r}: use 'default' or an XLA:CPU optimisation level 0-3")
if _level != "default":
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level={_level}".strip()

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_devices_env, free_port, local_job  # noqa: E402, F401 (the tests' import)
from experiments.configs import horse2zebra  # noqa: E402


def training_processes(workdirs, *flags, **kwargs):
    """:func:`benchmarks.common.local_job` in the native conv forms: a multi-process job for the fault tests.

    Their subject is the job (peers that fail, freeze, stall or disagree), not the convolutions' arithmetic,
    which tests/test_conv_forms.py checks and tests/test_parallel.py runs across processes in the default forms.
    The native forms compile the tiny train step in about half the time (1.4 + 5.3 s to lower and compile
    against 3.0 + 9.3 at XLA level 0, one core), which every process but process 0 pays in every job: JAX keys
    its persistent cache entries on CPU by process (the topology's fingerprint), and only process 0 writes them.
    A warm 2-process job of 20 steps took 33 s instead of 41 (2026-12-03, idle machine).
    """
    return local_job(workdirs, "--config.model.conv_impl=native", *flags, **kwargs)


def tiny_config(**overrides):
    """The ``:tiny`` config (a CycleGAN that steps in well under a second on CPU) with a constant learning rate."""
    config = horse2zebra.get_config("tiny")
    config.steps_per_epoch = 100
    config.num_epochs = 2
    for key, value in overrides.items():
        target = config
        *path, leaf = key.split(".")
        for p in path:
            target = target[p]
        target[leaf] = value
    return config


def cosine_and_ratio(xs: list, ys: list) -> tuple[float, float]:
    """(cosine, norm ratio |x| / |y|) of two gradients given as lists of arrays, in float64.

    How tests compare gradients of two correct float32 programs: not elementwise, because a ReLU input
    within rounding of 0 may take either sign in each, and its gradient then differs by its full value and
    spreads to every earlier layer (tests/test_parallel.py measured one such flip: 1.8 % of the largest
    element, cosine 0.99995). A wrong loss weight, a lost term or a scaled sum moves the cosine or the ratio.
    """
    x, y = (np.concatenate([np.asarray(a, np.float64).ravel() for a in v]) for v in (xs, ys))
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    return float(x @ y / (nx * ny)), float(nx / ny)


@pytest.fixture
def h2z_mini() -> pathlib.Path:
    """The shared horse2zebra-mini folder; skips the test when it is absent."""
    path = SHARED / "datasets" / "horse2zebra-mini"
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


# Seconds each of the longest files took (2026-12-03, 2 cores, two xdist workers, level 0, nothing else running,
# `pytest --durations=0` summed per file; the whole suite 23:05, the tests' own times 2,732 s, so the workers were
# idle 1.4 % of the time). `make test` runs whole files on each worker (`--dist loadfile`) in collection order,
# and a worker takes its next file when it has two tests left. Longest first, so that the last files handed out
# are short ones and both workers end together: in alphabetical order test_train.py (2.4 min) came last and one
# worker ran it alone for the last 2.2 minutes (2026-12-02). Files not listed follow, in alphabetical order (each
# under 40 s).
LONG_FILES = {
    "test_peers.py": 586,
    "test_parallel.py": 437,
    "test_train.py": 323,
    "test_device_suite.py": 306,
    "test_runner.py": 294,
    "test_conv_forms.py": 203,
    "test_stall.py": 133,
    "test_export.py": 86,
    "test_benchmarks.py": 47,
    "test_app.py": 46,
    "test_cpu_memory.py": 41,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long files first, longest first (a stable sort: each file's own order is kept)."""
    items.sort(key=lambda item: -LONG_FILES.get(item.path.name, 0))
