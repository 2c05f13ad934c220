"""A procedural, unpaired domain pair with ground truth: shapes on grass, plain (A) or banded (B).

A *scene* is a textured green background with one to three ellipses on it (possibly overlapping).
Domain A paints the shapes in a plain brown fill; domain B paints the same shapes with black and white
bands that follow the outline: a point at distance ``d`` from the shape's edge is dark when
``floor(d / BAND_WIDTH)`` is even (so the outermost band is dark). The background, including its pixel
noise, is the same in both renderings of a scene.

Why this pair (see the design notes on learnable synthetic pairs): the A -> B map is a local,
translation-equivariant function of the picture (the bands depend only on the distance to the visible
outline, never on absolute position), its structure is coarse (a band is ``BAND_WIDTH`` = 1/10 of the
image, about 6 pixels at 64x64), and both domains share one background distribution, so the simplest
mapping that matches the distributions is the true one. That background is smooth (a coarse texture, a
small per-scene tint and faint per-pixel noise): a generator can reproduce it, so leaving it untouched is
learnable and the L1 to the truth measures the shapes, not the noise. (An earlier version had three
times the pixel noise, twice the tint, 1.5 times the texture and 1/12-image bands. There a 1,600-step
demo missed the background by 0.125 L1 and lost to the identity baseline, while halving the error
inside the shapes.)

Every scene is a pure function of ``(seed, split, index)``; geometry is drawn in image-relative units,
so one scene can be rendered at any size (only the per-pixel noise depends on the size). The four
splits hold disjoint scenes; the training splits are unpaired (trainA and trainB show different scenes),
while each test image comes with its ground truth: the same scene rendered in the other domain.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

SPLITS = ("trainA", "trainB", "testA", "testB")
BAND_WIDTH = 1.0 / 10.0  # width of one band, as a fraction of the image side

_MAX_SHAPES = 3
_GRASS = np.array([0.32, 0.52, 0.20], np.float32)  # background base colour (RGB in [0, 1])
_BROWN = np.array([0.58, 0.36, 0.20], np.float32)  # domain A fill
_DARK = np.array([0.08, 0.08, 0.08], np.float32)  # domain B bands
_LIGHT = np.array([0.92, 0.92, 0.90], np.float32)
_GRID = 5  # the background's coarse texture: a GRID x GRID grid of random values, bilinearly upsampled
_TINT = 0.02  # std of the per-scene shift of the grass colour
_TEXTURE = 0.06  # std of the coarse brightness variation
_NOISE = 0.012  # std of the per-pixel noise (about 3/255)


def _scene(seed: int, split: str, index: int) -> dict[str, np.ndarray]:
    """Draws one scene's resolution-free parameters."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    count = int(rng.integers(1, _MAX_SHAPES + 1))
    semi_axes = rng.uniform(0.11, 0.24, size=(count, 2))
    # Keep every shape (plus a margin for the random training crop) inside the picture, so that its whole
    # outline is visible and the bands are a function of what the generator sees.
    reach = semi_axes.max(axis=1) + 0.11
    centres = reach[:, None] + rng.uniform(size=(count, 2)) * (1.0 - 2.0 * reach[:, None])
    return {
        "centres": centres,  # [count, 2] (x, y) in [0, 1]
        "semi_axes": semi_axes,  # [count, 2]
        "angles": rng.uniform(0.0, np.pi, size=count),
        "tint": rng.normal(0.0, _TINT, size=3),  # per-scene shift of the grass colour
        "texture": rng.normal(0.0, _TEXTURE, size=(_GRID, _GRID)),  # coarse brightness variation
        "noise_seed": rng.integers(2**32),  # per-pixel noise, drawn at the rendering size
    }


def _supersampling(size: int) -> int:
    """Subpixels per pixel side: enough for smooth edges at small sizes, cheap at large ones."""
    return int(np.clip(np.ceil(128 / size), 2, 4))


def _scene_coords(pixels: np.ndarray, size: int, scale: int) -> np.ndarray:
    """Scene coordinates of pixel positions: the scene's unit square spans ``scale`` pixels, centred."""
    return (pixels - size / 2) / scale + 0.5


def _upsample_matrix(cells: int, size: int, scale: int) -> np.ndarray:
    """[size, cells] bilinear interpolation weights from ``cells`` grid values to ``size`` pixel centres."""
    position = _scene_coords(np.arange(size) + 0.5, size, scale)
    position = np.clip(position * (cells - 1), 0, cells - 1)
    low = np.minimum(np.floor(position).astype(int), cells - 2)
    frac = position - low
    weights = np.zeros((size, cells))
    weights[np.arange(size), low] = 1.0 - frac
    weights[np.arange(size), low + 1] = frac
    return weights


def _render_scene(
    scene: dict[str, np.ndarray], size: int, scale: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders the parts of one scene on a ``size`` x ``size`` canvas, the scene's square spanning ``scale``.

    Returns:
      background: float32[size, size, 3] in about [0, 1];
      coverage: float32[size, size, 1] in [0, 1], the fraction of each pixel inside a shape;
      bands: float32[size, size, 3], each pixel's average of the band colours over its inside part
        (zero outside), so that ``bands + (1 - coverage) * background`` is the B rendering.
    """
    scale = size if scale is None else scale
    ss = _supersampling(scale)
    # Work on the pixel-aligned box around the shapes only; everything outside it is background.
    cos, sin = np.cos(scene["angles"]), np.sin(scene["angles"])
    a, b = scene["semi_axes"][:, 0], scene["semi_axes"][:, 1]
    half = np.stack([np.hypot(a * cos, b * sin), np.hypot(a * sin, b * cos)], axis=1)  # [count, (x, y)]
    low = (scene["centres"] - half).min(axis=0) - 0.5
    high = (scene["centres"] + half).max(axis=0) - 0.5
    low = np.maximum(np.floor(low * scale + size / 2).astype(int) - 1, 0)
    high = np.minimum(np.ceil(high * scale + size / 2).astype(int) + 1, size)
    (x0, y0), (x1, y1) = low, high
    x = _scene_coords((np.arange(x0 * ss, x1 * ss, dtype=np.float32) + 0.5) / ss, size, scale)[None, :]
    y = _scene_coords((np.arange(y0 * ss, y1 * ss, dtype=np.float32) + 0.5) / ss, size, scale)[:, None]
    inside = np.zeros((y.shape[0], x.shape[1]), dtype=bool)
    for (cx, cy), ai, bi, ci, si in zip(scene["centres"], a, b, cos, sin, strict=True):
        u = (x - cx) * ci + (y - cy) * si
        v = (y - cy) * ci - (x - cx) * si
        inside |= (u / ai) ** 2 + (v / bi) ** 2 <= 1.0
    # Distance of each inside subpixel to the nearest outside one, in scene units (the box has an outside
    # margin, so the nearest outside subpixel always lies in it).
    depth = ndimage.distance_transform_edt(inside) / (scale * ss)
    light = (np.floor(depth / BAND_WIDTH).astype(np.int64) % 2 == 1) & inside

    def pixel_mean(mask: np.ndarray) -> np.ndarray:
        h, w = mask.shape[0] // ss, mask.shape[1] // ss
        return mask.reshape(h, ss, w, ss).sum(axis=(1, 3), dtype=np.float32)[..., None] / np.float32(ss * ss)

    coverage = np.zeros((size, size, 1), np.float32)
    bands = np.zeros((size, size, 3), np.float32)
    box_coverage, box_light = pixel_mean(inside), pixel_mean(light)
    coverage[y0:y1, x0:x1] = box_coverage
    bands[y0:y1, x0:x1] = (box_coverage - box_light) * _DARK + box_light * _LIGHT

    weights = _upsample_matrix(_GRID, size, scale)
    texture = (weights @ scene["texture"] @ weights.T).astype(np.float32)
    noise = np.random.default_rng(scene["noise_seed"]).normal(0.0, _NOISE, size=(size, size, 3))
    background = (_GRASS + scene["tint"]).astype(np.float32) + texture[..., None] + noise.astype(np.float32)
    return background, coverage, bands


def _compose(background: np.ndarray, coverage: np.ndarray, bands: np.ndarray, domain: str) -> np.ndarray:
    fill = coverage * _BROWN if domain == "A" else bands
    image = fill + (1.0 - coverage) * background
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def render(
    seed: int, split: str, indices: Sequence[int], size: int, domain: str, scale: int | None = None
) -> np.ndarray:
    """Renders scenes of ``split`` in one domain.

    Args:
      seed: the data set's seed.
      split: 'trainA', 'trainB', 'testA' or 'testB' (which set of scenes).
      indices: which scenes of the split.
      size: the side of the square images in pixels.
      domain: 'A' (plain fill) or 'B' (bands); the split's own domain gives its images, the other one its
        ground truth.
      scale: how many pixels the scene's unit square spans (default ``size``). A canvas larger than the
        scale shows the scene at that pixel scale with a wider view: training images rendered at
        load_size with scale crop_size have the shapes and bands of the test images at crop_size, so the
        random crop moves the scene without changing its size.

    Returns:
      uint8[len(indices), size, size, 3] RGB.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if domain not in ("A", "B"):
        raise ValueError(f"domain must be 'A' or 'B', got {domain!r}")
    out = np.empty((len(indices), size, size, 3), np.uint8)
    for row, index in enumerate(indices):
        out[row] = _compose(*_render_scene(_scene(seed, split, int(index)), size, scale), domain)
    return out


@functools.lru_cache(maxsize=16)
def _cached_pair(seed: int, split: str, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    own, other = split[-1], "B" if split[-1] == "A" else "A"
    images = np.empty((count, size, size, 3), np.uint8)
    truth = np.empty_like(images)
    for index in range(count):
        parts = _render_scene(_scene(seed, split, index), size)
        images[index] = _compose(*parts, own)
        truth[index] = _compose(*parts, other)
    images.flags.writeable = False
    truth.flags.writeable = False
    return images, truth


def split_with_truth(seed: int, split: str, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` scenes of ``split`` in its own domain and in the other one (cached, read-only).

    Returns:
      (images, truth): uint8[count, size, size, 3] each; ``truth[i]`` is scene ``i`` rendered in the other
      domain (for 'testA': the B rendering, i.e. the correct A -> B translation of ``images[i]``).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _cached_pair(int(seed), split, int(count), int(size))


def shape_mask(seed: int, split: str, index: int, size: int, scale: int | None = None) -> np.ndarray:
    """float32[size, size] in [0, 1]: how much of each pixel lies inside a shape of that scene."""
    return _render_scene(_scene(seed, split, index), size, scale)[1][..., 0]


def translation_error(translated: np.ndarray, source: np.ndarray, truth: np.ndarray, pool: int = 4) -> dict[str, float]:
    """How close translations are to the ground truth, against the do-nothing baseline.

    Args:
      translated: float[N, H, W, 3] in [-1, 1], the model's outputs for ``source``.
      source: float[N, H, W, 3] in [-1, 1], the inputs.
      truth: float[N, H, W, 3] in [-1, 1], the paired ground truth (``TestSplit.truth``).
      pool: side of the average pooling for the shift-tolerant error (H and W must be divisible by it).

    Returns:
      ``l1`` (mean absolute error to the truth), ``l1_identity`` (the same for the untranslated input),
      ``ratio`` (l1 / l1_identity: well under 1 means the mapping was learned, about 1 means nothing was),
      ``pooled_l1``, ``pooled_l1_identity``, ``pooled_ratio``: the same after ``pool`` x ``pool`` average
      pooling, which forgives misplacing a band by a pixel or two; and the L1 split by region:
      ``shapes_l1`` (and ``shapes_l1_identity``) over the pixels the translation must change (where source
      and truth differ by more than 0.1 averaged over channels: the shapes) and ``background_l1`` over the
      rest, which a good translation leaves alone (its identity error is only rounding, about 0.003).
    """
    translated, source, truth = (np.asarray(a, np.float32) for a in (translated, source, truth))

    def pooled(images: np.ndarray) -> np.ndarray:
        n, h, w, c = images.shape
        return images.reshape(n, h // pool, pool, w // pool, pool, c).mean(axis=(2, 4))

    result = {}
    for prefix, f in (("", lambda a: a), ("pooled_", pooled)):
        err = float(np.mean(np.abs(f(translated) - f(truth))))
        base = float(np.mean(np.abs(f(source) - f(truth))))
        result[prefix + "l1"] = err
        result[prefix + "l1_identity"] = base
        result[prefix + "ratio"] = err / max(base, 1e-12)
    changed = np.broadcast_to(np.mean(np.abs(source - truth), axis=-1, keepdims=True) > 0.1, truth.shape)
    for name, region in (("shapes_", changed), ("background_", ~changed)):
        result[name + "l1"] = float(np.abs(translated - truth)[region].mean()) if region.any() else 0.0
    result["shapes_l1_identity"] = float(np.abs(source - truth)[changed].mean()) if changed.any() else 0.0
    return result
