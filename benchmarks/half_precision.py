r"""Does float16 compute need loss scaling? The generators' gradients in half precision against float32.

    python -m benchmarks.half_precision                          # 256x256, batch 2, ngf 8, 1 block
    python -m benchmarks.half_precision --size 128 --batch 8 --ngf 16 --n-blocks 2

Mixed precision keeps parameters, losses and instance-norm statistics in float32 and computes the
networks in ``model.dtype``. Loss scaling exists for float16, whose smallest normal number is 6.1e-5:
the cotangents that flow back from a mean over ``B * H * W * 3`` pixels are about
``lambda_cycle / (B * H * W * 3)`` each (2.5e-5 at 256x256, batch 2), and a product of them can
underflow to 0. This script differentiates the generators' loss (``jaxgan.train.generator_objective``, the
official loss with identity terms) at the official initialisation on random images, in float32, bfloat16,
float16 and float16 with the loss scaled by ``--scale`` (the gradients divided back), and prints one JSON
line per case: the median and largest relative error of each parameter's gradient against float32
(norm of the difference over norm of the float32 gradient; the biases that feed an instance norm, whose
float32 gradient is rounding noise, left out) and how many gradient entries became exactly 0.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def gradients(size: int, batch: int, ngf: int, n_blocks: int, dtype: str, scale: float) -> dict[str, np.ndarray]:
    """``{parameter path: float64 gradient}`` of both generators' loss, computed in ``dtype``, divided by ``scale``."""
    import jax
    import jax.numpy as jnp

    from experiments.configs import horse2zebra
    from jaxgan import models, train

    config = horse2zebra.get_config()
    config.model.ngf, config.model.ndf, config.model.n_blocks = ngf, ngf, n_blocks
    config.model.dtype, config.model.conv_impl, config.crop_size = dtype, "native", size
    state = train.create_train_state(config, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    real_a, real_b = (jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32) for _ in range(2))

    def loss(g_params):
        total, _ = train.generator_objective(state.config, g_params, state.params, real_a, real_b)
        return scale * total

    grads = jax.jit(jax.grad(loss))({k: state.params[k] for k in train.GENERATORS})
    out = {}
    for name, tree in grads.items():  # the biases that feed an instance norm left out (float32: rounding noise)
        inert = jax.tree_util.tree_leaves(models.generator_inert_bias_mask(tree))
        for (path, g), skip in zip(jax.tree_util.tree_leaves_with_path(tree), inert, strict=True):
            if not skip:
                out[name + jax.tree_util.keystr(path)] = np.asarray(g, np.float64) / scale
    return out


def compare(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
    """The median and largest relative error over the parameters, and the gradient entries flushed to 0."""
    errors = sorted(float(np.linalg.norm(other[k] - g) / np.linalg.norm(g)) for k, g in reference.items())
    zeroed = sum(int(np.sum((other[k] == 0) & (g != 0))) for k, g in reference.items())
    return {"median_rel_error": round(errors[len(errors) // 2], 4), "max_rel_error": round(errors[-1], 4),
            "zeroed": zeroed, "parameters": len(errors)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--ngf", type=int, default=8)
    parser.add_argument("--n-blocks", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1024.0)
    args = parser.parse_args(argv)
    shape = (args.size, args.batch, args.ngf, args.n_blocks)
    reference = gradients(*shape, "float32", 1.0)
    for dtype, scale in (("bfloat16", 1.0), ("float16", 1.0), ("float16", args.scale)):
        row = {"size": args.size, "batch": args.batch, "ngf": args.ngf, "n_blocks": args.n_blocks,
               "dtype": dtype, "loss_scale": scale, **compare(reference, gradients(*shape, dtype, scale))}  # fmt: skip
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
