"""A test split at the official test transform (bicubic resize to ``crop_size``, no crop, no flip)."""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from jaxgan import image_io
from jaxgan.data import loading, sources, transforms


@dataclasses.dataclass
class TestSplit:
    """A test split after the test transform.

    Attributes:
      images: float32[N, crop, crop, 3] in [-1, 1].
      names: N file names (relative to the split folder for folder:, e.g. 'testA_00012.png' for tfds:,
        'synthetic_00012.png' for synthetic).
      truth: synthetic only: float32[N, crop, crop, 3] in [-1, 1], each image's ground-truth translation
        (the same scene rendered in the other domain); None for real data.
    """

    __test__ = False  # not a pytest test class

    images: np.ndarray
    names: list[str]
    truth: np.ndarray | None = None


def load_test_split(config: ml_collections.ConfigDict, domain: str, max_images: int | None = None) -> TestSplit:
    """Loads ``test{domain}`` with the official test transform (bicubic resize to crop_size, no flip).

    Args:
      config: the experiment config (dataset, data_dir, crop_size, and the synthetic fields).
      domain: 'A' or 'B'.
      max_images: when given, the first this many readable images (in name order); files are read
        only as far as that needs.

    Raises:
      DataError: bad data set, missing or empty split, or no readable image.
    """
    if domain not in ("A", "B"):
        raise ValueError(f"domain must be 'A' or 'B', got {domain!r}")
    _, _, crop_size, _ = transforms.check_transform_config(config)
    source = sources.make_source(config)
    split = f"test{domain}"
    total = source.count(split)
    wanted = total if max_images is None else min(total, max(0, int(max_images)))
    prepare = transforms.test_prepare(crop_size)
    loaded, read = loading.Loaded({}, [], []), 0
    while len(loaded.images) < wanted and read < total:  # past unreadable files, up to the readable ones wanted
        more = range(read, min(total, read + wanted - len(loaded.images)))
        loaded.add(loading.load_split(source, split, more, prepare, crop_size))
        read = more.stop
    loading.report(source, split, loaded, read, crop_size)
    valid = sorted(loaded.images)
    if not valid:
        return TestSplit(np.zeros((0, crop_size, crop_size, 3), np.float32), [], None)
    images = image_io.to_float(np.stack([loaded.images[i] for i in valid]))
    truth = source.truth(split, valid, crop_size)
    return TestSplit(
        images=images,
        names=[source.name(split, i) for i in valid],
        truth=None if truth is None else image_io.to_float(truth),
    )
