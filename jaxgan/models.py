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


_DN = ("NHWC", "HWIO", "NHWC")

# A convolution with at most this many input or output channels is computed as
# a matrix product plus shifted sums (below) instead of by XLA's convolution:
# with 3 channels on one side the im2col GEMM inside XLA:CPU's convolution has a
# dimension of 3 and runs at a few percent of peak (the generator's 7x7 output
# conv alone took ~40% of a train step on a 2-core CPU).
_FEW_CHANNELS = 4


def _shift_sum(z: jax.Array, k: int, c: int) -> jax.Array:
    """``y[b, i, j] = sum_{dy, dx} z[b, i + dy, j + dx, (dy * k + dx) * c : ... + c]`` (summed in float32).

    Args:
      z: ``[B, H + k - 1, W + k - 1, k * k * c]``.

    Returns:
      ``[B, H, W, c]`` in ``z.dtype``.
    """
    h, w = z.shape[1] - k + 1, z.shape[2] - k + 1
    y = jnp.zeros((*z.shape[:1], h, w, c), jnp.float32)
    for t in range(k * k):
        dy, dx = divmod(t, k)
        y = y + z[:, dy : dy + h, dx : dx + w, t * c : (t + 1) * c].astype(jnp.float32)
    return y.astype(z.dtype)


def _col2im(p: jax.Array, k: int, c: int) -> jax.Array:
    """Transpose of im2col: ``[B, H, W, k * k * c]`` -> ``[B, H + k - 1, W + k - 1, c]`` (float32 sums)."""
    y = None
    for t in range(k * k):
        dy, dx = divmod(t, k)
        part = p[..., t * c : (t + 1) * c].astype(jnp.float32)
        part = jnp.pad(part, ((0, 0), (dy, k - 1 - dy), (dx, k - 1 - dx), (0, 0)))
        y = part if y is None else y + part
    return y.astype(p.dtype)


def _conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DN)


@jax.custom_vjp
def _conv_few_in(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """VALID stride-1 conv for few input channels; only its input gradient is reformulated.

    Forward and kernel gradient are XLA convolutions (their GEMMs are wide); the
    input gradient, a convolution with few output channels, is :func:`_input_grad_by_gemm`.
    """
    return _conv_valid(x, kernel)


def _conv_few_in_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _conv_valid(x, kernel), (x, kernel)


def _conv_few_in_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    d_kernel = jax.vjp(lambda kk: _conv_valid(x, kk), kernel)[1](g)[0]
    return _input_grad_by_gemm(g, kernel), d_kernel


def _input_grad_by_gemm(g: jax.Array, kernel: jax.Array) -> jax.Array:
    """Input gradient of ``_conv_valid(x, kernel)``: a GEMM to ``k * k * C_in`` columns, then :func:`_col2im`.

    Args:
      g: ``[B, H, W, C_out]``; kernel: ``[k, k, C_in, C_out]``.

    Returns:
      ``[B, H + k - 1, W + k - 1, C_in]``. Needs no flipped copy of the kernel.
    """
    k, _, c_in, c_out = kernel.shape
    cols = jnp.einsum("bhwo,ko->bhwk", g, kernel.reshape(k * k * c_in, c_out))
    return _col2im(cols, k, c_in)


_conv_few_in.defvjp(_conv_few_in_fwd, _conv_few_in_bwd)


def _kernel_grad_by_swapped_conv(x: jax.Array, g: jax.Array) -> jax.Array:
    """Kernel gradient of ``_conv_valid(x, kernel)`` for few output channels.

    ``dk[dy, dx, i, o] = sum_{b, p} x[b, p + (dy, dx), i] g[b, p, o]`` written as a
    convolution of the zero-padded ``g`` (its channels as batch, its batch as
    features) with ``x`` as the kernel: XLA's own kernel-gradient convolution
    would instead run a GEMM with ``C_out`` columns over an im2col of ``x``
    (measured 5x slower at 256x256).

    Args:
      x: ``[B, H + k - 1, W + k - 1, C_in]``; g: ``[B, H, W, C_out]``.

    Returns:
      ``[k, k, C_in, C_out]``.
    """
    k = x.shape[1] - g.shape[1] + 1
    gp = jnp.pad(g, ((0, 0), (k - 1, k - 1), (k - 1, k - 1), (0, 0)))
    out = jax.lax.conv_general_dilated(gp, x, (1, 1), "VALID", dimension_numbers=("CHWN", "IHWO", "NHWC"))
    return out[:, ::-1, ::-1, :].transpose(1, 2, 3, 0)  # out[o, k-1-dy, k-1-dx, i]


@jax.custom_vjp
def _conv_few_out(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """VALID stride-1 conv for few output channels: a 1x1 GEMM to ``k * k * C_out`` columns, then shifted sums.

    The input gradient is XLA's (a convolution with few *input* channels, which
    is fast); the kernel gradient is :func:`_kernel_grad_by_swapped_conv`.
    """
    k, _, c_in, c_out = kernel.shape
    taps = kernel.transpose(2, 0, 1, 3).reshape(c_in, k * k * c_out)  # [I, (dy, dx, o)]
    return _shift_sum(jnp.einsum("bhwi,ik->bhwk", x, taps), k, c_out)


def _conv_few_out_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _conv_few_out(x, kernel), (x, kernel)


def _conv_few_out_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    dx = jax.vjp(lambda xx: _conv_valid(xx, kernel), x)[1](g)[0]
    return dx, _kernel_grad_by_swapped_conv(x, g).astype(kernel.dtype)


_conv_few_out.defvjp(_conv_few_out_fwd, _conv_few_out_bwd)


def _conv_params(module: nn.Module, k: int, c_in: int, c_out: int) -> tuple[jax.Array, jax.Array]:
    """Declare ``kernel: float32[k, k, c_in, c_out]`` (HWIO) and ``bias: float32[c_out]`` as ``nn.Conv`` does."""
    kernel = module.param("kernel", KERNEL_INIT, (k, k, c_in, c_out), jnp.float32)
    return kernel, module.param("bias", BIAS_INIT, (c_out,), jnp.float32)


class ReflectConv(nn.Module):
    """``ReflectionPad2d(k // 2)`` then a ``k x k`` stride-1 convolution with bias (odd ``k``).

    Parameters ``kernel: float32[k, k, C_in, C_out]`` (HWIO) and ``bias: float32[C_out]``,
    exactly as ``nn.Conv``'s. Input ``[B, H, W, C_in]``, output ``[B, H, W, C_out]`` in ``dtype``.
    Convolutions with at most ``_FEW_CHANNELS`` channels on one side take the
    GEMM formulations above (equal up to float rounding, see tests/test_models_speedpaths.py).
    """

    features: int
    kernel_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c_in = self.kernel_size, x.shape[-1]
        kernel, bias = _conv_params(self, k, c_in, self.features)
        return _reflect_conv(x, kernel, bias, self.dtype)


def _reflect_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, dtype: Dtype) -> jax.Array:
    """The computation of :class:`ReflectConv` (float32 ``kernel [k, k, I, O]``, ``bias [O]``)."""
    c_out, c_in = kernel.shape[-1], kernel.shape[-2]
    x = reflect_pad(x.astype(dtype), kernel.shape[0] // 2)
    kernel = kernel.astype(dtype)
    if c_out <= _FEW_CHANNELS:
        y = _conv_few_out(x, kernel)
    elif c_in <= _FEW_CHANNELS:
        y = _conv_few_in(x, kernel)
    else:
        y = _conv_valid(x, kernel)
    return y + bias.astype(dtype)


# For PyTorch's ConvTranspose2d(k=3, s=2, p=1, output_padding=1), output row
# 2m + phase receives input row m + offset through kernel tap _TAP[phase][offset]
# (None: no tap). Derived from o = 2 i - 1 + k.
_TAP = ((1, None), (2, 0))

# Kernel gradients of the stride-2 3x3 convs (both directions): the four phase
# convolutions of _kernel_grad_s2_phases (9 taps) were faster than the single
# 16-tap space-to-depth convolution up to a 64x64 half-resolution grid (e.g.
# down_0 at 128x128 images: 2.5 vs 4.2 ms), and slower beyond (down_0 at
# 256x256: 24 vs 18 ms), where XLA:CPU's kernel gradient of the small phase
# kernels over large images loses efficiency.
_PHASE_GRAD_MAX_PIXELS = 64 * 64


def _phase_kernel(kernel: jax.Array) -> jax.Array:
    """``[3, 3, I, O]`` transposed-conv taps -> ``[2, 2, I, 4 * O]`` phase-form kernel.

    ``k2[dy, dx, :, (py, px, o)] = kernel[_TAP[py][dy], _TAP[px][dx], :, o]`` (zero
    where there is no tap), built by placing slices: exact, and no matmul.
    """
    zero = jnp.zeros_like(kernel[0, 0])
    rows = []
    for dy in range(2):
        cols = []
        for dx in range(2):
            phases = []
            for py in range(2):
                for px in range(2):
                    ty, tx = _TAP[py][dy], _TAP[px][dx]
                    phases.append(zero if ty is None or tx is None else kernel[ty, tx])
            cols.append(jnp.concatenate(phases, axis=-1))
        rows.append(jnp.stack(cols))
    return jnp.stack(rows)


def _conv_transpose_phase_form(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The transposed conv as ONE 2x2 convolution to ``4 * C_out`` channels (7 of its 16 taps are zero)."""
    b, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    y = _conv_valid(xp, _phase_kernel(kernel)).reshape(b, h, w, 2, 2, kernel.shape[-1])
    return y.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, kernel.shape[-1])


def _conv_transpose_phases(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The transposed conv as four convolutions, one per output phase, with only its real taps (1, 2, 2, 4)."""
    b, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    rows = []
    for py in range(2):
        cols = []
        for px in range(2):
            dys = [d for d in range(2) if _TAP[py][d] is not None]
            dxs = [d for d in range(2) if _TAP[px][d] is not None]
            k = jnp.stack([jnp.stack([kernel[_TAP[py][dy], _TAP[px][dx]] for dx in dxs]) for dy in dys])
            cols.append(_conv_valid(xp[:, : h + len(dys) - 1, : w + len(dxs) - 1], k))
        rows.append(jnp.stack(cols, axis=3))  # [B, H, W, px, C]
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, kernel.shape[-1])  # [B, H, py, W, px, C]


@jax.custom_vjp
def _conv_transpose_s2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """PyTorch ``ConvTranspose2d(k=3, s=2, p=1, output_padding=1)`` without bias.

    Args:
      x: ``[B, H, W, C_in]``.
      kernel: ``[3, 3, C_in, C_out]``, ``kernel[ky, kx, i, o] == torch_weight[i, o, ky, kx]``.

    Returns:
      ``[B, 2H, 2W, C_out]``.

    Output and input gradient use the four exact phase convolutions. The kernel
    gradient is :func:`_kernel_grad_s2_phases` with the roles of input and
    output gradient swapped on inputs of up to ``_PHASE_GRAD_MAX_PIXELS``, and
    that of :func:`_conv_transpose_phase_form` on larger ones (each the faster
    on XLA:CPU there, measured on a 2-core AVX-512 CPU).
    """
    return _conv_transpose_phases(x, kernel)


def _conv_transpose_s2_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _conv_transpose_phases(x, kernel), (x, kernel)


def _conv_transpose_s2_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    dx = jax.vjp(lambda xx: _conv_transpose_phases(xx, kernel), x)[1](g)[0]
    if x.shape[1] * x.shape[2] <= _PHASE_GRAD_MAX_PIXELS:
        # The transposed conv is the adjoint of Conv2d(k=3, s=2, p=1) in its input, so its
        # kernel gradient is that conv's kernel gradient with input g and output gradient x.
        dk = _kernel_grad_s2_phases(g, x).transpose(0, 1, 3, 2)
    else:
        dk = jax.vjp(lambda kk: _conv_transpose_phase_form(x, kk), kernel)[1](g)[0]
    return dx, dk.astype(kernel.dtype)


_conv_transpose_s2.defvjp(_conv_transpose_s2_fwd, _conv_transpose_s2_bwd)


class ConvTranspose(nn.Module):
    """PyTorch ``ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1)``.

    Doubles H and W. The kernel is stored as ``[3, 3, C_in, C_out]`` with
    ``kernel[ky, kx, i, o] == torch_weight[i, o, ky, kx]`` (no spatial flip).

    It is computed from the four output phases (even/odd row x even/odd
    column), each an ordinary stride-1 convolution of the input padded by one
    row/column at the bottom/right with the taps that reach that phase, and
    interleaved afterwards (:func:`_conv_transpose_s2`). This is exactly the
    transposed conv, and its gradients are ordinary convolutions too, which
    XLA:CPU runs ~15x faster than the gradient of an input-dilated convolution.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c_in = x.shape
        kernel, bias = _conv_params(self, 3, c_in, self.features)
        y = _conv_transpose_s2(x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


def _conv_s2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=_DN)


def _conv_s2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``Conv2d(k, stride=2, padding=1)`` for ``k <= 4`` as a stride-1 2x2 conv on the space-to-depth input.

    With ``ky = 2 qy + py``, ``sum_ky xpad[2m + ky] w[ky] = sum_qy s2d(xpad)[m + qy, py] w[2 qy + py]``:
    the kernel, zero-padded to 4x4, becomes ``[2, 2, 4 * C_in, C_out]``. Exact; the
    gradients are then stride-1 convolutions, which XLA:CPU runs at several times
    the speed of a strided convolution's kernel gradient.

    Args:
      x: ``[B, H, W, C_in]``; kernel: ``[k, k, C_in, C_out]`` (HWIO).

    Returns:
      ``[B, (H + 2 - k) // 2 + 1, (W + 2 - k) // 2 + 1, C_out]``.
    """
    b, h, w, c = x.shape
    k, _, _, c_out = kernel.shape
    oh, ow = (h + 2 - k) // 2 + 1, (w + 2 - k) // 2 + 1
    # Pad to 2 * (out + 1) rows/columns: one on top/left as PyTorch, the rest at the bottom/right.
    x = jnp.pad(x, ((0, 0), (1, 2 * oh + 1 - h), (1, 2 * ow + 1 - w), (0, 0)))
    x = x.reshape(b, oh + 1, 2, ow + 1, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, oh + 1, ow + 1, 4 * c)
    kernel = jnp.pad(kernel, ((0, 4 - k), (0, 4 - k), (0, 0), (0, 0)))
    kernel = kernel.reshape(2, 2, 2, 2, c, c_out).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * c, c_out)
    return _conv_valid(x, kernel)


@jax.custom_vjp
def _conv_down(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``Conv2d(k=3, stride=2, padding=1)`` (zero padding) of ``x: [B, H, W, C_in]``, H and W even.

    The forward pass is XLA's strided convolution. Its input gradient is the
    transposed convolution of the output gradient with the same weights
    (``ConvTranspose2d(k=3, s=2, p=1, output_padding=1)``), computed by
    :func:`_conv_transpose_phases` (XLA's own is an input-dilated convolution,
    slow on XLA:CPU); its kernel gradient is :func:`_kernel_grad_s2_phases`, or that
    of :func:`_conv_s2d` on large images (see ``_PHASE_GRAD_MAX_PIXELS``).
    """
    return _conv_s2(x, kernel)


def _conv_down_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _conv_s2(x, kernel), (x, kernel)


def _conv_down_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    dx = _conv_transpose_phases(g, kernel.transpose(0, 1, 3, 2))
    if g.shape[1] * g.shape[2] <= _PHASE_GRAD_MAX_PIXELS:
        dk = _kernel_grad_s2_phases(x, g)
    else:
        dk = jax.vjp(lambda kk: _conv_s2d(x, kk), kernel)[1](g)[0]
    return dx, dk.astype(kernel.dtype)


def _kernel_grad_s2_phases(x: jax.Array, g: jax.Array) -> jax.Array:
    """Kernel gradient of ``Conv2d(k=3, stride=2, padding=1)`` on even H and W, by input phase.

    ``dk[ky, kx] = sum_{b, m, n} xpad[b, 2m + ky, 2n + kx] g[b, m, n]``: tap ``ky = 2 qy + py``
    only reads the rows of phase ``py`` of the padded input. So the 9 taps are the
    kernel gradients of four stride-1 convolutions of the phase images, with
    2x2, 2x1, 1x2 and 1x1 kernels: no wasted taps (the space-to-depth form of
    :func:`_conv_s2d` computes 16) and no strided convolution (slow on XLA:CPU).

    Args:
      x: ``[B, H, W, C_in]``; g: ``[B, H / 2, W / 2, C_out]``.

    Returns:
      ``[3, 3, C_in, C_out]`` in ``x.dtype``.
    """
    oh, ow, c_out = g.shape[1], g.shape[2], g.shape[3]
    xp = jnp.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)))  # the bottom/right padding is never read
    taps = {}
    for py in range(2):
        for px in range(2):
            kh, kw = 2 - py, 2 - px
            phase = xp[:, py::2, px::2][:, : oh + kh - 1, : ow + kw - 1]
            zeros = jnp.zeros((kh, kw, x.shape[-1], c_out), x.dtype)
            d = jax.vjp(lambda kk, phase=phase: _conv_valid(phase, kk), zeros)[1](g)[0]
            for qy in range(kh):
                for qx in range(kw):
                    taps[2 * qy + py, 2 * qx + px] = d[qy, qx]
    return jnp.stack([jnp.stack([taps[ky, kx] for kx in range(3)]) for ky in range(3)])


_conv_down.defvjp(_conv_down_fwd, _conv_down_bwd)


class StridedConv(nn.Module):
    """``Conv2d(k, stride=2, padding=1)`` (zero padding) with bias, ``k`` 3 or 4.

    Parameters exactly as ``nn.Conv``'s (``kernel: float32[k, k, C_in, C_out]``,
    ``bias: float32[C_out]``). Input ``[B, H, W, C_in]``; output
    ``[B, (H + 2 - k) // 2 + 1, (W + 2 - k) // 2 + 1, features]`` in ``dtype``.
    4x4 kernels run as :func:`_conv_s2d` (no wasted taps); 3x3 kernels on even
    sizes as :func:`_conv_down`.
    """

    features: int
    kernel_size: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel, bias = _conv_params(self, k, x.shape[-1], self.features)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        even = x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0
        y = _conv_down(x, kernel) if k == 3 and even else _conv_s2d(x, kernel)
        return y + bias.astype(self.dtype)


def _conv_pad1(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN)


@jax.custom_vjp
def _conv_zero_pad1(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 ``Conv2d(k, padding=1)`` (zero padding): ``[B, H, W, C_in]`` -> ``[B, H + 3 - k, W + 3 - k, C_out]``.

    The forward pass is XLA's convolution; the gradients avoid XLA:CPU's slow
    paths at the PatchGAN's last two layers (16x16 at 128x128 images):

    * many output channels: the input gradient is :func:`_input_grad_by_gemm`.
      XLA's own first transposes and flips the whole kernel (8 MB for
      4x4x256x512), which costs as much as the convolution at these sizes.
    * few output channels: the kernel gradient is :func:`_kernel_grad_by_swapped_conv`.
    """
    return _conv_pad1(x, kernel)


def _conv_zero_pad1_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _conv_pad1(x, kernel), (x, kernel)


def _conv_zero_pad1_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    if kernel.shape[-1] <= _FEW_CHANNELS:
        dx = jax.vjp(lambda xx: _conv_pad1(xx, kernel), x)[1](g)[0]
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return dx, _kernel_grad_by_swapped_conv(xp, g).astype(kernel.dtype)
    dx = _input_grad_by_gemm(g, kernel)[:, 1:-1, 1:-1]  # gradient of the padded input, minus its border
    dk = jax.vjp(lambda kk: _conv_pad1(x, kk), kernel)[1](g)[0]
    return dx, dk


_conv_zero_pad1.defvjp(_conv_zero_pad1_fwd, _conv_zero_pad1_bwd)


class PaddedConv(nn.Module):
    """Stride-1 ``Conv2d(k, padding=1)`` (zero padding) with bias, computed by :func:`_conv_zero_pad1`.

    Parameters exactly as ``nn.Conv``'s (``kernel: float32[k, k, C_in, C_out]``,
    ``bias: float32[C_out]``). Input ``[B, H, W, C_in]``; output
    ``[B, H + 3 - k, W + 3 - k, features]`` in ``dtype``.
    """

    features: int
    kernel_size: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel, bias = _conv_params(self, k, x.shape[-1], self.features)
        y = _conv_zero_pad1(x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class ResnetBlock(nn.Module):
    """``x + [reflect 1, conv 3x3, IN, ReLU, reflect 1, conv 3x3, IN](x)``."""

    features: int
    norm_affine: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = ReflectConv(self.features, 3, self.dtype, name="conv_0")(x)
        y = nn.relu(InstanceNorm(self.norm_affine, name="norm_0")(y))
        y = ReflectConv(self.features, 3, self.dtype, name="conv_1")(y)
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
        x = ReflectConv(self.ngf, 7, self.dtype, name="conv_in")(x)
        x = nn.relu(norm("norm_in")(x))
        for i in range(2):
            x = StridedConv(self.ngf * 2 ** (i + 1), 3, self.dtype, name=f"down_{i}")(x)
            x = nn.relu(norm(f"norm_down_{i}")(x))
        # remat: each block keeps only its input for the backward pass (see xla_compiler_options).
        block = nn.remat(ResnetBlock) if self.remat else ResnetBlock
        for i in range(self.n_blocks):
            x = block(self.ngf * 4, self.norm_affine, self.dtype, name=f"res_{i}")(x)
        for i in range(2):
            x = ConvTranspose(self.ngf * 2 ** (1 - i), self.dtype, name=f"up_{i}")(x)
            x = nn.relu(norm(f"norm_up_{i}")(x))
        x = ReflectConv(self.out_channels, 7, self.dtype, name="conv_out")(x)
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
        x = x.astype(self.dtype)
        x = nn.leaky_relu(StridedConv(self.ndf, 4, self.dtype, name="conv_0")(x), 0.2)
        mult = 1
        for n in range(1, self.n_layers + 1):
            mult = min(2**n, 8)
            if n < self.n_layers:
                x = StridedConv(self.ndf * mult, 4, self.dtype, name=f"conv_{n}")(x)
            else:
                x = PaddedConv(self.ndf * mult, 4, self.dtype, name=f"conv_{n}")(x)
            x = InstanceNorm(self.norm_affine, name=f"norm_{n}")(x)
            x = nn.leaky_relu(x, 0.2)
        x = PaddedConv(1, 4, self.dtype, name=f"conv_{self.n_layers + 1}")(x)
        return x.astype(jnp.float32)


# XLA:CPU in jaxlib 0.10/0.11 hands every convolution to YNNPACK by default. On
# this model's convolutions (3x3 at 256 channels, batches of 1-3) its kernels
# measured up to 2x slower than XLA's own Eigen convolutions, forward and
# kernel gradient, and a whole train step at 128x128 about 2x slower (2-core
# AVX-512 CPU, float32; benchmarks/RESULTS.md). The first option keeps YNNPACK
# for reductions and matrix products and gives convolutions back to Eigen.
# The second: XLA:CPU's default copy insertion could not prove the in-place
# updates of donated buffers safe and copied nearly every parameter and Adam
# first moment at the start of the train step (286 copies, 22 ms of a 1.5 s
# step at 128x128); with region analysis it proves them safe (0 copies).
_CPU_OPTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "xla_cpu_copy_insertion_use_region_analysis": True,
}
# XLA:CPU's default scheduler ignores memory: it runs the recomputation of
# rematerialised blocks early and ``nn.remat`` saves nothing. The
# memory-optimised one makes remat effective (-27% temporary memory at 512x512)
# at the same speed, but without remat it needs more memory than the default
# (+8% at 256x256, +17% at 512x512), so it is used with remat only.
_CPU_REMAT_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
_CPU_OPTIONS_JAXLIB = ((0, 10), (0, 12))  # versions known to have these options: [0.10, 0.12)


def xla_compiler_options(remat: bool = False, backend: str | None = None) -> dict[str, Any]:
    """``compiler_options`` for ``jax.jit`` of any function that runs these networks.

    Args:
      remat: whether the generator is built with ``remat=True``.
      backend: the platform the function compiles for (``jax.default_backend()``);
        anything but ``"cpu"`` gets no options. None: assume CPU.

    Only XLA:CPU reads these options (XLA ``DebugOptions`` fields; other
    backends ignore them). Empty for jaxlib versions in which they are not known
    to exist, since XLA rejects unknown options. Does not initialise a backend,
    so it is safe at import time and before ``jax.distributed.initialize``.
    """
    if backend not in (None, "cpu"):
        return {}
    import jaxlib

    version = tuple(int(p) for p in jaxlib.__version__.split(".")[:2])
    low, high = _CPU_OPTIONS_JAXLIB
    if not low <= version < high:
        return {}
    return {**_CPU_OPTIONS, **(_CPU_REMAT_OPTIONS if remat else {})}


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
