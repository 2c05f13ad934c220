"""Shared test fixtures: tiny configs so that every test runs in seconds on 2 CPU cores."""

from __future__ import annotations

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.configs import horse2zebra  # noqa: E402


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


@pytest.fixture
def h2z_mini() -> pathlib.Path:
    """The shared horse2zebra-mini folder; skips the test when it is absent."""
    path = SHARED / "datasets" / "horse2zebra-mini"
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path
