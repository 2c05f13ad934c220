"""The data API in one name: training streams and test splits of the three sources.

The implementation lives in :mod:`jaxgan.data`, a file per concern (sources, transforms,
loading, the stream, the test splits); this module is what the rest of jaxgan and user code
import, as the Flax examples' ``input_pipeline``.
"""

from jaxgan.data import (
    PREPROCESS_MODES,
    SPLITS,
    TFDS_DOWNLOAD_URL,
    DataError,
    TestSplit,
    TrainStream,
    create_train_stream,
    load_image,
    load_test_split,
    to_uint8,
)

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
