"""The fast formulations in jaxgan.models against the plain ones: values and gradients.

``ReflectConv`` computes convolutions with few channels on one side as matrix
products plus shifted sums, ``StridedConv`` and ``PaddedConv`` compute some
gradients in other forms, and ``ConvTranspose`` is four phase convolutions;
here each is compared with ``lax.conv_general_dilated`` (float32,
to ~1e-5 relative) and the whole generator with a plain functional reference
that uses only XLA convolutions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import models

DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, kernel, stride=1, padding="VALID"):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=DN)


def _reference_reflect_conv(params, x):
    k = params["kernel"].shape[0]
    return _conv(models.reflect_pad(x, k // 2), params["kernel"]) + params["bias"]


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _random_params(params, key, scale=0.1):
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [scale * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)]
    )


@pytest.mark.parametrize(
    "c_in, c_out, k",
    [(3, 16, 7), (16, 3, 7), (2, 8, 3), (8, 1, 3), (16, 16, 3)],  # few-in, few-out, few-in, few-out, plain
)
def test_reflect_conv_matches_xla_conv(c_in, c_out, k):
    layer = models.ReflectConv(c_out, k)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 10, c_in))
    params = _random_params(layer.init(jax.random.PRNGKey(1), x)["params"], jax.random.PRNGKey(2))
    assert params["kernel"].shape == (k, k, c_in, c_out) and params["bias"].shape == (c_out,)
    target = jax.random.normal(jax.random.PRNGKey(3), (2, 12, 10, c_out))

    def loss(fn, p, x):
        return jnp.sum(jnp.square(fn(p, x) - target))

    fast = lambda p, x: layer.apply({"params": p}, x)
    y_fast, y_ref = fast(params, x), _reference_reflect_conv(params, x)
    assert y_fast.shape == (2, 12, 10, c_out)
    assert _rel(y_fast, y_ref) < 1e-5
    g_fast = jax.grad(lambda p, x: loss(fast, p, x), argnums=(0, 1))(params, x)
    g_ref = jax.grad(lambda p, x: loss(_reference_reflect_conv, p, x), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree_util.tree_leaves(g_fast), jax.tree_util.tree_leaves(g_ref), strict=True):
        assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("c_in, c_out", [(3, 16), (16, 3)])
def test_reflect_conv_bfloat16_close_to_float32(c_in, c_out):
    layer = models.ReflectConv(c_out, 7, jnp.bfloat16)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 16, 16, c_in))
    params = _random_params(layer.init(jax.random.PRNGKey(1), x)["params"], jax.random.PRNGKey(2), 0.05)
    y = layer.apply({"params": params}, x)
    assert y.dtype == jnp.bfloat16
    assert _rel(y, _reference_reflect_conv(params, x)) < 2e-2
    g = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x).astype(jnp.float32)))(params)
    g_ref = jax.grad(lambda p: jnp.sum(_reference_reflect_conv(p, x)))(params)
    assert g["kernel"].dtype == jnp.float32
    assert _rel(g["kernel"], g_ref["kernel"]) < 2e-2


@pytest.mark.parametrize("small_grid_path", [True, False])
@pytest.mark.parametrize("k, h, w", [(3, 12, 10), (4, 12, 10), (4, 13, 9), (3, 13, 9)])
def test_strided_conv_matches_xla_conv(k, h, w, small_grid_path, monkeypatch):
    if not small_grid_path:  # the kernel gradient that large images take
        monkeypatch.setattr(models, "_PHASE_GRAD_MAX_PIXELS", 0)
    layer = models.StridedConv(6, k)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, h, w, 5))
    params = _random_params(layer.init(jax.random.PRNGKey(1), x)["params"], jax.random.PRNGKey(2))
    assert params["kernel"].shape == (k, k, 5, 6) and params["bias"].shape == (6,)

    def ref(p, x):
        return _conv(x, p["kernel"], 2, ((1, 1), (1, 1))) + p["bias"]

    _assert_layer_matches(layer, ref, params, x, (2, (h + 2 - k) // 2 + 1, (w + 2 - k) // 2 + 1, 6))


def _assert_layer_matches(layer, ref, params, x, shape):
    """``layer`` equals ``ref(params, x)`` in value (shape ``shape``) and in both gradients, to 1e-5 relative."""
    fast = lambda p, x: layer.apply({"params": p}, x)
    y_ref = ref(params, x)
    assert fast(params, x).shape == y_ref.shape == shape
    assert _rel(fast(params, x), y_ref) < 1e-5
    target = jax.random.normal(jax.random.PRNGKey(3), y_ref.shape)
    loss = lambda fn: lambda p, x: jnp.sum(jnp.square(fn(p, x) - target))
    g_fast = jax.grad(loss(fast), argnums=(0, 1))(params, x)
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree_util.tree_leaves(g_fast), jax.tree_util.tree_leaves(g_ref), strict=True):
        assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("c_in, c_out, k, h", [(5, 12, 4, 9), (12, 1, 4, 8), (6, 7, 3, 10)])  # GEMM dx, few-out dk
def test_padded_conv_matches_xla_conv(c_in, c_out, k, h):
    layer = models.PaddedConv(c_out, k)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, h, h + 1, c_in))
    params = _random_params(layer.init(jax.random.PRNGKey(1), x)["params"], jax.random.PRNGKey(2))
    assert params["kernel"].shape == (k, k, c_in, c_out) and params["bias"].shape == (c_out,)

    def ref(p, x):
        return _conv(x, p["kernel"], 1, ((1, 1), (1, 1))) + p["bias"]

    _assert_layer_matches(layer, ref, params, x, (2, h + 3 - k, h + 4 - k, c_out))


def test_discriminator_matches_plain_reference_values_and_gradients():
    disc = models.PatchDiscriminator(ndf=8)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 64, 48, 3), minval=-1, maxval=1)
    params = _random_params(disc.init(jax.random.PRNGKey(1), x)["params"], jax.random.PRNGKey(2), 0.2)

    def ref(p, x):
        for n in range(5):
            q = p[f"conv_{n}"]
            x = _conv(x, q["kernel"], 2 if n < 3 else 1, ((1, 1), (1, 1))) + q["bias"]
            if 0 < n < 4:
                x = models.instance_norm(x)
            if n < 4:
                x = jax.nn.leaky_relu(x, 0.2)
        return x

    fast = lambda p, x: disc.apply({"params": p}, x)
    assert _rel(fast(params, x), ref(params, x)) < 1e-5
    loss = lambda fn: lambda p, x: jnp.mean(jnp.square(fn(p, x) - 1.0))
    g_fast = jax.grad(loss(fast), argnums=(0, 1))(params, x)
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
    inert = jax.tree_util.tree_leaves(models.discriminator_inert_bias_mask(params))
    assert _rel(g_fast[1], g_ref[1]) < 1e-4
    for a, b, is_inert in zip(
        jax.tree_util.tree_leaves(g_fast[0]), jax.tree_util.tree_leaves(g_ref[0]), inert, strict=True
    ):
        if not is_inert:
            assert _rel(a, b) < 1e-4


def test_phase_kernel_places_the_pytorch_taps():
    kernel = np.random.default_rng(0).normal(size=(3, 3, 2, 5)).astype(np.float32)
    k2 = np.asarray(models._phase_kernel(jnp.asarray(kernel))).reshape(2, 2, 2, 2, 2, 5)
    for dy in range(2):
        for dx in range(2):
            for py in range(2):
                for px in range(2):
                    ty, tx = models._TAP[py][dy], models._TAP[px][dx]
                    want = 0.0 if ty is None or tx is None else kernel[ty, tx]
                    np.testing.assert_array_equal(k2[dy, dx, :, py, px], np.broadcast_to(want, (2, 5)))


def _reference_generator(p, x, n_blocks):
    """The ResNet generator with plain XLA convolutions and a transposed conv (as PyTorch defines it)."""

    def norm_relu(y, relu=True):
        y = models.instance_norm(y)
        return jax.nn.relu(y) if relu else y

    def conv(q, y, stride=1, padding="VALID"):
        return _conv(y, q["kernel"], stride, padding) + q["bias"]

    def conv_transpose(q, y):
        # ConvTranspose2d(k3, s2, p1, output_padding 1) == conv of the 2-dilated input with the flipped kernel.
        flipped = q["kernel"][::-1, ::-1]
        out = jax.lax.conv_general_dilated(
            y, flipped, (1, 1), ((1, 2), (1, 2)), lhs_dilation=(2, 2), dimension_numbers=DN
        )
        return out + q["bias"]

    y = norm_relu(conv(p["conv_in"], models.reflect_pad(x, 3)))
    y = norm_relu(conv(p["down_0"], y, 2, ((1, 1), (1, 1))))
    y = norm_relu(conv(p["down_1"], y, 2, ((1, 1), (1, 1))))
    for i in range(n_blocks):
        q = p[f"res_{i}"]
        r = norm_relu(conv(q["conv_0"], models.reflect_pad(y, 1)))
        y = y + norm_relu(conv(q["conv_1"], models.reflect_pad(r, 1)), relu=False)
    y = norm_relu(conv_transpose(p["up_0"], y))
    y = norm_relu(conv_transpose(p["up_1"], y))
    return jnp.tanh(conv(p["conv_out"], models.reflect_pad(y, 3)))


@pytest.mark.parametrize("small_grid_path", [True, False])
def test_generator_matches_plain_reference_values_and_gradients(small_grid_path, monkeypatch):
    if not small_grid_path:  # the strided and transposed convs' kernel gradients that large images take
        monkeypatch.setattr(models, "_PHASE_GRAD_MAX_PIXELS", 0)
    gen = models.ResnetGenerator(ngf=8, n_blocks=2)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 24, 20, 3), minval=-1, maxval=1)
    params = _random_params(gen.init(jax.random.PRNGKey(1), x)["params"], jax.random.PRNGKey(2), 0.2)

    def loss(fn, p, x):
        return jnp.mean(jnp.abs(fn(p, x) - x[::-1]))

    fast = lambda p, x: gen.apply({"params": p}, x)
    ref = lambda p, x: _reference_generator(p, x, 2)
    assert _rel(fast(params, x), ref(params, x)) < 1e-5
    g_fast = jax.grad(lambda p, x: loss(fast, p, x), argnums=(0, 1))(params, x)
    g_ref = jax.grad(lambda p, x: loss(ref, p, x), argnums=(0, 1))(params, x)
    assert _rel(g_fast[1], g_ref[1]) < 1e-4
    inert = models.generator_inert_bias_mask(params)
    flat_fast = jax.tree_util.tree_leaves_with_path(g_fast[0])
    for (path, a), b, is_inert in zip(
        flat_fast, jax.tree_util.tree_leaves(g_ref[0]), jax.tree_util.tree_leaves(inert), strict=True
    ):
        if is_inert:  # true gradient 0: both sides are rounding noise
            assert float(jnp.max(jnp.abs(a))) < 1e-5 and float(jnp.max(jnp.abs(b))) < 1e-5
        else:
            assert _rel(a, b) < 1e-4, jax.tree_util.keystr(path)
