"""Translation throughput: images/s of one generator forward pass (``G(A) -> B``), as ``jaxgan-translate`` runs it.

Per case (image size x batch x compute dtype) one JSON line: median and min ms
per batch after warm-up, compile time, images/s, XLA's FLOP count and the
analytic convolution FLOPs (``benchmarks.common.generator_layer_macs``), peak
memory. With ``--compare-torch`` the PyTorch replica's generator
(``benchmarks.torch_replica``, eager, ``torch.inference_mode``) runs
interleaved in the same process and a ``ratio`` line gives JAX / torch.

``--bf16-check`` adds one line per size comparing bfloat16-compute translations
with float32 ones (same float32 parameters, official N(0, 0.02) init, synthetic
test images of domain A): max and mean absolute difference in output units
([-1, 1]) and in 8-bit levels, the output's own standard deviation, and the PSNR
of the bfloat16 translation against the float32 one.

Usage::

  python -m benchmarks.inference                                  # 256 and 512, batch 1, float32
  python -m benchmarks.inference --sizes 256 512 --batch 1 4 --dtype float32 bfloat16 --compare-torch
  python -m benchmarks.inference --sizes 256 --bf16-check --iters 0
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from benchmarks import common
from benchmarks.train_step import _flops_from_cost, _memory_fields, device_info, peak_memory_mb


def build_jax(size: int, batch: int, dtype: str, nets: tuple[int, int] = (64, 9)) -> tuple[Any, dict[str, Any]]:
    """Compile ``ResnetGenerator.apply`` for one case; returns (zero-argument call, compile facts).

    ``nets``: the generator's (ngf, n_blocks); the paper's by default.
    """
    import jax

    from jaxgan import conv_forms, models, train

    gen = models.ResnetGenerator(ngf=nets[0], n_blocks=nets[1], dtype=train.DTYPES[dtype])
    params = gen.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, 64, 64, 3)))["params"]
    images = jax.random.uniform(jax.random.PRNGKey(1), (batch, size, size, 3), minval=-1.0, maxval=1.0)
    options = conv_forms.xla_compiler_options(backend=jax.default_backend())
    apply = jax.jit(lambda p, x: gen.apply({"params": p}, x), compiler_options=options)
    t = time.perf_counter()
    compiled = apply.lower(params, images).compile()
    facts: dict[str, Any] = {"compile_s": round(time.perf_counter() - t, 2)}
    facts["flops_xla"] = _flops_from_cost(compiled.cost_analysis())
    facts.update(_memory_fields(compiled))
    return lambda: compiled(params, images).block_until_ready(), facts


def build_torch(size: int, batch: int, dtype: str, threads: int) -> Any:
    """The replica's generator, eager, under ``inference_mode`` (bfloat16 through CPU autocast)."""
    import torch

    from benchmarks import torch_replica

    torch.set_num_threads(threads)
    gen = torch_replica.ResnetGenerator().eval()
    images = torch.rand(batch, 3, size, size) * 2 - 1

    def run() -> None:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bfloat16"):
            gen(images)

    return run


def bf16_check(size: int, count: int = 4, nets: tuple[int, int] = (64, 9)) -> dict[str, Any]:
    """bfloat16 vs float32 translations of ``count`` synthetic images at ``size`` (same parameters).

    ``nets``: the generator's (ngf, n_blocks); the paper's by default.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxgan import conv_forms, models, synthetic

    images = jnp.asarray(synthetic.split_with_truth(0, "testA", count, size)[0], jnp.float32) / 127.5 - 1.0
    gen32 = models.ResnetGenerator(ngf=nets[0], n_blocks=nets[1])
    gen16 = gen32.clone(dtype=jnp.bfloat16)
    params = gen32.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))["params"]
    opts = conv_forms.xla_compiler_options(backend=jax.default_backend())
    y32 = jax.jit(lambda p, x: gen32.apply({"params": p}, x), compiler_options=opts)(params, images)
    y16 = jax.jit(lambda p, x: gen16.apply({"params": p}, x), compiler_options=opts)(params, images)
    diff = np.abs(np.asarray(y16, np.float32) - np.asarray(y32, np.float32))
    mse = float(np.mean(np.square(diff)))
    return {
        "check": "bf16_vs_f32_translation",
        "size": size,
        "images": count,
        "max_abs_diff": round(float(diff.max()), 5),
        "mean_abs_diff": round(float(diff.mean()), 6),
        "max_diff_8bit_levels": round(float(diff.max()) * 127.5, 2),
        "output_std_f32": round(float(np.std(np.asarray(y32))), 5),
        "psnr_db": round(10 * np.log10(4.0 / mse), 1) if mse > 0 else None,  # peak-to-peak range 2
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compare-torch", action="store_true")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--bf16-check", action="store_true", help="also compare bfloat16 with float32 translations")
    common.add_step_memory_argument(parser)
    args = parser.parse_args(argv)
    step_memory = common.apply_step_memory(args.step_memory)
    threads = args.torch_threads or len(os.sched_getaffinity(0))
    info = device_info()
    if args.bf16_check:
        for size in args.sizes:
            print(json.dumps({**bf16_check(size), **info}), flush=True)
    if args.iters <= 0:
        return
    for dtype in args.dtype:
        for size in args.sizes:
            for batch in args.batch:
                common.reset_peak_rss()
                run, facts = build_jax(size, batch, dtype)
                run()
                mem = peak_memory_mb()
                fns = {"jax": run}
                if args.compare_torch:
                    from benchmarks import torch_reference

                    if torch_reference.available():
                        fns["torch"] = build_torch(size, batch, dtype, threads)
                    else:
                        print(json.dumps({"impl": "torch", "skipped": "torch is not installed"}))
                times = common.time_interleaved(fns, args.warmup, args.iters)
                flops = 2 * batch * sum(common.generator_layer_macs(size))
                load = round(os.getloadavg()[0], 2)
                for impl, ts in times.items():
                    extra = {**facts, **mem} if impl == "jax" else {"torch_threads": threads}
                    flops_xla = extra.pop("flops_xla", None)
                    extra["step_memory"] = step_memory
                    rec = common.case_record(impl, size, batch, dtype, ts, flops_xla, flops, loadavg_1m=load, **extra)
                    rec.update(info)
                    print(json.dumps(rec), flush=True)
                if "torch" in times:
                    med = {k: common.summarize(v) for k, v in times.items()}
                    ratio = {"ratio": "jax/torch", "task": "inference", "size": size, "batch": batch, "dtype": dtype}
                    ratio["median"] = round(med["jax"]["median_ms"] / med["torch"]["median_ms"], 3)
                    ratio["min"] = round(med["jax"]["min_ms"] / med["torch"]["min_ms"], 3)
                    ratio["loadavg_1m"] = load
                    ratio["step_memory"] = step_memory
                    print(json.dumps(ratio), flush=True)


if __name__ == "__main__":
    main()
