"""One training process per run directory: a lock that names its holder and dies with it.

Starting the same command twice by accident would let two processes write the same
checkpoints. :class:`RunLock` takes an exclusive ``flock`` on ``WORKDIR/run.lock`` and writes
its holder (PID, host, start time, command) into the file. The kernel drops the lock when
the holder's process ends in any way (``kill -9`` included), so a crashed run never leaves
it stuck; the file's text is only a description, rewritten by the next holder.

Only process 0 of a multi-process job takes it (all processes of one job share a run).
``flock`` is local to one machine on some network filesystems: two jobs on different hosts
over NFS are not guaranteed to see each other's lock.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys
from typing import Any


class RunLockError(RuntimeError):
    """Another live process holds the run directory."""


class RunLock:
    """``with RunLock(workdir):`` the exclusive right to train in ``workdir`` (raises :class:`RunLockError`)."""

    def __init__(self, workdir: str | pathlib.Path):
        self.path = pathlib.Path(workdir) / "run.lock"
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        """What the lock file says about its (last) holder; {} when unreadable."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a file where the folder should be, no write permission, a read-only disk
            raise RunLockError(
                f"Cannot use {self.path.parent} as the run directory: {e.strerror or e}. Give --workdir a folder "
                "that can be created and written to."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self.holder()
            who = f"PID {h.get('pid', '?')} on host {h.get('host', '?')} (started {h.get('started', '?')})"
            raise RunLockError(
                f"Another process is training in {self.path.parent}: {who}. Two processes must not write the same "
                "checkpoints. Wait for it to finish (or stop it; it saves a checkpoint on SIGTERM), or use another "
                "--workdir."
            ) from None
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
