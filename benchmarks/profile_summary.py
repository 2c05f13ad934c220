r"""Where a profiled train step spends its device time: a compact summary of a ``jax.profiler`` trace.

A device session brings back at most 8 files, and a raw trace does not fit beside the translations, so the
quality run summarises its trace (``config.profile_steps``) on the device, into ``quality.json``. Also::

  python -m benchmarks.profile_summary WORKDIR/profile --steps 3

Reads the newest ``*.xplane.pb`` under the folder with ``jax.profiler.ProfileData``. On a GPU it takes the
kernels of the device planes' stream lines; on a CPU-only machine the XLA operations of the host threads
(an operation split over the thread pool counts once per thread there, so its times are thread time).
Each kernel goes into one category by its name: ``conv`` (cuDNN/XLA convolutions), ``gemm`` (cuBLAS,
cuBLASLt, Triton matmuls), ``fusion`` (XLA's elementwise and reduction fusions: instance norms, pads,
activations, losses, Adam), ``copy`` (memcpy, memset, transposes, copies) and ``other``. On XLA:CPU a
convolution fused with its neighbours is named as a fusion ("ynn_fusion"), so there the split is rough.
``device_ms_per_step`` adds up kernel time: kernels that overlap on several streams count in full, so it
can exceed the step's wall time; the shares are shares of kernel time.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import sys
from typing import Any

# The first pattern that matches a kernel's name (lowercased) names its category.
CATEGORIES = (
    ("conv", re.compile(r"conv(?!er)|cudnn|fprop|dgrad|wgrad|implicit_gemm|winograd")),  # not "convert(sion)"
    ("gemm", re.compile(r"gemm|cublas|matmul|dot|cutlass|splitk")),  # (cuBLAS's splitKreduce_kernel too)
    ("copy", re.compile(r"memcpy|memset|copy|transpose")),
    ("fusion", re.compile(r"fusion|reduce|loop_|input_|triton|broadcast|select|add|multiply")),
)


class ProfileError(ValueError):
    """No readable trace (the message says why)."""


def category(name: str) -> str:
    """The category of a kernel or XLA operation named ``name``."""
    low = name.lower()
    return next((cat for cat, pattern in CATEGORIES if pattern.search(low)), "other")


def newest_trace(folder: str | pathlib.Path) -> pathlib.Path:
    """The most recently written ``*.xplane.pb`` under ``folder``."""
    traces = sorted(pathlib.Path(folder).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise ProfileError(f"no *.xplane.pb under {folder}")
    return traces[-1]


def device_events(trace: str | pathlib.Path) -> tuple[str, list[tuple[str, float]]]:
    """``(where, [(name, duration_ns)])``: the device's kernels, or the host's XLA operations on a CPU."""
    from jax.profiler import ProfileData

    data = ProfileData.from_file(str(trace))
    planes = list(data.planes)
    devices = [p for p in planes if p.name.startswith("/device:")]
    events = []
    for plane in devices:
        for line in plane.lines:
            if line.name.startswith("Stream"):  # kernels; "XLA Ops"/"XLA Modules" lines aggregate them again
                events += [(e.name, e.duration_ns) for e in line.events]
    if events:
        return ", ".join(p.name for p in devices), events
    for plane in planes:
        if plane.name == "/host:CPU":
            for line in plane.lines:
                events += [(e.name, e.duration_ns) for e in line.events if "hlo_op" in dict(e.stats)]
    if not events:
        raise ProfileError(f"{trace} holds no device kernels and no XLA operations")
    return "/host:CPU", events


def summarize(folder: str | pathlib.Path, steps: int = 1, top: int = 12) -> dict[str, Any]:
    """Device time per step (ms) in total and per category, with the ``top`` kernels by time.

    ``steps``: how many train steps the trace holds (the run's ``profile_steps`` range); times are divided by it.
    """
    trace = newest_trace(folder)
    where, events = device_events(trace)
    per_kernel: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for name, ns in events:
        per_kernel[name][0] += 1
        per_kernel[name][1] += ns
    total_ns = sum(ns for _, ns in events)
    by_cat: dict[str, float] = collections.defaultdict(float)
    for name, (_, ns) in per_kernel.items():
        by_cat[category(name)] += ns
    ms = 1e-6 / steps
    return {
        "trace": trace.name,
        "where": where,
        "steps": steps,
        "kernels_per_step": round(len(events) / steps, 1),
        "device_ms_per_step": round(total_ns * ms, 3),
        "categories": {
            cat: {"ms_per_step": round(ns * ms, 3), "share": round(ns / total_ns, 4) if total_ns else 0.0}
            for cat, ns in sorted(by_cat.items(), key=lambda kv: -kv[1])
        },
        "top": [
            {
                "name": name[:160],
                "category": category(name),
                "calls_per_step": n / steps,
                "ms_per_step": round(ns * ms, 3),
            }
            for name, (n, ns) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:top]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=pathlib.Path, help="a profile folder (e.g. WORKDIR/profile)")
    parser.add_argument("--steps", type=int, default=1, help="train steps the trace holds")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    try:
        print(json.dumps(summarize(args.folder, args.steps, args.top), indent=1))
    except ProfileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
