r"""Healthy multi-process jobs, many times: how many end 0, how many fail, how many hang.

    python -m benchmarks.healthy_jobs --repeat 20                       # beats on and off, in turn
    python -m benchmarks.healthy_jobs --repeat 10 --hogs 2              # beside 2 CPU-bound processes

Runs the training command (the tiny config, 2 CPU devices per process, ``--steps`` steps) as ``--processes``
processes of one job on this machine, ``--repeat`` times with ``--peer_beats`` and as often with
``--nopeer_beats``, in turn. A job still running after ``--wait-s`` is a hang: its processes are killed.
``--hogs N`` keeps N busy loops running meanwhile (a loaded machine: compilation then ends far apart on the
processes). Prints one JSON line per job (with the path of its processes' output), then one per setting
with the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time

from benchmarks import common


def outcome(exits: list[int | None]) -> str:
    """``"ok"`` (every process exited 0), ``"hang"`` (one still ran at the deadline) or ``"failed"``."""
    if any(e is None for e in exits):
        return "hang"
    return "ok" if all(e == 0 for e in exits) else "failed"


def counts(rows: list[dict]) -> list[dict]:
    """Per ``peer_beats`` setting: jobs, how many ended ok, failed or hung, and the range of their seconds."""
    out = []
    for beats in sorted({r["peer_beats"] for r in rows}, reverse=True):
        mine = [r for r in rows if r["peer_beats"] == beats]
        seconds = [r["seconds"] for r in mine]
        out.append({"peer_beats": beats, "jobs": len(mine),
                    **{k: sum(r["outcome"] == k for r in mine) for k in ("ok", "failed", "hang")},
                    "seconds": [min(seconds), max(seconds)]})  # fmt: skip
    return out


def run_job(args: argparse.Namespace, beats: bool) -> dict:
    """One job to its end, or to ``args.wait_s``."""
    workdir = tempfile.mkdtemp(prefix="jaxgan-healthy-jobs-")
    start = time.monotonic()
    flags = (f"--config.num_train_steps={args.steps}", "--config.log_every_steps=2",
             "--config.checkpoint_every_steps=10", f"--peer_timeout={args.peer_timeout}",
             "--peer_beats" if beats else "--nopeer_beats")  # fmt: skip
    # Into a file, not pipes: a pipe that nobody reads while we wait for the other process fills and blocks it.
    with open(os.path.join(workdir, "job.log"), "w") as log:
        procs = common.local_job([workdir] * args.processes, *flags, stdout=log)
        exits: list[int | None] = []
        for p in procs:
            try:
                exits.append(p.wait(timeout=max(1.0, args.wait_s - (time.monotonic() - start))))
            except subprocess.TimeoutExpired:
                exits.append(None)
        for p in procs:
            p.kill()
    return {"peer_beats": beats, "exits": exits, "outcome": outcome(exits),
            "seconds": round(time.monotonic() - start, 1), "hogs": args.hogs, "log": log.name}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=10, help="jobs per setting (beats on, beats off)")
    parser.add_argument("--peer_timeout", type=int, default=20, help="the training command's --peer_timeout")
    parser.add_argument("--hogs", type=int, default=0, help="busy loops beside the jobs")
    parser.add_argument("--wait-s", type=float, default=300.0, help="a job still running after this long hangs")
    args = parser.parse_args()
    hogs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(args.hogs)]
    rows = []
    try:
        for k in range(2 * args.repeat):
            rows.append(run_job(args, beats=k % 2 == 0))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        for hog in hogs:
            hog.kill()
    for line in counts(rows):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
