"""Where images come from: the three sources behind ``config.dataset``, each with four splits.

* ``tfds:cycle_gan/NAME``: a configuration of the tensorflow-datasets ``cycle_gan`` builder
  (horse2zebra, apple2orange, ...), read from ``config.data_dir`` (tfds' default folder when empty),
  downloaded and prepared there on first use when a download is possible. tensorflow-datasets is
  imported only for these.
* ``folder:PATH``: the layout the official data sets unpack to: ``PATH/trainA``, ``trainB``,
  ``testA``, ``testB``, each holding images (searched recursively).
* ``synthetic``: the procedural pair of :mod:`jaxgan.synthetic`, with ground truth for the test images.

A source lists a split's images, fetches them cheaply (paths, encoded bytes or arrays) and
decodes them (``uint8[H, W, 3]``, upright RGB) on worker threads. :func:`make_source` builds one
from the config.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxgan import image_io, synthetic
from jaxgan.image_io import DataError

_log = logging.getLogger("jaxgan.data")

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


_RANDOM_ACCESS_FORMATS = ("array_record", "parquet")  # tfds formats readable without TensorFlow


def _layout(root: str) -> str:
    return _LAYOUT.format(root=root, extensions=" ".join(image_io.IMAGE_EXTENSIONS))


class Source:
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


class _FolderSource(Source):
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
        files, others = image_io.find_images(folder)
        if not files:
            raise DataError(
                f"{folder} holds no images ({len(others)} other files). "
                f"Supported: {' '.join(image_io.IMAGE_EXTENSIONS)} (any case).\n{_layout(self.root)}"
            )
        if others:
            kinds = sorted({os.path.splitext(o)[1].lower() or os.path.basename(o) for o in others})
            _log.info("%s: %d other files ignored (%s)", folder, len(others), ", ".join(kinds[:8]))
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


class _TfdsSource(Source):
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


class _SyntheticSource(Source):
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


def make_source(config: ml_collections.ConfigDict) -> Source:
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
