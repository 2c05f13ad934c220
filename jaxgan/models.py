"""CycleGAN networks: the ResNet generator and the 70x70 PatchGAN, as in the paper.

Layer for layer the architecture of the official PyTorch code
(``networks.ResnetGenerator`` with ``resnet_9blocks`` / ``resnet_6blocks`` and
``networks.NLayerDiscriminator`` with ``n_layers=3``), so that its state dicts
can be imported (see ``jaxgan.interop``). Layout is NHWC; images are
``float[B, H, W, 3]`` in [-1, 1].

Parameters are always float32; ``dtype`` sets the compute dtype of the
convolutions (e.g. ``jnp.bfloat16``), while instance-norm statistics are always
computed in float32.

This file says what is computed; ``conv_impl`` (every module's attribute,
``config.model.conv_impl``) picks how each convolution is computed, from the
exact forms of ``jaxgan.conv_forms`` (default ``"auto"``: the fastest measured
for the backend).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import conv_forms
from jaxgan.conv_forms import xla_compiler_options  # noqa: F401  (the networks' jit options)

Dtype = Any
PyTree = Any

# Official `init_weights(init_type='normal', init_gain=0.02)`: N(0, 0.02), biases 0.
KERNEL_INIT = nn.initializers.normal(stddev=0.02)
BIAS_INIT = nn.initializers.zeros


def instance_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    eps: float = 1e-5,
    stats: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Instance normalisation as PyTorch's ``InstanceNorm2d`` (biased variance).

    Args:
      x: ``[B, H, W, C]`` activations of any float dtype.
      scale, bias: optional ``[C]`` affine parameters.
      eps: added to the variance.
      stats: optional ``(mean, var)``, each ``float32[C]``, used instead of ``x``'s own: the
        whole image's statistics when it is translated in tiles (``jaxgan.tiling``).

    Returns:
      ``[B, H, W, C]`` in ``x.dtype``; statistics are per sample and channel over
      ``H, W`` and computed in float32.
    """
    xf = x.astype(jnp.float32)
    if stats is None:
        mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=(1, 2), keepdims=True)
    else:
        mean, var = (s.astype(jnp.float32) for s in stats)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    if scale is not None:
        y = y * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


# Flax collections of InstanceNorm for tiled inference: statistics given from outside (read when
# present), and each input's moments (recorded when the collection is mutable).
NORM_STATS = "norm_stats"
NORM_MOMENTS = "norm_moments"


class InstanceNorm(nn.Module):
    """Instance norm; ``affine=False`` (no parameters) is the official default.

    For tiled inference only: ``{"norm_stats": {"mean", "var"}}`` variables, when given, replace
    the input's statistics, and applying with ``mutable=["norm_moments"]`` records the input's
    per-sample ``(mean, mean of squares)``, each ``float32[B, C]``.
    """

    affine: bool = False
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = bias = None
        if self.affine:
            c = x.shape[-1]
            scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
            bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        if self.is_mutable_collection(NORM_MOMENTS):
            xf = x.astype(jnp.float32)
            self.sow(NORM_MOMENTS, "moments", (jnp.mean(xf, axis=(1, 2)), jnp.mean(jnp.square(xf), axis=(1, 2))))
        stats = None
        if self.has_variable(NORM_STATS, "mean"):
            stats = (self.get_variable(NORM_STATS, "mean"), self.get_variable(NORM_STATS, "var"))
        return instance_norm(x, scale, bias, self.eps, stats)


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
    """Reflection padding of ``pad`` pixels on H and W (PyTorch ``ReflectionPad2d``)."""
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def _conv_params(module: nn.Module, k: int, c_in: int, c_out: int) -> tuple[jax.Array, jax.Array]:
    """Declare ``kernel: float32[k, k, c_in, c_out]`` (HWIO) and ``bias: float32[c_out]`` as ``nn.Conv`` does."""
    kernel = module.param("kernel", KERNEL_INIT, (k, k, c_in, c_out), jnp.float32)
    return kernel, module.param("bias", BIAS_INIT, (c_out,), jnp.float32)


class _Conv(nn.Module):
    """A ``k x k`` convolution with bias of kind ``KIND`` (see ``jaxgan.conv_forms``), parameters as ``nn.Conv``'s.

    ``kernel: float32[k, k, C_in, C_out]`` (HWIO), ``bias: float32[C_out]``; computed
    in ``dtype`` by the form that ``conv_impl`` picks for the kind.
    """

    KIND = "stride1"
    features: int
    kernel_size: int = 3
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    def _prepare(self, x: jax.Array) -> jax.Array:
        return x

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = _conv_params(self, self.kernel_size, x.shape[-1], self.features)
        x, kernel = self._prepare(x.astype(self.dtype)), kernel.astype(self.dtype)
        form = conv_forms.resolve(self.conv_impl, self.KIND, self.dtype)
        y = conv_forms.APPLY[self.KIND](x, kernel, form)
        return y + bias.astype(self.dtype)


class ReflectConv(_Conv):
    """``ReflectionPad2d(k // 2)`` then a stride-1 ``k x k`` convolution (odd ``k``): ``[B, H, W, C_out]``."""

    def _prepare(self, x: jax.Array) -> jax.Array:
        return reflect_pad(x, self.kernel_size // 2)


class StridedConv(_Conv):
    """``Conv2d(k, stride=2, padding=1)`` (zero padding), ``k`` 3 or 4: ``[B, (H + 2 - k) // 2 + 1, ..., C_out]``."""

    KIND = "stride2"


class PaddedConv(_Conv):
    """Stride-1 ``Conv2d(k, padding=1)`` (zero padding): ``[B, H + 3 - k, W + 3 - k, C_out]``."""

    KIND = "pad1"
    kernel_size: int = 4


class ConvTranspose(_Conv):
    """PyTorch ``ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1)``: doubles H and W.

    The kernel is stored as ``[3, 3, C_in, C_out]`` with
    ``kernel[ky, kx, i, o] == torch_weight[i, o, ky, kx]`` (no spatial flip).
    """

    KIND = "transpose"


class ResnetBlock(nn.Module):
    """``x + [reflect 1, conv 3x3, IN, ReLU, reflect 1, conv 3x3, IN](x)``."""

    features: int
    norm_affine: bool = False
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(ReflectConv, self.features, 3, self.dtype, self.conv_impl)
        y = nn.relu(InstanceNorm(self.norm_affine, name="norm_0")(conv(name="conv_0")(x)))
        y = InstanceNorm(self.norm_affine, name="norm_1")(conv(name="conv_1")(y))
        return x + y


class ResnetGenerator(nn.Module):
    """The CycleGAN ResNet generator (c7s1-64, d128, d256, n x R256, u128, u64, c7s1-3).

    Input ``float[B, H, W, 3]`` in [-1, 1] with H and W divisible by 4; output
    of the same shape, in [-1, 1] (tanh), in ``dtype``.

    Parameter names: ``conv_in``, ``down_0``, ``down_1``, ``res_{i}/conv_{0,1}``,
    ``up_0``, ``up_1``, ``conv_out`` (official ``model.1, 4, 7, 10+i, 19, 22, 26``).
    """

    ngf: int = 64
    n_blocks: int = 9
    out_channels: int = 3
    norm_affine: bool = False
    dtype: Dtype = jnp.float32
    remat: bool = False
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[1] % 4 or x.shape[2] % 4:
            raise ValueError(f"ResnetGenerator needs H and W divisible by 4, got {x.shape[1:3]}")
        ngf, dt, impl = self.ngf, self.dtype, self.conv_impl

        def norm_relu(y: jax.Array, name: str) -> jax.Array:
            return nn.relu(InstanceNorm(self.norm_affine, name=name)(y))

        x = x.astype(dt)
        x = norm_relu(ReflectConv(ngf, 7, dt, impl, name="conv_in")(x), "norm_in")
        for i in range(2):
            x = norm_relu(StridedConv(ngf * 2 ** (i + 1), 3, dt, impl, name=f"down_{i}")(x), f"norm_down_{i}")
        # remat: each block keeps only its input for the backward pass (see xla_compiler_options).
        block = nn.remat(ResnetBlock) if self.remat else ResnetBlock
        for i in range(self.n_blocks):
            x = block(ngf * 4, self.norm_affine, dt, impl, name=f"res_{i}")(x)
        for i in range(2):
            x = norm_relu(ConvTranspose(ngf * 2 ** (1 - i), 3, dt, impl, name=f"up_{i}")(x), f"norm_up_{i}")
        return jnp.tanh(ReflectConv(self.out_channels, 7, dt, impl, name="conv_out")(x))


class PatchDiscriminator(nn.Module):
    """The 70x70 PatchGAN (official ``NLayerDiscriminator``, ``n_layers=3``).

    Input ``float[B, H, W, 3]``; output raw logits ``float32[B, H', W', 1]``
    (256 -> 30, 128 -> 14, 64 -> 6). Parameter names ``conv_0 .. conv_{n+1}``
    (official ``model.0, 2, 5, 8, 11`` for n_layers=3).
    """

    ndf: int = 64
    n_layers: int = 3
    norm_affine: bool = False
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dt, impl = self.dtype, self.conv_impl
        x = x.astype(dt)
        x = nn.leaky_relu(StridedConv(self.ndf, 4, dt, impl, name="conv_0")(x), 0.2)
        for n in range(1, self.n_layers + 1):
            conv = StridedConv if n < self.n_layers else PaddedConv
            x = conv(self.ndf * min(2**n, 8), 4, dt, impl, name=f"conv_{n}")(x)
            x = nn.leaky_relu(InstanceNorm(self.norm_affine, name=f"norm_{n}")(x), 0.2)
        x = PaddedConv(1, 4, dt, impl, name=f"conv_{self.n_layers + 1}")(x)
        return x.astype(jnp.float32)


def _bias_mask(params: PyTree, fed: Any) -> PyTree:
    """Map every convolution's bias to ``fed(path)``, everything else (kernels, ``norm_*`` shifts) to False.

    The learned shift of an affine instance norm (``model.norm_affine``) comes after the mean is
    subtracted, so it is never inert.
    """

    def leaf(path: tuple, _: Any) -> bool:
        names = [getattr(k, "key", str(k)) for k in path]
        return names[-1] == "bias" and not names[-2].startswith("norm") and fed(names[:-1])

    return jax.tree_util.tree_map_with_path(leaf, params)


def generator_inert_bias_mask(params: PyTree) -> PyTree:
    """True for the generator's biases that feed an instance norm (all but ``conv_out``).

    Instance norm subtracts the per-channel mean, so such a bias cannot change
    any output: its true gradient is zero and what autodiff computes is rounding
    noise, which Adam (dividing by sqrt(v)) would turn into learning-rate-sized
    random steps. They exist only so that official weights import exactly.
    """
    return _bias_mask(params, lambda names: names[0] != "conv_out")


def discriminator_inert_bias_mask(params: PyTree) -> PyTree:
    """True for the PatchGAN's biases that feed an instance norm (``conv_1 .. conv_n``)."""
    last = max(int(k.split("_")[1]) for k in params)
    return _bias_mask(params, lambda names: names[0] not in ("conv_0", f"conv_{last}"))


def count_params(params: PyTree) -> int:
    """Total number of scalars in a parameter tree."""
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
