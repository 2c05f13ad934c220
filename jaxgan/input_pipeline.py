"""CycleGAN data: three sources, the official transforms, and a resumable, per-process training stream.

Sources (``config.dataset``):
  * ``tfds:cycle_gan/NAME`` — a configuration of the tensorflow-datasets ``cycle_gan`` builder (horse2zebra,
    apple2orange, ...), read from ``config.data_dir`` (tfds' default folder when empty); downloaded and
    prepared there on first use when a download is possible.
  * ``folder:PATH`` — the layout the official data sets unpack to: ``PATH/trainA``, ``trainB``, ``testA``,
    ``testB``, each holding images (searched recursively).
  * ``synthetic`` — the procedural pair of :mod:`jaxgan.synthetic`, with ground truth for the test images.

Training stream, as the official unaligned data set: an epoch has ``ceil(max(|A|, |B|) / batch)`` steps;
A is visited in a fresh shuffled order every epoch and B is drawn independently at random. Each image is
decoded once and cached as uint8 after the deterministic part of the transform (the resize to
``load_size``); the random crop, the flip and the conversion to float happen per batch. Every batch is a
pure function of ``(seed, step)``, so a run resumed at any step sees the batches the uninterrupted run saw.

Multi-process: row ``r`` of the global batch only ever shows images ``i`` with ``i % batch == r`` (when a
domain has at least ``batch`` images), so each process decodes and caches only the images of its own rows
and yields its contiguous block of rows; stacking the blocks of all processes gives exactly the batch
one process would produce for the same global batch size.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import logging
import math
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxgan import image_io, synthetic
from jaxgan.image_io import DataError, load_image, to_uint8

__all__ = [
    "DataError",
    "TestSplit",
    "TrainStream",
    "create_train_stream",
    "load_image",
    "load_test_split",
    "to_uint8",
]

PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
SPLITS = ("trainA", "trainB", "testA", "testB")
TFDS_DOWNLOAD_URL = "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/"

# Synthetic data set sizes (images per domain) when the config does not set them.
DEFAULT_SYNTHETIC_NUM_TRAIN = 400
DEFAULT_SYNTHETIC_NUM_TEST = 50
DEFAULT_SYNTHETIC_SEED = 0

_LAYOUT = """Expected layout (as the official CycleGAN data sets unpack):
  {root}/trainA/   training images of domain A
  {root}/trainB/   training images of domain B
  {root}/testA/    test images of domain A
  {root}/testB/    test images of domain B
Images: {extensions} (any case), searched recursively; hidden files and other files are ignored."""

_SOURCES_HELP = (
    "config.dataset must be one of: 'tfds:cycle_gan/NAME' (e.g. 'tfds:cycle_gan/horse2zebra'), "
    "'folder:/path/to/horse2zebra' (a folder with trainA/ trainB/ testA/ testB/), or 'synthetic'."
)

_log = logging.getLogger(__name__)

# Random streams of the training data, as the second word of a seed sequence [seed, tag, ...].
_EPOCH_ORDER_TAG = 1
_STEP_DRAW_TAG = 2

_RANDOM_ACCESS_FORMATS = ("array_record", "parquet")  # tfds formats readable without TensorFlow
_DECODE_CHUNK = 256  # images fetched (as paths or encoded bytes) before they are decoded in parallel


def _layout(root: str) -> str:
    return _LAYOUT.format(root=root, extensions=" ".join(image_io.IMAGE_EXTENSIONS))


# --------------------------------------------------------------------------------------------- sources


class _Source:
    """A data set's four splits: how many images each has, their names, and reading them.

    ``fetch`` is cheap and runs on the calling thread (paths, encoded bytes, or ready arrays); ``decode``
    does the heavy part and may run on several threads at once.
    """

    description: str

    def count(self, split: str) -> int:
        raise NotImplementedError

    def name(self, split: str, index: int) -> str:
        raise NotImplementedError

    def fetch(self, split: str, indices: Sequence[int]) -> list[Any]:
        raise NotImplementedError

    def decode(self, item: Any, name: str) -> np.ndarray:
        """One fetched item -> uint8[H, W, 3] RGB; raises DataError when unreadable."""
        raise NotImplementedError

    def truth(self, split: str, indices: Sequence[int], size: int) -> np.ndarray | None:
        """uint8[N, size, size, 3] ground truth in the other domain, or None when the source has none."""
        return None


class _FolderSource(_Source):
    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.description = f"folder {self.root}"
        if not os.path.isdir(self.root):
            what = "is a file, not a folder" if os.path.exists(self.root) else "does not exist"
            raise DataError(f"Data folder {self.root} {what}.\n{_layout(self.root)}")
        self._files: dict[str, list[str]] = {}

    def _list(self, split: str) -> list[str]:
        if split in self._files:
            return self._files[split]
        folder = os.path.join(self.root, split)
        if not os.path.isdir(folder):
            present = sorted(d for d in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, d)))
            hint = ""
            nested = [d for d in present if os.path.isdir(os.path.join(self.root, d, split))]
            if len(nested) == 1:
                hint = f"\nDid you mean folder:{os.path.join(self.root, nested[0])} ?"
            raise DataError(
                f"{self.root} has no {split}/ folder (it has: {', '.join(present) or 'no sub-folders'}).{hint}\n"
                + _layout(self.root)
            )
        files, others = [], 0
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in filenames:
                if image_io.is_image_file(filename):
                    files.append(os.path.relpath(os.path.join(dirpath, filename), folder).replace(os.sep, "/"))
                else:
                    others += 1
        if not files:
            raise DataError(
                f"{folder} holds no images ({others} other files). "
                f"Supported: {' '.join(image_io.IMAGE_EXTENSIONS)} (any case).\n{_layout(self.root)}"
            )
        files.sort()
        self._files[split] = files
        return files

    def count(self, split: str) -> int:
        return len(self._list(split))

    def name(self, split: str, index: int) -> str:
        return self._list(split)[index]

    def fetch(self, split: str, indices: Sequence[int]) -> list[str]:
        files = self._list(split)
        return [os.path.join(self.root, split, files[i]) for i in indices]

    def decode(self, item: str, name: str) -> np.ndarray:
        return image_io.decode_image(item, name=name)


def _tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _download_host_reachable(url: str = TFDS_DOWNLOAD_URL, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the download host opens within ``timeout`` seconds.

    Name resolution has no timeout of its own (offline it can hang for minutes), so it runs on a daemon
    thread that is abandoned when it takes too long.
    """
    host = url.split("//", 1)[-1].split("/", 1)[0]
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="jaxgan-download-probe")
    thread.start()
    thread.join(2 * timeout)
    return bool(result) and result[0]


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataError(
            "tfds: sources need tensorflow-datasets (pip install tensorflow-datasets); "
            "or train from a folder: --config.dataset=folder:/path/to/horse2zebra"
        ) from error
    return tfds


class _TfdsSource(_Source):
    def __init__(self, spec: str, data_dir: str):
        builder_name, _, config_name = spec.partition("/")
        tfds = _import_tfds()
        self._tfds = tfds
        known = [c.name for c in tfds.builder_cls("cycle_gan").BUILDER_CONFIGS]
        if builder_name != "cycle_gan" or not config_name:
            suggestion = f" Did you mean 'tfds:cycle_gan/{builder_name}'?" if builder_name in known else ""
            raise DataError(
                f"tfds:{spec} is not a cycle_gan data set; use tfds:cycle_gan/NAME with NAME one of: "
                f"{', '.join(known)}.{suggestion}"
            )
        if config_name not in known:
            extra = (
                " (cityscapes was removed from the tensorflow-datasets builder for licence reasons: download it "
                "from the CycleGAN site and use folder:)"
                if config_name == "cityscapes"
                else ""
            )
            raise DataError(
                f"tfds:cycle_gan/{config_name} does not exist{extra}. Known: {', '.join(known)}. "
                "Or train from a folder: --config.dataset=folder:/path/to/data"
            )
        self._config_name = config_name
        self._builder = tfds.builder(f"cycle_gan/{config_name}", data_dir=data_dir or None)
        self.description = f"tfds:cycle_gan/{config_name} in {self._builder.data_dir}"
        is_prepared = getattr(self._builder, "is_prepared", None)  # tfds >= 4.9.3; before: prepared splits exist
        if not (is_prepared() if is_prepared is not None else bool(self._builder.info.splits)):
            self._prepare()
        file_format = self._builder.info.file_format
        self._format = str(getattr(file_format, "value", file_format)).lower()
        if self._format not in _RANDOM_ACCESS_FORMATS and not _tensorflow_available():
            raise DataError(
                f"{self.description} is prepared as {self._format}, which only TensorFlow can read "
                "(pip install tensorflow); or prepare it with file_format='array_record', or train from a "
                f"folder: --config.dataset=folder:/path/to/{config_name}"
            )
        self._readers: dict[str, Any] = {}

    def _prepare(self) -> None:
        name, folder = self._config_name, self._builder.data_dir
        zip_url = f"{TFDS_DOWNLOAD_URL}{name}.zip"
        local = (
            f"Either set config.data_dir to a folder where cycle_gan/{name} is already prepared, or download "
            f"{zip_url} once, unpack it, and train from the folder: --config.dataset=folder:/path/to/{name}"
        )
        if not _download_host_reachable():
            raise DataError(
                f"tfds:cycle_gan/{name} is not prepared in {folder}, and its download host cannot be reached "
                f"(offline?).\n{local}"
            )
        if not _tensorflow_available():
            raise DataError(
                f"tfds:cycle_gan/{name} is not prepared in {folder}, and preparing it needs TensorFlow "
                f"(pip install tensorflow), which the tensorflow-datasets builder uses to unpack it.\n{local}"
            )
        _log.info("Downloading and preparing cycle_gan/%s into %s", name, folder)
        try:
            self._builder.download_and_prepare(file_format="array_record")
        except Exception as error:  # any failure of the download or preparation ends in the same advice
            raise DataError(
                f"Downloading or preparing tfds:cycle_gan/{name} into {folder} failed "
                f"({type(error).__name__}: {error}).\n{local}"
            ) from error

    def count(self, split: str) -> int:
        return self._builder.info.splits[split].num_examples

    def name(self, split: str, index: int) -> str:
        return f"{split}_{index:05d}.png"

    def fetch(self, split: str, indices: Sequence[int]) -> list[bytes]:
        skip = {"image": self._tfds.decode.SkipDecoding()}
        if self._format in _RANDOM_ACCESS_FORMATS:
            if split not in self._readers:
                self._readers[split] = self._builder.as_data_source(split=split, decoders=skip)
            reader = self._readers[split]
            return [reader[int(i)]["image"] for i in indices]
        # Other formats (TFRecord, tfds' default) are read sequentially through TensorFlow, once per split.
        if split not in self._readers:
            dataset = self._builder.as_dataset(split=split, decoders=skip, shuffle_files=False)
            self._readers[split] = [example["image"] for example in self._tfds.as_numpy(dataset)]
        records = self._readers[split]
        return [records[int(i)] for i in indices]

    def decode(self, item: bytes, name: str) -> np.ndarray:
        return image_io.decode_image(item, name=name)


class _SyntheticSource(_Source):
    def __init__(self, seed: int, num_train: int, num_test: int, train_size: int, test_size: int):
        if num_train < 1 or num_test < 1:
            raise DataError(f"synthetic_num_train and synthetic_num_test must be >= 1, got {num_train}, {num_test}")
        self._seed, self._sizes = seed, {"train": train_size, "test": test_size}
        self._counts = {"train": num_train, "test": num_test}
        self.description = f"synthetic (seed {seed})"

    def count(self, split: str) -> int:
        return self._counts[split[:-1]]

    def name(self, split: str, index: int) -> str:
        return f"synthetic_{index:05d}.png"

    def fetch(self, split: str, indices: Sequence[int]) -> list[np.ndarray]:
        size = self._sizes[split[:-1]]
        if split.startswith("test") and len(indices):
            images, _ = synthetic.split_with_truth(self._seed, split, max(indices) + 1, size)
            return list(images[list(indices)])
        # Training scenes keep the test images' pixel scale, with a wider view to crop from.
        return list(synthetic.render(self._seed, split, indices, size, split[-1], scale=self._sizes["test"]))

    def decode(self, item: np.ndarray, name: str) -> np.ndarray:
        return item

    def truth(self, split: str, indices: Sequence[int], size: int) -> np.ndarray:
        _, truth = synthetic.split_with_truth(self._seed, split, max(indices) + 1, self._sizes["test"])
        truth = truth[list(indices)]
        if truth.shape[1:3] != (size, size):
            truth = np.stack([image_io.resize(t, size, size) for t in truth])
        return truth


def _make_source(config: ml_collections.ConfigDict) -> _Source:
    spec = str(config.get("dataset", "synthetic")).strip()
    kind, sep, rest = spec.partition(":")
    if spec == "synthetic":
        return _SyntheticSource(
            seed=int(config.get("synthetic_seed", DEFAULT_SYNTHETIC_SEED)),
            num_train=int(config.get("synthetic_num_train", DEFAULT_SYNTHETIC_NUM_TRAIN)),
            num_test=int(config.get("synthetic_num_test", DEFAULT_SYNTHETIC_NUM_TEST)),
            train_size=int(config.get("load_size", 286)),
            test_size=int(config.get("crop_size", 256)),
        )
    if sep and kind == "folder" and rest:
        return _FolderSource(rest)
    if sep and kind == "tfds" and rest:
        return _TfdsSource(rest, str(config.get("data_dir", "") or ""))
    raise DataError(f"Unknown data set {spec!r}. {_SOURCES_HELP}")


# ------------------------------------------------------------------------------------------ transforms


def _train_prepare(preprocess: str, load_size: int, crop_size: int) -> Callable[[np.ndarray], np.ndarray]:
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


def _test_prepare(crop_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """The official test transform: resize to crop_size x crop_size (bicubic), no crop, no flip."""
    return lambda image: image_io.resize(image, crop_size, crop_size)


def _check_transform_config(config: ml_collections.ConfigDict) -> tuple[str, int, int, bool]:
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


# ------------------------------------------------------------------------------------------- loading


@dataclasses.dataclass
class _Loaded:
    images: dict[int, np.ndarray]  # index -> prepared uint8[H, W, 3]
    bad: list[tuple[str, str]]  # (name, reason) of unreadable files
    small: list[tuple[str, tuple[int, int]]]  # (name, (H, W)) of images smaller than the crop


def _load(
    source: _Source, split: str, indices: Sequence[int], prepare: Callable[[np.ndarray], np.ndarray], crop_size: int
) -> _Loaded:
    """Decodes and prepares ``indices`` of ``split`` on a few threads (Pillow releases the GIL)."""
    loaded = _Loaded({}, [], [])
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


def _report(source: _Source, split: str, loaded: _Loaded, total: int, crop_size: int) -> None:
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


# ------------------------------------------------------------------------------------------ training


@dataclasses.dataclass
class _Domain:
    """One training domain as this process holds it."""

    size: int  # images listed (valid or not): defines the epoch length and the shards
    num_shards: int  # the global batch size, or 1 when the domain has fewer images than that
    shards: dict[int, np.ndarray]  # shard id -> readable global indices (only the shards this process needs)
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
        self._order: tuple[int, np.ndarray] | None = None

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """int[num_shards, steps_per_epoch * rows_per_shard]: domain A's shuffled visiting order in ``epoch``.

        The rows that share a shard (one row per shard, or all rows when A has fewer images than the batch)
        take turns along their shard's order: row ``r`` at step ``k`` takes slot ``k * rows_per_shard + r //
        num_shards``, so within an epoch they show different images as far as the shard allows.
        """
        cached = self._order
        if cached is not None and cached[0] == epoch:
            return cached[1]
        shards = self._domains["A"].num_shards
        slots = self.steps_per_epoch * (self.global_batch_size // shards)
        rng = np.random.default_rng([self._seed, _EPOCH_ORDER_TAG, epoch])
        order = rng.permuted(np.tile(np.arange(slots), (shards, 1)), axis=1)
        self._order = (epoch, order)
        return order

    def image_indices(self, step: int) -> dict[str, np.ndarray]:
        """The global image indices behind :meth:`batch` (step): {'A': int[local_batch], 'B': ...}."""
        return self._draw(step)[0]

    def _draw(self, step: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, k = divmod(step, self.steps_per_epoch)
        order = self._epoch_order(epoch)
        rng = np.random.default_rng([self._seed, _STEP_DRAW_TAG, step])
        # Drawn for every row of the global batch, so that a row's draws do not depend on the process count.
        pick_b = rng.random(self.global_batch_size)
        offsets = rng.random((2, 2, self.global_batch_size))  # [domain, (y, x), row]
        flips = rng.random((2, self.global_batch_size)) < 0.5
        indices = {}
        for key in ("A", "B"):
            domain = self._domains[key]
            chosen = np.empty(len(self._rows), np.int64)
            for i, row in enumerate(self._rows):
                shard = domain.shards[row % domain.num_shards]
                if key == "A":
                    rows_per_shard = self.global_batch_size // domain.num_shards
                    slot = k * rows_per_shard + row // domain.num_shards
                    position = order[row % domain.num_shards, slot] % len(shard)
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
    preprocess, load_size, crop_size, flip = _check_transform_config(config)
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
    source = _make_source(config)
    prepare = _train_prepare(preprocess, load_size, crop_size)
    domains = {}
    for key in ("A", "B"):
        split = f"train{key}"
        size = source.count(split)
        num_shards = batch_size if size >= batch_size else 1
        needed = {row % num_shards for row in rows}
        wanted = [i for i in range(size) if i % num_shards in needed]
        loaded = _load(source, split, wanted, prepare, crop_size)
        _report(source, split, loaded, len(wanted), crop_size)
        shards = {}
        for shard in sorted(needed):
            members = np.array([i for i in sorted(loaded.images) if i % num_shards == shard], dtype=np.int64)
            if not len(members):
                raise DataError(
                    f"Images {split}[i] with i % {num_shards} == {shard} (the ones row {shard} of the batch shows) "
                    f"are all unreadable in {source.description}; remove the bad files or change config.batch_size."
                )
            shards[shard] = members
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

    crops = preprocess in ("resize_and_crop", "crop", "scale_width_and_crop")
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


# ---------------------------------------------------------------------------------------------- test


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
      max_images: read only the first this many files (in name order) when given.

    Raises:
      DataError: bad data set, missing or empty split, or no readable image.
    """
    if domain not in ("A", "B"):
        raise ValueError(f"domain must be 'A' or 'B', got {domain!r}")
    _, _, crop_size, _ = _check_transform_config(config)
    source = _make_source(config)
    split = f"test{domain}"
    count = source.count(split)
    if max_images is not None:
        count = min(count, max(0, int(max_images)))
    loaded = _load(source, split, range(count), _test_prepare(crop_size), crop_size)
    _report(source, split, loaded, count, crop_size)
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
