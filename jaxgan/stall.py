"""A training run that stops making progress ends with one line and every thread's stack, instead of hanging.

A collective that never completes (a peer's device hung, a network fault that the coordination service's
heartbeat does not see, because the hung process's heartbeat thread is alive), a file system that stopped
answering, or an input pipeline stuck on one read all leave the training loop waiting forever: the job burns
its allocation and says nothing. The loop therefore names each phase of each step before it starts it
(:meth:`Watchdog.beat`: waiting for the batch, dispatching the step, fetching its metrics, saving, writing
samples). A thread of the watchdog's own ends the process when one phase has lasted ``timeout_s``:

- it writes every Python thread's stack to ``WORKDIR/stall_process<i>.txt`` (where the main thread waits);
- it prints one line: the step, the phase, the seconds, the file, and how to resume;
- with several processes it tells the others through ``jaxgan.peer_failure``, and each ends with its line;
- it ends the process with status 1. The checkpoints already written stay (a save cut short leaves the one
  before it), so rerunning the same command resumes.

Until :meth:`Watchdog.arm`, which the loop calls once it has fetched its first metrics, a phase may last
``max(timeout_s, first_steps_s)`` (:data:`FIRST_STEPS_S`, 30 minutes, by default): the first steps compile
(seconds to minutes), and with several processes each one's first steps also wait for the slowest one's
compilation; a run that hangs in them (a collective of the first steps that never completes: seen once in
a 3-process CPU job, two processes at step 10 and one inside step 2) still ends. Every later phase is timed
at ``timeout_s``, the first sample grid's and the first save's included (they compile or set up little).
``timeout_s`` 0 turns the watchdog off.
"""

from __future__ import annotations

import faulthandler
import os
import pathlib
import threading
import time

import jax

from jaxgan import peer_failure

STATUS = 1
FIRST_STEPS_S = 1800.0  # the least a phase of the first steps (before arm(): compilation) may last


class Watchdog:
    """Context manager around the training loop; :meth:`beat` before each phase, :meth:`arm` once the
    run is under way.

    ``beat(what, step)``: ``what`` is a phrase with ``{step}`` in it (formatted only if the process ends,
    so a beat costs an assignment).
    """

    def __init__(self, timeout_s: float, workdir: str | pathlib.Path, first_steps_s: float = FIRST_STEPS_S) -> None:
        self.timeout_s = float(timeout_s)
        self.first_steps_s = max(self.timeout_s, float(first_steps_s))  # the limit until arm()
        self._stack_file = pathlib.Path(workdir) / f"stall_process{jax.process_index()}.txt"
        self._phase: tuple[str, int, float] = ("starting", 0, time.monotonic())
        self._armed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, what: str, step: int) -> None:
        self._phase = (what, step, time.monotonic())  # one assignment: the watcher reads it whole

    def arm(self) -> None:
        """Time the phases from now on (the current one from its start)."""
        self._armed = True

    def __enter__(self) -> Watchdog:
        if self.timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, name="jaxgan-stall", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _watch(self) -> None:
        interval = min(5.0, max(0.1, self.timeout_s / 10))
        while not self._stop.wait(interval):
            what, step, since = self._phase
            seconds = time.monotonic() - since
            limit = self.timeout_s if self._armed else self.first_steps_s
            if seconds >= limit and not self._stop.is_set():
                self._end(what.format(step=step), seconds, limit)

    def _end(self, what: str, seconds: float, limit: float) -> None:
        """Write the stacks, say why, tell the other processes, end this one (unless another thread is ending
        it already: a peer's failure, a second Ctrl-C)."""
        if not peer_failure.claim_end():
            return
        try:
            with open(self._stack_file, "w") as f:
                f.write(f"jaxgan: no progress for {seconds:.1f} s while {what}. Every thread's stack:\n\n")
                f.flush()
                faulthandler.dump_traceback(f, all_threads=True)
            where = f"Every thread's stack is in {self._stack_file}."
        except OSError as e:
            where = f"(Could not write the threads' stacks to {self._stack_file}: {e}.)"
        me = jax.process_index()
        of = f" on process {me}" if jax.process_count() > 1 else ""
        limit_is = f"--config.stall_timeout_s={self.timeout_s:g}"
        if limit != self.timeout_s:
            limit_is += f"; {limit:g} s in the first steps, which compile"
        # The limit, not the seconds measured (up to a check interval more): the same words on every process and run.
        line = (f"\nerror: no progress for {limit:g} s{of} while {what} ({limit_is}): a hung device, collective "
                f"or file system? {where} The checkpoints written so far are kept: rerun the same command to resume "
                "from the newest.\n")  # fmt: skip
        os.write(2, line.encode())  # (no lock that the stuck main thread may hold)
        peer_failure.announce(f"no progress for {limit:g} s while {what}")
        peer_failure.exit_now(STATUS, flush=False)  # (not Python's streams: the main thread may hold their locks)
