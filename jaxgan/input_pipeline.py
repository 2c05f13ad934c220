"""The data API in one name: training streams and test splits of the three sources.

The implementation lives in :mod:`jaxgan.data`, a file per concern (sources, transforms,
loading, the stream, the test splits); this module is what the rest of jaxgan and user code
import, as the Flax examples' ``input_pipeline``. It exports exactly ``jaxgan.data.__all__``.
"""

from jaxgan.data import *  # noqa: F403
from jaxgan.data import __all__  # noqa: F401
