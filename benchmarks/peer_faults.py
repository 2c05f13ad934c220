r"""A process of a multi-process run killed or frozen: how long the others take to end, and how.

    python -m benchmarks.peer_faults                                    # kill -9 of process 1 of 2
    python -m benchmarks.peer_faults --processes 3 --victim 0 --signal STOP --peer_timeout 20
    python -m benchmarks.peer_faults --signal STOP --no-peer_beats      # JAX's heartbeat alone (--peer_timeout 100)

Starts the training command (the tiny config, 2 CPU devices per process, a checkpoint every 10 steps) as
``--processes`` processes of one job on this machine, sends ``--signal`` to process ``--victim`` once
process 0 has logged step ``--at-step``, and times each other process from the signal to its exit. Prints
one JSON line per run: each survivor's exit status and seconds, whether it printed jaxgan's line (the
``error: process(es) [...]`` line that names the lost process) and whether it ended with a native stack
trace (JAX's abort). The victim is killed at the end.
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import threading
import time

from benchmarks import common

NATIVE = ("Check failure", "Fatal Python error", "Terminating process because")


def survivor_report(output: str, returncode: int | None, seconds: float | None, victim: int) -> dict:
    """What one surviving process did: ``{"exit", "seconds", "our_line", "native"}`` (exit None: still running
    when the benchmark gave up)."""
    ours = [line for line in output.splitlines() if line.startswith(f"error: process(es) [{victim}] ")]
    return {
        "exit": returncode,
        "seconds": None if seconds is None else round(seconds, 1),
        "our_line": ours[0] if ours else None,
        "native": any(marker in output for marker in NATIVE),
    }


def run_once(args: argparse.Namespace) -> dict:
    """One job: start it, signal the victim at ``args.at_step``, wait for the others (at most ``args.wait_s``)."""
    workdir, n = tempfile.mkdtemp(prefix="jaxgan-peer-faults-"), args.processes
    beats = "--peer_beats" if args.peer_beats else "--nopeer_beats"
    procs = common.local_job([workdir] * n, "--config.num_train_steps=100000", "--config.log_every_steps=10",
                             "--config.checkpoint_every_steps=10", "--config.sample_every_steps=0",
                             f"--peer_timeout={args.peer_timeout}", beats)  # fmt: skip
    outputs: list[list[str]] = [[] for _ in range(n)]
    reached = threading.Event()

    def read(i: int) -> None:
        for line in procs[i].stdout:
            outputs[i].append(line)
            if i == 0 and f"step {args.at_step} " in line:
                reached.set()

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(n)]
    for reader in readers:
        reader.start()
    try:
        if not reached.wait(args.wait_s):
            raise SystemExit(f"process 0 did not log step {args.at_step} within {args.wait_s} s")
        procs[args.victim].send_signal(getattr(signal, f"SIG{args.signal}"))
        start, ended = time.monotonic(), {}
        survivors = [i for i in range(n) if i != args.victim]
        while len(ended) < len(survivors) and time.monotonic() - start < args.wait_s:
            for i in survivors:
                if i not in ended and procs[i].poll() is not None:
                    ended[i] = time.monotonic() - start
            time.sleep(0.02)
    finally:
        for p in procs:
            p.kill()
        for reader in readers:
            reader.join(timeout=10)
    report = {i: survivor_report("".join(outputs[i]), procs[i].returncode if i in ended else None, ended.get(i),
                                 args.victim) for i in survivors}  # fmt: skip
    return {"processes": n, "victim": args.victim, "signal": args.signal, "at_step": args.at_step,
            "peer_timeout": args.peer_timeout, "peer_beats": args.peer_beats, "survivors": report}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--victim", type=int, default=1, help="the process that is signalled")
    parser.add_argument("--signal", choices=("KILL", "STOP"), default="KILL")
    parser.add_argument("--at-step", type=int, default=30, help="signal once process 0 logged this step")
    parser.add_argument("--peer_timeout", type=int, default=100, help="the training command's --peer_timeout")
    parser.add_argument(
        "--peer_beats",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the training command's --peer_beats (its default) or --nopeer_beats",
    )
    parser.add_argument("--wait-s", type=float, default=600.0, help="give up on a process after this long")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if not 0 <= args.victim < args.processes:
        parser.error(f"--victim must be in 0..{args.processes - 1}")
    for _ in range(args.repeat):
        print(json.dumps(run_once(args)), flush=True)


if __name__ == "__main__":
    main()
