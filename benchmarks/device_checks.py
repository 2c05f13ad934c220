"""The device suite's first stages: what the machine is, and whether jaxgan computes the right thing on it.

Each stage is a function ``stage(scale) -> dict`` (JSON-able); ``benchmarks.device_suite``
runs them in order and records what they return. See that module for the scales.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess
import sys
from typing import Any

import numpy as np

from benchmarks import common


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> dict[str, str]:
    """Name, driver, memory and max SM clock from ``nvidia-smi``; {} where it is absent."""
    if shutil.which("nvidia-smi") is None:
        return {}
    fields = "name,driver_version,memory.total,clocks.max.sm"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip().splitlines()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    if not out:
        return {}
    return dict(zip(fields.split(","), (v.strip() for v in out[0].split(",")), strict=False))


def matmul_flops(n: int, dtype: str, rounds: int = 5) -> float:
    """FLOP/s of a jitted ``n x n x n`` matmul in ``dtype`` on the default device (the median round).

    Calls back to back, one wait a round (``common.throughput``): a wait after each call would count the host's
    round trip and the clocks' ramp-up, and understate the peak the MFU is measured against. Random operands
    (zeros can run faster); float32 at JAX's default precision, which on NVIDIA GPUs lets XLA use TF32 tensor
    cores, as it does for the step's convolutions.
    """
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(k2, (n, n), jnp.dtype(dtype))
    mm = jax.jit(lambda x, y: x @ y)
    timing = common.throughput(lambda: mm(a, b), lambda out: out.block_until_ready(), target_s=0.3, rounds=rounds)
    return 2 * n**3 / (timing["ms"] / 1e3)


def stage_env(scale: Any) -> dict[str, Any]:
    """Versions, device kind, driver and memory; the measured matmul peaks used for MFU."""
    import jax
    import jaxlib

    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        **{name: _version(name) for name in ("flax", "optax", "orbax-checkpoint", "torch", "pillow")},
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "memory_limit_gb": round(stats["bytes_limit"] / 1e9, 1) if "bytes_limit" in stats else None,
        "cpu_count": __import__("os").cpu_count(),
        "nvidia_smi": _nvidia_smi(),
    }
    from PIL import features

    env["pillow_webp"] = bool(features.check("webp"))
    env["measured_matmul_flops"] = {dt: matmul_flops(scale.matmul_n, dt) for dt in ("bfloat16", "float32")}
    env["datasheet_flops"] = {dt: common.peak_flops(dev.device_kind, dt) for dt in ("bfloat16", "float32", "tfloat32")}
    return env


# ---------------------------------------------------------------------------------------------
# Correctness on the device.


def _rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))


def _form_errors(net: Any, mask_fn: Any, x: Any, params: Any, dtype: Any) -> dict[str, float]:
    """Max-relative errors of the ``cpu`` form against ``native``: output, input gradient, parameter gradients."""
    import jax
    import jax.numpy as jnp

    def run(impl: str) -> tuple[Any, Any, Any]:
        module = net.clone(conv_impl=impl, dtype=dtype)

        def loss(p: Any, xx: Any) -> tuple[Any, Any]:
            y = module.apply({"params": p}, xx)
            return jnp.mean(jnp.square(y.astype(jnp.float32) - 0.3)), y

        (_, y), g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
        return y, g[0], g[1]

    (y_c, gp_c, gx_c), (y_n, gp_n, gx_n) = run("cpu"), run("native")
    mask = jax.tree_util.tree_leaves(mask_fn(params))
    param_err = max(
        _rel(a, b)
        for a, b, inert in zip(jax.tree_util.tree_leaves(gp_c), jax.tree_util.tree_leaves(gp_n), mask, strict=True)
        if not inert
    )
    return {"output": _rel(y_c, y_n), "input_grad": _rel(gx_c, gx_n), "param_grad": param_err}


def conv_form_check(scale: Any) -> list[dict[str, Any]]:
    """Both networks in the ``cpu`` form against ``native`` on the device, float32 (highest precision) and bf16."""
    import jax
    import jax.numpy as jnp

    from jaxgan import models

    h, w = scale.form_check_hw
    ngf, n_blocks, ndf = scale.form_check_nets
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, h, w, 3), minval=-1.0, maxval=1.0)
    nets = {
        "generator": (models.ResnetGenerator(ngf=ngf, n_blocks=n_blocks), models.generator_inert_bias_mask),
        "discriminator": (models.PatchDiscriminator(ndf=ndf), models.discriminator_inert_bias_mask),
    }
    rows = []
    for name, (net, mask_fn) in nets.items():
        params = net.init(jax.random.PRNGKey(1), x)["params"]
        leaves, tree = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
        params = jax.tree_util.tree_unflatten(
            tree, [0.1 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)]
        )
        for dtype, tol in (("float32", 1e-5), ("bfloat16", 5e-2)):
            # float32 at the highest precision: the forms must agree as exact arithmetic does, TF32 aside.
            with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
                errs = _form_errors(net, mask_fn, x, params, jnp.dtype(dtype))
            rows.append({"net": name, "dtype": dtype, "size": [h, w], **errs, "tolerance": tol,
                         "ok": all(v <= tol for v in errs.values())})  # fmt: skip
    return rows


def _small_config(scale: Any, conv_impl: str) -> Any:
    from experiments.configs import horse2zebra

    config = horse2zebra.get_config()
    config.model.ngf, config.model.n_blocks, config.model.ndf = scale.check_nets
    config.model.conv_impl = conv_impl
    config.crop_size = scale.check_size
    config.pool_size = 4
    return config


def step_vs_cpu(scale: Any) -> dict[str, Any]:
    """One train step on the accelerator against the same step on the host CPU: losses to 1e-3 relative.

    The same initial state and batch; float32. The accelerator runs ``conv_impl="auto"``
    at the highest and at the default matmul precision (TF32 on NVIDIA GPUs); the
    CPU runs its own ``cpu`` forms with the XLA:CPU options.
    """
    import jax

    from jaxgan import conv_forms, train

    cpu = jax.devices("cpu")[0]
    accel = jax.devices()[0]
    rng = np.random.default_rng(0)
    s = scale.check_size
    batch = {k: rng.uniform(-1, 1, (1, s, s, 3)).astype(np.float32) for k in ("A", "B")}

    def run(device: Any, impl: str, precision: str) -> dict[str, float]:
        config = _small_config(scale, impl)
        options = conv_forms.xla_compiler_options(backend=device.platform)
        with jax.default_device(cpu):
            state = train.init_train_state(config, jax.random.PRNGKey(0))
        state = jax.device_put(state, device)
        step = jax.jit(train.train_step_fn, donate_argnums=0, compiler_options=options)
        with jax.default_matmul_precision(precision):
            _, metrics = step(state, jax.device_put(batch, device))
        return {k: float(v) for k, v in metrics.items()}

    ref = run(cpu, "cpu", "highest")
    out: dict[str, Any] = {"device": accel.platform, "size": s, "nets": list(scale.check_nets), "cpu_losses": ref}
    loss_keys = [k for k in ref if k.startswith("loss")]
    # XLA:CPU computes float32 at full precision whatever the setting: on a CPU-only run (the dry run)
    # "default" would compile the same arithmetic a third time.
    precisions = ("highest",) if accel.platform == "cpu" else ("highest", "default")
    for precision in precisions:
        got = run(accel, "auto", precision)
        rel = {k: abs(got[k] - ref[k]) / max(abs(ref[k]), 1e-6) for k in loss_keys}
        out[precision] = {"max_rel": max(rel.values()), "worst": max(rel, key=rel.get), "losses": got}
    out["ok"] = out["highest"]["max_rel"] <= 1e-3
    return out


def stage_correctness(scale: Any) -> dict[str, Any]:
    """Conv forms against native, the step against the CPU, bf16 translations against float32 (PSNR)."""
    from benchmarks import inference

    result: dict[str, Any] = {"conv_forms": conv_form_check(scale)}
    result["step_vs_cpu"] = step_vs_cpu(scale)
    result["bf16_vs_f32_generator"] = inference.bf16_check(scale.size, count=4, nets=scale.nets[:2])
    result["ok"] = all(r["ok"] for r in result["conv_forms"]) and result["step_vs_cpu"]["ok"]
    return result


if __name__ == "__main__":  # pragma: no cover - run through benchmarks.device_suite
    sys.exit("run: python -m benchmarks.device_suite --out DIR [--dry-run]")
