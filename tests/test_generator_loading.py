"""jaxgan.generator_loading: each way of asking for a generator that cannot be met is one clear error."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import generator_checkpoint, generator_loading
from jaxgan.generator_loading import GeneratorLoadError, load_generator, load_generator_from_run

CFG = {"ngf": 4, "n_blocks": 1}


def _params(seed: int = 0) -> dict:
    generator = generator_loading.make_generator(CFG)
    return generator.init(jax.random.PRNGKey(seed), jnp.zeros((1, 16, 16, 3)))["params"]


def _fake_run(path: pathlib.Path, steps: tuple[int, ...] = ()) -> pathlib.Path:
    """A run folder: ``config.json`` and ``checkpoints/<step>/default/`` holding no readable checkpoint."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model": CFG, "ema_decay": 0.999}))
    for s in steps:
        (path / "checkpoints" / str(s) / "default").mkdir(parents=True)
        (path / "checkpoints" / str(s) / "default" / "garbage").write_text("not orbax")
    return path


def test_make_generator_reads_the_saved_model_fields():
    g = generator_loading.make_generator({"ngf": 8, "n_blocks": 2, "dtype": "bfloat16", "conv_impl": "native"})
    assert (g.ngf, g.n_blocks, g.dtype, g.conv_impl) == (8, 2, jnp.bfloat16, "native")
    d = generator_loading.make_generator({})  # the paper's generator where a field is missing
    assert (d.ngf, d.n_blocks, d.norm_affine, d.conv_impl) == (64, 9, False, "auto")


def test_a_generator_checkpoint_loads_its_direction_and_names_the_one_it_lacks(tmp_path):
    params = _params()
    path = generator_checkpoint.save_generator_checkpoint(params, "BtoA", CFG, tmp_path / "ckpt")
    generator, got = load_generator("BtoA", checkpoint_dir=path)
    assert (generator.ngf, generator.n_blocks) == (4, 1)
    jax.tree.map(np.testing.assert_array_equal, got, jax.tree.map(np.asarray, params))
    with pytest.raises(GeneratorLoadError, match=r"holds a generator for \['BtoA'\], not AtoB"):
        load_generator("AtoB", checkpoint_dir=path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"direction": "AtoC", "checkpoint_dir": "x"}, "--direction must be one of"),
        ({"direction": "AtoB"}, "exactly one of --workdir"),
        ({"direction": "AtoB", "workdir": "a", "checkpoint_dir": "b"}, "exactly one of --workdir"),
        ({"direction": "AtoB", "checkpoint_dir": "{tmp}/missing"}, "does not exist"),
        ({"direction": "AtoB", "checkpoint_dir": "{tmp}/empty"}, "Cannot read a generator checkpoint"),
        ({"direction": "AtoB", "checkpoint_dir": "{tmp}/run"}, "is a training run: give it as --workdir"),
        ({"direction": "AtoB", "workdir": "{tmp}/empty"}, "No training run in"),
        ({"direction": "AtoB", "workdir": "{tmp}/run"}, r"No checkpoint in .*checkpoints"),
    ],
)
def test_what_cannot_be_loaded_says_why(tmp_path, kwargs, message):
    (tmp_path / "empty").mkdir()
    _fake_run(tmp_path / "run")
    kwargs = {k: v.format(tmp=tmp_path) for k, v in kwargs.items()}
    with pytest.raises(GeneratorLoadError, match=message):
        load_generator(**kwargs)


def test_a_run_without_a_readable_checkpoint_lists_each_failure(tmp_path):
    run = _fake_run(tmp_path / "run", steps=(100, 200))
    with pytest.raises(GeneratorLoadError, match="No readable checkpoint") as e:
        load_generator_from_run(run, "AtoB")
    # Newest first, EMA before the raw weights: four attempts, each named.
    tried = [line.split(":")[0].strip() for line in str(e.value).splitlines()[1:]]
    assert tried == ["step 200 ema", "step 200 params", "step 100 ema", "step 100 params"]
    with pytest.raises(GeneratorLoadError, match="No checkpoint for step 150"):
        load_generator_from_run(run, "AtoB", step=150)
    with pytest.raises(GeneratorLoadError, match="--weights must be one of ema, raw"):
        load_generator_from_run(run, "AtoB", weights="best")
