"""jaxgan.tiling: windows cover the image, blending is exact for local networks, and large photos stay bounded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import models, tiling, translate


@pytest.mark.parametrize("length, tile, overlap", [(100, 48, 16), (48, 48, 16), (30, 48, 16), (1000, 512, 64)])
def test_windows_cover_everything_with_the_overlap(length, tile, overlap):
    starts = tiling.tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile >= length
    covered = np.zeros(max(length, tile), bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered[:length].all()
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_blend_weights_skip_the_shared_edges_and_keep_the_image_border():
    w = tiling.blend_weights(32, 16)
    assert np.all(w[:4] == 0) and np.all(w[-4:] == 0) and np.all(w[12:20] == 1) and np.all(np.diff(w[3:12]) > 0)
    border = tiling.blend_weights(32, 16, before=False)
    assert np.all(border[:16] == 1) and np.all(border[-4:] == 0)
    # two neighbours overlapping by exactly `overlap` pixels: somebody always has weight there
    left, right = tiling.blend_weights(32, 16, before=False), tiling.blend_weights(32, 16, after=False)
    assert np.all(left[16:] + right[:16] > 0)


def _blur(x):
    """A local network: 5x5 box blur (receptive field 5) then tanh, per image; float[B, H, W, 3]."""
    k = jnp.ones((5, 5, 1, 1)) / 25.0
    y = jax.lax.conv_general_dilated(
        jnp.asarray(x).transpose(3, 0, 1, 2).reshape(-1, *x.shape[1:3], 1), k, (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip
    return np.asarray(jnp.tanh(2 * y.reshape(3, *x.shape[:3]).transpose(1, 2, 3, 0)))


@pytest.mark.parametrize("shape", [(100, 140), (37, 90), (48, 48)])
def test_tiling_is_exact_for_a_local_network(shape):
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (*shape, 3)).astype(np.float32)
    whole = _blur(image[None])[0]
    tiled = tiling.translate_tiled(_blur, image, tile=48, overlap=16, batch_size=3)
    assert tiled.shape == image.shape
    interior = (slice(2, -2), slice(2, -2))  # the borders differ by padding mode, as any tiling's would
    np.testing.assert_allclose(tiled[interior], whole[interior], atol=1e-5)


def _instance_normed(x):
    """A network with instance norm's global dependence: per-image standardisation, then a smooth map."""
    x = np.asarray(x, np.float32)
    mean, std = x.mean(axis=(1, 2), keepdims=True), x.std(axis=(1, 2), keepdims=True) + 1e-5
    return np.tanh(0.8 * (x - mean) / std)


def _largest_step(a):
    return max(np.abs(np.diff(a, axis=0)).max(), np.abs(np.diff(a, axis=1)).max())


def test_blending_hides_the_seams_that_per_tile_statistics_make():
    y, x = np.mgrid[0:120, 0:160] / 80.0
    image = np.stack([np.sin(3 * x + y), np.cos(2 * y), x * y - 0.5], -1).astype(np.float32)  # smooth, photo-like
    whole = _instance_normed(image[None])[0]
    blended = tiling.translate_tiled(_instance_normed, image, tile=64, overlap=32)
    hard = tiling.translate_tiled(_instance_normed, image, tile=64, overlap=0)  # tiles side by side, no blend
    # Per-tile statistics make steps of 1.8 where tiles meet (the image's own largest step: 0.04)...
    assert _largest_step(hard) > 20 * _largest_step(whole)
    # ...which the blend spreads over its ramp: 20x smaller, within 3x of the image's own gradient.
    assert _largest_step(blended) < 0.1 * _largest_step(hard) and _largest_step(blended) < 3 * _largest_step(whole)


def test_generator_runs_tiled_on_large_images():
    """The real generator through translate_image: whole below the tile size, tiled above, same shape and range."""
    gen = models.ResnetGenerator(ngf=8, n_blocks=2)
    params = gen.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    y, x = np.mgrid[0:96, 0:130] / 64.0
    image = np.stack([np.sin(3 * x + y), np.cos(2 * y), np.sin(x * y)], -1).astype(np.float32)
    whole = translate.translate_image(gen, params, image, tile=0)
    same = translate.translate_image(gen, params, image, tile=256)  # fits: translated whole
    tiled = translate.translate_image(gen, params, image, tile=48, overlap=16)
    np.testing.assert_array_equal(same, whole)
    assert tiled.shape == whole.shape == image.shape and np.all(np.abs(tiled) <= 1)
    # A random tiny network on 48-pixel tiles: instance norm per tile moves colours (20 dB here); the
    # paper generator on 512-pixel tiles of a real photo is measured in benchmarks/RESULTS.md.
    assert 10 * np.log10(4.0 / np.mean(np.square(tiled - whole))) > 15


def _psnr(a, b):
    return 10 * np.log10(4.0 / np.mean(np.square(a - b)))


def test_whole_image_norm_statistics_make_tiles_match_the_whole_translation():
    """With the whole image's instance-norm statistics every tile is normalised as in one piece: the blend
    then matches whole-image translation; the downscaled estimate gets closer than each tile's own."""
    from jaxgan import global_norm

    gen = models.ResnetGenerator(ngf=8, n_blocks=2)
    params = gen.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))["params"]
    y, x = np.mgrid[0:160, 0:224] / 40.0
    image = np.stack([np.sin(3 * x) * (y > 2), np.cos(2 * y) * (x < 3), np.tanh(x - y)], -1).astype(np.float32)
    whole = translate.translate_image(gen, params, image, tile=0)
    exact = global_norm.image_stats(gen, params, jnp.asarray(image[None]))
    assert set(exact["norm_in"]) == {"mean", "var"} and exact["norm_in"]["mean"].shape == (8,)

    def tiled(stats):
        def apply(tiles):
            return np.asarray(translate._apply(gen, params, jnp.asarray(tiles), stats))

        return tiling.translate_tiled(apply, image, tile=96, overlap=48, batch_size=2)

    own = translate.translate_image(gen, params, image, tile=96, overlap=48, norm_stats="tile")
    proxy = translate.translate_image(gen, params, image, tile=96, overlap=48)  # default: "global"
    np.testing.assert_allclose(tiled(None), own, atol=1e-5)
    psnr_exact, psnr_own, psnr_proxy = _psnr(tiled(exact), whole), _psnr(own, whole), _psnr(proxy, whole)
    assert psnr_exact > 45 and psnr_exact > psnr_own + 15, (psnr_exact, psnr_own)
    assert psnr_proxy > psnr_own + 3, (psnr_proxy, psnr_own)


@pytest.mark.parametrize("shape", [(40, 200), (212, 20)])
def test_a_side_shorter_than_the_tile_is_not_padded(shape):
    """A strip (a panorama) is tiled along its long side only: each window is as high as the strip. Padded up
    to the tile, the network saw invented pixels and the strip's edge came out as a band (25-27 dB here)."""
    from jaxgan import global_norm

    gen = models.ResnetGenerator(ngf=8, n_blocks=2)
    params = gen.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))["params"]
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]] / 30.0
    image = np.stack([np.sin(3 * x + y), np.cos(2 * y) * (x < 3), np.tanh(x - y)], -1).astype(np.float32)
    whole = translate.translate_image(gen, params, image, tile=0)
    exact = global_norm.image_stats(gen, params, jnp.asarray(image[None]))
    sizes = []

    def apply(tiles):
        sizes.append(tiles.shape[1:3])
        return np.asarray(translate._apply(gen, params, jnp.asarray(tiles), exact))

    tiled = tiling.translate_tiled(apply, image, tile=96, overlap=48, batch_size=2)
    assert set(sizes) == {(min(96, shape[0]), min(96, shape[1]))}
    assert _psnr(tiled, whole) > 45, _psnr(tiled, whole)
