"""Keep XLA:CPU's per-step memory mapped between steps (CPU-only processes on Linux with glibc).

XLA:CPU allocates all temporaries of one execution as a single block: 2.0 GB
for a 256x256 CycleGAN train step, 0.67 GB at 128x128. glibc serves blocks
that large with a fresh ``mmap`` and unmaps them on ``free``, so every step
touches every page of it anew: about 513,000 minor page faults per 256x256
step, which cost 0.8 s of kernel time in a process that only trains, and
3.4-4.3 s when another memory-hungry computation runs beside it (measured on
a 2-core machine; ``benchmarks/RESULTS.md``).

Both tested JAX lines behave alike here, so the settings apply on both,
ungated: with jaxlib 0.11.2 the step's block is about as large (642 MB at 128x128,
2,006 MB at 256x256), glibc's defaults fault it in anew every step (164,000
and 517,000 minor faults), and these settings bring that to a few hundred per
step. (jaxlib 0.11 does fuse more: an elementwise chain for which 0.10 planned
256 MB of temporaries has none there; ``tests/test_cpu_memory.py``.)

:func:`reuse_step_memory` makes the block come from malloc's main heap and
stay there:

* ``mallopt(M_MMAP_MAX, 0)``: large blocks from the heap, not fresh mappings;
* ``mallopt(M_TRIM_THRESHOLD, -1)``: freed heap memory is kept for the next
  step instead of being returned to the system;
* ``jax_cpu_enable_async_dispatch=False``: each computation runs, and
  allocates, on the calling thread, whose heap is the main one. Allocated on
  one of XLA's worker threads, the block would come from a per-thread arena,
  whose heaps hold at most 64 MB, and be mapped afresh every time anyway.

XLA:CPU runs a computation on the calling thread only when all its inputs
are ready; one whose input is still being copied from host memory runs later
on a worker thread, and maps its block afresh. :func:`settle` waits for such
copies (the runner applies it to every batch it transfers), and the runner
saves checkpoints synchronously where :func:`active`: an asynchronous save
holds the state's buffers while it writes them, and the next step, whose
input they are, would run on a worker thread.

Memory that other, rarer work (sample images, checkpoints) frees would stay in
the heap too, beside the step's block; :func:`release_free_memory` hands all
free heap memory back, and the runner calls it after such work. The next step
then maps its block once more.

The cost: a jitted call returns only when its result is ready (the Python
thread releases the GIL meanwhile, so background threads such as the input
pipeline's prefetcher keep working), and between rare phases the process
keeps the step's block, which it needs again at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import logging
import platform
import sys
from typing import Any

import jax

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_ASYNC_DISPATCH = "jax_cpu_enable_async_dispatch"
_applied = False  # set once per process by reuse_step_memory


def _accelerator_possible() -> bool:
    """Whether JAX may pick a non-CPU backend: ``jax_platforms`` allows one, or a plugin or libtpu is installed."""
    platforms = jax.config.values.get("jax_platforms")
    if platforms:
        return platforms.split(",")[0].strip() != "cpu"
    if importlib.util.find_spec("jax_plugins") is not None or importlib.util.find_spec("libtpu") is not None:
        return True
    return any(True for _ in importlib.metadata.entry_points(group="jax_plugins"))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _backends_initialized() -> bool:
    """Whether JAX has created its backends (True where this JAX cannot tell: then nothing is changed)."""
    from jax._src import xla_bridge

    query = getattr(xla_bridge, "backends_are_initialized", None)
    return True if query is None else bool(query())


def reuse_step_memory() -> bool:
    """Apply the settings of this module's docstring; returns whether they were applied.

    Call it at the start of a process, before anything initialises a JAX
    backend (the training entry point does). It changes nothing, and returns
    False, when the process may run on an accelerator, is not on Linux with
    glibc, or JAX's backends already exist (the dispatch mode is fixed then).
    """
    global _applied
    if _applied:
        return True
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or _ASYNC_DISPATCH not in jax.config.values:
        return False
    if _accelerator_possible():
        return False
    if _backends_initialized():
        log.debug("JAX backends already initialised: XLA:CPU step memory is not kept between steps")
        return False
    libc = _libc()
    if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, -1)):
        return False
    jax.config.update(_ASYNC_DISPATCH, False)
    _applied = True
    return True


def active() -> bool:
    """Whether :func:`reuse_step_memory` was applied in this process."""
    return _applied


def settle(arrays: Any) -> Any:
    """Wait until freshly transferred ``arrays`` (a pytree) are ready, where :func:`reuse_step_memory` applies.

    Returns ``arrays``. Waits only for arrays on CPU devices, and only where
    :func:`active`; elsewhere it returns at once, and dispatch stays asynchronous.
    """
    if not active():
        return arrays
    leaves = [x for x in jax.tree_util.tree_leaves(arrays) if isinstance(x, jax.Array)]
    if leaves and all(d.platform == "cpu" for x in leaves for d in x.devices()):
        jax.block_until_ready(leaves)
    return arrays


def release_free_memory() -> None:
    """Where :func:`active`, return the heap's free memory to the system (glibc ``malloc_trim``).

    For after rare phases (samples, checkpoints) whose own allocations would
    otherwise stay in the heap beside the step's: the next step maps its block
    once more, and the peak stays that of the default settings.
    """
    if _applied:
        _libc().malloc_trim(0)
