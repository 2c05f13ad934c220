"""Architecture tests: parameter counts, shapes, ranges, and each layer against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import models


def _init(module, size=(64, 64)):
    x = jnp.zeros((1, *size, 3))
    return module.init(jax.random.PRNGKey(0), x)["params"]


@pytest.mark.parametrize("n_blocks, expected", [(9, 11_378_179), (6, 7_837_699)])
def test_generator_param_count(n_blocks, expected):
    gen = models.ResnetGenerator(n_blocks=n_blocks)
    shapes = jax.eval_shape(lambda: _init(gen))
    assert models.count_params(shapes) == expected


def test_discriminator_param_count():
    shapes = jax.eval_shape(lambda: _init(models.PatchDiscriminator()))
    assert models.count_params(shapes) == 2_764_737


def test_generator_parameter_layout_matches_official():
    p = jax.eval_shape(lambda: _init(models.ResnetGenerator()))
    assert p["conv_in"]["kernel"].shape == (7, 7, 3, 64)
    assert p["down_0"]["kernel"].shape == (3, 3, 64, 128)
    assert p["down_1"]["kernel"].shape == (3, 3, 128, 256)
    assert p["res_8"]["conv_1"]["kernel"].shape == (3, 3, 256, 256)
    assert p["up_0"]["kernel"].shape == (3, 3, 256, 128)
    assert p["up_1"]["kernel"].shape == (3, 3, 128, 64)
    assert p["conv_out"]["kernel"].shape == (7, 7, 64, 3)
    assert len(jax.tree_util.tree_leaves(p)) == 48  # as the official state dict


@pytest.mark.parametrize("size, out", [(256, 30), (128, 14), (64, 6)])
def test_discriminator_output_shape(size, out):
    d = models.PatchDiscriminator()
    y = jax.eval_shape(lambda: d.init_with_output(jax.random.PRNGKey(0), jnp.zeros((2, size, size, 3)))[0])
    assert y.shape == (2, out, out, 1)


@pytest.mark.parametrize("size", [(256, 256), (200, 328)])
def test_generator_output_shape(size):
    gen = models.ResnetGenerator()
    y = jax.eval_shape(lambda: gen.init_with_output(jax.random.PRNGKey(0), jnp.zeros((1, *size, 3)))[0])
    assert y.shape == (1, *size, 3)


def test_generator_output_in_range_and_rejects_bad_size():
    gen = models.ResnetGenerator(ngf=8, n_blocks=2)
    x = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (2, 36, 44, 3))
    params = gen.init(jax.random.PRNGKey(0), x)["params"]
    # Large weights push the tanh into saturation; the output must stay in [-1, 1].
    params = jax.tree_util.tree_map(lambda p: p * 50.0, params)
    y = gen.apply({"params": params}, x)
    assert y.shape == x.shape
    assert float(jnp.max(jnp.abs(y))) <= 1.0
    with pytest.raises(ValueError, match="divisible by 4"):
        gen.apply({"params": params}, jnp.zeros((1, 30, 32, 3)))


def test_generator_bfloat16_compute_keeps_float32_params():
    gen = models.ResnetGenerator(ngf=8, n_blocks=2, dtype=jnp.bfloat16)
    x = jax.random.uniform(jax.random.PRNGKey(1), (1, 32, 32, 3), minval=-1, maxval=1)
    params = gen.init(jax.random.PRNGKey(0), x)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    y = gen.apply({"params": params}, x)
    assert y.dtype == jnp.bfloat16
    y32 = models.ResnetGenerator(ngf=8, n_blocks=2).apply({"params": params}, x)
    assert float(jnp.max(jnp.abs(y.astype(jnp.float32) - y32))) < 0.05


def test_initialisation_normal_002_and_zero_bias():
    p = _init(models.ResnetGenerator())
    k = np.asarray(p["res_0"]["conv_0"]["kernel"])
    assert abs(k.std() - 0.02) < 0.001 and abs(k.mean()) < 0.001
    assert all(
        not np.any(np.asarray(b))
        for b in jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.asarray, p))
        if b.ndim == 1
    )


def test_instance_norm_matches_numpy():
    x = np.random.default_rng(0).normal(3.0, 2.0, (2, 5, 7, 4)).astype(np.float32)
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)  # biased, as PyTorch
    expected = (x - mean) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(np.asarray(models.instance_norm(jnp.asarray(x))), expected, atol=1e-5)
    scale, bias = np.arange(4.0), np.ones(4)
    np.testing.assert_allclose(
        np.asarray(models.instance_norm(jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias))),
        expected * scale + bias,
        atol=1e-4,
    )


def test_instance_norm_bfloat16_statistics_in_float32():
    # bfloat16 in, bfloat16 out, but the statistics of the (quantised) input are exact to float32 precision.
    x = (10.0 + np.random.default_rng(0).normal(0, 1, (1, 16, 16, 2))).astype(np.float32)
    xb = jnp.asarray(x, jnp.bfloat16)
    y = models.instance_norm(xb)
    assert y.dtype == jnp.bfloat16
    xq = np.asarray(xb, np.float64)
    ref = (xq - xq.mean((1, 2), keepdims=True)) / np.sqrt(xq.var((1, 2), keepdims=True) + 1e-5)
    # Only the final rounding to bfloat16 (8 bits of mantissa) remains.
    assert np.max(np.abs(np.asarray(y, np.float64) - ref) / np.maximum(np.abs(ref), 1.0)) < 2**-7


def test_reflect_pad_matches_numpy():
    x = np.arange(2 * 4 * 5 * 1, dtype=np.float32).reshape(2, 4, 5, 1)
    expected = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(np.asarray(models.reflect_pad(jnp.asarray(x), 3)), expected)


def _torch_conv_transpose_reference(x, w, b):
    """Direct definition of ConvTranspose2d(k=3, s=2, p=1, output_padding=1): out[2i - 1 + k] += x[i] w[k]."""
    n, h, wd, _ = x.shape
    c_out = w.shape[1]
    full = np.zeros((n, 2 * h + 2, 2 * wd + 2, c_out), np.float64)
    for i in range(h):
        for j in range(wd):
            for ky in range(3):
                for kx in range(3):
                    full[:, 2 * i + ky, 2 * j + kx] += x[:, i, j] @ w[:, :, ky, kx]
    # Output index o = 2i - 1 + k  ->  full index o + 1; output size 2h (with output_padding 1).
    return full[:, 1 : 2 * h + 1, 1 : 2 * wd + 1] + b


@pytest.mark.parametrize("conv_impl", ["native", "cpu"])
@pytest.mark.parametrize("h, w", [(3, 3), (4, 5)])
def test_conv_transpose_matches_pytorch_definition(h, w, conv_impl):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    w_torch = rng.normal(size=(3, 4, 3, 3)).astype(np.float32)  # [in, out, kh, kw]
    b = rng.normal(size=(4,)).astype(np.float32)
    layer = models.ConvTranspose(4, conv_impl=conv_impl)
    params = {"kernel": jnp.asarray(w_torch.transpose(2, 3, 0, 1)), "bias": jnp.asarray(b)}
    y = np.asarray(layer.apply({"params": params}, jnp.asarray(x)))
    assert y.shape == (2, 2 * h, 2 * w, 4)
    np.testing.assert_allclose(y, _torch_conv_transpose_reference(x, w_torch, b), atol=1e-5)


def test_inert_bias_masks():
    g = _init(models.ResnetGenerator(ngf=8, n_blocks=2))
    gm = models.generator_inert_bias_mask(g)
    assert gm["conv_in"]["bias"] and gm["up_1"]["bias"] and gm["res_1"]["conv_1"]["bias"]
    assert not gm["conv_out"]["bias"] and not gm["conv_in"]["kernel"]
    d = _init(models.PatchDiscriminator(ndf=8))
    dm = models.discriminator_inert_bias_mask(d)
    assert [dm[f"conv_{i}"]["bias"] for i in range(5)] == [False, True, True, True, False]
    # With affine instance norms, their shifts (after the mean is removed) are learned, not inert.
    g = _init(models.ResnetGenerator(ngf=8, n_blocks=2, norm_affine=True))
    gm = jax.tree_util.tree_leaves_with_path(models.generator_inert_bias_mask(g))
    frozen = sorted(jax.tree_util.keystr(path) for path, inert in gm if inert)
    assert len(frozen) == 9 and not any("norm" in name for name in frozen), frozen  # in, 2 down, 2x2 res, 2 up
    d = _init(models.PatchDiscriminator(ndf=8, norm_affine=True))
    dm = models.discriminator_inert_bias_mask(d)
    assert [dm[f"conv_{i}"]["bias"] for i in range(5)] == [False, True, True, True, False]
    assert not any(dm[f"norm_{i}"]["bias"] for i in range(1, 4))


def test_inert_biases_do_not_change_the_output():
    gen = models.ResnetGenerator(ngf=8, n_blocks=2)
    x = jax.random.uniform(jax.random.PRNGKey(1), (1, 32, 32, 3), minval=-1, maxval=1)
    params = gen.init(jax.random.PRNGKey(0), x)["params"]
    mask = models.generator_inert_bias_mask(params)
    shifted = jax.tree_util.tree_map(lambda p, m: p + 0.5 if m else p, params, mask)
    np.testing.assert_allclose(gen.apply({"params": shifted}, x), gen.apply({"params": params}, x), atol=1e-5)
