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
Layout NHWC / HWIO.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

_DN = ("NHWC", "HWIO", "NHWC")


def _conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DN)


def stride1(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 VALID conv; few-channel ones (at most ``_FEW_CHANNELS`` on a side) by GEMM forms."""
    c_in, c_out = kernel.shape[-2], kernel.shape[-1]
    if c_out <= _FEW_CHANNELS:
        return _conv_few_out(x, kernel)
    if c_in <= _FEW_CHANNELS:
        return _conv_few_in(x, kernel)
    return _conv_valid(x, kernel)


def stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``Conv2d(k, stride=2, padding=1)``: 3x3 on even sizes by :func:`_conv_down`, else :func:`_conv_s2d`."""
    even = x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0
    return _conv_down(x, kernel) if kernel.shape[0] == 3 and even else _conv_s2d(x, kernel)


def transpose(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``ConvTranspose2d(k=3, s=2, p=1, output_padding=1)`` by :func:`_conv_transpose_s2` (phase convolutions)."""
    return _conv_transpose_s2(x, kernel)


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
