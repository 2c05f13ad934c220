"""Exported generators against jaxgan: ms per batch of onnxruntime, the StableHLO artifact and ``jaxgan.translate``.

One generator (the paper's ``ResnetGenerator(64, 9)`` with random official-init weights by
default, or ``--workdir`` / ``--checkpoint``) is exported to ONNX and StableHLO in a temporary
folder; the three runtimes then translate the same random batch, interleaved round by round
(``benchmarks.common.time_interleaved``), in one process on the CPU. Prints one JSON line per
runtime and size (median and min ms per batch, images/s, max abs difference from jaxgan).

    python -m benchmarks.export_speed                       # 256x256, batch 1, 10 rounds
    python -m benchmarks.export_speed --sizes 256 512 --batch 4 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import numpy as np

from benchmarks import common


def _generator(args: argparse.Namespace) -> tuple[dict, object]:
    """(model config, params) of the generator to export."""
    import jax
    import jax.numpy as jnp

    from jaxgan import export, generator_checkpoint, generator_loading

    if args.workdir or args.checkpoint:
        cfg, params, _ = export.load_generator("AtoB", args.workdir, args.checkpoint)
        return cfg, params
    cfg = {**generator_checkpoint.DEFAULT_MODEL_CONFIG, "ngf": args.ngf, "n_blocks": args.n_blocks}
    generator = generator_loading.make_generator(cfg)
    return cfg, generator.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))["params"]


def _runtimes(generator, params, session, hlo, x: np.ndarray) -> dict:
    """Zero-argument translations of ``x: float32[B, H, W, 3]`` by each runtime, each returning NHWC."""
    import jax.numpy as jnp

    from jaxgan import translate

    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return {
        "jaxgan": lambda: translate._apply(generator, params, jnp.asarray(x)),
        "stablehlo": lambda: hlo(x),
        "onnxruntime": lambda: session.run(None, {"image": nchw})[0].transpose(0, 2, 3, 1),
    }


def _keeping(outs: dict, name: str, fn) -> callable:
    """``fn`` that blocks on its result and stores it in ``outs[name]``."""
    return lambda: outs.__setitem__(name, np.asarray(fn()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--n_blocks", type=int, default=9)
    parser.add_argument("--workdir", help="export this run's AtoB generator instead")
    parser.add_argument("--checkpoint", help="export this generator checkpoint instead")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from jaxgan import export, generator_loading

    cfg, params = _generator(args)
    generator = generator_loading.make_generator({**cfg, "dtype": "float32"})
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, hlo_path = os.path.join(tmp, "g.onnx"), os.path.join(tmp, "g.jaxexport")
        export.export_onnx(params, onnx_path)
        export.export_stablehlo(cfg, params, hlo_path, platforms=("cpu",))
        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        hlo = export.load(hlo_path)
        for size in args.sizes:
            x = np.random.default_rng(0).uniform(-1, 1, (args.batch, size, size, 3)).astype(np.float32)
            outs: dict[str, np.ndarray] = {}
            fns = {name: _keeping(outs, name, fn) for name, fn in _runtimes(generator, params, session, hlo, x).items()}
            times = common.time_interleaved(fns, warmup=2, iters=args.rounds)
            for name, t in times.items():
                ms = statistics.median(t) * 1e3
                line = {"runtime": name, "size": size, "batch": args.batch, "ms_median": round(ms, 1),
                        "ms_min": round(min(t) * 1e3, 1), "images_per_s": round(args.batch / (ms / 1e3), 2),
                        "max_abs_diff_vs_jaxgan": float(np.abs(outs[name] - outs["jaxgan"]).max()),
                        "ngf": cfg["ngf"], "n_blocks": cfg["n_blocks"], "cpu_threads": os.cpu_count()}  # fmt: skip
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
