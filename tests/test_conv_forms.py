"""jaxgan.conv_forms: every form of every convolution kind against the native one, values and gradients.

The CPU forms (``jaxgan.cpu_conv``) compute convolutions with few channels on one
side as matrix products plus shifted sums, some gradients in other forms, and
the transposed conv as four phase convolutions; here each layer is compared
with ``lax.conv_general_dilated`` (float32, to ~1e-5 relative), both networks in
every form (and mixes of forms) with the native form at odd sizes, and the
whole generator with a plain functional reference that uses only XLA
convolutions. bfloat16: each form within 2e-2 (max-relative) of float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import conv_forms, cpu_conv_phases, models

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
    layer = models.ReflectConv(c_out, k, conv_impl="cpu")
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
    layer = models.ReflectConv(c_out, 7, jnp.bfloat16, "cpu")
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
        monkeypatch.setattr(cpu_conv_phases, "_PHASE_GRAD_MAX_PIXELS", 0)
    layer = models.StridedConv(6, k, conv_impl="cpu")
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
    layer = models.PaddedConv(c_out, k, conv_impl="cpu")
    x = jax.random.normal(jax.random.PRNGKey(0), (2, h, h + 1, c_in))
    params = _random_params(layer.init(jax.random.PRNGKey(1), x)["params"], jax.random.PRNGKey(2))
    assert params["kernel"].shape == (k, k, c_in, c_out) and params["bias"].shape == (c_out,)

    def ref(p, x):
        return _conv(x, p["kernel"], 1, ((1, 1), (1, 1))) + p["bias"]

    _assert_layer_matches(layer, ref, params, x, (2, h + 3 - k, h + 4 - k, c_out))


def test_discriminator_matches_plain_reference_values_and_gradients():
    disc = models.PatchDiscriminator(ndf=8, conv_impl="cpu")
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
    k2 = np.asarray(cpu_conv_phases._phase_kernel(jnp.asarray(kernel))).reshape(2, 2, 2, 2, 2, 5)
    for dy in range(2):
        for dx in range(2):
            for py in range(2):
                for px in range(2):
                    ty, tx = cpu_conv_phases._TAP[py][dy], cpu_conv_phases._TAP[px][dx]
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
        monkeypatch.setattr(cpu_conv_phases, "_PHASE_GRAD_MAX_PIXELS", 0)
    gen = models.ResnetGenerator(ngf=8, n_blocks=2, conv_impl="cpu")
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


# ---------------------------------------------------------------------------------------------
# Forms of whole networks against the native form.

# Mixed choices exercise every kind in each form next to the other form's neighbours.
_IMPLS = ["cpu", "native", "auto", "stride1=cpu,transpose=cpu", "stride2=cpu,pad1=cpu"]


def _net_grads(net, params, x):
    def loss(p, x):
        y = net.apply({"params": p}, x).astype(jnp.float32)
        return jnp.mean(jnp.square(y - 0.3))

    return jax.value_and_grad(loss, argnums=(0, 1))(params, x)


def _assert_grads_close(got, want, mask, tol):
    """Gradients agree to ``tol`` max-relative, except inert biases (true gradient 0, both rounding noise)."""
    for (path, a), b, inert in zip(
        jax.tree_util.tree_leaves_with_path(got),
        jax.tree_util.tree_leaves(want),
        jax.tree_util.tree_leaves(mask),
        strict=True,
    ):
        if inert:
            assert float(jnp.max(jnp.abs(a))) < 1e-4 * max(1.0, float(jnp.max(jnp.abs(b))) * 1e4)
        else:
            assert _rel(a, b) < tol, jax.tree_util.keystr(path)


@pytest.mark.parametrize("impl", _IMPLS)
@pytest.mark.parametrize("size", [(36, 44), (28, 52)])  # quarter resolution odd: 9x11, 7x13
def test_generator_forms_match_native(impl, size):
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, *size, 3), minval=-1, maxval=1)
    native = models.ResnetGenerator(ngf=8, n_blocks=2, conv_impl="native")
    params = _random_params(native.init(jax.random.PRNGKey(1), x)["params"], jax.random.PRNGKey(2), 0.2)
    form = models.ResnetGenerator(ngf=8, n_blocks=2, conv_impl=impl)
    (v_form, (g_form, dx_form)), (v_nat, (g_nat, dx_nat)) = _net_grads(form, params, x), _net_grads(native, params, x)
    assert _rel(form.apply({"params": params}, x), native.apply({"params": params}, x)) < 1e-5
    assert abs(float(v_form) - float(v_nat)) <= 1e-5 * abs(float(v_nat))
    assert _rel(dx_form, dx_nat) < 1e-5
    _assert_grads_close(g_form, g_nat, models.generator_inert_bias_mask(params), 1e-5)


@pytest.mark.parametrize("impl", _IMPLS)
@pytest.mark.parametrize("size", [(70, 54), (64, 64)])
def test_discriminator_forms_match_native(impl, size):
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, *size, 3), minval=-1, maxval=1)
    native = models.PatchDiscriminator(ndf=8, conv_impl="native")
    params = _random_params(native.init(jax.random.PRNGKey(1), x)["params"], jax.random.PRNGKey(2), 0.2)
    form = models.PatchDiscriminator(ndf=8, conv_impl=impl)
    (v_form, (g_form, dx_form)), (v_nat, (g_nat, dx_nat)) = _net_grads(form, params, x), _net_grads(native, params, x)
    assert _rel(form.apply({"params": params}, x), native.apply({"params": params}, x)) < 1e-5
    assert abs(float(v_form) - float(v_nat)) <= 1e-5 * abs(float(v_nat))
    assert _rel(dx_form, dx_nat) < 1e-5
    _assert_grads_close(g_form, g_nat, models.discriminator_inert_bias_mask(params), 1e-5)


def _norm_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def test_bfloat16_forms_stay_within_stated_tolerance():
    """bfloat16 compute (float32 parameters, norm statistics): outputs within 3e-2 of float32, in each form.

    Relative in the L2 norm: a network of bf16 roundings (8-bit mantissa) lands near 2e-2 (the worst
    pixel of a tanh output differs by ~9e-2 of the range). Parameter gradients in bf16 drift further
    from float32 (up to ~0.22 in the first layers of this random network), the same in both forms: the
    CPU forms must be as accurate as the native one, leaf by leaf (error at most 1.1x native's + 5e-3).
    """
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 36, 44, 3), minval=-1, maxval=1)
    f32 = models.ResnetGenerator(ngf=8, n_blocks=2, conv_impl="native")
    params = _random_params(f32.init(jax.random.PRNGKey(1), x)["params"], jax.random.PRNGKey(2), 0.1)
    y32 = f32.apply({"params": params}, x)
    (_, (g32, _)) = _net_grads(f32, params, x)
    mask = jax.tree_util.tree_leaves(models.generator_inert_bias_mask(params))
    outs, errors = {}, {}
    for impl in ("cpu", "native"):
        bf16 = models.ResnetGenerator(ngf=8, n_blocks=2, dtype=jnp.bfloat16, conv_impl=impl)
        outs[impl] = bf16.apply({"params": params}, x)
        assert outs[impl].dtype == jnp.bfloat16
        assert _norm_rel(outs[impl], y32) < 3e-2
        (_, (g16, _)) = _net_grads(bf16, params, x)
        leaves = jax.tree_util.tree_leaves(g16)
        assert all(a.dtype == jnp.float32 for a in leaves)
        errors[impl] = [
            _norm_rel(a, b)
            for a, b, inert in zip(leaves, jax.tree_util.tree_leaves(g32), mask, strict=True)
            if not inert
        ]
    assert _norm_rel(outs["cpu"], outs["native"]) < 3e-2
    for e_cpu, e_native in zip(errors["cpu"], errors["native"], strict=True):
        assert e_cpu <= 1.1 * e_native + 5e-3


# ---------------------------------------------------------------------------------------------
# The choice itself.


def test_auto_resolves_per_backend_and_dtype():
    assert jax.default_backend() == "cpu"
    assert {conv_forms.resolve("auto", k, jnp.float32) for k in conv_forms.KINDS} == {"cpu"}
    # The measured choices, written out (benchmarks/RESULTS.md): on a GPU only the transposed convolution
    # takes the CPU's phase form; TPU runs everything native.
    measured = {
        "gpu": {"stride1": "native", "stride2": "native", "transpose": "cpu", "pad1": "native"},
        "tpu": dict.fromkeys(conv_forms.KINDS, "native"),
    }
    for backend, want in measured.items():
        for dt in (jnp.float32, jnp.bfloat16):
            assert {k: conv_forms.resolve("auto", k, dt, backend) for k in conv_forms.KINDS} == want
    assert conv_forms.resolve("auto", "stride1", jnp.float32, "rocm-or-unknown") == "native"
    assert conv_forms.resolve("native", "transpose", jnp.bfloat16, "cpu") == "native"
    assert conv_forms.resolve("cpu", "pad1", jnp.float32, "gpu") == "cpu"


def test_per_kind_choice_and_errors():
    got = conv_forms.parse_impl("transpose=cpu, stride2=native")
    assert got == {"stride1": "auto", "stride2": "native", "transpose": "cpu", "pad1": "auto"}
    assert conv_forms.resolve("transpose=native", "transpose", jnp.float32, "cpu") == "native"
    assert conv_forms.resolve("transpose=native", "stride1", jnp.float32, "cpu") == "cpu"
    for bad in ("fast", "transpose=gemm", "upconv=cpu", "transpose"):
        with pytest.raises(ValueError, match="conv_impl"):
            conv_forms.parse_impl(bad)


@pytest.mark.parametrize("impl, custom_vjps, convs", [("native", 0, 8), ("cpu", 6, None)])
def test_forms_are_what_they_say(impl, custom_vjps, convs):
    """native: one plain convolution per layer (8 in a 1-block generator), no custom VJP; cpu: the custom VJPs."""
    x = jnp.zeros((1, 32, 32, 3))
    gen = models.ResnetGenerator(ngf=8, n_blocks=1, conv_impl=impl)
    params = gen.init(jax.random.PRNGKey(0), x)["params"]
    text = str(jax.make_jaxpr(lambda p: gen.apply({"params": p}, x))(params))
    assert text.count("custom_vjp_call") == custom_vjps
    if convs is not None:
        assert text.count("conv_general_dilated[") == convs
