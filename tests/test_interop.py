"""Official PyTorch weights -> jaxgan: key/shape round trips, errors, numerical parity, the CLI."""

from __future__ import annotations

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import generator_checkpoint, interop, models

# |jaxgan - PyTorch replica| of the official networks with the same weights, in output units: measured 5.8e-6 to
# 8.5e-6 (float32, both conv forms, 2026-12-02; the README quotes it); one spatially flipped kernel gives 1.4-1.8
# (up_0, res_3 or conv_out of the 6-block generator at 64x96).
REPLICA_TOL = 4e-5


def _official_generator_shapes(ngf: int, n_blocks: int) -> dict[str, tuple[int, ...]]:
    """The official ResNet generator's state-dict keys and shapes, written out from the layer listing."""
    shapes = {
        "model.1.weight": (ngf, 3, 7, 7),
        "model.1.bias": (ngf,),
        "model.4.weight": (2 * ngf, ngf, 3, 3),
        "model.4.bias": (2 * ngf,),
        "model.7.weight": (4 * ngf, 2 * ngf, 3, 3),
        "model.7.bias": (4 * ngf,),
    }
    for i in range(10, 10 + n_blocks):
        for j in (1, 5):
            shapes[f"model.{i}.conv_block.{j}.weight"] = (4 * ngf, 4 * ngf, 3, 3)
            shapes[f"model.{i}.conv_block.{j}.bias"] = (4 * ngf,)
    up = 10 + n_blocks
    shapes[f"model.{up}.weight"] = (4 * ngf, 2 * ngf, 3, 3)  # ConvTranspose2d: [in, out, kh, kw]
    shapes[f"model.{up}.bias"] = (2 * ngf,)
    shapes[f"model.{up + 3}.weight"] = (2 * ngf, ngf, 3, 3)
    shapes[f"model.{up + 3}.bias"] = (ngf,)
    shapes[f"model.{up + 7}.weight"] = (3, ngf, 7, 7)
    shapes[f"model.{up + 7}.bias"] = (3,)
    return shapes


OFFICIAL_D_SHAPES = {
    "model.0.weight": (64, 3, 4, 4),
    "model.2.weight": (128, 64, 4, 4),
    "model.5.weight": (256, 128, 4, 4),
    "model.8.weight": (512, 256, 4, 4),
    "model.11.weight": (1, 512, 4, 4),
    "model.0.bias": (64,),
    "model.2.bias": (128,),
    "model.5.bias": (256,),
    "model.8.bias": (512,),
    "model.11.bias": (1,),
}


def _random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.02, s).astype(np.float32) for k, s in shapes.items()}


def _flax_shapes(module, size=(64, 64)):
    abstract = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))
    return jax.tree.map(lambda s: s.shape, abstract["params"])


# ---------------------------------------------------------------------------
# Keys and shapes (no torch needed)


@pytest.mark.parametrize("n_blocks", [6, 9])
def test_generator_round_trip_every_key(n_blocks):
    official = _official_generator_shapes(64, n_blocks)
    assert n_blocks != 9 or len(official) == 48
    sd = _random_state_dict(official)
    params = interop.torch_generator_to_flax(sd)
    assert interop.infer_generator_config(sd) == (64, n_blocks)
    # Every converted leaf has exactly the shape our ResnetGenerator declares.
    assert jax.tree.map(np.shape, params) == _flax_shapes(models.ResnetGenerator(64, n_blocks))
    back = interop.flax_generator_to_torch(params)
    assert {k: v.shape for k, v in back.items()} == official
    for k in official:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


def test_generator_layouts():
    sd = _random_state_dict(_official_generator_shapes(8, 2))
    p = interop.torch_generator_to_flax(sd)
    # Conv: OIHW -> HWIO.
    np.testing.assert_array_equal(p["down_0"]["kernel"][1, 2, 5, 7], sd["model.4.weight"][7, 5, 1, 2])
    # ConvTranspose: [in, out, kh, kw] -> [kh, kw, in, out], no flip.
    np.testing.assert_array_equal(p["up_0"]["kernel"][0, 2, 9, 3], sd["model.12.weight"][9, 3, 0, 2])
    np.testing.assert_array_equal(p["res_1"]["conv_1"]["bias"], sd["model.11.conv_block.5.bias"])


def test_discriminator_round_trip_every_key():
    sd = _random_state_dict(OFFICIAL_D_SHAPES)
    params = interop.torch_discriminator_to_flax(sd)
    assert interop.infer_discriminator_config(sd) == (64, 3)
    assert jax.tree.map(np.shape, params) == _flax_shapes(models.PatchDiscriminator())
    back = interop.flax_discriminator_to_torch(params)
    assert {k: v.shape for k, v in back.items()} == OFFICIAL_D_SHAPES
    for k in OFFICIAL_D_SHAPES:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


def test_ignored_buffers_and_module_prefix():
    sd = _random_state_dict(_official_generator_shapes(8, 2))
    noisy = {"module." + k: v for k, v in sd.items()}
    noisy["module.model.2.running_mean"] = np.zeros(8, np.float32)
    noisy["module.model.2.running_var"] = np.ones(8, np.float32)
    noisy["model.5.num_batches_tracked"] = np.zeros((), np.float32)
    a = interop.torch_generator_to_flax(sd)
    b = interop.torch_generator_to_flax(noisy)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_dropout_layout_is_accepted():
    # --use_dropout moves each block's second conv to conv_block.6.
    sd = _random_state_dict(_official_generator_shapes(8, 2))
    moved = {k.replace("conv_block.5", "conv_block.6"): v for k, v in sd.items()}
    a = interop.torch_generator_to_flax(sd)
    b = interop.torch_generator_to_flax(moved)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("key", ["model.13.conv_block.5.weight", "model.10.conv_block.1.weight"])
def test_missing_key_names_key_and_shape(key):
    sd = _random_state_dict(_official_generator_shapes(64, 9))
    del sd[key]  # (the second: a block's first conv, which once made the block look absent)
    with pytest.raises(interop.InteropError, match=re.escape(key) + r".*\(256, 256, 3, 3\)"):
        interop.torch_generator_to_flax(sd)


def test_misshaped_key_names_key_and_shapes():
    sd = _random_state_dict(_official_generator_shapes(64, 9))
    sd["model.19.weight"] = sd["model.19.weight"].transpose(1, 0, 2, 3)  # an [out, in] mix-up
    with pytest.raises(interop.InteropError, match=r"model\.19\.weight.*\(128, 256, 3, 3\).*\(256, 128, 3, 3\)"):
        interop.torch_generator_to_flax(sd)
    d = _random_state_dict(OFFICIAL_D_SHAPES)
    d["model.8.bias"] = np.zeros(256, np.float32)
    with pytest.raises(interop.InteropError, match=r"model\.8\.bias.*\(512,\)"):
        interop.torch_discriminator_to_flax(d)


def test_unexpected_and_foreign_state_dicts():
    sd = _random_state_dict(_official_generator_shapes(8, 2))
    sd["model.2.weight"] = np.ones(8, np.float32)  # an affine norm: not the official CycleGAN G
    with pytest.raises(interop.InteropError, match=r"unexpected keys.*model\.2\.weight"):
        interop.torch_generator_to_flax(sd)
    with pytest.raises(interop.InteropError, match=r"model\.1\.weight"):
        interop.torch_generator_to_flax(_random_state_dict(OFFICIAL_D_SHAPES))
    with pytest.raises(interop.InteropError, match=r"model\.0\.weight"):
        interop.torch_discriminator_to_flax(_random_state_dict(_official_generator_shapes(8, 2)))


def test_checkpoint_round_trip(tmp_path):
    sd = _random_state_dict(_official_generator_shapes(8, 2))
    params = interop.torch_generator_to_flax(sd)
    cfg = {"ngf": 8, "n_blocks": 2}
    generator_checkpoint.save_generator_checkpoint(params, "BtoA", cfg, tmp_path / "ckpt")
    with open(tmp_path / "ckpt" / "config.json") as f:
        written = json.load(f)
    assert written == {"model": {**generator_checkpoint.DEFAULT_MODEL_CONFIG, **cfg}}
    loaded, model_cfg = generator_checkpoint.load_generator_checkpoint(tmp_path / "ckpt")
    assert set(loaded) == {"g_ba"} and model_cfg["ngf"] == 8 and model_cfg["n_blocks"] == 2
    jax.tree.map(np.testing.assert_array_equal, loaded["g_ba"], params)
    with pytest.raises(generator_checkpoint.GeneratorCheckpointError, match="already exists"):
        generator_checkpoint.save_generator_checkpoint(params, "AtoB", cfg, tmp_path / "ckpt")
    with pytest.raises(generator_checkpoint.GeneratorCheckpointError, match="direction"):
        generator_checkpoint.save_generator_checkpoint(params, "AB", cfg, tmp_path / "other")


def test_an_interrupted_write_leaves_no_checkpoint_and_the_rerun_writes_it(tmp_path, monkeypatch):
    # config.json was written last, in place: a Ctrl-C left weights without it, and the rerun was refused
    # ("already exists and is not an empty directory").
    params = interop.torch_generator_to_flax(_random_state_dict(_official_generator_shapes(8, 2)))
    cfg = {"ngf": 8, "n_blocks": 2}

    def interrupted(src, dst):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(generator_checkpoint.os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            generator_checkpoint.save_generator_checkpoint(params, "AtoB", cfg, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor its scratch folder
    (tmp_path / "ckpt").mkdir()  # an empty folder given as the output is fine
    generator_checkpoint.save_generator_checkpoint(params, "AtoB", cfg, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert generator_checkpoint.load_generator_checkpoint(tmp_path / "ckpt")[1]["ngf"] == 8


def test_a_training_checkpoint_of_several_networks_is_named_not_a_traceback():
    # {"epoch": 200, "G_A": {...}, "G_B": {...}}, as third-party training code saves: np.asarray(dict) raised.
    sd = _random_state_dict(_official_generator_shapes(8, 2))
    with pytest.raises(interop.InteropError, match=r"several state dicts \('G_A', 'G_B'\).*checkpoint\['G_A'\]"):
        interop.clean_state_dict({"epoch": 200, "G_A": sd, "G_B": sd})
    with pytest.raises(interop.InteropError, match="entry 'note' is a str, not an array"):
        interop.clean_state_dict({**sd, "note": "trained on horses"})


def test_a_checkpoint_whose_config_is_not_its_weights_is_refused(tmp_path):
    # config.json without norm_affine under affine weights: outputs off by 0.8 with no word; one residual block
    # under a config.json that says 9: a traceback inside Flax. Refused on writing, and on reading an edited one.
    from jaxgan import generator_loading

    x = jnp.zeros((1, 16, 16, 3))
    affine = models.ResnetGenerator(ngf=8, n_blocks=1, norm_affine=True).init(jax.random.PRNGKey(0), x)["params"]
    with pytest.raises(generator_checkpoint.GeneratorCheckpointError, match=r"norm_affine=False; the weights hold"):
        generator_checkpoint.save_generator_checkpoint(affine, "AtoB", {"ngf": 8, "n_blocks": 1}, tmp_path / "a")
    with pytest.raises(
        generator_checkpoint.GeneratorCheckpointError, match=r"n_blocks=9, norm_affine=True; the weights lack"
    ):
        generator_checkpoint.save_generator_checkpoint(affine, "AtoB", {"ngf": 8, "norm_affine": True}, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    path = generator_checkpoint.save_generator_checkpoint(
        affine, "AtoB", {"ngf": 8, "n_blocks": 1, "norm_affine": True}, tmp_path / "ok"
    )
    assert generator_loading.load("AtoB", checkpoint_dir=path).generator.norm_affine
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    for field, value, says in (("norm_affine", False, "the weights hold"), ("ngf", 16, "['conv_in']['bias'] is (8,) in "
                               "the weights, (16,) in it")):  # fmt: skip
        (tmp_path / "ok" / "config.json").write_text(json.dumps({"model": {**config["model"], field: value}}))
        with pytest.raises(generator_loading.GeneratorLoadError, match=r"describes another generator") as e:
            generator_loading.load("AtoB", checkpoint_dir=path)
        assert says in str(e.value), str(e.value)


def test_reading_pth_without_torch_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match=r"jaxgan\[torch\]"):
        interop.load_torch_state_dict(tmp_path / "x.pth")


# ---------------------------------------------------------------------------
# Numerical parity with a PyTorch replica of the official networks


@pytest.fixture(scope="module")
def torch_replica():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    from benchmarks import torch_replica as replica

    return replica


def _nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("conv_impl", ["native", "cpu"])
def test_conv_transpose_matches_torch(torch_replica, conv_impl):
    import torch

    conv = torch.nn.ConvTranspose2d(5, 4, kernel_size=3, stride=2, padding=1, output_padding=1)
    torch_replica.randomize_(conv, seed=1, std=0.5, bias_std=0.5)
    x = np.random.default_rng(0).normal(size=(2, 5, 7, 6)).astype(np.float32)
    with torch.no_grad():
        want = conv(torch.from_numpy(x)).numpy()
    params = {"kernel": conv.weight.detach().numpy().transpose(2, 3, 0, 1), "bias": conv.bias.detach().numpy()}
    got = models.ConvTranspose(4, conv_impl=conv_impl).apply({"params": params}, _nchw_to_nhwc(x))
    assert got.shape == (2, 14, 12, 4)
    np.testing.assert_allclose(np.asarray(got), _nchw_to_nhwc(want), atol=1e-5)


@pytest.mark.parametrize(
    "n_blocks, sizes, conv_impl",
    [(9, [(256, 256), (200, 328)], "cpu"), (6, [(64, 96)], "cpu"), (6, [(64, 96)], "native")],
)
def test_generator_matches_torch_replica(torch_replica, n_blocks, sizes, conv_impl):
    import torch

    net = torch_replica.randomize_(torch_replica.ResnetGenerator(64, n_blocks), seed=n_blocks).eval()
    params = interop.torch_generator_to_flax(torch_replica.state_dict_numpy(net))
    apply = jax.jit(models.ResnetGenerator(64, n_blocks, conv_impl=conv_impl).apply)
    rng = np.random.default_rng(0)
    for h, w in sizes:
        x = rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32)
        with torch.no_grad():
            want = _nchw_to_nhwc(net(torch.from_numpy(x)).numpy())
        got = np.asarray(apply({"params": params}, _nchw_to_nhwc(x)))
        assert got.shape == want.shape == (1, h, w, 3)
        assert want.std() > 0.1  # not saturated: the comparison means something
        err = np.abs(got - want).max()
        print(f"generator n_blocks={n_blocks} {h}x{w}: max abs diff {err:.2e}")
        assert err <= REPLICA_TOL


@pytest.mark.parametrize("conv_impl", ["native", "cpu"])
def test_discriminator_matches_torch_replica(torch_replica, conv_impl):
    import torch

    net = torch_replica.randomize_(torch_replica.NLayerDiscriminator(), seed=3).eval()
    params = interop.torch_discriminator_to_flax(torch_replica.state_dict_numpy(net))
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 256, 256)).astype(np.float32)
    with torch.no_grad():
        want = _nchw_to_nhwc(net(torch.from_numpy(x)).numpy())
    got = np.asarray(
        jax.jit(models.PatchDiscriminator(conv_impl=conv_impl).apply)({"params": params}, _nchw_to_nhwc(x))
    )
    assert got.shape == want.shape == (2, 30, 30, 1)
    err = np.abs(got - want).max()
    print(f"discriminator 256x256: max abs diff {err:.2e}")
    assert err <= REPLICA_TOL


def test_cli_converts_pth_to_checkpoint(torch_replica, tmp_path, capsys):
    import torch

    net = torch_replica.randomize_(torch_replica.ResnetGenerator(16, 6), seed=5)
    pth = tmp_path / "latest_net_G_A.pth"
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, pth)
    assert interop.main(["--pth", str(pth), "--direction", "AtoB", "--output", str(tmp_path / "out")]) == 0
    assert "ngf=16, n_blocks=6" in capsys.readouterr().out
    loaded, cfg = generator_checkpoint.load_generator_checkpoint(tmp_path / "out")
    assert (cfg["ngf"], cfg["n_blocks"]) == (16, 6)
    x = np.random.default_rng(2).uniform(-1, 1, (1, 3, 32, 48)).astype(np.float32)
    with torch.no_grad():
        want = _nchw_to_nhwc(net(torch.from_numpy(x)).numpy())
    got = models.ResnetGenerator(16, 6).apply({"params": loaded["g_ab"]}, _nchw_to_nhwc(x))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
    # A bad file: a clear message, non-zero exit.
    torch.save({"model.0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    assert interop.main(["--pth", str(tmp_path / "bad.pth"), "--output", str(tmp_path / "bad")]) == 1
    assert "model.1.weight" in capsys.readouterr().err
    # An output folder that holds something: refused with a message, the folder left as it was.
    assert interop.main(["--pth", str(pth), "--output", str(tmp_path / "out")]) == 1
    assert "already exists" in capsys.readouterr().err and (tmp_path / "out" / "config.json").is_file()
    # An output below a file: one line, at once (Orbax's writer threads used to leave the process hanging).
    (tmp_path / "afile").write_text("x")
    assert interop.main(["--pth", str(pth), "--output", str(tmp_path / "afile" / "ck")]) == 1
    assert f"{tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    # Files torch cannot read as a state dict: random bytes, a cut download, a pickled module.
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp_path / "cut.pth").write_bytes(pth.read_bytes()[:5000])
    torch.save(torch.nn.Conv2d(3, 3, 3), tmp_path / "module.pth")
    for name in ("noise.pth", "cut.pth", "module.pth"):
        assert interop.main(["--pth", str(tmp_path / name), "--output", str(tmp_path / f"o_{name}")]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / name} is not a readable PyTorch state dict"), err
        assert "weights_only set to False" not in err and not (tmp_path / f"o_{name}").exists()
