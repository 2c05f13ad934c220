"""The official image transforms: the deterministic part of training's (cached), and the test transform.

``preprocess`` (``config.preprocess``) is one of :data:`PREPROCESS_MODES`, as the official
``--preprocess``; the random crop and flip that follow happen per batch in ``jaxgan.data.stream``.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections
import numpy as np

from jaxgan import image_io
from jaxgan.image_io import DataError

PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")


def train_prepare(preprocess: str, load_size: int, crop_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """The deterministic first part of the official training transform (the random crop and flip follow).

    uint8[H, W, 3] -> uint8[H', W', 3]: ``resize_and_crop`` resizes to load_size x load_size; ``scale_width``
    (and ``_and_crop``) resizes the width to load_size keeping the aspect ratio, the height at least
    crop_size; ``crop`` and ``none`` keep the size (``none`` rounds it to a multiple of 4, as the official
    code does), except that an image whose shorter side is under crop_size is first resized up to it.
    """

    def prepare(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        if preprocess == "resize_and_crop":
            return image_io.resize(image, load_size, load_size)
        if preprocess in ("scale_width", "scale_width_and_crop"):
            if w == load_size and h >= crop_size:
                return image
            return image_io.resize(image, max(int(load_size * h / w), crop_size), load_size)
        if min(h, w) < crop_size:
            scale = crop_size / min(h, w)
            h, w = max(crop_size, round(h * scale)), max(crop_size, round(w * scale))
            image = image_io.resize(image, h, w)
        if preprocess == "none":
            return image_io.resize(image, max(4, round(h / 4) * 4), max(4, round(w / 4) * 4))
        return image

    return prepare


def test_prepare(crop_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """The official test transform: resize to crop_size x crop_size (bicubic), no crop, no flip."""
    return lambda image: image_io.resize(image, crop_size, crop_size)


def check_transform_config(config: ml_collections.ConfigDict) -> tuple[str, int, int, bool]:
    preprocess = str(config.get("preprocess", "resize_and_crop"))
    load_size, crop_size = int(config.get("load_size", 286)), int(config.get("crop_size", 256))
    if preprocess not in PREPROCESS_MODES:
        raise DataError(f"config.preprocess must be one of {', '.join(PREPROCESS_MODES)}; got {preprocess!r}")
    if crop_size < 1 or load_size < 1:
        raise DataError(f"config.load_size and config.crop_size must be positive; got {load_size}, {crop_size}")
    if preprocess in ("resize_and_crop", "scale_width_and_crop") and load_size < crop_size:
        raise DataError(
            f"config.load_size ({load_size}) must be at least config.crop_size ({crop_size}) with "
            f"preprocess={preprocess!r}: the random crop is taken from the resized image"
        )
    return preprocess, load_size, crop_size, bool(config.get("flip", True))
