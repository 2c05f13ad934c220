"""jaxgan.generator_loading: each way of asking for a generator that cannot be met is one clear error."""

from __future__ import annotations

import json
import pathlib
import shutil

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
    generator, got, model_cfg, source = generator_loading.load("BtoA", checkpoint_dir=path)
    assert (generator.ngf, generator.n_blocks) == (4, 1)
    assert model_cfg == {**generator_checkpoint.DEFAULT_MODEL_CONFIG, **CFG} and source.endswith(str(path))
    jax.tree.map(np.testing.assert_array_equal, got, jax.tree.map(np.asarray, params))
    assert load_generator("BtoA", checkpoint_dir=path)[0] == generator
    with pytest.raises(GeneratorLoadError, match=r"holds a generator for \['BtoA'\], not AtoB"):
        load_generator("AtoB", checkpoint_dir=path)
    with pytest.raises(GeneratorLoadError, match="is a generator checkpoint, not a training run: give it as --checkp"):
        load_generator("BtoA", workdir=path)


def test_one_direction_of_a_two_generator_checkpoint_reads_that_generator_alone(tmp_path):
    both = {"AtoB": _params(0), "BtoA": _params(1)}
    path = generator_checkpoint.save_generators_checkpoint(both, CFG, tmp_path / "ckpt")
    assert generator_checkpoint.stored_generators(path) == ["g_ab", "g_ba"]
    one, _ = generator_checkpoint.load_generator_checkpoint(path, names=("g_ba",))
    assert list(one) == ["g_ba"]  # g_ab's arrays were not read
    jax.tree.map(np.testing.assert_array_equal, one["g_ba"], jax.tree.map(np.asarray, both["BtoA"]))
    whole, _ = generator_checkpoint.load_generator_checkpoint(path)
    assert sorted(whole) == ["g_ab", "g_ba"]
    for direction, name in generator_checkpoint.DIRECTIONS.items():
        got = generator_loading.load(direction, checkpoint_dir=path).params
        jax.tree.map(np.testing.assert_array_equal, got, whole[name])
    assert generator_checkpoint.load_generator_checkpoint(path, names=("g_xy",))[0] == {}


def test_a_damaged_generator_checkpoint_is_one_short_line(tmp_path):
    # A copy that lost its data folder (an interrupted transfer): TensorStore's error carries a page of spec.
    path = pathlib.Path(generator_checkpoint.save_generator_checkpoint(_params(), "AtoB", CFG, tmp_path / "ckpt"))
    shutil.rmtree(path / "d")
    with pytest.raises(GeneratorLoadError) as e:
        load_generator("AtoB", checkpoint_dir=path)
    message = str(e.value)
    assert message.startswith(f"Cannot read a generator checkpoint from {path}: its weights are unreadable (")
    assert message.count(str(path)) <= 2 and "tensorstore_spec" not in message and len(message) < 500, message


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"direction": "AtoC", "checkpoint_dir": "x"}, "--direction must be one of"),
        ({"direction": "AtoB"}, "exactly one of --workdir"),
        ({"direction": "AtoB", "workdir": "a", "checkpoint_dir": "b"}, "exactly one of --workdir"),
        ({"direction": "AtoB", "checkpoint_dir": "{tmp}/missing"}, "does not exist"),
        ({"direction": "AtoB", "checkpoint_dir": "{tmp}/a_file"}, "is a file, not a checkpoint directory"),
        ({"direction": "AtoB", "checkpoint_dir": "{tmp}/empty"}, "Cannot read a generator checkpoint"),
        ({"direction": "AtoB", "checkpoint_dir": "{tmp}/run"}, "is a training run: give it as --workdir"),
        ({"direction": "AtoB", "workdir": "{tmp}/empty"}, "No training run in"),
        ({"direction": "AtoB", "workdir": "{tmp}/run"}, r"No checkpoint in .*checkpoints"),
        ({"direction": "AtoB", "workdir": "{tmp}/torn"}, "config.json cannot be read"),
        ({"direction": "AtoB", "workdir": "{tmp}/other"}, "config.json holds a JSON list, not the run's config"),
        ({"direction": "AtoB", "workdir": "{tmp}/nomodel"}, "config.json has no model section"),
    ],
)
def test_what_cannot_be_loaded_says_why(tmp_path, kwargs, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a checkpoint")
    _fake_run(tmp_path / "run")
    (_fake_run(tmp_path / "torn") / "config.json").write_text('{"model": {"ngf"')  # cut off mid-write
    (_fake_run(tmp_path / "other") / "config.json").write_text('["a list"]')  # another program's file
    (_fake_run(tmp_path / "nomodel") / "config.json").write_text('{"lr": 0.1}')
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
    with pytest.raises(GeneratorLoadError, match="--direction must be one of"):
        load_generator_from_run(run, "A2B")


def test_the_readmes_translation_snippet(tmp_path):
    """README "Using the library": load a generator, translate one photo of odd size (tiles: tests/test_tiling.py)."""
    from jaxgan import image_io, translate

    path = generator_checkpoint.save_generator_checkpoint(_params(1), "AtoB", CFG, tmp_path / "ckpt")
    photo = np.random.default_rng(0).integers(0, 256, (30, 22, 3), dtype=np.uint8)
    image_io.save_image(tmp_path / "horse.png", photo)

    generator, params, model_cfg, source = generator_loading.load("AtoB", checkpoint_dir=path)
    images = image_io.to_float(image_io.load_image(tmp_path / "horse.png")[None])
    zebra = image_io.to_uint8(translate.generate(generator, params, images)[0])
    large = translate.translate_image(generator, params, images[0])
    assert zebra.shape == large.shape == (30, 22, 3) and zebra.dtype == np.uint8
    # The odd size is reflection-padded to a multiple of 4 for the network and cropped back.
    padded = np.pad(images, ((0, 0), (0, 2), (0, 2), (0, 0)), mode="reflect")
    want = np.asarray(generator.apply({"params": params}, padded))[0, :30, :22]
    whole = translate.generate(generator, params, images)[0]
    np.testing.assert_allclose(whole, want, atol=1e-5)
    np.testing.assert_array_equal(zebra, image_io.to_uint8(whole))
    np.testing.assert_array_equal(large, whole)  # under a tile's size: translated whole
