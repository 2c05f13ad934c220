"""One message for one damaged checkpoint: the echoes of a failed Orbax read, silenced.

When Orbax cannot read a checkpoint (a data file missing, say), it raises in the caller, which reports
it in one line (or falls back to an older checkpoint) and closes the event loop of that read. TensorStore
still completes the checkpoint's other reads on its own threads; each completion then tries to wake the
closed loop and raises ``RuntimeError("Event loop is closed")``, which Python prints through
``sys.unraisablehook``: hundreds of tracebacks for one damaged checkpoint, some after the command has
finished. asyncio also logs the failed read once more ("Task exception was never retrieved"), and at exit
Python warns about Orbax's coroutines that the abandoned read never awaited.

:func:`quiet` drops exactly these echoes, for the rest of the process; every other unraisable exception
and asyncio message passes unchanged. The readers of checkpoints call it before they read.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings

_lock = threading.Lock()
_installed = False


def _is_echo(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


class _UnretrievedReadFilter(logging.Filter):
    """asyncio's "Task exception was never retrieved" for a TensorStore read (its message names the spec)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("exception was never retrieved" in message and "tensorstore_spec" in message)


def quiet() -> None:
    """Install the filters (once per process; later calls do nothing)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        previous = sys.unraisablehook

        def hook(unraisable: sys.UnraisableHookArgs) -> None:
            if not _is_echo(unraisable.exc_value):
                previous(unraisable)

        sys.unraisablehook = hook
        logging.getLogger("asyncio").addFilter(_UnretrievedReadFilter())
        # jaxgan itself awaits nothing: a coroutine never awaited here is one of an abandoned Orbax read.
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
