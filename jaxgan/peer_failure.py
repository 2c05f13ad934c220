"""With several processes, one that fails stops the others within a second, each with one line saying why.

JAX does not tell a process that a peer has failed. A peer that raises during training (a full disk, an
unreadable file, a bug) leaves the others waiting for it inside the next step's collective, and itself
waits at exit in JAX's shutdown barrier for them: every process hung until that barrier timed out, then
all aborted with native stack traces (2 processes on this CPU, jax 0.10.2: 305 s, exit status 134).

Here the processes share three kinds of keys in the job's key-value store (JAX's coordination service,
which every process already talks to):

- ``failed``: the first process that fails writes its index and error (:class:`Watch` for an exception,
  :func:`announce` for a second Ctrl-C). A watcher thread in every process waits on that key (a blocking
  read, renewed every ``WAIT_S``); when a peer has failed, it prints one line and ends its process, which
  was waiting for a step that can never finish. The checkpoints already written stay, and a save cut
  short leaves the one before it (see ``jaxgan.checkpoint``).
- ``left/<i>``: process i's exit status, written when it leaves its :class:`Watch` or ends with
  :func:`exit_now`. Leaving a Watch waits until every process has left (JAX's shutdown barrier at exit
  would wait for them anyway). If all left with 0, they return normally; if any did not, every process
  ends with :func:`exit_now`: one that returned would wait in the shutdown barrier for a peer that ends
  without it (process 0 failing while it writes the results page, after the others finished).
- ``gone/<i>``: written by process i just before it ends. Process 0 holds the coordination service and
  ends last, after every ``gone`` key: a peer whose service vanished aborts with a native stack trace.

A process killed outright (``kill -9``, out of memory) writes nothing, but process 0 sees its connection
close (``jaxgan.liveness``): it writes ``failed`` with the word ``lost`` for that process and ends, and the
others' watchers end them, each with one line, wherever they were waiting (a collective, an Orbax
barrier). When process 0 is the one killed, the coordination service dies with it: each other process
sees its own connection close and ends at once with the same line (JAX would abort it within a second
with a native stack trace). A peer whose step fails first (on CPU, Gloo often raises in the collective at
once) waits at most ``PEER_WAIT_S`` for the others' ``left`` keys; when its error is one of JAX's runtime,
it names the processes that never wrote one and ends with :class:`PeerLostError` (an error of its own is
reported as it is). A frozen process or a lost host keeps its connection open but stops beating on it:
with :class:`Watch`'s ``silence_s`` (the training command: half of ``--peer_timeout``; with
``--nopeer_beats``, JAX's heartbeat ends the job with its native stack trace), the same happens
after that many seconds of silence, before JAX's heartbeat would abort the job with a native stack trace.

A process has five enders: a Watch's main thread (leaving the Watch), its watcher, its liveness link's
thread, and outside the Watch a second Ctrl-C (``jaxgan.preemption``) and the stall watchdog
(``jaxgan.stall``). Each first takes the end with :func:`claim_end`, before it prints its line: the first
one ends the process, with its line and its status; a later one (a process failing in two ways at once)
prints nothing and leaves it to the first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import jax

from jaxgan import liveness

WAIT_S = 1.0  # one blocking read of the store; renewed while nothing is set (it returns as soon as it is)
GRACE_S = 1.0  # a watcher that saw a failure waits this long for its own process to stop on its own
LAST_WAIT_S = 10.0  # how long a process that ends waits for the others to decide (see exit_now)
PEER_WAIT_S = 5.0  # after an error: a live peer writes its left key ~GRACE_S after our failed key (< --peer_timeout)
_PREFIX = "jaxgan/peer_failure"
_generation = 0  # one key space per Watch: the processes enter their Watches in the same order
_announced = False
_watching = False  # inside a Watch: the others write their left/ keys
_lost: tuple[int, ...] = ()  # processes that ended (or fell silent) without a word: nobody waits for them
_link: liveness.Monitor | liveness.Link | None = None  # this process's end of the liveness connections
_LOST = "lost"  # the error of a process that ended or fell silent without a word, in the failed key
_ender: threading.Thread | None = None  # the thread that is ending this process (see claim_end)
_ender_lock = threading.Lock()


class PeerLostError(RuntimeError):
    """This process's step failed while other processes had ended without a word (killed, a lost host)."""


def _distributed_state() -> Any:
    from jax._src import distributed  # no public API for the store; Orbax reads it the same way

    return getattr(distributed, "global_state", None)


def _client() -> Any | None:
    """JAX's coordination-service client, or None in a single-process run (or where JAX has none)."""
    if jax.process_count() == 1:
        return None
    return getattr(_distributed_state(), "client", None)


def _key(name: str) -> str:
    return f"{_PREFIX}/{_generation}/{name}"


def _lost_line(indices: Sequence[int], me: int, how: str = liveness.KILLED) -> str:
    return (f"error: process(es) {list(indices)} {how}; process {me} cannot go on without it and stops too. "
            "Rerun the same command on every process to resume from the last checkpoint.")  # fmt: skip


def describe(error: BaseException) -> str:
    """``"Type: first line of the message"``, at most 300 characters."""
    first = (str(error).strip().splitlines() or [""])[0]
    text = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def announce(what: str) -> None:
    """Tell the other processes that this one failed with ``what`` (once; nothing with one process).

    The first process to fail sets the key; a later one's ``what`` is not stored.
    """
    global _announced
    client = _client()
    if client is None or _announced:
        return
    _announced = True
    _set(client, "failed", f"{jax.process_index()}\t{what}")


def _set(client: Any, name: str, value: str) -> None:
    """Set the key ``name`` unless it is set already (a peer failed first; the main thread and the watcher
    both ending this process), or the service is gone."""
    with contextlib.suppress(Exception):
        client.key_value_set(_key(name), value)


def _read(client: Any, name: str, seconds: float) -> str | None:
    """The key ``name``, waiting up to ``seconds`` for it to be set; None if it was not (other errors raise)."""
    try:
        return client.blocking_key_value_get(_key(name), max(1, int(1000 * seconds)))
    except Exception as e:
        if "DEADLINE_EXCEEDED" in str(e):
            return None
        raise


def _wait_for_all(client: Any, prefix: str, deadline: float | None, indices: Sequence[int]) -> dict[int, str]:
    """``{i: value}`` of the keys ``prefix/i`` set by ``deadline`` (None: wait for all of them)."""
    found: dict[int, str] = {}
    for i in indices:
        while i not in found and i not in _lost:  # a process that died meanwhile is not waited for
            left = WAIT_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return found
            try:
                value = _read(client, f"{prefix}/{i}", min(left, WAIT_S))
            except Exception:  # noqa: BLE001
                return found  # the service is gone
            if value is not None:
                found[i] = value
    return found


def _flush() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def claim_end() -> bool:
    """Take the end of this process for the calling thread: False if another live thread took it first.

    Call it before saying why the process ends; on False, say nothing (the other thread is ending the
    process with its own line and status). True again for the thread that holds it. A claim dies with its
    thread, which ends the process unless its exit was replaced (tests), and with :func:`_release_end`.
    """
    global _ender
    me = threading.current_thread()
    with _ender_lock:
        if _ender is not None and _ender is not me and _ender.is_alive():
            return False
        _ender = me
        return True


def _release_end() -> None:
    """Give up the calling thread's claim (a Watch left normally: the process goes on)."""
    global _ender
    with _ender_lock:
        if _ender is threading.current_thread():
            _ender = None


def _wait_for_end() -> None:
    """Return once this thread holds the end: at once, or when the thread that holds it has died without
    ending the process (it raised on its way to ``os._exit``), so that the process still ends."""
    while not claim_end():
        time.sleep(0.1)


def exit_now(status: int, flush: bool = True) -> NoReturn:
    """End this process with ``status`` at once, skipping JAX's shutdown barrier (several processes).

    Inside a :class:`Watch` it first records ``status`` as this process's ``left`` key and waits (up to
    :data:`LAST_WAIT_S`) until every process has one: a process that ended earlier would break its peers'
    collectives (on CPU, Gloo raises in them at once) before their watchers had printed why. Process 0
    ends last. ``flush=False`` leaves Python's buffered streams alone (for a thread that must not wait for
    their locks). A thread that another one beat to :func:`claim_end` waits here for that one's exit (and
    goes on if that one dies without it).
    """
    _wait_for_end()
    if flush:
        _flush()
    if _link is not None:
        _link.goodbye()  # this process ends on purpose: the others must not take it as killed
    client = _client()
    if client is not None and _watching:
        me = jax.process_index()
        everyone = [i for i in range(jax.process_count()) if i not in _lost]
        _set(client, f"left/{me}", str(status))
        _wait_for_all(client, "left", time.monotonic() + LAST_WAIT_S, everyone)
        # What this process would still print is noise now (a collective failing as its peers end).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        if me == 0:  # the service ends with this process: after the others
            _wait_for_all(client, "gone", time.monotonic() + LAST_WAIT_S, everyone[1:])
            time.sleep(0.5)  # from their last key to their os._exit
        else:
            _set(client, f"gone/{me}", "")
    os._exit(status)


class Watch:
    """Context manager: a peer that fails ends this process; an exception that leaves it is announced,
    and a process that leaves it waits for the others (see the module's doc).

    With one process it does nothing. Enter it on every process at the same point (the training command
    does, around everything after ``jax.distributed`` starts), and end a process that failed with
    :func:`exit_now`. ``silence_s``: seconds without a beat on the liveness link after which a peer counts
    as lost (frozen, or a lost host); None: only a closed link counts.
    """

    def __init__(self, silence_s: float | None = None) -> None:
        self._silence_s = silence_s
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any | None = None

    def __enter__(self) -> Watch:
        global _generation, _announced, _watching, _lost
        self._client = _client()
        if self._client is None:
            return self
        _generation += 1
        _announced, _watching, _lost = False, True, ()
        _release_end()  # (an earlier Watch of this thread that ended in an error the caller then handled)
        self._thread = threading.Thread(target=self._watch, args=(self._client,), name="jaxgan-peers", daemon=True)
        self._thread.start()
        _start_link(self._client, self._peer_lost, self._silence_s)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        global _watching, _lost, _link
        if self._client is None:
            return
        self._stopped.set()  # first: this process now stops on its own, whatever a peer does
        _wait_for_end()  # another thread may be ending this process (its os._exit comes within seconds)
        if _link is not None:
            _link.goodbye()
        if error is not None:
            announce(describe(error))
        me = jax.process_index()
        _set(self._client, f"left/{me}", "0" if error is None else "1")
        # Every process leaves (or ends) before any returns. A Ctrl-C here ends the wait like any error. After an
        # error, a live peer leaves within seconds (its watcher ends it); one that does not has ended silently.
        everyone = range(jax.process_count())
        deadline = None if error is None else time.monotonic() + PEER_WAIT_S
        left = _wait_for_all(self._client, "left", deadline, everyone)
        _set(self._client, "failed", "-1\tnone: every process has left")  # wakes the watchers (unless one failed)
        # Out of its read before Python shuts down: a daemon thread still inside the C++ client then
        # aborts the process ("FATAL: exception not rethrown").
        self._thread.join(timeout=WAIT_S + GRACE_S + 1)
        if _link is not None:
            _link.close()
            _link = None
        failed = sorted(i for i, status in left.items() if status != "0")
        if error is None and (failed or _lost):
            why = (f"Process(es) {failed} stopped with an error (their output has the details)" if failed else
                   f"Process(es) {list(_lost)} ended or fell silent without a word (killed, out of memory, a lost "
                   "host?)")  # fmt: skip
            print(f"\n{why}. This process (process {me}) had finished its work, which is saved; it ends now too.",
                  file=sys.stderr, flush=True)  # fmt: skip
            exit_now(0)
        if error is None:
            _watching = False
            _release_end()
            return
        # The caller ends this process with exit_now, which needs _watching and skips the lost processes.
        _lost = tuple(i for i in everyone if i not in left)
        if _lost and isinstance(error, jax.errors.JaxRuntimeError):  # a collective that failed as they went
            raise PeerLostError(
                f"process(es) {list(_lost)} ended without a word (killed, out of memory, or a lost host?); this "
                f"process (process {me}) then failed with {describe(error)}. Rerun the same command on every process "
                "to resume from the last checkpoint."
            ) from error

    def _watch(self, client: Any) -> None:
        """Wait for a peer's failure (one blocking read of the store at a time); then end this process."""
        while not self._stopped.is_set():
            try:
                value = _read(client, "failed", WAIT_S)
            except Exception:  # noqa: BLE001 - a passing fault of the connection? try again
                self._stopped.wait(WAIT_S)
                continue
            if value is None:
                continue
            pid, _, what = value.partition("\t")
            kind, _, how = what.partition("\t")
            me = jax.process_index()
            if kind == _LOST:  # (set by process 0's monitor) no process waits for it any more
                _record_lost(int(pid))
            if int(pid) in (me, -1) or self._stopped.wait(GRACE_S):  # this one stops on its own (the same error?)
                return
            if not claim_end():
                return
            if kind == _LOST:
                print(f"\n{_lost_line([int(pid)], me, how)}", file=sys.stderr, flush=True)
            else:
                print(f"\nerror: process {pid} stopped with {what} (its output has the details). Process {me} "
                      "cannot go on without it and stops too. Rerun the same command on every process to resume "
                      "from the last checkpoint.", file=sys.stderr, flush=True)  # fmt: skip
            exit_now(1)

    def _peer_lost(self, index: int, how: str) -> None:
        """(The liveness link's thread) process ``index`` died or fell silent (``how`` says which). Process 0
        tells the others and ends. Another process, told that process 0 is lost, ends at once: JAX aborts it
        within a second (a killed process 0 takes the coordination service with it), or after its heartbeat
        timeout, and nothing is left to tell or wait for."""
        _record_lost(index)
        if not claim_end():  # ending already; its waits now skip that process
            return
        me = jax.process_index()
        if me != 0:
            os.write(2, f"\n{_lost_line([index], me, how)}\n".encode())  # (no lock that a busy thread may hold)
            os._exit(1)
        self._stopped.set()
        _set(self._client, "failed", f"{index}\t{_LOST}\t{how}")
        print(f"\n{_lost_line([index], 0, how)}", file=sys.stderr, flush=True)
        exit_now(1)


def _record_lost(index: int) -> None:
    global _lost
    if index not in _lost:
        _lost = (*_lost, index)


def _start_link(client: Any, on_lost: Callable[[int, str], None], silence_s: float | None) -> None:
    """Open this process's end of the liveness connections (see ``jaxgan.liveness``)."""
    global _link

    def lookup(seconds: float) -> str | None:
        try:
            return _read(client, "alive", seconds)
        except Exception:  # noqa: BLE001 - the service is gone: no link
            return None

    address = getattr(_distributed_state(), "coordinator_address", None)
    publish = lambda v: _set(client, "alive", v)  # noqa: E731
    _link = liveness.start(jax.process_index(), address, publish, lookup, on_lost, silence_s)
