"""jaxgan.run_lock: a second process in the same run directory is refused; a killed holder leaves no stuck lock."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from jaxgan import run_lock

_HOLD = """
import sys, time
from jaxgan import run_lock
with run_lock.RunLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(workdir):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_naming_the_first_and_kill_9_frees_it(tmp_path):
    first = _holder(tmp_path)
    try:
        with pytest.raises(run_lock.RunLockError) as info, run_lock.RunLock(tmp_path):
            pass
        message = str(info.value)
        assert f"PID {first.pid}" in message and socket.gethostname() in message and "--workdir" in message
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with run_lock.RunLock(tmp_path) as lock:  # the kernel dropped the dead holder's lock
        assert lock.holder()["pid"] == os.getpid()
    with run_lock.RunLock(tmp_path):  # released on exit, retaken at once
        pass


def test_the_training_command_refuses_a_second_run(tmp_path):
    first = _holder(tmp_path)
    try:
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.horse2zebra", f"--workdir={tmp_path}",
             "--config=experiments/configs/horse2zebra.py:tiny"],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 1 and f"PID {first.pid}" in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "checkpoints").exists() and time.perf_counter() - t < 200
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_a_workdir_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with (
        pytest.raises(run_lock.RunLockError, match="Cannot use .*run as the run directory"),
        run_lock.RunLock(tmp_path / "run"),
    ):
        pass
