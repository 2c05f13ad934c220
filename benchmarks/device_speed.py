"""The device suite's speed stages: conv forms, PyTorch, the runner, translation (the train step: device_step).

Each stage is a function of the suite's ``Scale`` (and earlier results) returning
JSON-able data; ``benchmarks.device_suite`` runs them and writes the report.
Timings are throughput: steps dispatched back to back as training runs them,
a device synchronisation closing each round, the median round reported.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks import common, device_step

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Conv forms, layer by layer: the measurements behind conv_forms.AUTO.


def layer_specs(size: int, nets: tuple[int, int, int]) -> list[dict[str, Any]]:
    """The distinct convolutions of both networks at ``size``: kind, kernel, channels, input size, count per net.

    ``hw`` is the input as the form receives it (``stride1`` inputs are already reflect-padded).
    """
    ngf, n_blocks, ndf = nets
    s = size
    specs = [
        ("G conv_in", "stride1", 7, 3, ngf, s + 6, 1),
        ("G down_0", "stride2", 3, ngf, 2 * ngf, s, 1),
        ("G down_1", "stride2", 3, 2 * ngf, 4 * ngf, s // 2, 1),
        ("G res", "stride1", 3, 4 * ngf, 4 * ngf, s // 4 + 2, 2 * n_blocks),
        ("G up_0", "transpose", 3, 4 * ngf, 2 * ngf, s // 4, 1),
        ("G up_1", "transpose", 3, 2 * ngf, ngf, s // 2, 1),
        ("G conv_out", "stride1", 7, ngf, 3, s + 6, 1),
        ("D conv_0", "stride2", 4, 3, ndf, s, 1),
        ("D conv_1", "stride2", 4, ndf, 2 * ndf, s // 2, 1),
        ("D conv_2", "stride2", 4, 2 * ndf, 4 * ndf, s // 4, 1),
        ("D conv_3", "pad1", 4, 4 * ndf, 8 * ndf, s // 8, 1),
        ("D conv_4", "pad1", 4, 8 * ndf, 1, s // 8 - 1, 1),
    ]
    keys = ("layer", "kind", "k", "c_in", "c_out", "hw", "count")
    return [dict(zip(keys, spec, strict=True)) for spec in specs]


def stage_forms(scale: Any) -> dict[str, Any]:
    """Forward + both gradients of every distinct layer in each form and dtype; the fastest form per kind.

    A kind's cost is the sum over its layers of (count x time), so the 18 residual
    convolutions weigh as they do in the step.
    """
    import jax
    import jax.numpy as jnp

    from jaxgan import conv_forms

    b = scale.forms_batch
    lowered, inputs = {}, {}
    for spec in layer_specs(scale.size, scale.nets):
        for dtype in scale.forms_dtypes:
            dt = jnp.dtype(dtype)
            key_x, key_k = jax.random.split(jax.random.PRNGKey(len(lowered)))
            x = jax.random.normal(key_x, (b, spec["hw"], spec["hw"], spec["c_in"]), dt)
            kshape = (spec["k"], spec["k"], spec["c_in"], spec["c_out"])
            kernel = (0.05 * jax.random.normal(key_k, kshape)).astype(dt)
            for form in conv_forms.FORMS:
                fn = conv_forms.APPLY[spec["kind"]]

                def fwd_bwd(x: Any, kernel: Any, fn: Callable = fn, form: str = form) -> Any:
                    y, vjp = jax.vjp(lambda xx, kk: fn(xx, kk, form), x, kernel)
                    return vjp(y)  # any cotangent of the output's shape and dtype

                key = (spec["layer"], dtype, form)
                lowered[key] = jax.jit(fwd_bwd).lower(x, kernel)
                inputs[key] = (x, kernel)
    compiled = common.compile_all(lowered, scale.compile_workers)
    rows = []
    for spec in layer_specs(scale.size, scale.nets):
        for dtype in scale.forms_dtypes:
            row = {**spec, "dtype": dtype, "batch": b}
            for form in conv_forms.FORMS:
                key = (spec["layer"], dtype, form)
                fn = compiled[key]
                if isinstance(fn, Exception):
                    row[f"{form}_error"] = common.error_text(fn)
                    continue
                x, kernel = inputs[key]
                row[f"{form}_ms"] = common.throughput(lambda fn=fn, x=x, k=kernel: fn(x, k), jax.block_until_ready,
                                               scale.forms_round_s, scale.rounds)["ms"]  # fmt: skip
            rows.append(row)
    decision: dict[str, dict[str, Any]] = {}
    for dtype in scale.forms_dtypes:
        for kind in conv_forms.KINDS:
            mine = [r for r in rows if r["kind"] == kind and r["dtype"] == dtype]
            cost = {
                form: sum(r["count"] * r[f"{form}_ms"] for r in mine) if all(f"{form}_ms" in r for r in mine) else None
                for form in conv_forms.FORMS
            }
            known = {f: c for f, c in cost.items() if c is not None}
            best = min(known, key=known.get) if known else None
            decision.setdefault(dtype, {})[kind] = {"ms_per_net": cost, "fastest": best}
    return {"batch": b, "size": scale.size, "layers": rows, "decision": decision}


# ---------------------------------------------------------------------------------------------
# PyTorch on the same device, in a child process (its own CUDA context, killed at the budget).


def stage_torch(scale: Any, budget_s: float) -> dict[str, Any]:
    """``benchmarks.torch_reference --device`` for each mode and batch; partial output survives a timeout."""
    from benchmarks import torch_reference

    if not torch_reference.available():
        return {"skipped": "torch is not installed"}
    deadline = time.time() + budget_s - 5
    cmd = [sys.executable, "-m", "benchmarks.torch_reference", "--device", scale.torch_device,
           "--cases", *scale.torch_cases, "--sizes", str(scale.size),
           "--iters", str(scale.torch_iters), "--warmup", "3", "--rounds", str(scale.rounds),
           "--nets", *map(str, scale.nets), "--deadline", str(deadline)]  # fmt: skip
    if scale.torch_threads:
        cmd += ["--threads", str(scale.torch_threads)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT)
        timed_out = False
        try:
            proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            timed_out = True
        out.seek(0)
        err.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith("{")]
        tail = err.read()[-1500:]
    import json

    rows = [json.loads(line) for line in lines]
    result: dict[str, Any] = {"rows": rows, "returncode": proc.returncode, "timed_out": timed_out}
    if proc.returncode not in (0, None) or timed_out:
        result["stderr_tail"] = tail
    return result


# ---------------------------------------------------------------------------------------------
# The runner end to end on real images.


def runner_rates(
    logs: list[tuple[int, float, float]], batch: int, sample_every: int, one_off_steps: tuple[int, ...] = ()
) -> dict[str, float]:
    """Images/s from the runner's logging intervals ``(step, images_per_s, time)``.

    ``images_per_s``: the steady state, over every interval after the first (which
    holds the step's compilation) except the one with the first sample (which
    compiles the sample function) and those with a step of ``one_off_steps`` (e.g. a
    profile's first and last: starting and writing the trace); ``images_per_s_all``:
    over every interval after the first; ``images_per_s_median_interval``: the median interval.
    """
    out: dict[str, float] = {}
    if len(logs) < 3:
        return out
    intervals = [(prev[0], cur[0], cur[2] - prev[2]) for prev, cur in itertools.pairwise(logs)]
    one_off = (*one_off_steps, *((sample_every,) if sample_every > 0 else ()))
    steady = [iv for iv in intervals if not any(iv[0] < s <= iv[1] for s in one_off)] or intervals  # (all one-off)
    out["images_per_s"] = round(sum(b - a for a, b, _ in steady) * batch / sum(t for _, _, t in steady), 2)
    out["images_per_s_all"] = round(sum(b - a for a, b, _ in intervals) * batch / sum(t for _, _, t in intervals), 2)
    out["images_per_s_median_interval"] = round(statistics.median(v for _, v, _ in logs[1:]), 2)
    return out


def stage_runner(scale: Any, data: str, step_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``loop.train_and_evaluate`` for about ``scale.runner_seconds``: images/s against the step alone."""
    import jax

    from jaxgan import loop

    batch, dtype = scale.runner_batch, scale.runner_dtype
    alone = next((r for r in step_rows if r.get("batch") == batch and r.get("dtype") == dtype and "ms" in r), None)
    step_s = alone["ms"] / 1e3 if alone else scale.runner_step_guess_s
    steps = max(3 * scale.runner_log_every, int(scale.runner_seconds / step_s))
    steps -= steps % scale.runner_log_every
    config = device_step.step_config(scale, batch, dtype)
    config.dataset = data
    config.load_size = scale.size * 286 // 256
    config.num_train_steps = steps
    config.log_every_steps = scale.runner_log_every
    config.sample_every_steps = steps // 2 - (steps // 2) % scale.runner_log_every
    config.checkpoint_every_steps = 0
    config.keep_checkpoints = 1
    config.results_max_images = 16
    config.results_fid = False
    config.num_sample_images = 4
    config.profile_steps = "4..6"
    logs: list[tuple[int, float, float]] = []
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="jaxgan-suite-runner-"))
    t0 = time.perf_counter()
    loop.train_and_evaluate(
        config, workdir, on_log=lambda s, m: logs.append((s, m["images_per_s"], time.perf_counter()))
    )
    wall = time.perf_counter() - t0
    rec: dict[str, Any] = {"dataset": data, "batch": batch, "dtype": dtype, "steps": steps, "wall_s": round(wall, 1)}
    rec.update(runner_rates(logs, batch, config.sample_every_steps))
    if alone and "images_per_s" in rec:
        rec["step_alone_images_per_s"] = alone["images_per_s"]
        rec["end_to_end_over_step"] = round(rec["images_per_s"] / alone["images_per_s"], 3)
        rec["end_to_end_over_step_all"] = round(rec["images_per_s_all"] / alone["images_per_s"], 3)
    traces = list((workdir / "profile").rglob("*.xplane.pb"))
    rec["profile_files"] = len(traces)
    rec["profile_bytes"] = sum(p.stat().st_size for p in traces)
    rec["samples"] = len(list((workdir / "samples").glob("*.png")))
    rec["results_page"] = (workdir / "results" / "index.html").is_file()
    rec["device"] = jax.devices()[0].platform
    return rec


# ---------------------------------------------------------------------------------------------
# Translation throughput.


def stage_translate(scale: Any) -> dict[str, Any]:
    """One generator's forward pass (as ``jaxgan-translate`` runs it) at each size, batch ``scale.translate_batch``."""
    import jax

    from benchmarks import inference

    rows = []
    for size in scale.translate_sizes:
        for dtype in ("bfloat16",):
            try:
                run, facts = inference.build_jax(size, scale.translate_batch, dtype, scale.nets[:2])
                t = common.throughput(run, lambda _: None, scale.step_round_s, scale.rounds)
                ips = round(scale.translate_batch / t["ms"] * 1e3, 1)
                rows.append({"size": size, "batch": scale.translate_batch, "dtype": dtype, **t, "images_per_s": ips,
                             "compile_s": facts.get("compile_s")})  # fmt: skip
            except Exception as e:  # noqa: BLE001
                rows.append(
                    {"size": size, "batch": scale.translate_batch, "dtype": dtype, "error": common.error_text(e)}
                )
    return {"rows": rows, "device": jax.devices()[0].platform, "pid": os.getpid()}
