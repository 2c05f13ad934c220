"""SIGTERM and Ctrl-C during training: finish the step in flight, save, exit; a second Ctrl-C exits at once.

The training loop checks :meth:`Preemption.requested` between steps. A signal handler written in Python
runs only when the main thread returns to the interpreter, which it does not do while XLA compiles a step
(tens of seconds on a GPU) or while a long step runs. So a second Ctrl-C is not left to that handler:
Python's C-level handler also writes each signal's number to a pipe (``signal.set_wakeup_fd``), and a
watcher thread reading it ends the process as soon as the second SIGINT arrives, compilation or not.
Nothing is lost that the user did not ask to lose: checkpoints are written to a temporary folder and
renamed when complete, so a save cut short leaves the previous checkpoint (see ``jaxgan.checkpoint``).

With several processes, a signal that reaches some of them stops all at the same step, so that they save
together (:meth:`Preemption.requested`); a second Ctrl-C on one of them ends the others too
(``jaxgan.peer_failure``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxgan import peer_failure

EXIT_STATUS = 128 + signal.SIGINT  # what a shell reports for a process ended by Ctrl-C

_FIRST = (b"\nCtrl-C: the step in flight finishes and a checkpoint is saved, then training stops. "
          b"Press Ctrl-C again to stop at once without saving.\n")  # fmt: skip
_FIRST_OF_SEVERAL = (b"\nCtrl-C: training stops at the next logging or checkpoint step, where all processes save "
                     b"one checkpoint together. Press Ctrl-C again to stop every process at once without "
                     b"saving.\n")  # fmt: skip
_SECOND = b"\nSecond Ctrl-C: stopped at once. Rerun the same command to resume from the last checkpoint.\n"


class Preemption:
    """Context manager: SIGTERM/SIGINT set a flag that the loop checks between steps.

    Outside the main thread (where Python cannot install handlers) it leaves signals alone.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1
        self._write: int | None = None  # the pipe's write end, while watching

    def __enter__(self) -> Preemption:
        if threading.current_thread() is not threading.main_thread():
            return self
        # The pipe first: a Ctrl-C that finds the handler installed is always counted by the watcher.
        read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        several = jax.process_count() > 1
        first = _FIRST_OF_SEVERAL if several else _FIRST
        threading.Thread(target=self._watch, args=(read, first), name="jaxgan-ctrl-c", daemon=True).start()
        # Several processes: SIGTERM stays with JAX's preemption notifier (see requested()).
        for sig in (signal.SIGINT,) if several else (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        """Python-level handler (main thread, between bytecodes): remember the first signal."""
        if self.signal is None:
            self.signal = signum

    @staticmethod
    def _watch(read: int, first: bytes) -> None:
        """Count SIGINTs as the C-level handler reports them: a message on the first, exit on the second.

        Ends when the write end is closed (:meth:`__exit__`); the read end is closed here, by its only reader.
        """
        presses = 0
        try:
            while chunk := os.read(read, 64):
                for signum in chunk:
                    if signum != signal.SIGINT:
                        continue
                    presses += 1
                    if presses > 1 and not peer_failure.claim_end():  # another thread is ending the process
                        continue
                    with contextlib.suppress(OSError):
                        os.write(2, first if presses == 1 else _SECOND)
                    if presses > 1:  # end from this thread: the main one may be inside XLA
                        peer_failure.announce("a second Ctrl-C (stopped at once, without saving)")
                        peer_failure.exit_now(EXIT_STATUS, flush=False)
        finally:
            os.close(read)

    def __exit__(self, *exc: Any) -> None:
        if self._write is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write)  # the watcher reads EOF and ends
        self._write = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, step: int, sync: bool) -> bool:
        """Whether to stop after ``step``; call it after every step, on every process.

        One process: whether it got a signal. Several: a SIGTERM is JAX's preemption notice, caught by
        ``jax.distributed`` from its start (also before this context is entered) and agreed on through
        ``reached_preemption_sync_point``: every process stops at the same step, soon after. A Ctrl-C is
        asked of every process on ``sync`` steps (the loop's log, checkpoint and last steps). A process
        must never stop on its own: its save would wait for peers that wait for it inside the next step.
        """
        if jax.process_count() == 1:
            return self.signal is not None
        if multihost_utils.reached_preemption_sync_point(step):
            self.signal = self.signal or signal.SIGTERM
            return True
        return sync and bool(np.any(multihost_utils.process_allgather(np.asarray(self.signal is not None))))
