"""The image-history pool (Shrivastava et al. 2017), functional and jit-able.

Semantics of the official ``util/image_pool.py``, image by image through the
batch in order: while the pool holds fewer than ``size`` images, store the new
image and return it; once full, with probability 1/2 return a uniformly chosen
stored image and store the new one in its place, otherwise return the new image.
``size == 0`` passes images through.

With a data-parallel batch there is one global pool (replicated on every
device), visited in global-batch order, so results do not depend on the device
count.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class PoolState:
    """``images: [size, H, W, C]`` history (zeros until filled); ``count``: int32 filled slots."""

    images: jax.Array
    count: jax.Array

    @property
    def size(self) -> int:
        return self.images.shape[0]


def init_pool(size: int, image_shape: tuple[int, int, int], dtype: jnp.dtype = jnp.float32) -> PoolState:
    """An empty pool of ``size`` images of ``image_shape`` (H, W, C)."""
    return PoolState(images=jnp.zeros((size, *image_shape), dtype), count=jnp.zeros((), jnp.int32))


def query(pool: PoolState, images: jax.Array, rng: jax.Array) -> tuple[PoolState, jax.Array]:
    """Push ``images: [B, H, W, C]`` through the pool; returns (new pool, images to train D on).

    The returned images carry no gradient (the pool stores detached images).
    """
    images = jax.lax.stop_gradient(images)
    if pool.size == 0:
        return pool, images
    size = pool.size

    def one(carry: tuple[jax.Array, jax.Array], inputs: tuple[jax.Array, jax.Array]):
        stored, count = carry
        image, key = inputs
        image = image.astype(stored.dtype)
        key_coin, key_idx = jax.random.split(key)
        swap = jax.random.uniform(key_coin) > 0.5
        idx = jax.random.randint(key_idx, (), 0, size)
        filling = count < size
        slot = jnp.where(filling, count, idx)
        old = stored[slot]
        out = jnp.where(jnp.logical_and(~filling, swap), old, image)
        write = jnp.logical_or(filling, swap)
        stored = stored.at[slot].set(jnp.where(write, image, old))
        return (stored, count + filling.astype(jnp.int32)), out

    keys = jax.random.split(rng, images.shape[0])
    (stored, count), out = jax.lax.scan(one, (pool.images, pool.count), (images, keys))
    return PoolState(stored, count), out.astype(images.dtype)
