"""How the CycleGAN convolutions are computed: the exact arithmetic forms, chosen per backend.

``jaxgan.models`` says *what* each layer computes (PyTorch's ``Conv2d`` and
``ConvTranspose2d`` as the official networks use them); this module says *how*.
Each of the four kinds of convolution in the networks has two forms that give
the same values and gradients up to float rounding:

* ``"native"``: one ``lax.conv_general_dilated`` (the transposed conv as the
  convolution of the 2-dilated input with the spatially flipped kernel), with
  XLA's own gradients; what cuDNN and the TPU compiler are built for.
* ``"cpu"``: forms that avoid XLA:CPU's slow paths: matrix products plus
  shifted sums for convolutions with 3 channels on one side, the transposed
  conv as four phase convolutions, stride-2 kernel gradients by input phase or
  space-to-depth, and custom VJPs for the gradients XLA:CPU computes slowly
  (each measured on a 2-core AVX-512 CPU; ``benchmarks/RESULTS.md``).

The kinds (:data:`KINDS`):

* ``stride1``: stride-1 VALID convolution of a reflect-padded input (the
  generator's 7x7 and 3x3 ``ReflectConv``);
* ``stride2``: ``Conv2d(k, stride=2, padding=1)`` (generator downsampling, k=3;
  PatchGAN, k=4);
* ``transpose``: ``ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1)``;
* ``pad1``: stride-1 ``Conv2d(k=4, padding=1)`` (the PatchGAN's last two layers).

The choice is static, made when a function is traced: ``conv_impl`` is
``"auto"`` (:data:`AUTO`, the form measured fastest for the backend and compute
dtype), ``"native"``, ``"cpu"``, or per kind, e.g. ``"transpose=cpu,stride2=native"``
(kinds not named take ``auto``). ``auto`` reads ``jax.default_backend()``: code that
jits for a non-default backend should name the forms.

Shapes are NHWC activations and HWIO kernels throughout.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxgan import cpu_conv
from jaxgan.cpu_conv import xla_compiler_options  # noqa: F401  (re-exported: jit options for these networks)

KINDS = ("stride1", "stride2", "transpose", "pad1")
FORMS = ("native", "cpu")
IMPLS = ("auto", *FORMS)

# conv_impl="auto": backend -> compute dtype -> kind -> form. CPU: the forms measured
# fastest on XLA:CPU (benchmarks/RESULTS.md). GPU: measured by the device suite on an
# H200 (benchmarks/RESULTS.md, 2026-11-30; forward + both gradients of every layer of the
# paper networks at 256x256, batch 4, bf16): native is faster for stride1 (3.7 vs 13.8 ms
# per network), stride2 (0.53 vs 0.79) and pad1 (0.21 vs 0.35), while the native transposed
# conv (an input-dilated convolution) took 18.6 ms against 0.53 for the four phase
# convolutions. float32 is not measured yet and takes the bf16 choice. TPU: native.
_GPU = {"stride1": "native", "stride2": "native", "transpose": "cpu", "pad1": "native"}
AUTO: dict[str, dict[str, dict[str, str]]] = {
    "cpu": {dt: dict.fromkeys(KINDS, "cpu") for dt in ("float32", "bfloat16", "float16")},
    "gpu": {dt: dict(_GPU) for dt in ("float32", "bfloat16", "float16")},
    "tpu": {dt: dict.fromkeys(KINDS, "native") for dt in ("float32", "bfloat16", "float16")},
}


def parse_impl(impl: str) -> dict[str, str]:
    """``conv_impl`` -> ``{kind: "auto" | "native" | "cpu"}`` for every kind; ValueError with the valid forms.

    Accepts one of :data:`IMPLS` for all kinds, or ``"kind=form,..."``.
    """
    impl = str(impl).strip()
    if impl in IMPLS:
        return dict.fromkeys(KINDS, impl)
    out = dict.fromkeys(KINDS, "auto")
    for part in impl.split(","):
        kind, sep, form = (s.strip() for s in part.partition("="))
        if not sep or kind not in KINDS or form not in IMPLS:
            raise ValueError(
                f"conv_impl {impl!r} is not valid: use one of {', '.join(IMPLS)}, or 'kind=form,...' with kinds "
                f"{', '.join(KINDS)} and forms {', '.join(IMPLS)}."
            )
        out[kind] = form
    return out


def resolve(impl: str, kind: str, dtype: Any, backend: str | None = None) -> str:
    """The form (``"native"`` or ``"cpu"``) that ``impl`` means for ``kind`` at compute ``dtype``.

    ``backend``: the platform the function compiles for; default ``jax.default_backend()``.
    Unknown backends take ``native``.
    """
    form = parse_impl(impl)[kind]
    if form != "auto":
        return form
    backend = backend or jax.default_backend()
    table = AUTO.get(backend, AUTO["tpu"])
    return table.get(jnp.dtype(dtype).name, table["float32"])[kind]


_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: Any = "VALID") -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_DN)


# ---------------------------------------------------------------------------------------------
# The four kinds, dispatched by form.


def conv_stride1(x: jax.Array, kernel: jax.Array, form: str) -> jax.Array:
    """Stride-1 VALID convolution: ``[B, H, W, I]``, ``[k, k, I, O]`` -> ``[B, H - k + 1, W - k + 1, O]``.

    ``form="cpu"``: :func:`jaxgan.cpu_conv.stride1` (GEMM forms for 3-channel sides).
    """
    return cpu_conv.stride1(x, kernel) if form == "cpu" else _conv(x, kernel)


def conv_stride2(x: jax.Array, kernel: jax.Array, form: str) -> jax.Array:
    """``Conv2d(k, stride=2, padding=1)`` (zero padding), ``k`` 3 or 4.

    ``[B, H, W, I]``, ``[k, k, I, O]`` -> ``[B, (H + 2 - k) // 2 + 1, (W + 2 - k) // 2 + 1, O]``.
    ``form="cpu"``: :func:`jaxgan.cpu_conv.stride2` (space-to-depth and phase forms).
    """
    return cpu_conv.stride2(x, kernel) if form == "cpu" else _conv(x, kernel, 2, ((1, 1), (1, 1)))


def conv_transpose(x: jax.Array, kernel: jax.Array, form: str) -> jax.Array:
    """PyTorch ``ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1)`` without bias.

    Args:
      x: ``[B, H, W, I]``.
      kernel: ``[3, 3, I, O]`` with ``kernel[ky, kx, i, o] == torch_weight[i, o, ky, kx]``.
      form: ``"native"``: the convolution of the 2-dilated input with the flipped
        kernel; ``"cpu"``: :func:`jaxgan.cpu_conv.transpose` (four phase convolutions).

    Returns:
      ``[B, 2H, 2W, O]``.
    """
    if form == "cpu":
        return cpu_conv.transpose(x, kernel)
    return jax.lax.conv_general_dilated(
        x, kernel[::-1, ::-1], (1, 1), ((1, 2), (1, 2)), lhs_dilation=(2, 2), dimension_numbers=_DN
    )


def conv_pad1(x: jax.Array, kernel: jax.Array, form: str) -> jax.Array:
    """Stride-1 ``Conv2d(k, padding=1)``: ``[B, H, W, I]``, ``[k, k, I, O]`` -> ``[B, H + 3 - k, W + 3 - k, O]``.

    ``form="cpu"``: :func:`jaxgan.cpu_conv.pad1` (its gradients in other forms).
    """
    return cpu_conv.pad1(x, kernel) if form == "cpu" else _conv(x, kernel, 1, ((1, 1), (1, 1)))


# The kind -> function table (``APPLY[kind](x, kernel, form)``), for the layers and the device suite.
APPLY = {"stride1": conv_stride1, "stride2": conv_stride2, "transpose": conv_transpose, "pad1": conv_pad1}
