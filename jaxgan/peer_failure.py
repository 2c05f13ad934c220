"""With several processes, one that fails stops the others within a second, each with one line saying why.

JAX does not tell a process that a peer has failed. A peer that raises during training (a full disk, an
unreadable file, a bug) leaves the others waiting for it inside the next step's collective, and itself
waits at exit in JAX's shutdown barrier for them: every process hung until that barrier timed out, then
all aborted with native stack traces (2 processes on this CPU, jax 0.10.2: 305 s, exit status 134).

Here a process that fails writes one line to the job's key-value store (JAX's coordination service, which
every process already talks to): :class:`Watch` does it for an exception, :func:`announce` for a process
that is about to end at once (a second Ctrl-C). A watcher thread in every process waits on that key (a
blocking read, renewed every ``WAIT_S``) and, when a peer has failed, prints what failed and
ends its own process. That process was waiting
for a step that can never finish, so nothing it could still save is lost: the checkpoints already written
stay, and a save cut short leaves the one before it (see ``jaxgan.checkpoint``).

The failed process must end with :func:`exit_now` (the training command does), not by returning from its
main function: that return would wait in JAX's shutdown barrier for peers that are gone. Process 0 holds
the coordination service, so it ends last; a peer whose service vanished first would abort with a native
stack trace instead of its line.

A process killed outright (``kill -9``, a lost host) writes nothing; JAX's heartbeat ends the others then,
within its timeout (100 s by default).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any, NoReturn

import jax

WAIT_S = 1.0  # a watcher's blocking read of the failure key, renewed while none is set (returns as one is set)
GRACE_S = 1.0  # a watcher that saw a failure waits this long for its own process to stop on its own
LAST_WAIT_S = 10.0  # how long a process that ends waits for the others to end too (see exit_now)
_PREFIX = "jaxgan/peer_failure"
_generation = 0  # one key space per Watch: the processes enter their Watches in the same order
_announced = False


def _client() -> Any | None:
    """JAX's coordination-service client, or None in a single-process run (or where JAX has none)."""
    if jax.process_count() == 1:
        return None
    from jax._src import distributed  # no public API for the store; Orbax reads it the same way

    return getattr(getattr(distributed, "global_state", None), "client", None)


def describe(error: BaseException) -> str:
    """``"Type: first line of the message"``, at most 300 characters."""
    first = (str(error).strip().splitlines() or [""])[0]
    text = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _failure_key(generation: int) -> str:
    return f"{_PREFIX}/{generation}/failed"


def announce(what: str) -> None:
    """Tell the other processes that this one failed with ``what`` (once; nothing with one process).

    The first process to fail sets the key; a later one's ``what`` is not stored.
    """
    global _announced
    client = _client()
    if client is None or _announced:
        return
    _announced = True
    with contextlib.suppress(Exception):  # set already (a peer failed first), or the service is gone
        client.key_value_set(_failure_key(_generation), f"{jax.process_index()}\t{what}")


def _flush() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def exit_now(status: int, flush: bool = True) -> NoReturn:
    """End this process with ``status`` at once, skipping JAX's shutdown barrier (several processes).

    With several processes it first waits (up to :data:`LAST_WAIT_S`) until every process has come here: a
    process that ended earlier would break its peers' collectives (on CPU, Gloo raises in them at once) or,
    for process 0, their coordination service, before their watchers had printed why. Process 0 ends last.
    ``flush=False`` leaves Python's buffered streams alone (from a thread that must not wait for their locks).
    """
    if flush:
        _flush()
    client = _client()
    if client is not None:
        me, count = jax.process_index(), jax.process_count()
        with contextlib.suppress(Exception):
            with contextlib.suppress(Exception):  # set twice when the main thread and the watcher both get here
                client.key_value_set(f"{_PREFIX}/exited/{me}", str(status))
            deadline = time.monotonic() + LAST_WAIT_S
            while len(client.key_value_dir_get(f"{_PREFIX}/exited/")) < count and time.monotonic() < deadline:
                time.sleep(0.05)
        # What this process would still print is noise now (a collective failing as its peers end).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        if me == 0:
            time.sleep(0.2)  # the others have seen every key; let them reach os._exit before the service ends
    os._exit(status)


class Watch:
    """Context manager: a peer that fails ends this process; an exception that leaves it is announced.

    With one process it does nothing. Enter it on every process at the same point (the training command
    does, around everything after ``jax.distributed`` starts), and end a process that failed with
    :func:`exit_now`.
    """

    def __init__(self) -> None:
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watch:
        global _generation, _announced
        client = _client()
        if client is None:
            return self
        _generation += 1
        _announced = False
        self._thread = threading.Thread(target=self._watch, args=(client, _generation), name="jaxgan-peers",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        self._stopped.set()  # first: this process now stops on its own, whatever a peer does
        if error is not None:
            announce(describe(error))
        if self._thread is not None:
            # Out of its read before Python shuts down: a daemon thread still inside the C++ client then
            # aborts the process ("FATAL: exception not rethrown").
            self._thread.join(timeout=2 * WAIT_S + GRACE_S)
            self._thread = None

    def _watch(self, client: Any, generation: int) -> None:
        """Wait for a peer's failure (one blocking read of the store at a time); then end this process."""
        while not self._stopped.is_set():
            try:
                value = client.blocking_key_value_get(_failure_key(generation), int(WAIT_S * 1000))
            except Exception as e:  # noqa: BLE001
                if "DEADLINE_EXCEEDED" in str(e):  # no failure yet
                    continue
                return  # the service is gone: JAX's own error handling ends the process
            pid, _, what = value.partition("\t")
            me = jax.process_index()
            if int(pid) == me or self._stopped.wait(GRACE_S):  # this process stops on its own (the same error?)
                return
            print(f"\nerror: process {pid} stopped with {what} (its output has the details). Process {me} stops "
                  f"too, without saving: its step was waiting for process {pid}. Rerun the same command on every "
                  "process to resume from the last checkpoint.", file=sys.stderr, flush=True)  # fmt: skip
            exit_now(1)
