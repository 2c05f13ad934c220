"""Faults of multi-process runs, each in real processes: peers that never join, disagree, or get a signal alone."""

import signal
import subprocess
import sys
import time

from conftest import ROOT, cpu_devices_env, free_port


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
    bad = subprocess.run([*cmd, "--process_id=0", "--distributed_timeout=0"], cwd=ROOT, env=cpu_devices_env(1),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "must be at least 1 second" in bad.stderr, bad.stderr


def _two_processes(workdirs, *extra, per_process=((), ()), env=({}, {})):
    """The training command as processes 0 and 1 (2 CPU devices each, ``env`` added); stdout and stderr merged."""
    port = free_port()
    cmd = [sys.executable, "-m", "experiments.horse2zebra", "--config=experiments/configs/horse2zebra.py:tiny",
           "--config.batch_size=4", "--config.results_max_images=2", f"--coordinator_address=127.0.0.1:{port}",
           "--num_processes=2", *extra]  # fmt: skip
    return [subprocess.Popen([*cmd, f"--workdir={workdirs[i]}", f"--process_id={i}", *per_process[i]], cwd=ROOT,
                             env={**cpu_devices_env(2), **env[i]}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
            for i in range(2)]  # fmt: skip


def _finish(procs, timeout=240):
    try:
        return [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()


def test_processes_with_other_configs_or_unshared_workdirs_all_stop_at_start(tmp_path):
    # Another learning rate on process 1 used to train silently apart; node-local workdirs failed at the first
    # checkpoint and then hung. Both are now one error on every process before anything is compiled or saved.
    procs = _two_processes([tmp_path / "run"] * 2, per_process=((), ("--config.lr=0.02",)))
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [1, 1], outs
    assert all("process(es) [1] were started with another config than process 0" in out for out in outs), outs
    assert "lr: 0.02 here, 0.0002 on process 0" in outs[1] and "Traceback" not in outs[0] + outs[1]
    assert not (tmp_path / "run" / "checkpoints").exists() and not list((tmp_path / "run").glob(".peers-*"))
    procs = _two_processes([tmp_path / "node0", tmp_path / "node1"])
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [1, 1], outs
    assert all("process(es) [1] do not see the files process 0 writes in --workdir" in out for out in outs), outs


def test_sigterm_to_one_of_two_processes_saves_and_stops_both(tmp_path):
    # Process 1 alone gets a SIGTERM (as from a scheduler), a few seconds after process 0 starts training: in the
    # first steps, or still before its training loop. It used to stop alone between log steps, its save waiting
    # for a peer that waited in the next step, both for ever; before its loop, JAX's own SIGTERM handler took
    # the signal and training went on to the end. Now both save at the same step soon after and exit 0.
    procs = _two_processes([tmp_path] * 2, "--config.num_train_steps=400", "--config.log_every_steps=50",
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
        procs = _two_processes([tmp_path] * 2)
        outs = _finish(procs)
    assert [p.returncode for p in procs] == [1, 1], outs
    assert "Wait for it to finish" in outs[0] and "process(es) [0] stopped with an error during start-up" in outs[1]


def test_processes_that_read_other_data_stop_at_start(tmp_path):
    # The same config, but "~" is another home on each process: their data sets differ in size.
    from folder_data import make_folder

    for i, n in ((0, 8), (1, 12)):
        make_folder(tmp_path / f"home{i}" / "data", counts={"trainA": n, "trainB": n, "testA": 2, "testB": 2})
    procs = _two_processes([tmp_path / "run"] * 2, "--config.dataset=folder:~/data",
                           env=({"HOME": str(tmp_path / "home0")}, {"HOME": str(tmp_path / "home1")}))  # fmt: skip
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [1, 1], outs
    assert all("process(es) [1] read other data than process 0" in out for out in outs), outs
    assert "steps_per_epoch: 3 here, 2 on process 0" in outs[1], outs[1]
