"""The XLA:CPU forms of the CycleGAN convolutions, and the XLA:CPU compiler options they are tuned with.

Each entry point computes exactly what ``lax.conv_general_dilated`` (or
PyTorch's transposed conv) computes, up to float rounding, in a form that
avoids one of XLA:CPU's slow paths, measured on a 2-core AVX-512 CPU
(``benchmarks/RESULTS.md``): GEMMs with a dimension of 3, gradients of strided
and input-dilated convolutions, and a whole-kernel flip in input gradients.
``jaxgan.conv_forms`` picks them (form ``"cpu"``); tests/test_conv_forms.py checks
every one against the native form, values and gradients.

Entry points: :func:`stride1`, :func:`stride2`, :func:`transpose`, :func:`pad1`
(the four kinds of ``jaxgan.conv_forms``) and :func:`xla_compiler_options`.
This module holds the few-channel GEMM forms and the padded stride-1 form; the
stride-2 phase forms live in ``jaxgan.cpu_conv_phases``. Layout NHWC / HWIO.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxgan.cpu_conv_phases import DN, conv_down, conv_s2d, conv_transpose_s2, conv_valid


def stride1(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 VALID conv; few-channel ones (at most ``_FEW_CHANNELS`` on a side) by GEMM forms."""
    c_in, c_out = kernel.shape[-2], kernel.shape[-1]
    if c_out <= _FEW_CHANNELS:
        return _conv_few_out(x, kernel)
    if c_in <= _FEW_CHANNELS:
        return _conv_few_in(x, kernel)
    return conv_valid(x, kernel)


def stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``Conv2d(k, stride=2, padding=1)``: 3x3 on even sizes by ``conv_down``, else ``conv_s2d`` (phase forms)."""
    even = x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0
    return conv_down(x, kernel) if kernel.shape[0] == 3 and even else conv_s2d(x, kernel)


def transpose(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``ConvTranspose2d(k=3, s=2, p=1, output_padding=1)`` by ``conv_transpose_s2`` (phase convolutions)."""
    return conv_transpose_s2(x, kernel)


def pad1(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 ``Conv2d(k, padding=1)`` by :func:`_conv_zero_pad1` (its gradients in other forms)."""
    return _conv_zero_pad1(x, kernel)


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


@jax.custom_vjp
def _conv_few_in(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """VALID stride-1 conv for few input channels; only its input gradient is reformulated.

    Forward and kernel gradient are XLA convolutions (their GEMMs are wide); the
    input gradient, a convolution with few output channels, is :func:`_input_grad_by_gemm`.
    """
    return conv_valid(x, kernel)


def _conv_few_in_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return conv_valid(x, kernel), (x, kernel)


def _conv_few_in_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    d_kernel = jax.vjp(lambda kk: conv_valid(x, kk), kernel)[1](g)[0]
    return _input_grad_by_gemm(g, kernel), d_kernel


def _input_grad_by_gemm(g: jax.Array, kernel: jax.Array) -> jax.Array:
    """Input gradient of ``conv_valid(x, kernel)``: a GEMM to ``k * k * C_in`` columns, then :func:`_col2im`.

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
    """Kernel gradient of ``conv_valid(x, kernel)`` for few output channels.

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
    dx = jax.vjp(lambda xx: conv_valid(xx, kernel), x)[1](g)[0]
    return dx, _kernel_grad_by_swapped_conv(x, g).astype(kernel.dtype)


_conv_few_out.defvjp(_conv_few_out_fwd, _conv_few_out_bwd)


def _conv_pad1(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)


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


# ---------------------------------------------------------------------------------------------
# XLA:CPU compiler options (the CPU forms are tuned with them).

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
    """``compiler_options`` for ``jax.jit`` of any function that runs the CycleGAN networks.

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
