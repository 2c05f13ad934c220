"""The device suite's numbers: MFU, ratios against PyTorch, the end-to-end gap, the projection; and its Markdown.

Pure functions of the results dict that ``benchmarks.device_suite`` builds.
"""

from __future__ import annotations

from typing import Any

PAPER_IMAGES = 200 * 1334  # the paper schedule on horse2zebra: 200 epochs of max(|A|, |B|) = 1334 image pairs
# The datasheet peak a dtype's MFU is taken over: float32 convolutions run on TF32 tensor cores at
# JAX's default precision on NVIDIA GPUs, so their ceiling is the TF32 rate.
_PEAK_OF = {"bfloat16": "bfloat16", "float32": "tfloat32"}


def _ok_rows(rows: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [r for r in rows or [] if "ms" in r]


def step_rows_with_mfu(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The step rows with ``mfu`` (datasheet peak of the dtype, TF32 for float32) and ``mfu_measured``."""
    env = results.get("env") or {}
    sheet = env.get("datasheet_flops") or {}
    measured = env.get("measured_matmul_flops") or {}
    out = []
    for r in _ok_rows((results.get("step") or {}).get("rows")):
        achieved = r["flops_analytic"] / (r["ms"] / 1e3)
        peak = sheet.get(_PEAK_OF.get(r["dtype"], r["dtype"]))
        meas = r.get("measured_matmul_flops") or measured.get(r["dtype"])  # a merged row: its own run's peak
        out.append(
            {
                **r,
                "tflops": round(achieved / 1e12, 2),
                "mfu": round(achieved / peak, 4) if peak else None,
                "mfu_measured": round(achieved / meas, 4) if meas else None,
            }
        )
    return out


def torch_ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per batch: our best images/s (any dtype) over the official (eager float32) and the strongest PyTorch run.

    The strongest run is the fastest PyTorch run at that batch, whatever its configuration: the official one
    included, since AMP and ``channels_last`` can lose to eager float32 where launches dominate (batch 1).
    """
    ours = step_rows_with_mfu(results)
    theirs = _ok_rows((results.get("torch") or {}).get("rows"))
    out = []
    for batch in sorted({r["batch"] for r in theirs}):
        mine = [r for r in ours if r["batch"] == batch]
        official = [r for r in theirs if r["batch"] == batch and r["impl"] == "torch-official"]
        strongest = [r for r in theirs if r["batch"] == batch]
        if not mine:
            continue
        best = max(mine, key=lambda r: r["images_per_s"])
        f32 = next((r for r in mine if r["dtype"] == "float32"), None)
        row: dict[str, Any] = {"batch": batch, "ours_best": best["images_per_s"], "ours_best_dtype": best["dtype"]}
        if official:
            row["official"] = official[0]["images_per_s"]
            row["ours_best_over_official"] = round(best["images_per_s"] / official[0]["images_per_s"], 2)
            if f32:
                row["ours_f32_over_official"] = round(f32["images_per_s"] / official[0]["images_per_s"], 2)
        if strongest:
            top = max(strongest, key=lambda r: r["images_per_s"])
            row["strongest"], row["strongest_impl"] = top["images_per_s"], top["impl"]
            row["ours_best_over_strongest"] = round(best["images_per_s"] / top["images_per_s"], 2)
        out.append(row)
    return out


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of the issue's targets (each None where its stage did not run)."""
    steps = step_rows_with_mfu(results)
    bf16 = [r for r in steps if r["dtype"] == "bfloat16" and r.get("mfu") is not None]
    summary: dict[str, Any] = {}
    if bf16:
        top = max(bf16, key=lambda r: r["mfu"])
        summary["best_bf16_mfu"] = {"batch": top["batch"], "mfu": top["mfu"], "mfu_measured": top["mfu_measured"]}
    ratios = torch_ratios(results)
    b1 = next((r for r in ratios if r["batch"] == 1), None)
    if b1 and "ours_f32_over_official" in b1:
        summary["batch1_f32_over_official"] = b1["ours_f32_over_official"]
    with_strongest = [r["ours_best_over_strongest"] for r in ratios if "ours_best_over_strongest" in r]
    if with_strongest:
        summary["min_over_strongest"] = min(with_strongest)
    runner = results.get("runner") or {}
    if "end_to_end_over_step" in runner:
        summary["end_to_end_over_step"] = runner["end_to_end_over_step"]
    small = [r for r in steps if r["batch"] <= 8]
    if small:
        best = max(small, key=lambda r: r["images_per_s"])
        summary["paper_schedule"] = paper_schedule(best, runner.get("end_to_end_over_step"))
    correctness = results.get("correctness") or {}
    if "ok" in correctness:
        summary["correctness_ok"] = correctness["ok"]
    return summary


def paper_schedule(step_row: dict[str, Any], end_to_end_over_step: float | None) -> dict[str, Any]:
    """The paper schedule's projected minutes from a step row (batch <= 8).

    ``step_alone_minutes`` counts the step alone; ``minutes`` also the measured end-to-end factor (the runner's
    images/s over the step's), and stays None where no runner measured one: the suite never assumes it.
    """
    step_minutes = PAPER_IMAGES / step_row["images_per_s"] / 60
    factor = None if end_to_end_over_step is None else min(1.0, float(end_to_end_over_step))
    return {
        "batch": step_row["batch"],
        "dtype": step_row["dtype"],
        "step_images_per_s": step_row["images_per_s"],
        "step_alone_minutes": round(step_minutes, 1),
        "end_to_end_factor": factor,
        "minutes": None if factor is None else round(step_minutes / factor, 1),
    }


def _table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1 else f"{v:,.1f}"
        return str(v)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The report: environment, correctness, forms, step, PyTorch ratios, runner, translation, projection."""
    meta, env = results.get("meta", {}), results.get("env") or {}
    out = [f"# Device suite, {meta.get('date', '?')}{' (dry run)' if meta.get('dry_run') else ''}", ""]
    smi = env.get("nvidia_smi") or {}
    out.append(
        f"Device: {env.get('device_kind', '?')} ({env.get('platform', '?')}, driver "
        f"{smi.get('driver_version', '–')}, {env.get('memory_limit_gb', '–')} GB usable); jax "
        f"{env.get('jax', '?')}, jaxlib {env.get('jaxlib', '?')}, flax {env.get('flax', '?')}, torch "
        f"{env.get('torch', '–')}. Measured matmul: "
        + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in (env.get("measured_matmul_flops") or {}).items())
        + "."
    )
    out += [
        "",
        "Stages: "
        + ", ".join(f"{k} {v['status']} ({v.get('seconds', 0)} s)" for k, v in results.get("stages", {}).items()),
        "",
    ]
    c = results.get("correctness") or {}
    if c:
        out += ["## Correctness", ""]
        rows = [
            [r["net"], r["dtype"], r["output"], r["input_grad"], r["param_grad"], r["tolerance"], r["ok"]]
            for r in c.get("conv_forms", [])
        ]
        out += [_table(["cpu form vs native", "dtype", "output", "input grad", "param grads", "tolerance", "ok"], rows)]
        svc = c.get("step_vs_cpu") or {}
        if svc:
            default = svc.get("default")  # absent on a CPU-only run, where both precisions are the same
            tf32 = f"{default['max_rel']:.2e} at the default (TF32) precision" if default else "no TF32 on a CPU"
            out += [
                "",
                f"One step on {svc.get('device')} vs the host CPU ({svc.get('size')}x{svc.get('size')}): "
                f"max relative loss difference {svc['highest']['max_rel']:.2e} at the highest precision, "
                f"{tf32}; ok: {svc.get('ok')}.",
            ]
        bf = c.get("bf16_vs_f32_generator") or {}
        if bf:
            out += [
                "",
                f"Generator bf16 vs float32 at {bf.get('size')}: PSNR {bf.get('psnr_db')} dB, max difference "
                f"{bf.get('max_diff_8bit_levels')} 8-bit levels (output std {bf.get('output_std_f32')}).",
            ]
        out.append("")
    forms = results.get("forms") or {}
    if forms:
        out += [f"## Conv forms (forward + backward, batch {forms['batch']}, {forms['size']}x{forms['size']})", ""]
        rows = []
        for dtype, kinds in forms.get("decision", {}).items():
            for kind, d in kinds.items():
                rows.append([dtype, kind, d["ms_per_net"].get("native"), d["ms_per_net"].get("cpu"), d["fastest"]])
        out += [_table(["dtype", "kind", "native ms/net", "cpu ms/net", "fastest"], rows), ""]
    steps = step_rows_with_mfu(results)
    if steps:
        size = (results.get("step") or {}).get("size")
        out += [f"## Train step at {size}x{size} (conv_impl auto)", ""]
        rows = [
            [
                r["dtype"],
                r["batch"],
                r["ms"],
                r["images_per_s"],
                r["tflops"],
                r["mfu"],
                r["mfu_measured"],
                r.get("planned_mb"),
                "yes" if r.get("largest_that_fits") else "",
            ]
            for r in steps
        ]
        out += [
            _table(
                [
                    "dtype",
                    "batch",
                    "ms/step",
                    "images/s",
                    "TFLOP/s",
                    "MFU (datasheet)",
                    "MFU (measured)",
                    "planned MiB",
                    "largest",
                ],
                rows,
            )
        ]
        errors = [r for r in (results.get("step") or {}).get("rows", []) if "error" in r or "skipped" in r]
        out += [f"- {r['dtype']} batch {r['batch']}: {r.get('error') or 'skipped: ' + r['skipped']}" for r in errors]
        out.append("")
    t = results.get("torch") or {}
    if t.get("rows"):
        out += ["## PyTorch replica on the same device", ""]
        rows = [
            [
                r["impl"],
                r["batch"],
                r.get("dtype"),
                r.get("ms"),
                r.get("images_per_s"),
                r.get("warmup_s"),
                r.get("peak_device_mb"),
                r.get("error") or r.get("skipped") or "",
            ]
            for r in t["rows"]
        ]
        out += [_table(["impl", "batch", "dtype", "ms/step", "images/s", "warm-up s", "peak MiB", "note"], rows), ""]
        ratios = torch_ratios(results)
        if ratios:
            rows = [
                [
                    r["batch"],
                    r["ours_best"],
                    r["ours_best_dtype"],
                    r.get("official"),
                    r.get("ours_f32_over_official"),
                    r.get("ours_best_over_official"),
                    r.get("strongest"),
                    r.get("strongest_impl"),
                    r.get("ours_best_over_strongest"),
                ]
                for r in ratios
            ]
            out += [
                _table(
                    [
                        "batch",
                        "ours img/s",
                        "dtype",
                        "official img/s",
                        "ours f32 / official",
                        "ours best / official",
                        "fastest PyTorch img/s",
                        "its configuration",
                        "ours / fastest PyTorch",
                    ],
                    rows,
                ),
                "",
            ]
    r = results.get("runner") or {}
    if r:
        out += [
            "## Runner end to end",
            "",
            f"{r.get('dataset')}, batch {r.get('batch')}, {r.get('dtype')}, {r.get('steps')} steps in "
            f"{r.get('wall_s')} s of wall clock (compilation included): {r.get('images_per_s')} images/s steady "
            f"(one-off compilations left out; median interval "
            f"{r.get('images_per_s_median_interval')}) vs {r.get('step_alone_images_per_s')} for the step alone: "
            f"{r.get('end_to_end_over_step')}. "
            + "; ".join(
                f"{label}: {r[key]}"
                for key, label in (
                    ("source", "measured by"),
                    ("profile_files", "profile trace files"),
                    ("samples", "samples"),
                    ("results_page", "results page"),
                )
                if r.get(key) is not None
            ),
            "",
        ]
    tr = results.get("translate") or {}
    if tr.get("rows"):
        out += ["## Translation", ""]
        rows = [
            [x["size"], x["batch"], x["dtype"], x.get("ms"), x.get("images_per_s"), x.get("error", "")]
            for x in tr["rows"]
        ]
        out += [_table(["size", "batch", "dtype", "ms/batch", "images/s", "note"], rows), ""]
    s = results.get("summary") or {}
    if s:
        out += ["## Summary", ""] + [f"- {k}: {v}" for k, v in s.items()] + [""]
    return "\n".join(out)
