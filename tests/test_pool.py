"""The functional image pool follows the official ImagePool semantics."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import pool


def _images(values):
    return jnp.asarray(values, jnp.float32).reshape(-1, 1, 1, 1)


def test_fills_first_and_returns_the_new_images():
    p = pool.init_pool(3, (1, 1, 1))
    p, out = pool.query(p, _images([1.0, 2.0]), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(out.ravel(), [1.0, 2.0])
    assert int(p.count) == 2
    p, out = pool.query(p, _images([3.0]), jax.random.PRNGKey(1))
    np.testing.assert_array_equal(out.ravel(), [3.0])
    np.testing.assert_array_equal(np.sort(p.images.ravel()), [1.0, 2.0, 3.0])
    assert int(p.count) == 3


def test_full_pool_returns_stored_or_new_and_swaps():
    p = pool.init_pool(4, (1, 1, 1))
    p, _ = pool.query(p, _images([1.0, 2.0, 3.0, 4.0]), jax.random.PRNGKey(0))
    returned_old = returned_new = 0
    query = jax.jit(pool.query)
    key = jax.random.PRNGKey(1)
    for i in range(200):
        key, sub = jax.random.split(key)
        new = 100.0 + i
        before = set(np.asarray(p.images).ravel().tolist())
        p, out = query(p, _images([new]), sub)
        after = set(np.asarray(p.images).ravel().tolist())
        value = float(out.ravel()[0])
        if value == new:
            returned_new += 1
            assert after == before  # the new image is not stored
        else:
            returned_old += 1
            assert value in before  # a stored image comes back ...
            assert after == (before - {value}) | {new}  # ... and the new one takes its place
    assert int(p.count) == 4
    assert 70 < returned_old < 130 and returned_old + returned_new == 200  # probability 1/2


def _replay(stored: list, count: int, size: int, images: list, rng) -> tuple[list, int, list]:
    """The official ImagePool.query, image by image, in plain Python, with the random draws the pool takes
    from ``rng`` (one key per image: a coin, then a slot)."""
    out = []
    for image, key in zip(images, jax.random.split(rng, len(images)), strict=True):
        key_coin, key_idx = jax.random.split(key)
        if count < size:  # filling: store it and return it
            stored[count] = image
            count += 1
            out.append(image)
        elif float(jax.random.uniform(key_coin)) > 0.5:  # return a stored image, keep the new one in its place
            idx = int(jax.random.randint(key_idx, (), 0, size))
            out.append(stored[idx])
            stored[idx] = image
        else:
            out.append(image)
    return stored, count, out


def test_batch_is_processed_image_by_image():
    # Batches larger than the free space: the first images fill the pool, the rest follow the coin, and an
    # image stored by one element of a batch can come back for a later element of the same batch.
    size, p = 3, pool.init_pool(3, (1, 1, 1))
    stored, count = [0.0] * size, 0
    key = jax.random.PRNGKey(3)
    swaps_within_a_batch = 0
    for b in range(6):
        key, sub = jax.random.split(key)
        batch = [10.0 * b + i for i in range(1, 6)]
        p, out = pool.query(p, _images(batch), sub)
        stored, count, want = _replay(stored, count, size, batch, sub)
        assert np.asarray(out).ravel().tolist() == want, b
        assert np.asarray(p.images).ravel().tolist() == stored and int(p.count) == count
        swaps_within_a_batch += sum(w in batch and w != x for w, x in zip(want, batch, strict=True))
    assert swaps_within_a_batch > 0  # the sequential case was exercised


def test_size_zero_passes_through():
    p = pool.init_pool(0, (2, 2, 3))
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 2, 3))
    p2, out = pool.query(p, x, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(out, x)
    assert p2.images.shape == (0, 2, 2, 3)


def test_query_is_jittable_and_keyed():
    p = pool.init_pool(2, (1, 1, 1))
    p, _ = pool.query(p, _images([1.0, 2.0]), jax.random.PRNGKey(0))  # full
    f = jax.jit(pool.query)
    batch = _images(np.arange(3.0, 23.0))
    a = f(p, batch, jax.random.PRNGKey(5))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, pool.query(p, batch, jax.random.PRNGKey(5)))
    b = f(p, batch, jax.random.PRNGKey(6))
    assert not np.array_equal(a[1], b[1])  # another key, other choices
