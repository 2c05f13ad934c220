r"""Soak test: a long run must not grow. RSS and open files of the training process over 5,000 steps.

    python -m benchmarks.soak                     # 5,000 steps of :tiny, samples every 100, checkpoints every 250
    python -m benchmarks.soak --steps 400         # quick

Runs ``loop.train_and_evaluate`` in this process (as the training command does, with
``cpu_memory.reuse_step_memory`` on CPU-only machines) and records, at every logging
interval, the resident set (``VmRSS``), the open file descriptors and the threads. Prints
one JSON line per interval and a summary: the growth from the end of warm-up (the first
``--warmup`` fraction of the run) to the end, in MiB per 1,000 steps and in descriptors.
``--python-heap`` also traces Python allocations (``tracemalloc``) from the end of warm-up and
prints the lines whose memory grew most, which tells Python-object growth from native growth.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import threading
import time
import tracemalloc


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def growth(rows: list[dict], warmup: float) -> dict[str, float]:
    """RSS (MiB per 1,000 steps, least squares over the rows after warm-up) and descriptors (last - first)."""
    import numpy as np

    last = rows[-1]["step"]
    steady = [r for r in rows if r["step"] >= warmup * last] or rows[-2:]
    steps = np.array([r["step"] for r in steady], float)
    rss = np.array([r["rss_mib"] for r in steady], float)
    slope = float(np.polyfit(steps, rss, 1)[0]) * 1000 if len(steady) > 1 else 0.0
    return {
        "from_step": int(steady[0]["step"]),
        "rss_start_mib": round(float(rss[0]), 1),
        "rss_end_mib": round(float(rss[-1]), 1),
        "rss_mib_per_1000_steps": round(slope, 2),
        "fds_start": steady[0]["fds"],
        "fds_end": steady[-1]["fds"],
        "threads_start": steady[0]["threads"],
        "threads_end": steady[-1]["threads"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--warmup", type=float, default=0.2, help="fraction of the run before growth is measured")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--python-heap", action="store_true", help="trace Python allocations after warm-up")
    args = parser.parse_args(argv)
    from jaxgan import cpu_memory

    cpu_memory.reuse_step_memory()
    from experiments.configs import horse2zebra
    from jaxgan import loop

    config = horse2zebra.get_config("tiny")
    config.num_train_steps = args.steps
    config.log_every_steps = max(1, args.steps // 50)
    config.sample_every_steps = 100
    config.checkpoint_every_steps = 250
    config.results_max_images = 4
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="jaxgan-soak-"))
    rows: list[dict] = []
    t0 = time.perf_counter()

    def on_log(step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, "t_s": round(time.perf_counter() - t0, 1), "rss_mib": round(_rss_mib(), 1),
               "fds": _fds(), "threads": threading.active_count()}  # fmt: skip
        row["images_per_s"] = round(metrics["images_per_s"], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.python_heap and not heap and step >= args.warmup * args.steps:
            tracemalloc.start()
            heap.append(tracemalloc.take_snapshot())

    heap: list[tracemalloc.Snapshot] = []
    loop.train_and_evaluate(config, workdir, on_log=on_log)
    summary = {"summary": growth(rows, args.warmup), "steps": args.steps, "wall_s": round(time.perf_counter() - t0, 1)}
    if heap:
        diff = tracemalloc.take_snapshot().compare_to(heap[0], "lineno")
        summary["python_heap_growth_kib"] = round(sum(d.size_diff for d in diff) / 1024, 1)
        summary["python_heap_top"] = [f"{d.traceback[0]}: {d.size_diff / 1024:+.1f} KiB" for d in diff[:5]]
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
