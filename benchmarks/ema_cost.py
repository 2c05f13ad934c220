r"""What the EMA of the generator weights costs per train step: the step with and without it, interleaved.

    python -m benchmarks.ema_cost                    # 128x128, batch 1, float32, 10 rounds
    python -m benchmarks.ema_cost --size 256 --rounds 5

Compiles the paper-config step (``benchmarks.train_step.build_jax_case``) once with
``ema_decay=0.999`` and once with ``0`` (no EMA in the step), then times them alternately,
one step each per round, so that load from other processes falls on both alike. Prints one
JSON line: the median milliseconds of each and their difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from benchmarks.train_step import build_jax_case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    from jaxgan import cpu_memory

    cpu_memory.reuse_step_memory()
    steps = {d: build_jax_case(args.size, args.batch, args.dtype, False, d)[0] for d in (0.999, 0.0)}
    times: dict[float, list[float]] = {d: [] for d in steps}
    for step in steps.values():  # warm-up
        step()
    for _ in range(args.rounds):
        for decay, step in steps.items():
            t = time.perf_counter()
            step()
            times[decay].append((time.perf_counter() - t) * 1000)
    with_ema, without = (statistics.median(times[d]) for d in (0.999, 0.0))
    row = {"size": args.size, "batch": args.batch, "dtype": args.dtype, "rounds": args.rounds,
           "ms_with_ema": round(with_ema, 1), "ms_without_ema": round(without, 1),
           "ema_ms": round(with_ema - without, 1), "ema_share": round((with_ema - without) / without, 4)}  # fmt: skip
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
