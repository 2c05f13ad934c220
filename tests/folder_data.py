"""Tiny image folders in the official layout (``trainA/``, ``trainB/``, ``testA/``, ``testB/``) for the data tests."""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from PIL import Image

SPLITS = ("trainA", "trainB", "testA", "testB")


def make_config(dataset: str, **overrides) -> ml_collections.ConfigDict:
    """The data fields of a run's config, at tiny sizes (36 -> 32 crops, batch 1), with ``overrides``."""
    config = ml_collections.ConfigDict(
        {
            "dataset": dataset,
            "data_dir": "",
            "batch_size": 1,
            "load_size": 36,
            "crop_size": 32,
            "preprocess": "resize_and_crop",
            "flip": True,
            "seed": 0,
        }
    )
    config.update(overrides)
    return config


def pattern(index: int, height: int = 40, width: int = 48) -> np.ndarray:
    """A distinct, asymmetric uint8[H, W, 3] image per index."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 5 + index * 37) % 256, (y * 6 + index * 11) % 256, (x * y + index * 3) % 256], -1).astype(
        np.uint8
    )


def make_folder(root, counts=None, size=(40, 48)) -> str:
    """The official layout with PNG images, ``counts`` per split."""
    counts = counts or {"trainA": 5, "trainB": 8, "testA": 3, "testB": 2}
    for split, count in counts.items():
        os.makedirs(root / split, exist_ok=True)
        for i in range(count):
            Image.fromarray(pattern(i + 100 * SPLITS.index(split), *size)).save(root / split / f"img_{i:03d}.png")
    return str(root)


def gray_ramp(h: int = 20, w: int = 24) -> np.ndarray:
    """A ``uint8[H, W]`` grayscale ramp."""
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)
