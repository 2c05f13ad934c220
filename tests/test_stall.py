"""A training run that stops making progress ends with one line and the threads' stacks, and resumes."""

import contextlib
import queue
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, cpu_devices_env, training_processes
from test_peers import _LONG_RUN, _finish, _patched, kill_at_step_10

from jaxgan import stall


@pytest.fixture
def ended(monkeypatch):
    """Calls of ``exit_now`` from the watchdog (recorded, instead of ending the test's process)."""
    calls: queue.Queue = queue.Queue()
    monkeypatch.setattr(stall.peer_failure, "exit_now", lambda status, flush=True: calls.put(status))
    return calls


def _stuck_here(seconds: float) -> None:
    time.sleep(seconds)


def test_a_phase_past_the_limit_ends_the_process_with_the_stacks(tmp_path, ended, capfd):
    with stall.Watchdog(0.5, tmp_path) as watchdog:
        watchdog.beat("dispatching step {step}", 1)
        _stuck_here(1.0)  # before arm(): the first steps compile, as long as they take
        watchdog.arm()
        watchdog.beat("saving the checkpoint of step {step}", 12)
        _stuck_here(1.5)
    assert ended.get(timeout=1) == stall.STATUS
    err = capfd.readouterr().err
    assert "error: no progress for 0.5 s while saving the checkpoint of step 12 (--config.stall_timeout_s=0.5)" in err
    assert f"Every thread's stack is in {tmp_path / 'stall_process0.txt'}" in err
    assert "rerun the same command to resume from the newest" in err
    stacks = (tmp_path / "stall_process0.txt").read_text()
    assert "while saving the checkpoint of step 12" in stacks
    assert "_stuck_here" in stacks and "test_a_phase_past_the_limit" in stacks  # where the main thread waited


def test_a_hang_in_the_first_steps_ends_after_the_longer_first_limit(tmp_path, ended, capfd):
    # Before arm() (the first steps compile) a phase may last first_steps_s, not for ever: a 3-process CPU job once
    # hung there (two processes at step 10, one inside step 2), where nothing was timed.
    with stall.Watchdog(0.2, tmp_path, first_steps_s=1.0) as watchdog:
        watchdog.beat("dispatching step {step}", 1)
        _stuck_here(0.6)  # past timeout_s, within first_steps_s: compiling
        watchdog.beat("dispatching step {step}", 2)
        with pytest.raises(queue.Empty):
            ended.get(timeout=0.3)
        _stuck_here(1.2)
    assert ended.get(timeout=1) == stall.STATUS
    err = capfd.readouterr().err
    assert ("error: no progress for 1 s while dispatching step 2 (--config.stall_timeout_s=0.2; 1 s in the first "
            "steps, which compile)") in err, err  # fmt: skip
    assert stall.Watchdog(3600, tmp_path).first_steps_s == 3600  # never shorter than timeout_s
    assert stall.Watchdog(60, tmp_path).first_steps_s == stall.FIRST_STEPS_S


def test_phases_that_keep_moving_and_timeout_0_never_end_it(tmp_path, ended):
    with stall.Watchdog(0.5, tmp_path) as watchdog:
        watchdog.arm()
        for step in range(10):  # 1.5 s in all, each phase 0.15 s
            watchdog.beat("dispatching step {step}", step)
            _stuck_here(0.15)
    off = stall.Watchdog(0, tmp_path)
    with off:
        off.arm()
        off.beat("dispatching step {step}", 1)
        _stuck_here(0.3)
    assert off._thread is None
    with pytest.raises(queue.Empty):
        ended.get(timeout=0.5)
    assert not (tmp_path / "stall_process0.txt").exists()
    assert not any(t.name == "jaxgan-stall" for t in threading.enumerate())  # each watchdog stopped its thread


@contextlib.contextmanager
def _end_held_by_another_thread():
    """Inside the block another live thread holds the process's end (``peer_failure.claim_end``: a peer's failure,
    a second Ctrl-C); when it ends, that thread dies without ending the process."""
    claimed, done = threading.Event(), threading.Event()

    def holder():
        assert stall.peer_failure.claim_end() and stall.peer_failure.claim_end()  # (again: still its own)
        claimed.set()
        done.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert claimed.wait(timeout=10)
        yield
    finally:
        done.set()
        thread.join()


def test_a_stall_while_another_thread_ends_the_process_says_nothing(tmp_path, ended, capfd):
    # The watchdog, firing while another ender ends the process, must not print a second line nor end the process
    # with its own status. A claim dies with its thread.
    with _end_held_by_another_thread():
        assert not stall.peer_failure.claim_end()
        with stall.Watchdog(0.2, tmp_path) as watchdog:
            watchdog.arm()
            watchdog.beat("dispatching step {step}", 3)
            _stuck_here(0.8)
        with pytest.raises(queue.Empty):
            ended.get(timeout=0.3)
        assert "no progress" not in capfd.readouterr().err
        assert not (tmp_path / "stall_process0.txt").exists()
    with stall.Watchdog(0.2, tmp_path) as watchdog:  # the holder died without ending the process: free again
        watchdog.arm()
        watchdog.beat("dispatching step {step}", 4)
        _stuck_here(0.8)
    assert ended.get(timeout=1) == stall.STATUS
    assert "error: no progress for 0.2 s while dispatching step 4" in capfd.readouterr().err


def test_exit_now_waits_for_the_ender_and_ends_the_process_if_that_one_dies(monkeypatch):
    # A thread that lost the end to another waits for that one's exit; if the other raised on its way there, the
    # process must still end (here os._exit records instead of ending the test's process).
    exits: queue.Queue = queue.Queue()
    monkeypatch.setattr(stall.peer_failure.os, "_exit", exits.put)
    with _end_held_by_another_thread():
        late = threading.Thread(target=stall.peer_failure.exit_now, args=(3,))
        late.start()
        with pytest.raises(queue.Empty):
            exits.get(timeout=0.5)  # waiting for the holder's exit
    assert exits.get(timeout=5) == 3
    late.join(timeout=5)


# The training command whose input pipeline hangs forever after 5 batches (a file system that stopped answering).
_HANGS_AFTER_5 = """
import itertools, time
from jaxgan import parallel
prefetch = parallel.prefetch_to_mesh
def hanging(batches, *args, **kwargs):
    yield from itertools.islice(prefetch(batches, *args, **kwargs), 5)
    print("the input pipeline hangs", flush=True)
    time.sleep(3600)
parallel.prefetch_to_mesh = hanging
"""


def test_a_hung_input_pipeline_ends_the_run_which_then_resumes(tmp_path):
    args = [f"--workdir={tmp_path}", "--config=experiments/configs/horse2zebra.py:tiny", "--config.num_train_steps=8",
            "--config.sample_every_steps=0", "--config.results_max_images=2"]  # fmt: skip
    run = 'runpy.run_module("experiments.horse2zebra", run_name="__main__", alter_sys=True)'
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", f"import runpy\n{_HANGS_AFTER_5}\n{run}", *args,
                           "--config.stall_timeout_s=4"], cwd=ROOT, env=cpu_devices_env(1), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == stall.STATUS, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "the input pipeline hangs" in proc.stdout
    assert "error: no progress for 4 s while waiting for the input pipeline's batch of step 6" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    stacks = (tmp_path / "stall_process0.txt").read_text()
    assert "in hanging" in stacks and "_train_and_evaluate" in stacks, stacks
    assert time.monotonic() - t < 200
    resumed = subprocess.run([sys.executable, "-m", "experiments.horse2zebra", *args], cwd=ROOT,
                             env=cpu_devices_env(1), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from the checkpoint at step 4" in resumed.stderr


def test_a_process_whose_input_hangs_ends_and_so_does_the_one_waiting_for_it(tmp_path):
    # Process 1's input pipeline hangs; process 0 waits for it in a collective (JAX's heartbeat sees nothing: process
    # 1's heartbeat thread is alive). Each ends after the limit with its own line, which names where it waited.
    only_1 = 'if "--process_id=1" in sys.argv:\n    parallel.prefetch_to_mesh = hanging'
    patch = _HANGS_AFTER_5.replace("parallel.prefetch_to_mesh = hanging", only_1)
    # (8 s: with 4, a save took longer on a machine loaded by two test runs, and both processes reported it first)
    procs = training_processes([tmp_path] * 2, "--config.num_train_steps=40", "--config.sample_every_steps=0",
                               "--config.stall_timeout_s=8", launch=_patched(patch))  # fmt: skip
    outs = _finish(procs, timeout=240)
    assert [p.returncode for p in procs] == [1, 1], outs
    assert "error: no progress for 8 s on process 1 while waiting for the input pipeline's batch of step 6" in outs[1]
    assert "error: no progress for 8 s on process 0 while" in outs[0] or (
        "error: process 1 stopped with no progress for 8 s while waiting for the input pipeline's batch of step 6"
        in outs[0]
    ), outs[0]
    assert "Check failure" not in outs[0] + outs[1] and "Traceback" not in outs[0] + outs[1], outs
    assert "in hanging" in (tmp_path / "stall_process1.txt").read_text()


def test_without_the_liveness_link_a_killed_peer_still_ends_the_other_with_our_line(tmp_path):
    # Where the liveness connection cannot be made (a firewall), process 0 learns of a killed peer only when its
    # own work fails or stops: Gloo's collective raises (PeerLostError after PEER_WAIT_S) or hangs (the watchdog,
    # after stall_timeout_s); either comes long before JAX's heartbeat (--peer_timeout) and its native abort.
    no_link = "from jaxgan import liveness\nliveness.start = lambda *args, **kwargs: None"
    procs = training_processes([tmp_path] * 2, *_LONG_RUN, "--config.stall_timeout_s=5", "--peer_timeout=100",
                               launch=_patched(no_link))  # fmt: skip
    outs, seconds = kill_at_step_10(procs, victim=1)
    out = outs[0]
    assert procs[0].returncode == 1, out
    assert "error: process(es) [1] ended without a word" in out or "error: no progress for 5 s while" in out, out
    assert "Check failure" not in out and "stopped sending heartbeats" not in out, out
    assert seconds < 60, (seconds, out)
