"""JAX's persistent compilation cache for jaxgan's commands: a resumed run does not compile its step again.

Every command (training, translate, evaluate, export, the page) compiles its programs when it starts:
the paper train step takes about 40 s on an H200 (with XLA's autotuning) and longer on a CPU, and a
run resumed after a preemption paid it again. :func:`enable` points JAX's persistent cache at
``$XDG_CACHE_HOME/jaxgan/xla`` (``~/.cache/jaxgan/xla``), so that a program compiled once on a machine
is read back from disk the next time. JAX keys every entry by the program, the compiler options, the
device kind and the JAX version, so a stale entry is never used.

The user's choice wins: where ``JAX_COMPILATION_CACHE_DIR`` is set, JAX uses that folder and this module
does nothing; ``JAXGAN_COMPILATION_CACHE=off`` leaves the cache off; ``JAXGAN_COMPILATION_CACHE=PATH``
puts it elsewhere. The folder is bounded: JAX evicts the least recently used entries beyond
:data:`MAX_BYTES` (which also makes processes that share the folder lock it while they write).

In a multi-process job only process 0 writes entries (JAX's rule). On CPU the other processes never read
them: JAX's key holds the topology's fingerprint, which differs per process there, so they compile at every
start (measured on jax 0.10.2 and 0.11.2).
"""

from __future__ import annotations

import logging
import os
import pathlib

import jax

log = logging.getLogger(__name__)
MAX_BYTES = 4 << 30  # JAX evicts the least recently used entries beyond this
OFF = ("0", "off", "false", "no", "")


def default_folder() -> pathlib.Path:
    """``$XDG_CACHE_HOME/jaxgan/xla``, else ``~/.cache/jaxgan/xla``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "jaxgan" / "xla"


def enable() -> pathlib.Path | None:
    """Turn the cache on for this process, unless the user chose otherwise (see the module's doc).

    Returns the folder in use (the user's ``JAX_COMPILATION_CACHE_DIR`` too), or None when the cache is off:
    asked to be, or the folder cannot be created (a warning; the command runs without it).
    """
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    choice = os.environ.get("JAXGAN_COMPILATION_CACHE")
    if choice is not None and choice.strip().lower() in OFF:
        return None
    folder = pathlib.Path(os.path.expanduser(choice)) if choice else default_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("Compilation cache off: cannot create %s (%s). Set JAXGAN_COMPILATION_CACHE=PATH to put it "
                    "elsewhere, or =off.", folder, e)  # fmt: skip
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:  # JAX's default is unbounded
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return folder
