"""The XLA:CPU phase forms of the stride-2 convolutions: the downsampling conv and the transposed conv.

A stride-2 convolution reads (or, transposed, writes) each pixel phase ``(y mod 2,
x mod 2)`` with its own subset of the 3x3 taps. Written per phase, its values and
gradients become stride-1 convolutions with small kernels and no wasted (zero)
taps, which XLA:CPU runs several times faster than its strided and
input-dilated convolutions (measured on a 2-core AVX-512 CPU,
``benchmarks/RESULTS.md``). Exact up to float rounding.

Entry points (used by ``jaxgan.cpu_conv``): :func:`conv_down` and :func:`conv_s2d`
(``Conv2d(k, stride=2, padding=1)``), :func:`conv_transpose_s2`
(``ConvTranspose2d(k=3, s=2, p=1, output_padding=1)``) and :func:`conv_valid`.
Layout NHWC / HWIO.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DN = ("NHWC", "HWIO", "NHWC")


def conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 VALID convolution: ``[B, H, W, C_in]``, ``[k, k, C_in, C_out]`` -> ``[B, H-k+1, W-k+1, C_out]``."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=DN)


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
    y = conv_valid(xp, _phase_kernel(kernel)).reshape(b, h, w, 2, 2, kernel.shape[-1])
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
            cols.append(conv_valid(xp[:, : h + len(dys) - 1, : w + len(dxs) - 1], k))
        rows.append(jnp.stack(cols, axis=3))  # [B, H, W, px, C]
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, kernel.shape[-1])  # [B, H, py, W, px, C]


@jax.custom_vjp
def conv_transpose_s2(x: jax.Array, kernel: jax.Array) -> jax.Array:
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


conv_transpose_s2.defvjp(_conv_transpose_s2_fwd, _conv_transpose_s2_bwd)


def _conv_s2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN)


def conv_s2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
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
    return conv_valid(x, kernel)


@jax.custom_vjp
def conv_down(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``Conv2d(k=3, stride=2, padding=1)`` (zero padding) of ``x: [B, H, W, C_in]``, H and W even.

    The forward pass is XLA's strided convolution. Its input gradient is the
    transposed convolution of the output gradient with the same weights
    (``ConvTranspose2d(k=3, s=2, p=1, output_padding=1)``), computed by
    :func:`_conv_transpose_phases` (XLA's own is an input-dilated convolution,
    slow on XLA:CPU); its kernel gradient is :func:`_kernel_grad_s2_phases`, or that
    of :func:`conv_s2d` on large images (see ``_PHASE_GRAD_MAX_PIXELS``).
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
        dk = jax.vjp(lambda kk: conv_s2d(x, kk), kernel)[1](g)[0]
    return dx, dk.astype(kernel.dtype)


def _kernel_grad_s2_phases(x: jax.Array, g: jax.Array) -> jax.Array:
    """Kernel gradient of ``Conv2d(k=3, stride=2, padding=1)`` on even H and W, by input phase.

    ``dk[ky, kx] = sum_{b, m, n} xpad[b, 2m + ky, 2n + kx] g[b, m, n]``: tap ``ky = 2 qy + py``
    only reads the rows of phase ``py`` of the padded input. So the 9 taps are the
    kernel gradients of four stride-1 convolutions of the phase images, with
    2x2, 2x1, 1x2 and 1x1 kernels: no wasted taps (the space-to-depth form of
    :func:`conv_s2d` computes 16) and no strided convolution (slow on XLA:CPU).

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
            d = jax.vjp(lambda kk, phase=phase: conv_valid(phase, kk), zeros)[1](g)[0]
            for qy in range(kh):
                for qx in range(kw):
                    taps[2 * qy + py, 2 * qx + px] = d[qy, qx]
    return jnp.stack([jnp.stack([taps[ky, kx] for kx in range(3)]) for ky in range(3)])


conv_down.defvjp(_conv_down_fwd, _conv_down_bwd)
