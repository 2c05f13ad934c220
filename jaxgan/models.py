"""CycleGAN networks: the ResNet generator and the 70x70 PatchGAN, as in the paper.

Layer for layer the architecture of the official PyTorch code
(``networks.ResnetGenerator`` with ``resnet_9blocks`` / ``resnet_6blocks`` and
``networks.NLayerDiscriminator`` with ``n_layers=3``), so that its state dicts
can be imported (see ``jaxgan.interop``). Layout is NHWC; images are
``float[B, H, W, 3]`` in [-1, 1].

Parameters are always float32; ``dtype`` sets the compute dtype of the
convolutions (e.g. ``jnp.bfloat16``), while instance-norm statistics are always
computed in float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
) -> jax.Array:
    """Instance normalisation as PyTorch's ``InstanceNorm2d`` (biased variance).

    Args:
      x: ``[B, H, W, C]`` activations of any float dtype.
      scale, bias: optional ``[C]`` affine parameters.
      eps: added to the variance.

    Returns:
      ``[B, H, W, C]`` in ``x.dtype``; statistics are per sample and channel over
      ``H, W`` and computed in float32.
    """
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
    centred = xf - mean
    var = jnp.mean(jnp.square(centred), axis=(1, 2), keepdims=True)
    y = centred * jax.lax.rsqrt(var + eps)
    if scale is not None:
        y = y * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


class InstanceNorm(nn.Module):
    """Instance norm; ``affine=False`` (no parameters) is the official default."""

    affine: bool = False
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = bias = None
        if self.affine:
            c = x.shape[-1]
            scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
            bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return instance_norm(x, scale, bias, self.eps)


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
    """Reflection padding of ``pad`` pixels on H and W (PyTorch ``ReflectionPad2d``)."""
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


# For PyTorch's ConvTranspose2d(k=3, s=2, p=1, output_padding=1), output row
# 2m + phase receives input row m + offset through kernel tap _TAP[phase][offset]
# (None: no tap). Derived from o = 2 i - 1 + k.
_TAP = ((1, None), (2, 0))


def _phase_selector() -> np.ndarray:
    """``S[offset, phase, tap]`` = 1 where input offset feeds output phase via tap."""
    s = np.zeros((2, 2, 3), np.float32)
    for phase in range(2):
        for offset in range(2):
            tap = _TAP[phase][offset]
            if tap is not None:
                s[offset, phase, tap] = 1.0
    return s


class ConvTranspose(nn.Module):
    """PyTorch ``ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1)``.

    Doubles H and W. The kernel is stored as ``[3, 3, C_in, C_out]`` with
    ``kernel[ky, kx, i, o] == torch_weight[i, o, ky, kx]`` (no spatial flip).

    It is computed in "phase form": a 2x2 stride-1 convolution over the input
    padded by one row/column at the bottom/right yields the four output phases
    (even/odd row x even/odd column) as ``4 * C_out`` channels, which a
    depth-to-space reshape interleaves. This is exactly the transposed conv, and
    its gradient consists of ordinary convolutions, which XLA:CPU runs ~15x
    faster than the gradient of an input-dilated convolution.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c_in = x.shape
        kernel = self.param("kernel", KERNEL_INIT, (3, 3, c_in, self.features), jnp.float32)
        bias = self.param("bias", BIAS_INIT, (self.features,), jnp.float32)
        sel = jnp.asarray(_phase_selector())
        # k2[dy, dx, i, py, px, o] = kernel[tap(py, dy), tap(px, dx), i, o]
        k2 = jnp.einsum("apk,bql,klio->abipqo", sel, sel, kernel)
        k2 = k2.reshape(2, 2, c_in, 4 * self.features).astype(self.dtype)
        x = jnp.pad(x.astype(self.dtype), ((0, 0), (0, 1), (0, 1), (0, 0)))
        y = jax.lax.conv_general_dilated(x, k2, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = y.reshape(b, h, w, 2, 2, self.features)
        y = y.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, self.features)
        return y + bias.astype(self.dtype)


def _conv(features: int, kernel: int, stride: int, padding: Any, dtype: Dtype, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=padding,
        use_bias=True,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=KERNEL_INIT,
        bias_init=BIAS_INIT,
        name=name,
    )


class ResnetBlock(nn.Module):
    """``x + [reflect 1, conv 3x3, IN, ReLU, reflect 1, conv 3x3, IN](x)``."""

    features: int
    norm_affine: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = _conv(self.features, 3, 1, "VALID", self.dtype, "conv_0")(reflect_pad(x, 1))
        y = nn.relu(InstanceNorm(self.norm_affine, name="norm_0")(y))
        y = _conv(self.features, 3, 1, "VALID", self.dtype, "conv_1")(reflect_pad(y, 1))
        y = InstanceNorm(self.norm_affine, name="norm_1")(y)
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

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[1] % 4 or x.shape[2] % 4:
            raise ValueError(f"ResnetGenerator needs H and W divisible by 4, got {x.shape[1:3]}")

        def norm(name: str) -> InstanceNorm:
            return InstanceNorm(self.norm_affine, name=name)

        x = x.astype(self.dtype)
        x = _conv(self.ngf, 7, 1, "VALID", self.dtype, "conv_in")(reflect_pad(x, 3))
        x = nn.relu(norm("norm_in")(x))
        for i in range(2):
            x = _conv(self.ngf * 2 ** (i + 1), 3, 2, ((1, 1), (1, 1)), self.dtype, f"down_{i}")(x)
            x = nn.relu(norm(f"norm_down_{i}")(x))
        block = nn.remat(ResnetBlock) if self.remat else ResnetBlock
        for i in range(self.n_blocks):
            x = block(self.ngf * 4, self.norm_affine, self.dtype, name=f"res_{i}")(x)
        for i in range(2):
            x = ConvTranspose(self.ngf * 2 ** (1 - i), self.dtype, name=f"up_{i}")(x)
            x = nn.relu(norm(f"norm_up_{i}")(x))
        x = _conv(self.out_channels, 7, 1, "VALID", self.dtype, "conv_out")(reflect_pad(x, 3))
        return jnp.tanh(x)


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

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = ((1, 1), (1, 1))
        x = x.astype(self.dtype)
        x = nn.leaky_relu(_conv(self.ndf, 4, 2, pad, self.dtype, "conv_0")(x), 0.2)
        mult = 1
        for n in range(1, self.n_layers + 1):
            mult = min(2**n, 8)
            stride = 2 if n < self.n_layers else 1
            x = _conv(self.ndf * mult, 4, stride, pad, self.dtype, f"conv_{n}")(x)
            x = InstanceNorm(self.norm_affine, name=f"norm_{n}")(x)
            x = nn.leaky_relu(x, 0.2)
        x = _conv(1, 4, 1, pad, self.dtype, f"conv_{self.n_layers + 1}")(x)
        return x.astype(jnp.float32)


def _bias_mask(params: PyTree, fed: Any) -> PyTree:
    """Map every leaf to ``fed(path)`` for biases, False for everything else."""

    def leaf(path: tuple, _: Any) -> bool:
        names = [getattr(k, "key", str(k)) for k in path]
        return names[-1] == "bias" and fed(names[:-1])

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
