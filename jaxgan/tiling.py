"""Translate images of any size in bounded memory: overlapping tiles, blended with a smooth window.

A 12-megapixel phone photo through the paper generator needs more memory in one piece than
many machines have (the activations of its first layers alone are 64 channels at full
resolution). :func:`translate_tiled` runs the generator on ``tile x tile`` windows (a side shorter
than the tile: windows of its own length) that overlap by ``overlap`` pixels and blends them: each
output pixel is the weighted mean of the windows that cover it, with weights that fall linearly to
almost 0 across the overlap, so no window's edge shows; the few pixels nearest a shared edge, where
padding inside the network distorts the output, get no weight at all. Memory then depends on the
tile, not on the photo.

What tiling changes: instance norm normalises by the statistics of its whole input, so each
window would be normalised by its own, and a window of sky and one of grass would each be
stretched to full contrast. ``jaxgan.translate`` therefore passes every window the whole image's
statistics, estimated on a downscaled copy (``jaxgan.global_norm``); with the exact statistics the
blend equals the whole-image translation (tests/test_tiling.py). For a network without such
global statistics the blend is exact wherever the overlap exceeds the receptive field.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``tile`` covering ``[0, length)`` with at least ``overlap`` shared pixels.

    The last window ends at ``length``; ``length <= tile`` gives ``[0]``.
    """
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def blend_weights(tile: int, overlap: int, before: bool = True, after: bool = True) -> np.ndarray:
    """``float32[tile]``: a window's weights along one axis.

    At an edge that a neighbouring window overlaps (``before`` / ``after``) the weight is 0 for
    the ``overlap // 4`` pixels nearest the edge, where zero or reflect padding inside the
    network distorts the output, then rises linearly to 1 across the rest of the overlap. Two
    neighbours sharing ``overlap`` pixels never both weigh 0 there. At the image's own border the
    weight stays 1.
    """
    w = np.ones(tile, np.float32)
    margin = overlap // 4
    ramp_len = max(1, overlap - 2 * margin)
    d = np.arange(tile, dtype=np.float32)
    ramp = np.clip((d - margin + 1) / (ramp_len + 1), 0.0, 1.0)
    if overlap > 0 and before:
        w = np.minimum(w, ramp)
    if overlap > 0 and after:
        w = np.minimum(w, ramp[::-1])
    return w


def translate_tiled(
    apply: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    tile: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
) -> np.ndarray:
    """Translate ``image: float32[H, W, 3]`` in [-1, 1] window by window.

    Args:
      apply: ``float32[B, th, tw, 3] -> float[B, th, tw, 3]`` (the jitted generator), with ``th = min(tile, H)``
        and ``tw = min(tile, W)``: a side shorter than the tile is one window of its own length, never
        padded here (padding would show the network pixels that are not in the photo; ``apply`` pads to its
        stride itself). Called with full batches of equal windows, so it compiles once.
      image: any size.
      tile: the longest window side, a multiple of 4 (the generator's stride).
      overlap: pixels shared by neighbouring windows (a few times the blend's width looks seamless).
      batch_size: windows per call.

    Returns:
      ``float32[H, W, 3]``.
    """
    if tile % 4:
        raise ValueError(f"tile must be a multiple of 4, got {tile}")
    h, w = image.shape[:2]
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap) if h > tile else [0], tile_starts(w, tw, overlap) if w > tile else [0]

    def weights(starts: list[int], size: int, i: int) -> np.ndarray:
        return blend_weights(size, overlap, before=i > 0, after=i < len(starts) - 1)

    windows = {(y, x): (weights(ys, th, i)[:, None] * weights(xs, tw, j)[None, :])[..., None]
               for i, y in enumerate(ys) for j, x in enumerate(xs)}  # fmt: skip
    out = np.zeros((h, w, 3), np.float32)
    total = np.zeros((h, w, 1), np.float32)
    corners = [(y, x) for y in ys for x in xs]
    for i in range(0, len(corners), batch_size):
        chunk = corners[i : i + batch_size]
        tiles = np.stack([image[y : y + th, x : x + tw] for y, x in chunk])
        if len(chunk) < batch_size:  # a full batch: one compiled shape
            tiles = np.concatenate([tiles, np.repeat(tiles[-1:], batch_size - len(chunk), axis=0)])
        result = np.asarray(apply(tiles), np.float32)[: len(chunk)]
        for (y, x), t in zip(chunk, result, strict=True):
            out[y : y + th, x : x + tw] += t * windows[y, x]
            total[y : y + th, x : x + tw] += windows[y, x]
    return out / total
