"""The training stream: a resumable, per-process sequence of batches, a pure function of ``(seed, step)``.

As the official unaligned data set: an epoch has ``ceil(max(|A|, |B|) / batch)`` steps; A is
visited in a fresh shuffled order every epoch and B is drawn independently at random. Where an
epoch has more slots than A has images, A's extra slots go to a fresh random choice of its images
every epoch (the official code gives them to the same first files every epoch), so that over a run
every image is shown equally often. Each image is decoded once and cached as uint8 after the
deterministic part of the transform (the resize to ``load_size``); the random crop, the flip and
the conversion to float happen per batch. A run resumed at any step sees the batches the
uninterrupted run saw.

Multi-process: each domain is split into ``S`` shards (image ``i`` in shard ``i % S``), ``S`` being
the largest divisor of the global batch whose shards hold equally many images, or so many that one
image more in some shards shows their images at most 1% less often (:func:`shard_count`). The rows of
the global batch are cut into ``S`` contiguous blocks of ``batch / S``, and the rows of block ``s`` only
ever show images of shard ``s``, so each process decodes and caches only the shards of its own rows
(a ``1/P`` share where ``S >= P``) and yields its contiguous block of rows; stacking the blocks of all
processes gives exactly the batch one process would produce for the same global batch size. Where all
images of a shard are unreadable (a small domain with bad files), the rows of that shard draw from all
readable images instead, with a warning, in every process alike.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from jaxgan import image_io
from jaxgan.data import loading, sources, transforms
from jaxgan.image_io import DataError

_log = logging.getLogger("jaxgan.data")

# Random streams of the training data, as the second word of a seed sequence [seed, tag, ...].
_EPOCH_ORDER_TAG = 1
_STEP_DRAW_TAG = 2

# Shards of unequal size show the images of the smaller ones more often: by 1/q for shards of q and q + 1 images.
_MIN_IMAGES_PER_UNEQUAL_SHARD = 100


def shard_count(size: int, batch_size: int) -> int:
    """The number of shards of a domain of ``size`` images for a global batch of ``batch_size`` rows.

    The largest divisor ``S`` of ``batch_size`` that divides ``size``, or that leaves at least
    ``_MIN_IMAGES_PER_UNEQUAL_SHARD`` images per shard (the shards' sizes then differ by one image, so the
    images of the smaller shards are shown at most 1% more often). 1 (no sharding) when none does.
    """
    for shards in range(min(batch_size, size), 1, -1):
        if batch_size % shards == 0 and (size % shards == 0 or size // shards >= _MIN_IMAGES_PER_UNEQUAL_SHARD):
            return shards
    return 1


def shard_of(row: int, batch_size: int, num_shards: int) -> int:
    """The shard that ``row`` of the global batch shows: the rows are cut into ``num_shards`` contiguous blocks."""
    return row // (batch_size // num_shards)


@dataclasses.dataclass
class _Domain:
    """One training domain as this process holds it."""

    size: int  # images listed (valid or not): defines the epoch length and the shards
    num_shards: int  # shard_count(size, batch): row r shows shard_of(r, batch, num_shards)
    shards: dict[int, np.ndarray]  # shard id -> readable global indices (the shards this process needs; an
    # unreadable shard: every readable image)
    cache: dict[int, np.ndarray]  # global index -> prepared uint8[H, W, 3]


class TrainStream:
    """The training batches of one process: a pure function of ``(seed, step)``.

    Create with :func:`create_train_stream`. Attributes:
      steps_per_epoch: ``ceil(max(|A|, |B|) / global_batch_size)``.
      global_batch_size, local_batch_size: images per domain in the global batch / in this process's part.
      process_index, process_count: which contiguous block of rows of the global batch this process yields.
      image_shape: (height, width) of the output images.
      num_images: {'A': |A|, 'B': |B|}, the files listed per training domain.
      cached_indices: {'A': ..., 'B': ...}, the sorted global image indices this process decoded and holds.
    """

    def __init__(
        self,
        *,
        domains: dict[str, _Domain],
        seed: int,
        global_batch_size: int,
        process_index: int,
        process_count: int,
        crop_size: int | None,
        flip: bool,
        image_shape: tuple[int, int],
    ):
        self._domains = domains
        self._seed = seed
        self._crop = crop_size
        self._flip = flip
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.process_index = process_index
        self.process_count = process_count
        self.image_shape = image_shape
        self.num_images = {key: d.size for key, d in domains.items()}
        self.steps_per_epoch = math.ceil(max(self.num_images.values()) / global_batch_size)
        self.cached_indices = {key: np.array(sorted(d.cache), dtype=np.int64) for key, d in domains.items()}
        self._rows = range(process_index * self.local_batch_size, (process_index + 1) * self.local_batch_size)
        self._orders: dict[tuple[int, int], np.ndarray] = {}  # (epoch, shard) -> _epoch_order

    def _epoch_order(self, epoch: int, shard: int) -> np.ndarray:
        """int[steps_per_epoch * rows_per_shard]: positions in A's ``shard`` that its rows show in ``epoch``.

        Whole shuffled passes over the shard's images, fresh every epoch, cut at the epoch's slots: every
        image is shown at least once, and the slots beyond a whole pass go to a random choice of images. The
        rows that share the shard take turns: row ``r`` at step ``k`` takes slot ``k * rows_per_shard + r %
        rows_per_shard``, so within an epoch they show different images as far as the shard allows.
        """
        key = (epoch, shard)
        if key not in self._orders:
            if any(e != epoch for e, _ in self._orders):  # only the current epoch's orders are used again
                self._orders.clear()
            domain = self._domains["A"]
            images = len(domain.shards[shard])
            slots = self.steps_per_epoch * (self.global_batch_size // domain.num_shards)
            # (Shard 0 keeps the seed of earlier versions: where A is the larger domain and all of it is readable,
            # a batch-1 run keeps its order.)
            rng = np.random.default_rng([self._seed, _EPOCH_ORDER_TAG, epoch, *([shard] if shard else [])])
            passes = [rng.permutation(images) for _ in range(-(-slots // images))]
            self._orders[key] = np.concatenate(passes)[:slots]
        return self._orders[key]

    def image_indices(self, step: int) -> dict[str, np.ndarray]:
        """The global image indices behind :meth:`batch` (step): {'A': int[local_batch], 'B': ...}."""
        return self._draw(step)[0]

    def _draw(self, step: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, k = divmod(step, self.steps_per_epoch)
        rng = np.random.default_rng([self._seed, _STEP_DRAW_TAG, step])
        # Drawn for every row of the global batch, so that a row's draws do not depend on the process count.
        pick_b = rng.random(self.global_batch_size)
        offsets = rng.random((2, 2, self.global_batch_size))  # [domain, (y, x), row]
        flips = rng.random((2, self.global_batch_size)) < 0.5
        indices = {}
        for key in ("A", "B"):
            domain = self._domains[key]
            chosen = np.empty(len(self._rows), np.int64)
            rows_per_shard = self.global_batch_size // domain.num_shards
            for i, row in enumerate(self._rows):
                shard_id = shard_of(row, self.global_batch_size, domain.num_shards)
                shard = domain.shards[shard_id]
                if key == "A":
                    slot = k * rows_per_shard + row % rows_per_shard
                    position = self._epoch_order(epoch, shard_id)[slot]
                else:
                    position = min(int(pick_b[row] * len(shard)), len(shard) - 1)
                chosen[i] = shard[position]
            indices[key] = chosen
        rows = slice(self._rows.start, self._rows.stop)
        return indices, offsets[:, :, rows], flips[:, rows]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's part of global batch ``step``.

        Returns:
          {'A': float32[local_batch, H, W, 3], 'B': float32[local_batch, H, W, 3]} in [-1, 1], H x W being
          ``image_shape`` (crop_size x crop_size for the cropping transforms).
        """
        indices, offsets, flips = self._draw(step)
        height, width = self.image_shape
        out = {}
        for d, key in enumerate(("A", "B")):
            cache = self._domains[key].cache
            images = np.empty((len(indices[key]), height, width, 3), np.uint8)
            for i, index in enumerate(indices[key]):
                image = cache[int(index)]
                if self._crop is not None:
                    y = int(offsets[d, 0, i] * (image.shape[0] - self._crop + 1))
                    x = int(offsets[d, 1, i] * (image.shape[1] - self._crop + 1))
                    image = image[y : y + self._crop, x : x + self._crop]
                if self._flip and flips[d, i]:
                    image = image[:, ::-1]
                images[i] = image
            out[key] = image_io.to_float(images)
        return out

    def iterate(
        self, start_step: int = 0, stop_step: int | None = None, prefetch: int = 2
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches ``start_step``, ``start_step + 1``, ... (up to ``stop_step``, exclusive, if given).

        A background thread prepares up to ``prefetch`` batches ahead, so the host works while the device
        trains. Closing the iterator (or leaving a ``for`` loop) stops the thread; an error in it is raised here.
        """
        results: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        stop = threading.Event()
        done = object()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    results.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            step = start_step
            try:
                while stop_step is None or step < stop_step:
                    if not put(self.batch(step)):
                        return
                    step += 1
                put(done)
            except BaseException as error:  # handed to the consumer, which re-raises it
                put(error)

        thread = threading.Thread(target=produce, daemon=True, name="jaxgan-prefetch")
        thread.start()
        try:
            while True:
                item = results.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5.0)


def create_train_stream(
    config: ml_collections.ConfigDict, *, process_index: int = 0, process_count: int = 1
) -> TrainStream:
    """Builds this process's training stream: lists the data, decodes this process's share, checks it.

    Reads ``config.dataset``, ``data_dir``, ``batch_size`` (the global batch, divisible by ``process_count``),
    ``load_size``, ``crop_size``, ``preprocess``, ``flip``, ``seed``, and for the synthetic source
    ``synthetic_num_train``, ``synthetic_num_test`` and ``synthetic_seed``.

    Args:
      config: the experiment config.
      process_index: this process's block of rows of the global batch; with a mesh whose devices are in
        process order (as ``jax.make_mesh`` builds it), ``jax.process_index()``.
      process_count: the number of processes (``jax.process_count()``).

    Raises:
      DataError: bad data set name, path, layout, files, or data config values.
    """
    preprocess, load_size, crop_size, flip = transforms.check_transform_config(config)
    batch_size = config.get("batch_size", 1)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"config.batch_size must be a positive integer, got {batch_size!r}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"process_index {process_index} must be in [0, process_count={process_count})")
    if batch_size % process_count:
        suggestion = process_count * math.ceil(batch_size / process_count)
        raise DataError(
            f"config.batch_size ({batch_size}) is the global batch and must be divisible by the number of "
            f"processes ({process_count}); e.g. --config.batch_size={suggestion}"
        )
    local = batch_size // process_count
    rows = range(process_index * local, (process_index + 1) * local)
    source = sources.make_source(config)
    prepare = transforms.train_prepare(preprocess, load_size, crop_size)
    domains = {}
    for key in ("A", "B"):
        split = f"train{key}"
        size = source.count(split)
        num_shards = shard_count(size, batch_size)
        needed = sorted({shard_of(row, batch_size, num_shards) for row in rows})
        wanted = [i for i in range(size) if i % num_shards in needed]
        loaded = loading.load_split(source, split, wanted, prepare, crop_size)
        shards = {s: np.array([i for i in sorted(loaded.images) if i % num_shards == s], np.int64) for s in needed}
        empty = [s for s in needed if not len(shards[s])]
        if empty:  # their rows would have nothing to show: they draw from every readable image instead
            _log.warning(
                "The images i of %s with i %% %d in {%s} are all unreadable; the rows of the batch that show them "
                "draw from all readable images of %s instead",
                split,
                num_shards,
                ", ".join(map(str, empty)),
                split,
            )
            rest = [i for i in range(size) if i % num_shards not in needed]
            loaded.add(loading.load_split(source, split, rest, prepare, crop_size))
            wanted = list(range(size))
            shards.update({s: np.array(sorted(loaded.images), np.int64) for s in empty})
        loading.report(source, split, loaded, len(wanted), crop_size)  # DataError if none is readable
        domains[key] = _Domain(size=size, num_shards=num_shards, shards=shards, cache=loaded.images)
        nbytes = sum(image.nbytes for image in loaded.images.values())
        _log.info(
            "%s: %d images in %s; %d decoded in this process (%.0f MB)",
            split,
            size,
            source.description,
            len(loaded.images),
            nbytes / 2**20,
        )

    crops = preprocess not in transforms.OWN_SIZE_MODES
    if crops:
        image_shape = (crop_size, crop_size)
    else:
        shapes = {image.shape[:2] for d in domains.values() for image in d.cache.values()}
        if len(shapes) > 1:
            raise DataError(
                f"preprocess={preprocess!r} keeps each image's own size, and the images differ in size "
                f"({', '.join(f'{h}x{w}' for h, w in sorted(shapes)[:4])}...), so they cannot be batched; "
                "use preprocess='resize_and_crop' or 'scale_width_and_crop'"
            )
        (image_shape,) = shapes
    return TrainStream(
        domains=domains,
        seed=int(config.get("seed", 0)),
        global_batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
        crop_size=crop_size if crops else None,
        flip=flip,
        image_shape=tuple(image_shape),
    )
