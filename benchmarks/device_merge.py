r"""Several device-suite runs of one session as one report: a case measured in any run fills the others' gaps.

A device session is short, and the suite's time budget may skip step or PyTorch cases; a second call in the
same lease (``--stages env step --step-cases bfloat16:16 ...``) measures them. This merges the runs'
``device_suite.json`` files and, with ``--quality``, takes the quality run's end-to-end rate as the runner's
(the suite's own runner stage is left out of ``device_run.sh``: the quality run measures the same thing on
the full data set)::

  python -m benchmarks.device_merge RUN1/device_suite.json RUN2/device_suite.json RUN3/device_suite.json \
      --quality RUN1/quality.json --out DIR

writes ``DIR/device_suite.json`` and ``DIR/device_suite.md`` (``benchmarks.device_report``'s table, its
summary recomputed). Runs on different devices or JAX versions are refused: their numbers do not combine.
Where two runs measured the same case, the first measurement is kept. To join two sessions (same image),
give the newer session's files first, with its own ``quality.json``: the quality run's end-to-end factor
is relative to its own session's ``bfloat16:8`` step, which must be the row the merged projection uses.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
from typing import Any

# The fields that name a case in each stage's rows.
ROW_KEYS = {"step": ("dtype", "batch"), "torch": ("impl", "batch"), "translate": ("size", "batch", "dtype")}
SAME_ENV = ("device_kind", "platform", "jax", "jaxlib", "torch")
_SINGLE = ("correctness", "forms", "runner")  # stages whose result is one block: the first run that has it


class MergeError(ValueError):
    """The runs cannot be merged (the message says why)."""


def _measured(row: dict[str, Any]) -> bool:
    return "ms" in row


def merge_rows(row_lists: list[list[dict[str, Any]]], key: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows of several runs, in order of first appearance; a measured row replaces a skipped or failed one."""
    merged: dict[tuple, dict[str, Any]] = {}
    for rows in row_lists:
        for row in rows:
            # The largest batch that fits is one case per dtype, whatever batch each run's search found.
            k = (row.get("dtype"), "largest") if row.get("largest_that_fits") else tuple(row.get(f) for f in key)
            if k not in merged or (_measured(row) and not _measured(merged[k])):
                merged[k] = row
    return list(merged.values())


def _check_same_env(runs: list[dict[str, Any]]) -> dict[str, Any]:
    envs = [r["env"] for r in runs if r.get("env")]
    if not envs:
        raise MergeError("no run has the env stage (device, versions, peaks); run it in one of them: --stages env ...")
    for field in SAME_ENV:
        values = {e.get(field) for e in envs if e.get(field) is not None}
        if len(values) > 1:
            raise MergeError(f"the runs differ in {field} ({', '.join(map(str, sorted(values)))}): not one session")
    return envs[0]


def _check_same_step_scale(runs: list[dict[str, Any]]) -> None:
    scales = {(r["step"].get("size"), str(r["step"].get("nets"))) for r in runs if r.get("step")}
    if len(scales) > 1:
        raise MergeError(
            f"the runs' step stages differ in size or networks ({sorted(scales)}): one table cannot hold them"
        )


def _merge_stages(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stage: ``ok`` if every run of it was, else the statuses seen; seconds summed over the runs."""
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        for name, status in (run.get("stages") or {}).items():
            prev = out.setdefault(name, {"status": status["status"], "seconds": 0.0, "runs": 0})
            if status["status"] not in prev["status"].split(" / "):
                prev["status"] += f" / {status['status']}"
            prev["seconds"] = round(prev["seconds"] + status.get("seconds", 0.0), 1)
            prev["runs"] += 1
    return out


def runner_from_quality(quality: dict[str, Any]) -> dict[str, Any]:
    """The quality run's end-to-end measurement (``quality.json``) in the suite's runner form."""
    e2e = quality.get("end_to_end") or {}
    if "images_per_s" not in e2e:
        raise MergeError("the quality run has no end-to-end rate (it stopped before training measured one)")
    config = quality.get("config") or {}
    return {
        "source": "the quality run (benchmarks.quality_gpu)",
        "dataset": config.get("dataset"),
        "batch": config.get("batch_size"),
        "dtype": quality.get("dtype"),
        "steps": quality.get("steps_done"),
        "wall_s": quality.get("train_wall_s"),
        **{k: e2e.get(k) for k in ("images_per_s", "images_per_s_median_interval", "step_alone_images_per_s")},
        "end_to_end_over_step": e2e.get("end_to_end_over_step"),
        "profile_files": quality.get("profile_files"),
    }


def merge(runs: list[dict[str, Any]], quality: dict[str, Any] | None = None) -> dict[str, Any]:
    """One results dict (``device_suite``'s form, summary recomputed) from ``runs`` of one session, in order."""
    from benchmarks import device_report

    if not runs:
        raise MergeError("no runs to merge")
    runs = copy.deepcopy(runs)
    env = _check_same_env(runs)
    _check_same_step_scale(runs)
    first_meta = runs[0].get("meta") or {}
    merged: dict[str, Any] = {
        "meta": {
            **{k: first_meta.get(k) for k in ("date", "dry_run", "scale")},
            "merged_from": [{k: (r.get("meta") or {}).get(k) for k in ("date", "command", "elapsed_s")} for r in runs],
        },
        "env": env,
        "stages": _merge_stages(runs),
    }
    for run in runs:  # each step row keeps the matmul peak measured in its own run, for its MFU
        peaks = (run.get("env") or {}).get("measured_matmul_flops") or {}
        for row in (run.get("step") or {}).get("rows", []):
            if row.get("dtype") in peaks:
                row.setdefault("measured_matmul_flops", peaks[row["dtype"]])
    for stage, key in ROW_KEYS.items():
        blocks = [r[stage] for r in runs if (r.get(stage) or {}).get("rows") is not None]
        if blocks:
            merged[stage] = {**blocks[0], "rows": merge_rows([b["rows"] for b in blocks], key)}
    for stage in _SINGLE:
        block = next((r[stage] for r in runs if r.get(stage)), None)
        if block is not None:
            merged[stage] = block
    if quality is not None:
        merged["runner"] = runner_from_quality(quality)
    merged["summary"] = device_report.summarize(merged)
    return merged


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MergeError(f"cannot read {path}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    from benchmarks import device_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=pathlib.Path, help="device_suite.json files, in the order they ran")
    parser.add_argument("--quality", type=pathlib.Path, default=None, help="quality.json: its end-to-end rate")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="where the merged json and md go")
    args = parser.parse_args(argv)
    try:
        runs = [_read_json(p) for p in args.runs]
        merged = merge(runs, _read_json(args.quality) if args.quality else None)
    except MergeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device_suite.json").write_text(json.dumps(merged, indent=1, default=str))
    text = device_report.markdown(merged)
    (args.out / "device_suite.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
