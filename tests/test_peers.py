"""Faults of multi-process runs, each in real processes: peers that never join, disagree, or get a signal alone."""

import signal
import subprocess
import sys
import time

from conftest import ROOT, cpu_devices_env, free_port, training_processes


def test_a_process_whose_peers_never_join_exits_with_one_line(tmp_path):
    # Process 0 of 2 alone (its peer never starts), and process 1 with no coordinator: each gives up after
    # --distributed_timeout with the likely causes, instead of JAX's abort with a native stack trace.
    port = free_port()
    cmd = [sys.executable, "-m", "experiments.horse2zebra", f"--workdir={tmp_path}",
           "--config=experiments/configs/horse2zebra.py:tiny", f"--coordinator_address=127.0.0.1:{port}",
           "--num_processes=2", "--distributed_timeout=3"]  # fmt: skip
    for pid in (0, 1):
        proc = subprocess.run([*cmd, f"--process_id={pid}"], cwd=ROOT, env=cpu_devices_env(1), capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert f"process {pid} of 2 (coordinator 127.0.0.1:{port}): not every process joined within 3 s" in proc.stderr
        assert "--distributed_timeout" in proc.stderr and "Check failure" not in proc.stderr, proc.stderr
        assert not list(tmp_path.iterdir())  # nothing written before the peers are there
    for flag, says in (("--distributed_timeout=0", "must be at least 1 second"),
                       ("--peer_timeout=5", "--peer_timeout must be at least 10 seconds, got 5")):  # fmt: skip
        bad = subprocess.run([*cmd, "--process_id=0", flag], cwd=ROOT, env=cpu_devices_env(1), capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert bad.returncode == 2 and says in bad.stderr, bad.stderr


def _finish(procs, timeout=240):
    try:
        return [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()


def test_processes_with_other_configs_or_unshared_workdirs_all_stop_at_start(tmp_path):
    # Another learning rate on process 1 used to train silently apart; node-local workdirs failed at the first
    # checkpoint and then hung. Both are now one error on every process before anything is compiled or saved.
    procs = training_processes([tmp_path / "run"] * 2, per_process=((), ("--config.lr=0.02",)))
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [1, 1], outs
    assert all("process(es) [1] were started with another config than process 0" in out for out in outs), outs
    assert "lr: 0.02 here, 0.0002 on process 0" in outs[1] and "Traceback" not in outs[0] + outs[1]
    assert not (tmp_path / "run" / "checkpoints").exists() and not list((tmp_path / "run").glob(".peers-*"))
    procs = training_processes([tmp_path / "node0", tmp_path / "node1"])
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [1, 1], outs
    assert all("process(es) [1] do not see the files process 0 writes in --workdir" in out for out in outs), outs


def test_sigterm_to_one_of_two_processes_saves_and_stops_both(tmp_path):
    # Process 1 alone gets a SIGTERM (as from a scheduler), a few seconds after process 0 starts training: in the
    # first steps, or still before its training loop. It used to stop alone between log steps, its save waiting
    # for a peer that waited in the next step, both for ever; before its loop, JAX's own SIGTERM handler took
    # the signal and training went on to the end. Now both save at the same step soon after and exit 0.
    procs = training_processes([tmp_path] * 2, "--config.num_train_steps=400", "--config.log_every_steps=50",
                               "--config.checkpoint_every_steps=1000", "--config.sample_every_steps=0")  # fmt: skip
    for line in procs[0].stdout:
        if "Starting a new run" in line:
            break
    time.sleep(3)
    procs[1].send_signal(signal.SIGTERM)
    outs = _finish(procs, timeout=400)  # under a minute alone; several on a loaded 2-core machine
    assert [p.returncode for p in procs] == [0, 0], outs
    steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(steps) == 1 and steps[0] < 50, (steps, outs)
    assert f"Received SIGTERM: saved the checkpoint at step {steps[0]}" in outs[0], outs[0]


def test_a_start_up_error_on_one_process_stops_both(tmp_path):
    # Another run holds the workdir: process 0 alone fails to take the lock. Process 1 used to wait for it in the
    # next collective until JAX's heartbeat aborted it; now it stops at once, naming process 0.
    from jaxgan import run_lock

    with run_lock.RunLock(tmp_path):
        procs = training_processes([tmp_path] * 2)
        outs = _finish(procs)
    assert [p.returncode for p in procs] == [1, 1], outs
    assert "Wait for it to finish" in outs[0] and "process(es) [0] stopped with an error during start-up" in outs[1]


def test_processes_that_read_images_of_another_size_stop_at_start(tmp_path):
    # The same config, but "~" is another home on each process, whose images have another size. preprocess none
    # keeps each image's size, and each process checks only the images it decodes: process 0 must say it too.
    from folder_data import make_folder

    for i, size in ((0, (40, 48)), (1, (32, 32))):
        make_folder(tmp_path / f"home{i}" / "data", counts={"trainA": 8, "trainB": 8, "testA": 2, "testB": 2},
                    size=size)  # fmt: skip
    procs = training_processes([tmp_path / "run"] * 2, "--config.dataset=folder:~/data", "--config.preprocess=none",
                               env=({"HOME": str(tmp_path / "home0")}, {"HOME": str(tmp_path / "home1")}))  # fmt: skip
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [1, 1], outs
    assert all("process(es) [1] read images of another size than process 0" in out for out in outs), outs
    assert "image_shape: [32, 32] here, [40, 48] on process 0" in outs[1], outs[1]


def test_images_of_another_size_on_another_process_are_named_as_such():
    # preprocess none keeps each image's size and each process checks only its share: process 1's 300x300
    # images beside process 0's 256x256 are a data set of mixed sizes, not copies that differ.
    from jaxgan import peers

    sizes = ["image_shape: [300, 300] here, [256, 256] on process 0"]
    for mode in ("none", "scale_width"):
        for differences in (sizes, []):  # process 1, and process 0 (no difference of its own)
            message = peers.data_mismatch([1], differences, mode)
            assert message.startswith("process(es) [1] read images of another size than process 0"), message
            assert f"preprocess={mode!r} keeps each image's own size" in message and "resize_and_crop" in message
            assert ("Here: image_shape: [300, 300] here, [256, 256] on process 0." in message) == bool(differences)
    message = peers.data_mismatch([1], ["steps_per_epoch: 3 here, 2 on process 0"], None)
    assert "read other data than process 0" in message and "own size" not in message, message


def _patched(patch: str) -> tuple[str, str]:
    """``launch`` for :func:`training_processes`: the training command, after the Python code ``patch``."""
    run = 'runpy.run_module("experiments.horse2zebra", run_name="__main__", alter_sys=True)'
    return "-c", f"import runpy, sys, time\n{patch}\n{run}\n"


# Process 1 raises at step 25 of a real run (an error of its own, as from a full disk or a bug): the training
# command, with the train loop's per-step check wrapped to fail there.
_FAIL_AT_25 = """
from jaxgan.preemption import Preemption
requested = Preemption.requested
def failing(self, step, sync):
    if step == 25 and "--process_id=1" in sys.argv:
        raise RuntimeError("injected fault on process 1")
    return requested(self, step, sync)
Preemption.requested = failing
"""
_LONG_RUN = ("--config.num_train_steps=400", "--config.log_every_steps=10", "--config.checkpoint_every_steps=10",
             "--config.sample_every_steps=0")  # fmt: skip


def kill_at_step_10(procs, victim: int) -> tuple[list[str], float]:
    """SIGKILL process ``victim`` once process 0 has logged step 10; every process's output after that, and the
    seconds until all had ended."""
    _read_until(procs[0], "step 10 ")
    procs[victim].kill()
    t = time.monotonic()
    outs = _finish(procs, timeout=120)
    return outs, time.monotonic() - t


def _read_until(proc, text: str) -> str:
    """Read ``proc``'s output until a line holds ``text``; what it printed until then."""
    head = []
    for line in proc.stdout:
        head.append(line)
        if text in line:
            break
    return "".join(head)


def _checkpoint_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_a_late_error_on_one_process_stops_both_at_once(tmp_path):
    # It used to hang both processes for five minutes (JAX's shutdown barrier), then abort both with native stack
    # traces. Now process 1 announces its error and process 0 stops a second later, saying why.
    procs = training_processes([tmp_path] * 2, *_LONG_RUN, launch=_patched(_FAIL_AT_25))
    head = _read_until(procs[0], "Starting a new run")
    t = time.monotonic()
    outs = _finish(procs, timeout=240)
    seconds, outs[0] = time.monotonic() - t, head + outs[0]
    assert [p.returncode for p in procs] == [1, 1], outs
    assert "RuntimeError: injected fault on process 1" in outs[1] and "Traceback" in outs[1]
    assert ("error: process 1 stopped with RuntimeError: injected fault on process 1 (its output has the details). "
            "Process 0 cannot go on without it and stops too") in outs[0], outs[0]  # fmt: skip
    assert "Check failure" not in outs[0] + outs[1], outs
    assert seconds < 120, (seconds, outs)  # 10-20 s here, mostly the first step's compilation and 25 steps
    steps = _checkpoint_steps(tmp_path)
    assert 10 in steps and set(steps) <= {10, 20}, steps  # the checkpoints before the failure stay


# Process 1's steps after step 10 take 0.2 s longer, so that its second Ctrl-C, 0.3 s after the first, always comes
# before the next logging step (where the first would stop both, and save).
_SLOW_AFTER_10 = """
from jaxgan.preemption import Preemption
requested = Preemption.requested
def slow(self, step, sync):
    if step > 10 and "--process_id=1" in sys.argv:
        time.sleep(0.2)
    return requested(self, step, sync)
Preemption.requested = slow
"""


def test_a_second_ctrl_c_on_one_process_stops_both_at_once(tmp_path):
    # Process 1 gets two Ctrl-C: it ends at once (130), and process 0, which waited for it in the next step, a
    # second later with one line, instead of after JAX's heartbeat timeout with a native stack trace.
    procs = training_processes([tmp_path] * 2, *_LONG_RUN, launch=_patched(_SLOW_AFTER_10))
    _read_until(procs[0], "step 10 ")  # process 0 logged step 10: process 1 is in its training loop too
    procs[1].send_signal(signal.SIGINT)
    time.sleep(0.3)
    procs[1].send_signal(signal.SIGINT)
    t = time.monotonic()
    outs = _finish(procs, timeout=120)
    seconds = time.monotonic() - t
    assert [p.returncode for p in procs] == [1, 130], outs
    assert "Second Ctrl-C: stopped at once" in outs[1], outs[1]
    assert "error: process 1 stopped with a second Ctrl-C (stopped at once, without saving)" in outs[0], outs[0]
    assert "Check failure" not in outs[0] + outs[1] and seconds < 20, (seconds, outs)


# Process 0 cannot write the results page, 5 s after process 1 has finished its part of the results (else
# process 1 may still be working when the failure comes, and it stops as any peer does, with status 1).
_PAGE_FAILS_ON_0 = """
from jaxgan import report
def failing(*args, **kwargs):
    time.sleep(5)
    raise OSError(28, "No space left on device (injected)")
if "--process_id=0" in sys.argv:
    report.write_results_page = failing
"""


def test_process_0_failing_after_the_others_finished_ends_them_cleanly(tmp_path):
    # Process 1 had returned and waited in JAX's shutdown barrier; process 0's os._exit took the coordination
    # service away, and process 1, whose work was done, aborted with a native stack trace. Now process 1 waits
    # for every process to leave, then ends with status 0 and one line.
    procs = training_processes([tmp_path] * 2, "--config.num_train_steps=4", "--config.sample_every_steps=0",
                               launch=_patched(_PAGE_FAILS_ON_0))  # fmt: skip
    outs = _finish(procs, timeout=240)
    assert [p.returncode for p in procs] == [1, 0], outs
    assert "No space left on device (injected)" in outs[0], outs[0]
    assert (
        "Process(es) [0] stopped with an error (their output has the details). This process (process 1) had "
        "finished its work, which is saved; it ends now too." in outs[1]
    ), outs[1]
    assert "Check failure" not in outs[0] + outs[1], outs
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4"]  # the training was saved


# Process 1 is killed (as by kill -9 or the kernel's out-of-memory killer) where process 0 waits for it in one of
# Orbax's barriers of the coordination service: the first one of the save at step 30.
_KILLED_IN_A_SAVE = """
import os, signal, threading
from jaxgan.checkpoint import Checkpointer
from orbax.checkpoint._src.multihost import multihost
at_30 = threading.Event()
save = Checkpointer.save
def marked(self, step, state, force=False):
    if step == 30:
        at_30.set()
    return save(self, step, state, force)
Checkpointer.save = marked
get_barrier_sync_fn = multihost.get_barrier_sync_fn
def barrier_fn(*args, **kwargs):
    barrier = get_barrier_sync_fn(*args, **kwargs)
    def killing(*, key, timeout_ms):
        if at_30.is_set() and "--process_id=1" in sys.argv:
            print("killed at the barrier", key, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return barrier(key=key, timeout_ms=timeout_ms)
    return killing
multihost.get_barrier_sync_fn = barrier_fn
"""


# Process 1 reaches its first train step 35 s after process 0 (a slower or loaded host compiles longer).
_LATE_TO_THE_FIRST_STEP = """
from jaxgan import parallel
make_train_step = parallel.make_train_step
def late(*args, **kwargs):
    step, calls = make_train_step(*args, **kwargs), []
    def stepping(*a, **k):
        if not calls and "--process_id=1" in sys.argv:
            print("process 1: 35 s late to its first step", flush=True)
            time.sleep(35)
        calls.append(1)
        return step(*a, **k)
    return stepping
parallel.make_train_step = late
"""


def test_a_process_late_to_the_first_step_by_more_than_30_s_is_waited_for(tmp_path):
    # XLA's Gloo connected the step's device group at its first collective and waited 30 s at most for the
    # others: both processes failed there with "Gloo context initialization failed" (DEADLINE_EXCEEDED on one,
    # Connect timeout on the other) and a traceback. The runner now connects the group at the start, where the
    # processes are together (parallel.connect_collectives), and a connected group waits as long as it takes.
    procs = training_processes([tmp_path] * 2, "--config.num_train_steps=2", "--config.sample_every_steps=0",
                               launch=_patched(_LATE_TO_THE_FIRST_STEP))  # fmt: skip
    outs = _finish(procs, timeout=400)
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "35 s late to its first step" in outs[1] and "Gloo" not in outs[0].replace("[Gloo] Rank", ""), outs
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]


def test_a_process_killed_in_a_save_stops_the_others_at_once(tmp_path):
    # Processes 0 and 2 waited in the barrier until JAX's heartbeat took process 1 as dead (--peer_timeout, 100 s
    # here), then aborted with native stack traces. Now process 0 sees process 1's liveness connection close and
    # ends at once; it tells process 2 through the coordination service, whose watcher ends it.
    procs = training_processes([tmp_path] * 3, *_LONG_RUN, launch=_patched(_KILLED_IN_A_SAVE))
    out1 = procs[1].communicate(timeout=240)[0]
    assert procs[1].returncode == -signal.SIGKILL and "killed at the barrier" in out1, out1[-2000:]
    t = time.monotonic()
    outs = _finish([procs[0], procs[2]], timeout=120)
    seconds = time.monotonic() - t
    assert [procs[0].returncode, procs[2].returncode] == [1, 1], outs
    for i, out in zip((0, 2), outs, strict=True):
        assert f"error: process(es) [1] ended without a word (killed, out of memory?); process {i} cannot go on " \
               "without it and stops too. Rerun the same command on every process" in out, out  # fmt: skip
        assert "Traceback" not in out and "Check failure" not in out, out
    assert seconds < 20, (seconds, outs)  # 1.6 s here
    assert 20 in _checkpoint_steps(tmp_path)  # the checkpoints written before the kill stay


def test_a_frozen_process_ends_the_job_with_one_line_before_the_heartbeat(tmp_path):
    # Process 1 stops (SIGSTOP, as a hung or lost host): its sockets stay open, so process 0 waited in the step's
    # collective until JAX's heartbeat took process 1 as dead after --peer_timeout (20 s here: ~17 s, then JAX's
    # "stopped sending heartbeats" and a native stack trace). Its beats on the liveness link stop too: after half
    # of --peer_timeout process 0 takes it as lost and ends with the line (as it tells any other process:
    # test_a_process_killed_in_a_save_stops_the_others_at_once).
    procs = training_processes([tmp_path] * 2, *_LONG_RUN, "--peer_timeout=20")
    out, seconds = _stop_at_step_10(procs)
    assert procs[0].returncode == 1, out
    assert "error: process(es) [1] fell silent for 10 s (frozen, or its host or the network lost?); process 0 " \
           "cannot go on without it and stops too. Rerun the same command on every process" in out, out  # fmt: skip
    assert "stopped sending heartbeats" not in out and "Check failure" not in out, out
    assert 9 < seconds < 16, (seconds, out)  # 10-12 s here; ~17 s and a native abort before


def test_without_beats_a_frozen_process_ends_the_job_after_peer_timeout(tmp_path):
    # --nopeer_beats: JAX's heartbeat takes the stopped process as dead after --peer_timeout (10 s here, instead
    # of JAX's default 100 s) and aborts the job with "stopped sending heartbeats" and a native stack trace.
    procs = training_processes([tmp_path] * 2, *_LONG_RUN, "--peer_timeout=10", "--nopeer_beats")
    out, seconds = _stop_at_step_10(procs)
    assert procs[0].returncode != 0 and "stopped sending heartbeats" in out, out
    assert seconds < 60, (seconds, out)  # 5-15 s here; 100 s with JAX's default


def _stop_at_step_10(procs) -> tuple[str, float]:
    """SIGSTOP process 1 once process 0 has logged step 10; process 0's output after that, and its seconds."""
    _read_until(procs[0], "step 10 ")
    procs[1].send_signal(signal.SIGSTOP)
    t = time.monotonic()
    try:
        out = procs[0].communicate(timeout=120)[0]
    finally:
        procs[1].kill()
        _finish(procs)
    return out, time.monotonic() - t


def test_process_0_killed_ends_the_others_with_one_line(tmp_path):
    # Process 0 holds JAX's coordination service, which dies with it: JAX aborted the others within a second with
    # "Terminating process because the JAX distributed service detected fatal errors" and a native stack trace
    # (exit -6). Each now sees its liveness connection to process 0 close first and ends with the line.
    procs = training_processes([tmp_path] * 2, *_LONG_RUN)
    outs, seconds = kill_at_step_10(procs, victim=0)
    out = outs[1]
    assert procs[1].returncode == 1, out
    assert ("error: process(es) [0] ended without a word (killed, out of memory?); process 1 cannot go on without "
            "it and stops too. Rerun the same command on every process") in out, out  # fmt: skip
    assert "Check failure" not in out and "Fatal Python error" not in out, out
    assert seconds < 10, (seconds, out)  # 0.2-0.3 s here
