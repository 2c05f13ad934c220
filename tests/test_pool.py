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


def test_batch_is_processed_image_by_image():
    # A batch larger than the free space: the first images fill the pool, the rest follow the coin.
    p = pool.init_pool(2, (1, 1, 1))
    p, out = pool.query(p, _images([1.0, 2.0, 3.0, 4.0, 5.0]), jax.random.PRNGKey(3))
    assert out.ravel()[:2].tolist() == [1.0, 2.0]
    stored = set(np.asarray(p.images).ravel().tolist())
    assert len(stored) == 2 and int(p.count) == 2
    for v in np.asarray(out).ravel()[2:]:
        assert v in {1.0, 2.0, 3.0, 4.0, 5.0}


def test_size_zero_passes_through():
    p = pool.init_pool(0, (2, 2, 3))
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 2, 3))
    p2, out = pool.query(p, x, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(out, x)
    assert p2.images.shape == (0, 2, 2, 3)


def test_query_is_jittable_and_deterministic():
    p = pool.init_pool(2, (1, 1, 1))
    f = jax.jit(pool.query)
    a = f(p, _images([1.0, 2.0, 3.0]), jax.random.PRNGKey(5))
    b = f(p, _images([1.0, 2.0, 3.0]), jax.random.PRNGKey(5))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
