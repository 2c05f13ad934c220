"""Decoding a split's images once, on a few threads, with one report of what could not be used.

Unreadable files are skipped and counted in one warning (their names in the log); images
smaller than the crop are resized up with a note; a split of only bad files is an error.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxgan.data.sources import Source
from jaxgan.image_io import DataError

_log = logging.getLogger("jaxgan.data")
_DECODE_CHUNK = 256  # images fetched (as paths or encoded bytes) before they are decoded in parallel


@dataclasses.dataclass
class Loaded:
    images: dict[int, np.ndarray]  # index -> prepared uint8[H, W, 3]
    bad: list[tuple[str, str]]  # (name, reason) of unreadable files
    small: list[tuple[str, tuple[int, int]]]  # (name, (H, W)) of images smaller than the crop

    def add(self, other: Loaded) -> None:
        """Take in what another part of the same split loaded."""
        self.images.update(other.images)
        self.bad = sorted(self.bad + other.bad)
        self.small = sorted(self.small + other.small)


def load_split(
    source: Source, split: str, indices: Sequence[int], prepare: Callable[[np.ndarray], np.ndarray], crop_size: int
) -> Loaded:
    """Decodes and prepares ``indices`` of ``split`` on a few threads (Pillow releases the GIL)."""
    loaded = Loaded({}, [], [])
    lock = threading.Lock()

    def work(index: int, item: Any) -> None:
        name = source.name(split, index)
        try:
            image = source.decode(item, name)
        except DataError as error:
            with lock:
                loaded.bad.append((name, str(error)))
            return
        prepared = prepare(image)
        with lock:
            if min(image.shape[:2]) < crop_size:
                loaded.small.append((name, image.shape[:2]))
            loaded.images[index] = prepared

    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="jaxgan-decode") as pool:
        for start in range(0, len(indices), _DECODE_CHUNK):
            chunk = list(indices[start : start + _DECODE_CHUNK])
            list(pool.map(work, chunk, source.fetch(split, chunk)))
    loaded.bad.sort()
    loaded.small.sort()
    return loaded


def report(source: Source, split: str, loaded: Loaded, total: int, crop_size: int) -> None:
    """One warning for unreadable files, one note for small images; DataError when nothing is readable."""
    if loaded.bad and not loaded.images:
        examples = "; ".join(reason for _, reason in loaded.bad[:3])
        raise DataError(
            f"None of the {len(loaded.bad)} image files of {split} in {source.description} could be read "
            f"(e.g. {examples}). Check the files or point config.dataset at another copy."
        )
    if loaded.bad:
        names = ", ".join(name for name, _ in loaded.bad[:5]) + (", ..." if len(loaded.bad) > 5 else "")
        _log.warning(
            "Skipped %d of %d image files of %s in %s that could not be read: %s (first: %s)",
            len(loaded.bad),
            total,
            split,
            source.description,
            names,
            loaded.bad[0][1],
        )
    if loaded.small:
        name, (h, w) = loaded.small[0]
        _log.info(
            "%d images of %s are smaller than crop_size %d (e.g. %s, %dx%d) and were resized up",
            len(loaded.small),
            split,
            crop_size,
            name,
            h,
            w,
        )
