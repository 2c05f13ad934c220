"""One message for one damaged checkpoint: the echoes of a failed Orbax read, silenced.

When Orbax cannot read a checkpoint (a data file missing, say), it raises in the caller, which reports
it in one line (or falls back to an older checkpoint) and closes the event loop of that read. TensorStore
still completes the checkpoint's other reads on its own threads; each completion then tries to wake the
closed loop and raises ``RuntimeError("Event loop is closed")``, which Python prints through
``sys.unraisablehook``: hundreds of tracebacks for one damaged checkpoint, some after the command has
finished. asyncio also logs the failed read once more ("Task exception was never retrieved"), and at exit
Python warns about Orbax's coroutines that the abandoned read never awaited.

A data file that is there but damaged (truncated by an interrupted copy) fails every read of an array in
it: Orbax raises the first in the caller, and the others, raised in coroutines that nobody awaits any more,
reach ``sys.unraisablehook`` too, each with TensorStore's whole spec (hundreds of lines per array).

:func:`quiet` drops exactly these echoes, for the rest of the process; every other unraisable exception
and asyncio message passes unchanged. The readers of checkpoints call it before they read, and report the
error that reached them with :func:`describe`.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings

_lock = threading.Lock()
_installed = False


_ARRAY_READ = "Encountered error while reading array index"  # Orbax's error for one array's failed read
_SPEC = ". See full TensorStore details"  # what follows it: TensorStore's spec, one key per line


def _is_echo(exc: BaseException | None) -> bool:
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    return type(exc) is Exception and str(exc).startswith(_ARRAY_READ)


def describe(error: BaseException) -> str:
    """``"Type: first line"`` of a failed checkpoint read, at most 200 characters.

    For Orbax's wrapper of one array's read (which names only the index), the TensorStore error beneath it
    (the file and what is wrong with it); TensorStore's spec left out.
    """
    if str(error).startswith(_ARRAY_READ) and error.__cause__ is not None:
        error = error.__cause__
    first = (str(error).splitlines() or [""])[0].split(_SPEC)[0]
    return f"{type(error).__name__}: {first[:200]}"


class _UnretrievedReadFilter(logging.Filter):
    """asyncio's "Task (or _GatheringFuture) exception was never retrieved" for a TensorStore read."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        read = "tensorstore_spec" in message or _ARRAY_READ in message
        return not ("exception was never retrieved" in message and read)


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
