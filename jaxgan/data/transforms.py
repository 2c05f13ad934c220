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
OWN_SIZE_MODES = ("scale_width", "none")  # no crop: batches are of the images' own size, which must be one


def train_prepare(preprocess: str, load_size: int, crop_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """The deterministic first part of the official training transform (the random crop and flip follow).

    uint8[H, W, 3] -> uint8[H', W', 3]: ``resize_and_crop`` resizes to load_size x load_size; ``scale_width``
    (and ``_and_crop``) resizes the width to load_size keeping the aspect ratio, the height at least
    crop_size; ``crop`` and ``none`` keep the size, except that an image whose shorter side is under
    crop_size is first resized up to it. The modes that train on whole images, ``none`` and
    ``scale_width``, then round both sides to a multiple of 4, which the generator needs (the official
    code does so for ``none``; its ``scale_width`` fails on other sizes).
    """

    def prepare(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        if preprocess == "resize_and_crop":
            return image_io.resize(image, load_size, load_size)
        if preprocess in ("scale_width", "scale_width_and_crop"):
            out = (max(int(load_size * h / w), crop_size), load_size)
            if preprocess == "scale_width":  # trained whole: the generator needs multiples of 4
                out = (_multiple_of_4(out[0]), _multiple_of_4(out[1]))
            return image if out == (h, w) else image_io.resize(image, *out)
        if min(h, w) < crop_size:
            scale = crop_size / min(h, w)
            h, w = max(crop_size, round(h * scale)), max(crop_size, round(w * scale))
            image = image_io.resize(image, h, w)
        if preprocess == "none":
            return image_io.resize(image, _multiple_of_4(h), _multiple_of_4(w))
        return image

    return prepare


def _multiple_of_4(n: int) -> int:
    """The nearest multiple of 4 (at least 4), as the official ``__make_power_2(img, base=4)``."""
    return max(4, round(n / 4) * 4)


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
