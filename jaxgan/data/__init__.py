"""CycleGAN data, a file per concern: where images come from (``sources``), the official transforms
(``transforms``), decoding a split once (``loading``), the resumable per-process training stream
(``stream``) and the test splits (``test_split``).

The public API: :func:`create_train_stream`, :class:`TrainStream`, :func:`load_test_split`,
:class:`TestSplit`, :class:`DataError`, :data:`PREPROCESS_MODES`.
"""

from jaxgan.data.sources import SPLITS, TFDS_DOWNLOAD_URL
from jaxgan.data.stream import TrainStream, create_train_stream
from jaxgan.data.test_split import TestSplit, load_test_split
from jaxgan.data.transforms import PREPROCESS_MODES
from jaxgan.image_io import DataError, load_image, to_uint8

__all__ = [
    "PREPROCESS_MODES",
    "SPLITS",
    "TFDS_DOWNLOAD_URL",
    "DataError",
    "TestSplit",
    "TrainStream",
    "create_train_stream",
    "load_image",
    "load_test_split",
    "to_uint8",
]
