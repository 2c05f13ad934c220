"""Ctrl-C and SIGTERM during training (jaxgan.preemption), in child processes that receive real signals."""

import signal
import subprocess
import sys
import threading
import time

from conftest import ROOT

from jaxgan.preemption import EXIT_STATUS, Preemption

# The main thread spends its time in one long C call (an eigenvalue solve, ~10 s here), as it does in an
# XLA compilation: Python-level signal handlers cannot run until it returns.
CHILD = """
import numpy as np
from jaxgan.preemption import Preemption

with Preemption() as preempt:
    print("ready", flush=True)
    np.linalg.eigvals(np.random.default_rng(0).random(({n}, {n})))
    print("flag", preempt.signal, flush=True)
"""


def _child(n: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(n=n)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_second_ctrl_c_stops_at_once_even_inside_a_long_native_call():
    proc = _child(2000)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    start = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    waited = time.perf_counter() - start
    assert proc.returncode == EXIT_STATUS == 130, (out, err)
    assert "Press Ctrl-C again to stop at once" in err and "Second Ctrl-C: stopped at once" in err, err
    assert "flag" not in out and "Traceback" not in err  # the native call never returned
    assert waited < 5, waited


# Another thread took the end of the process (jaxgan.peer_failure.claim_end: a peer's failure, the stall watchdog)
# and ends it 3 s later with its own status.
CHILD_ENDING = """
import os, threading, time
from jaxgan import peer_failure
from jaxgan.preemption import Preemption

claimed = threading.Event()
def other_ender():
    peer_failure.claim_end()
    claimed.set()
    time.sleep(3)
    os.write(2, b"the other ender's line\\n")
    os._exit(7)

with Preemption() as preempt:
    threading.Thread(target=other_ender, daemon=True).start()
    print("ready" if claimed.wait(timeout=10) else "no claim", flush=True)
    time.sleep(60)  # (the other ender's exit comes first)
"""


def test_a_second_ctrl_c_while_another_thread_ends_the_process_leaves_it_to_that_one():
    proc = subprocess.Popen([sys.executable, "-c", CHILD_ENDING], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 7, (out, err)  # the other ender's status, not Ctrl-C's 130
    assert "the other ender's line" in err and "Second Ctrl-C" not in err, err


def test_one_ctrl_c_or_sigterm_only_sets_the_flag():
    for sig, message in ((signal.SIGINT, "Press Ctrl-C again"), (signal.SIGTERM, "")):
        proc = _child(600)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.splitlines()[-1] == f"flag {int(sig)}" and message in err, (out, err)


def test_leaving_restores_the_handlers_and_stops_the_watcher():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with Preemption() as preempt:
        assert signal.getsignal(signal.SIGINT) == preempt._handle
        watchers = [t for t in threading.enumerate() if t.name == "jaxgan-ctrl-c"]
        assert len(watchers) == 1
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert signal.set_wakeup_fd(-1) == -1  # no wakeup pipe left behind
    watchers[0].join(timeout=5)
    assert not watchers[0].is_alive() and not preempt.requested(1, sync=True)
