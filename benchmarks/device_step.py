"""The device suite's train-step stages: each case of the scale, then the largest batch that fits.

Each stage is a function of the suite's ``Scale`` returning JSON-able data;
``benchmarks.device_suite`` runs them and writes the report. A case is the train
step of the paper config (or the scale's networks) at one dtype and batch, timed as
training runs it (``common.throughput``), with its analytic FLOPs and planned memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from benchmarks import common


def step_config(scale: Any, batch: int, dtype: str, conv_impl: str = "auto") -> Any:
    """The paper config (or the scale's networks) at the suite's image size."""
    from experiments.configs import horse2zebra

    config = horse2zebra.get_config()
    config.model.ngf, config.model.n_blocks, config.model.ndf = scale.nets
    config.model.dtype = dtype
    config.model.conv_impl = conv_impl
    config.crop_size = scale.size
    config.batch_size = batch
    return config


def _lower_step(scale: Any, batch: int, dtype: str) -> Any:
    import jax

    from jaxgan import conv_forms, train

    config = step_config(scale, batch, dtype)
    state = jax.eval_shape(lambda: train.create_train_state(config, jax.random.PRNGKey(0)))
    images = {k: jax.ShapeDtypeStruct((batch, scale.size, scale.size, 3), "float32") for k in ("A", "B")}
    options = conv_forms.xla_compiler_options(backend=jax.default_backend())
    return jax.jit(train.train_step_fn, donate_argnums=0, compiler_options=options).lower(state, images)


def _plan_mb(compiled: Any) -> float | None:
    """Device memory XLA plans for one call: temporaries + arguments + outputs - aliased (donated), MiB."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return round(total / 2**20, 1)


_INITIAL_STATES: dict[str, Any] = {}


def _initial_state(scale: Any, dtype: str) -> Any:
    """A fresh copy of the initial train state for ``dtype`` (built once per dtype; the step donates its input)."""
    import jax
    import jax.numpy as jnp

    from jaxgan import train

    if dtype not in _INITIAL_STATES:
        config = step_config(scale, 1, dtype)  # the state does not depend on the batch
        _INITIAL_STATES[dtype] = train.init_train_state(config, jax.random.PRNGKey(0))
    return jax.tree_util.tree_map(jnp.copy, _INITIAL_STATES[dtype])


def _run_step(scale: Any, batch: int, dtype: str, compiled: Any) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    state = _initial_state(scale, dtype)
    ka, kb = jax.random.split(jax.random.PRNGKey(1))
    shape = (batch, scale.size, scale.size, 3)
    images = {
        "A": jax.random.uniform(ka, shape, jnp.float32, -1, 1),
        "B": jax.random.uniform(kb, shape, jnp.float32, -1, 1),
    }
    box = [state]

    def call() -> Any:
        box[0], metrics = compiled(box[0], images)
        return metrics

    t = common.throughput(call, jax.block_until_ready, scale.step_round_s, scale.rounds)
    metrics = {k: float(v) for k, v in call().items()}
    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    box.clear()  # the state's buffers go before the next case
    flops = common.step_conv_flops(scale.size, batch, scale.nets[0], scale.nets[2], scale.nets[1])
    rec = {"dtype": dtype, "batch": batch, **t, "images_per_s": round(batch / t["ms"] * 1e3, 2)}
    rec["flops_analytic"] = flops
    rec["losses_finite"] = all(math.isfinite(v) for v in metrics.values())
    rec["planned_mb"] = _plan_mb(compiled)
    rec["process_peak_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1) if "peak_bytes_in_use" in stats else None
    return rec


def _max_batch(plans: dict[int, float], limit_mb: float, cap: int) -> int | None:
    """The largest batch whose planned memory, extrapolated linearly from ``plans``, fits in 90% of ``limit_mb``."""
    (b1, m1), (b2, m2) = sorted(plans.items())[-2:]
    per_image = (m2 - m1) / (b2 - b1)
    if per_image <= 0:
        return None
    fit = int((0.9 * limit_mb - (m1 - b1 * per_image)) / per_image)
    fit = min(fit, cap)
    if fit >= 8:
        fit -= fit % 8
    return fit if fit > b2 else None


def _step_case(scale: Any, dtype: str, batch: int, **extra: Any) -> dict[str, Any]:
    """Compile (timed) and measure one step case; an error (e.g. out of memory) becomes the row's ``error``."""
    try:
        t = time.perf_counter()
        fn = _lower_step(scale, batch, dtype).compile()
        compile_s = round(time.perf_counter() - t, 1)
        return {**_run_step(scale, batch, dtype, fn), "compile_s": compile_s, **extra}
    except Exception as e:  # noqa: BLE001 - one case failing must not end the rest
        return {"dtype": dtype, "batch": batch, "error": common.error_text(e), **extra}


def stage_step(
    scale: Any,
    seconds_left: Callable[[], float],
    progress: Callable[[dict[str, Any]], None] = lambda _: None,
) -> dict[str, Any]:
    """The train step for each case of the scale, in order (the largest batch: :func:`stage_step_max`).

    Cases compile one after the other: on the H200, XLA's autotuners running in parallel
    threads slowed each other down until none finished (benchmarks/RESULTS.md). A case
    starts only while ``seconds_left()`` exceeds ``scale.step_case_min_s`` (it compiles
    anew); ``progress(result)`` receives the result so far after every case.
    """
    if scale.step_cases:
        keys = [(c.split(":")[0], int(c.split(":")[1])) for c in scale.step_cases]
    else:
        keys = [(dtype, b) for dtype in scale.dtypes for b in scale.batches]
    rows: list[dict[str, Any]] = []

    def result() -> dict[str, Any]:
        return {"size": scale.size, "nets": list(scale.nets), "conv_impl": "auto", "rows": rows}

    for dtype, batch in keys:
        if seconds_left() < scale.step_case_min_s:
            rows.append({"dtype": dtype, "batch": batch, "skipped": "time budget"})
            continue
        rows.append(_step_case(scale, dtype, batch))
        progress({**result(), "partial": True})
    return result()


def stage_step_max(
    scale: Any,
    step: dict[str, Any],
    memory_limit_mb: float | None,
    seconds_left: Callable[[], float],
    progress: Callable[[dict[str, Any]], None] = lambda _: None,
) -> dict[str, Any]:
    """The largest batch that fits, per dtype, from the planned memory of ``step``'s rows; returns ``step`` extended.

    Run after the PyTorch stage: JAX keeps the device memory it grew to, and this stage grows it to the limit.
    """
    rows = list(step.get("rows", []))
    for dtype in scale.dtypes:
        plans = {r["batch"]: r["planned_mb"] for r in rows if r["dtype"] == dtype and r.get("planned_mb")}
        fit = None
        if memory_limit_mb and len(plans) >= 2 and scale.max_batch_cap > 0:
            fit = _max_batch(plans, memory_limit_mb, scale.max_batch_cap)
        for batch in (fit, max(1, (fit or 0) * 3 // 4 // 8 * 8)) if fit else ():  # a quarter smaller once if too large
            if seconds_left() < scale.step_case_min_s:
                rows.append({"dtype": dtype, "batch": batch, "largest_that_fits": True, "skipped": "time budget"})
                break
            rows.append(_step_case(scale, dtype, batch, largest_that_fits=True))
            progress({**step, "rows": rows, "partial": True})
            if "error" not in rows[-1]:
                break
    return {**step, "rows": rows}
