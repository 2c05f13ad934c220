"""Time the full CycleGAN training step; optionally against a PyTorch replica in the same process.

One step = both generators' forward passes (fake, reconstruction, identity), the
generator loss and its gradients, Adam on both generators, the two history
pools, both discriminators' losses and gradients, Adam on both discriminators:
``jaxgan.train.train_step_fn`` jitted as training runs it (state donated, compiler
options ``jaxgan.conv_forms.xla_compiler_options(remat)``).

Per case (image size x batch x compute dtype x remat) it prints one JSON line per
implementation: median and min ms per step after warm-up, compile time,
images/s (images of one domain per second, i.e. batch / step time), peak memory
(device memory stats on accelerators; on CPU the process's peak RSS since just
before the case, plus XLA's planned buffer sizes), FLOPs per step from XLA's
cost analysis and from an analytic count of the convolution multiply-adds
(``benchmarks.common.step_conv_flops``), and MFU (analytic FLOPs / time / peak;
the CPU "peak" is a measured float32 matmul rate, see ``--cpu-peak``). With
``--compare-torch`` the PyTorch replica (``benchmarks.torch_reference``) runs
interleaved with JAX, round by round, and a ``ratio`` line gives JAX / torch.

The documented command (RESULTS.md)::

  python -m benchmarks.train_step --sizes 128 256 --batch 1 --dtype float32 --compare-torch

Everything else::

  python -m benchmarks.train_step --sizes 64 128 256 --batch 1 4 16 --dtype float32 bfloat16
  python -m benchmarks.train_step --sizes 512 --remat off on --iters 1 --warmup 0 --isolate   # remat memory saving
  python -m benchmarks.train_step --sizes 128 --malloc hugepages   # glibc malloc on transparent huge pages

Each line records the machine's 1-minute load average: on a shared machine compare only quiet runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks import common


def _flops_from_cost(cost: Any) -> float | None:
    """``compiled.cost_analysis()`` is a dict (newer JAX) or a one-element list of dicts."""
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def _memory_fields(compiled: Any) -> dict[str, float]:
    """XLA's buffer plan: temporaries, arguments and outputs of the compiled step, in MiB."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return {}
    if m is None:
        return {}
    mib = 2.0**20
    return {
        "xla_temp_mb": round(m.temp_size_in_bytes / mib, 1),
        "xla_argument_mb": round(m.argument_size_in_bytes / mib, 1),
        "xla_output_mb": round(m.output_size_in_bytes / mib, 1),
        "xla_alias_mb": round(m.alias_size_in_bytes / mib, 1),
    }


def device_info() -> dict[str, Any]:
    """Platform, device kind and count, versions: the header of every result line."""
    import flax
    import jax
    import jaxlib
    import optax

    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "num_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
    }


def peak_memory_mb() -> dict[str, float]:
    """Accelerator: ``peak_bytes_in_use`` of device 0 (monotone over the process). CPU: peak RSS since reset."""
    import jax

    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return {"peak_device_mb": round(stats["peak_bytes_in_use"] / 2**20, 1)}
    return {"peak_rss_mb": round(common.peak_rss_mb(), 1)}


def device_peak_flops(dtype: str, cpu_peak: float | None) -> tuple[float | None, str | None]:
    """Peak FLOP/s of device 0 for ``dtype`` and where the number comes from."""
    import jax

    dev = jax.devices()[0]
    if dev.platform == "cpu":
        if cpu_peak is None or dtype != "float32":  # the estimate is a float32 matmul rate
            return None, None
        return cpu_peak * jax.device_count(), "measured XLA float32 matmul (estimate, see RESULTS.md)"
    peak = common.peak_flops(dev.device_kind, dtype)
    return (None, None) if peak is None else (peak * jax.device_count(), "datasheet")


def measure_cpu_matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best float32 FLOP/s of one jitted ``n x n`` matmul on the default CPU device: the CPU 'peak' for MFU."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        mm(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def build_jax_case(
    size: int, batch: int, dtype: str, remat: bool, ema_decay: float = 0.999
) -> tuple[Any, dict[str, Any]]:
    """Compile the train step for one case; returns (zero-argument step callable, compile facts)."""
    import jax

    from experiments.configs import horse2zebra
    from jaxgan import conv_forms, train

    config = horse2zebra.get_config()
    config.crop_size = size
    config.batch_size = batch
    config.model.dtype = dtype
    config.model.remat = remat
    config.ema_decay = ema_decay
    state = train.init_train_state(config, jax.random.PRNGKey(0))
    key_a, key_b = jax.random.split(jax.random.PRNGKey(1))
    images = {
        "A": jax.random.uniform(key_a, (batch, size, size, 3), minval=-1.0, maxval=1.0),
        "B": jax.random.uniform(key_b, (batch, size, size, 3), minval=-1.0, maxval=1.0),
    }
    # As train.train_step (state donated), with the XLA options for this model configuration.
    options = conv_forms.xla_compiler_options(remat, jax.default_backend())
    step_fn = jax.jit(train.train_step_fn, donate_argnums=0, compiler_options=options)
    t = time.perf_counter()
    compiled = step_fn.lower(state, images).compile()
    facts: dict[str, Any] = {"compile_s": round(time.perf_counter() - t, 2)}
    facts["flops_xla"] = _flops_from_cost(compiled.cost_analysis())
    facts.update(_memory_fields(compiled))
    box = [state]

    def step() -> None:
        box[0], metrics = compiled(box[0], images)
        jax.block_until_ready((box[0], metrics))

    return step, facts


def run_case(args: argparse.Namespace, size: int, batch: int, dtype: str, remat: bool, cpu_peak: float | None) -> None:
    """Benchmark one case and print its JSON lines."""
    common.reset_peak_rss()
    jax_step, facts = build_jax_case(size, batch, dtype, remat, args.ema_decay)
    # Memory: one step of each implementation alone, right after a reset of the high-water mark.
    jax_step()
    jax_mem = peak_memory_mb()
    fns = {"jax": jax_step}
    torch_mem: dict[str, float] = {}
    threads = args.torch_threads or len(os.sched_getaffinity(0))
    if args.compare_torch:
        from benchmarks import torch_reference

        if torch_reference.available() and args.torch_process:
            child = torch_reference.SeparateProcessStep(size, batch, dtype, threads)
            fns["torch"] = child
            child()
            torch_mem = {"peak_rss_mb": round(child.peak_rss_mb(), 1), "process": "separate"}
        elif torch_reference.available():
            fns["torch"] = torch_reference.make_step(size, batch, dtype, threads)
            common.reset_peak_rss()
            fns["torch"]()
            torch_mem = {"peak_rss_mb": round(common.peak_rss_mb(), 1)}
        else:
            print(json.dumps({"impl": "torch", "skipped": "torch is not installed (pip install -e '.[bench]')"}))
    load_before = os.getloadavg()[0]
    kernel_stats: dict[str, dict[str, float]] = {}
    times = common.time_interleaved(fns, args.warmup, args.iters, kernel_stats)
    load = round((load_before + os.getloadavg()[0]) / 2, 2)
    flops = common.step_conv_flops(size, batch)
    peak, peak_src = device_peak_flops(dtype, cpu_peak)
    info = device_info()
    separate = torch_mem.get("process") == "separate"
    if separate:
        fns["torch"].close()
        # The child's page faults and kernel time are not this process's: not measured.
        kernel_stats["torch"] = {"minor_faults_per_call": None, "kernel_s_per_call": None}
    for impl, ts in times.items():
        child = impl == "torch" and separate  # the child process runs with glibc's defaults
        extra: dict[str, Any] = {"remat": remat, "ema_decay": args.ema_decay, "loadavg_1m": load}
        extra["malloc"] = "default" if child else common.malloc_mode()
        extra["step_memory"] = "default" if child else args.step_memory
        extra.update(kernel_stats[impl])
        if impl == "jax":
            extra.update(facts)
            extra.update(jax_mem)
        else:
            extra.update({"compile_s": None, **torch_mem, "torch_threads": threads})
        rec = common.case_record(impl, size, batch, dtype, ts, extra.pop("flops_xla", None), flops, **extra)
        median_s = rec["median_ms"] / 1e3
        rec["mfu"] = None if peak is None else round(flops / median_s / peak, 4)
        rec["peak_flops"] = peak
        rec["peak_flops_source"] = peak_src
        rec.update(info)
        print(json.dumps(rec), flush=True)
    if "torch" in times:
        med = {k: common.summarize(v) for k, v in times.items()}
        ratio = {
            "ratio": "jax/torch",
            "size": size,
            "batch": batch,
            "dtype": dtype,
            "remat": remat,
            "median": round(med["jax"]["median_ms"] / med["torch"]["median_ms"], 3),
            "min": round(med["jax"]["min_ms"] / med["torch"]["min_ms"], 3),
            "loadavg_1m": load,
            "malloc": common.malloc_mode(),
            "step_memory": args.step_memory,
            "torch_process": "separate" if separate else "same",
        }
        print(json.dumps(ratio), flush=True)


def _case_argv(args: argparse.Namespace, size: int, batch: int, dtype: str, remat: bool) -> list[str]:
    argv = [sys.executable, "-m", "benchmarks.train_step", "--sizes", str(size), "--batch", str(batch)]
    argv += ["--dtype", dtype, "--remat", "on" if remat else "off", "--iters", str(args.iters)]
    argv += ["--warmup", str(args.warmup), "--cpu-peak", args.cpu_peak, "--malloc", args.malloc]
    argv += ["--step-memory", args.step_memory, "--ema-decay", str(args.ema_decay)]
    if args.compare_torch:
        argv.append("--compare-torch")
    if args.torch_process:
        argv.append("--torch-process")
    if args.torch_threads:
        argv += ["--torch-threads", str(args.torch_threads)]
    return argv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128], help="square image sizes (multiples of 4)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (images per domain)")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--remat", nargs="+", default=["off"], choices=["off", "on"], help="config.model.remat")
    parser.add_argument("--iters", type=int, default=3, help="timed steps per implementation")
    parser.add_argument("--ema-decay", type=float, default=0.999, help="config.ema_decay (0: no EMA in the step)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per implementation after compiling")
    parser.add_argument("--compare-torch", action="store_true", help="also time the PyTorch replica, interleaved")
    parser.add_argument(
        "--torch-process",
        action="store_true",
        help="run the PyTorch replica in a child process (default malloc settings), in lockstep with JAX",
    )
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    parser.add_argument(
        "--cpu-peak",
        default="measure",
        help="CPU peak FLOP/s for MFU: 'measure' (jitted float32 2048^2 matmul), a number, or 'none'",
    )
    parser.add_argument("--isolate", action="store_true", help="run every case in a fresh process (clean peak RSS)")
    parser.add_argument(
        "--malloc",
        choices=["default", *common.MALLOC_MODES],
        default="default",
        help="'default': the process's own malloc settings; 'retain' or 'hugepages': re-run under "
        "benchmarks.common.MALLOC_MODES[mode] (see there; applies to both implementations)",
    )
    common.add_step_memory_argument(parser)
    args = parser.parse_args(argv)
    if args.malloc != "default":
        common.reexec_with_malloc(args.malloc, "benchmarks.train_step", sys.argv[1:] if argv is None else argv)
    args.step_memory = common.apply_step_memory(args.step_memory)

    cases = [
        (size, batch, dtype, remat == "on")
        for dtype in args.dtype
        for size in args.sizes
        for batch in args.batch
        for remat in args.remat
    ]
    import jax

    cpu_peak = None
    if jax.devices()[0].platform == "cpu" and args.cpu_peak != "none":
        cpu_peak = measure_cpu_matmul_peak() if args.cpu_peak == "measure" else float(args.cpu_peak)
    if args.isolate and len(cases) > 1:
        args.cpu_peak = "none" if cpu_peak is None else repr(cpu_peak)
        for case in cases:
            subprocess.run(_case_argv(args, *case), check=True)
        return
    for case in cases:
        run_case(args, *case, cpu_peak)


if __name__ == "__main__":
    main()
