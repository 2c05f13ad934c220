"""The FID InceptionV3 feature network in Flax.

The network is TensorFlow's ``inception-2015-12-05`` graph that the original
FID code, pytorch-fid and most papers use: InceptionV3 with batch norm folded
into an offset only (no scale; ``eps=1e-3``), average pools that exclude the
padding from the count (``Mixed_5*``, ``Mixed_6*``, ``Mixed_7b``) and a *max*
pool in the last block's pool branch (``Mixed_7c``). Features are the
2048-d global average pool ("pool3") of ``Mixed_7c``.

Input protocol (pytorch-fid's): RGB in [0, 1], resized to 299x299 bilinearly
(half-pixel centres, no antialiasing: PyTorch ``F.interpolate(mode='bilinear',
align_corners=False)``), then scaled to [-1, 1].

Its weights (found, converted from the published files and cached) are
``jaxgan.inception_weights``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3


_HIGHEST = jax.lax.Precision.HIGHEST


class BasicConv(nn.Module):
    """Conv (no bias) -> batch norm in inference form -> ReLU.

    Parameters: ``kernel [kh, kw, I, O]``, ``scale``, ``bias``, ``mean``, ``var`` ``[O]``
    (TF's graph has no scale; it is kept, as ones, so pytorch-fid's ``bn.weight`` loads).
    """

    features: int
    kernel_size: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features))
        scale = self.param("scale", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        ph, pw = self.padding
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            (self.stride, self.stride),
            ((ph, ph), (pw, pw)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=_HIGHEST,
        )
        y = (y - mean) * (scale * jax.lax.rsqrt(var + BN_EPS)) + bias
        return nn.relu(y)


def _max_pool(x: jax.Array, stride: int, pad: int = 0) -> jax.Array:
    return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


def _avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
    """3x3, stride 1, padding 1 average whose divisor counts only real pixels."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv(c7, row[0], padding=row[1], name="branch7x7_2")(b7)
        b7 = BasicConv(192, col[0], padding=col[1], name="branch7x7_3")(b7)
        bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
        for i, (feat, (k, p)) in enumerate([(c7, col), (c7, row), (c7, col), (192, row)]):
            bd = BasicConv(feat, k, padding=p, name=f"branch7x7dbl_{i + 2}")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nn.Module):
    """``max_pool=False``: ``Mixed_7b`` (average pool); ``True``: ``Mixed_7c`` (the FID graph's max pool)."""

    max_pool: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3a = BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3)
        b3b = BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bda = BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd)
        bdb = BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)
        pooled = _max_pool(x, 1, 1) if self.max_pool else _avg_pool_exclude_pad(x)
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3a, b3b, bda, bdb, bp], axis=-1)


class InceptionV3(nn.Module):
    """FID InceptionV3 up to pool3.

    Input ``float32[B, 299, 299, 3]`` in [-1, 1] (other sizes run too, but FID
    is defined at 299); output ``float32[B, 2048]``.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool(x, 2)
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool(x, 2)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(False, name="Mixed_7b")(x)
        x = InceptionE(True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


# ---------------------------------------------------------------------------
# Preprocessing


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``float32[out, in]`` rows of PyTorch's bilinear weights (``align_corners=False``, no antialias).

    Source positions and weights are computed in float32 as PyTorch's CPU
    kernel does, so the two agree to float32 rounding.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    m = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), np.float32(1.0) - w1)
    np.add.at(m, (rows, i1), w1)
    return m


def resize_bilinear(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Resize ``float[B, H, W, C]`` to ``[B, size[0], size[1], C]`` like ``F.interpolate(bilinear)``."""
    _, h, w, _ = images.shape
    if (h, w) == tuple(size):
        return images
    ry = jnp.asarray(bilinear_matrix(h, size[0]))
    rx = jnp.asarray(bilinear_matrix(w, size[1]))
    return jnp.einsum("yh,bhwc,xw->byxc", ry, images, rx, precision=_HIGHEST)


def preprocess(images: jax.Array) -> jax.Array:
    """``uint8[B, H, W, 3]`` (0..255) or float in [0, 1] -> ``float32[B, 299, 299, 3]`` in [-1, 1]."""
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE))
    return 2.0 * x - 1.0


def make_feature_fn(params: PyTree) -> Callable[[jax.Array], jax.Array]:
    """A jitted ``images -> float32[B, 2048]`` pool3 features, images as in :func:`preprocess`.

    Runs on JAX's default device; one compilation per input shape and dtype.
    """
    model = InceptionV3()
    params = jax.device_put(params)

    @jax.jit
    def features(p: PyTree, images: jax.Array) -> jax.Array:
        return model.apply({"params": p}, preprocess(images))

    return lambda images: features(params, images)


def param_shapes() -> dict[str, Any]:
    """The parameter tree of :class:`InceptionV3` as ``{... : tuple shape}`` (no computation)."""
    abstract = jax.eval_shape(
        InceptionV3().init, jax.random.key(0), jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    )
    return jax.tree.map(lambda s: tuple(s.shape), abstract["params"])
