"""Merging device-suite runs of one session: gaps filled, first measurements kept, foreign runs refused."""

from __future__ import annotations

import json

import pytest

from benchmarks import device_merge

_ENV = {
    "device_kind": "NVIDIA H200",
    "platform": "gpu",
    "jax": "0.11.2",
    "jaxlib": "0.11.2",
    "datasheet_flops": {"bfloat16": 1000e12, "tfloat32": 500e12},
}


def _step(dtype, batch, ms=None, skipped=None):
    if skipped:
        return {"dtype": dtype, "batch": batch, "skipped": skipped}
    return {"dtype": dtype, "batch": batch, "ms": ms, "images_per_s": batch / ms * 1e3, "flops_analytic": batch * 1e12}


def _runs():
    first = {
        "meta": {"date": "d1", "command": "suite", "elapsed_s": 300.0},
        "env": {**_ENV, "measured_matmul_flops": {"bfloat16": 800e12}},
        "stages": {"env": {"status": "ok", "seconds": 10.0}, "step": {"status": "ok", "seconds": 100.0}},
        "step": {
            "size": 256,
            "nets": [64, 9, 64],
            "rows": [
                _step("bfloat16", 8, 80.0),
                _step("bfloat16", 16, skipped="time budget"),
                {**_step("bfloat16", 104, skipped="time budget"), "largest_that_fits": True},
            ],
        },
        "torch": {
            "rows": [
                {"impl": "torch-official", "batch": 8, "ms": 200.0, "images_per_s": 40.0},
                {"impl": "torch-strong", "batch": 16, "skipped": "time budget"},
            ]
        },
    }
    second = {
        "meta": {"date": "d2", "command": "suite --stages env step", "elapsed_s": 120.0},
        "env": {**_ENV, "measured_matmul_flops": {"bfloat16": 400e12}},
        "stages": {"env": {"status": "ok", "seconds": 4.0}, "step": {"status": "ok", "seconds": 90.0}},
        "step": {
            "size": 256,
            "nets": [64, 9, 64],
            "rows": [
                _step("bfloat16", 16, 100.0),
                _step("bfloat16", 8, 40.0),  # measured again: not kept
                {**_step("bfloat16", 96, 800.0), "largest_that_fits": True},  # this run's search found 96
            ],
        },
    }
    third = {
        "meta": {"date": "d3", "command": "suite --stages correctness", "elapsed_s": 60.0},
        "stages": {"correctness": {"status": "ok", "seconds": 60.0}},
        "correctness": {"ok": True},
    }
    return [first, second, third]


def test_merge_fills_gaps_keeps_first_measurements_and_recomputes_the_summary():
    merged = device_merge.merge(_runs())
    rows = {(r["dtype"], r["batch"]): r for r in merged["step"]["rows"]}
    assert rows[("bfloat16", 8)]["ms"] == 80.0  # the first measurement of a case is kept
    assert rows[("bfloat16", 16)]["ms"] == 100.0  # a skipped case filled by the later run
    assert [r["batch"] for r in merged["step"]["rows"]] == [8, 16, 96]  # order of first appearance
    assert merged["step"]["rows"][2]["largest_that_fits"] and merged["step"]["rows"][2]["ms"] == 800.0
    assert merged["torch"]["rows"][1]["skipped"] == "time budget"  # still a gap: measured nowhere
    assert merged["stages"]["step"] == {"status": "ok", "seconds": 190.0, "runs": 2}
    assert merged["correctness"] == {"ok": True} and merged["summary"]["correctness_ok"] is True
    assert [m["date"] for m in merged["meta"]["merged_from"]] == ["d1", "d2", "d3"]
    # MFU over each row's own run's measured peak: batch 16 ran where the matmul measured 400 TFLOP/s.
    best = merged["summary"]["best_bf16_mfu"]
    assert best["batch"] == 16 and best["mfu"] == pytest.approx(0.16) and best["mfu_measured"] == pytest.approx(0.4)
    # Without a runner the projection has no end-to-end factor.
    assert merged["summary"]["paper_schedule"]["minutes"] is None


def test_quality_run_supplies_the_end_to_end_factor():
    quality = {
        "config": {"dataset": "folder:x", "batch_size": 8},
        "dtype": "bfloat16",
        "steps_done": 400,
        "train_wall_s": 100.0,
        "end_to_end": {"images_per_s": 90.0, "step_alone_images_per_s": 100.0, "end_to_end_over_step": 0.9},
    }
    merged = device_merge.merge(_runs(), quality)
    assert merged["runner"]["end_to_end_over_step"] == 0.9 and merged["summary"]["end_to_end_over_step"] == 0.9
    schedule = merged["summary"]["paper_schedule"]  # batch 8: 100 images/s alone, 90 end to end
    assert schedule["minutes"] == pytest.approx(266_800 / 90 / 60, abs=0.05)
    with pytest.raises(device_merge.MergeError, match="no end-to-end rate"):
        device_merge.merge(_runs(), {"end_to_end": {}})


def test_runs_of_another_device_or_scale_are_refused():
    runs = _runs()
    runs[1]["env"]["device_kind"] = "NVIDIA A100"
    with pytest.raises(device_merge.MergeError, match="differ in device_kind"):
        device_merge.merge(runs)
    runs = _runs()
    runs[1]["step"]["size"] = 128
    with pytest.raises(device_merge.MergeError, match="size or networks"):
        device_merge.merge(runs)
    with pytest.raises(device_merge.MergeError, match="no run has the env stage"):
        device_merge.merge(_runs()[2:])


def test_cli_writes_the_report_and_names_an_unreadable_run(tmp_path, capsys):
    paths = []
    for i, run in enumerate(_runs()):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(run))
    assert device_merge.main([*map(str, paths), "--out", str(tmp_path / "merged")]) == 0
    text = (tmp_path / "merged" / "device_suite.md").read_text()
    assert "| bfloat16 | 16 | 100.0 |" in text and "Correctness" in text
    assert json.loads((tmp_path / "merged" / "device_suite.json").read_text())["summary"]["correctness_ok"]
    capsys.readouterr()
    assert device_merge.main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read") and "missing.json" in err and len(err.strip().splitlines()) == 1
