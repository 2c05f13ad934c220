"""The device suite and the GPU quality run: their dry runs on the CPU (so no device minute is spent on a bug)
and the arithmetic behind their numbers."""

import json
import re
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from conftest import ROOT

from benchmarks import common, device_report, device_speed, device_step, device_suite, quality_gpu


def test_layer_specs_cover_both_networks_conv_flops():
    """The per-layer table of the forms stage holds exactly the networks' convolutions (by MAC count)."""
    size, nets = 256, (64, 9, 64)

    def out_hw(spec):
        hw, k = spec["hw"], spec["k"]
        return {"stride1": hw - k + 1, "stride2": (hw + 2 - k) // 2 + 1, "pad1": hw + 3 - k, "transpose": hw}[
            spec["kind"]
        ]

    def macs(spec):  # transposed convs: 9 taps per input pixel, as benchmarks.common counts them
        return spec["count"] * out_hw(spec) ** 2 * spec["k"] ** 2 * spec["c_in"] * spec["c_out"]

    specs = device_speed.layer_specs(size, nets)
    gen = sum(macs(s) for s in specs if s["layer"].startswith("G"))
    disc = sum(macs(s) for s in specs if s["layer"].startswith("D"))
    assert gen == sum(common.generator_layer_macs(size))
    assert disc == sum(common.discriminator_layer_macs(size))
    assert {s["kind"] for s in specs} == {"stride1", "stride2", "transpose", "pad1"}


def test_max_batch_extrapolates_planned_memory():
    plans = {4: 4_000.0, 16: 13_000.0}  # 750 MiB per image, 1 GiB fixed
    assert device_step._max_batch(plans, 100_000.0, cap=256) == 112  # (90,000 - 1,000) / 750 = 118 -> 112
    assert device_step._max_batch(plans, 100_000.0, cap=64) == 64
    assert device_step._max_batch(plans, 10_000.0, cap=256) is None  # nothing larger than 16 fits


def test_runner_rates_leave_out_one_off_compilations():
    # Intervals of 10 steps at batch 2: the first holds the step's compile, the one with step 20 the sample's.
    logs = [(10, 1.0, 100.0), (20, 2.0, 110.0), (30, 20.0, 111.0), (40, 20.0, 112.0)]
    rates = device_speed.runner_rates(logs, batch=2, sample_every=20)
    assert rates["images_per_s"] == pytest.approx(40 / 2.0)  # steps 20..40 in 2 s
    assert rates["images_per_s_all"] == pytest.approx(60 / 12.0)
    assert device_speed.runner_rates(logs[:2], 2, 20) == {}
    # A profile of steps 25..32 (its start and its end are one-off costs): steps 20..30 and 30..40 left out too.
    slow = [(10, 1.0, 100.0), (20, 20.0, 101.0), (30, 2.0, 111.0), (40, 2.0, 121.0), (50, 20.0, 122.0)]
    assert device_speed.runner_rates(slow, 2, 0, one_off_steps=(25, 32))["images_per_s"] == pytest.approx(40 / 2.0)
    everything = device_speed.runner_rates(slow, 2, 0, one_off_steps=(15, 25, 35, 45))  # a run too short to leave out
    assert everything["images_per_s"] == everything["images_per_s_all"] == pytest.approx(80 / 22.0, abs=0.01)


def _fake_results():
    return {
        "env": {
            "datasheet_flops": {"bfloat16": 1000e12, "tfloat32": 500e12, "float32": 60e12},
            "measured_matmul_flops": {"bfloat16": 800e12, "float32": 400e12},
        },
        "step": {
            "size": 256,
            "rows": [
                {"dtype": "bfloat16", "batch": 1, "ms": 10.0, "images_per_s": 100.0, "flops_analytic": 2e12},
                {"dtype": "float32", "batch": 1, "ms": 20.0, "images_per_s": 50.0, "flops_analytic": 2e12},
                {"dtype": "bfloat16", "batch": 8, "ms": 40.0, "images_per_s": 200.0, "flops_analytic": 16e12},
                {"dtype": "bfloat16", "batch": 16, "error": "out of memory"},
            ],
        },
        "torch": {
            "rows": [
                {"impl": "torch-official", "batch": 1, "ms": 50.0, "images_per_s": 20.0},
                {"impl": "torch-strong", "batch": 1, "ms": 25.0, "images_per_s": 40.0},
                {"impl": "torch-compiled", "batch": 1, "ms": 20.0, "images_per_s": 50.0},
                {"impl": "torch-compiled", "batch": 8, "error": "timeout"},
                {"impl": "torch-official", "batch": 8, "ms": 400.0, "images_per_s": 20.0},
                {"impl": "torch-strong", "batch": 8, "ms": 500.0, "images_per_s": 16.0},
            ]
        },
        "runner": {"end_to_end_over_step": 0.9},
        "correctness": {"ok": True},
    }


def test_report_numbers():
    results = _fake_results()
    rows = {(r["dtype"], r["batch"]): r for r in device_report.step_rows_with_mfu(results)}
    assert rows[("bfloat16", 1)]["mfu"] == pytest.approx(2e12 / 0.01 / 1000e12)
    assert rows[("float32", 1)]["mfu"] == pytest.approx(2e12 / 0.02 / 500e12)  # over the TF32 peak
    assert rows[("bfloat16", 8)]["mfu_measured"] == pytest.approx(16e12 / 0.04 / 800e12)
    ratios = {r["batch"]: r for r in device_report.torch_ratios(results)}
    assert ratios[1]["ours_f32_over_official"] == 2.5 and ratios[1]["ours_best_over_strongest"] == 2.0
    assert ratios[1]["strongest_impl"] == "torch-compiled"
    # Where the official configuration is the fastest PyTorch run, it is the one to beat.
    assert ratios[8]["strongest_impl"] == "torch-official" and ratios[8]["ours_best_over_strongest"] == 10.0
    s = device_report.summarize(results)
    assert s["batch1_f32_over_official"] == 2.5 and s["min_over_strongest"] == 2.0
    assert s["paper_schedule"]["batch"] == 8
    assert s["paper_schedule"]["minutes"] == pytest.approx(266_800 / (200 * 0.9) / 60, abs=0.05)
    assert s["paper_schedule"]["step_alone_minutes"] == pytest.approx(266_800 / 200 / 60, abs=0.05)
    # Without a runner stage the end-to-end factor is unknown, not assumed to be 1.
    alone = device_report.summarize({**results, "runner": {}})["paper_schedule"]
    assert alone["end_to_end_factor"] is None and alone["minutes"] is None
    assert alone["step_alone_minutes"] == s["paper_schedule"]["step_alone_minutes"]
    text = device_report.markdown({**results, "meta": {"date": "today"}, "stages": {"step": {"status": "ok"}}})
    assert "| bfloat16 | 8 | 40.0 |" in text and "out of memory" in text


def test_device_suite_dry_run_runs_every_stage(tmp_path):
    out = tmp_path / "suite"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.device_suite", "--out", str(out), "--dry-run", "--data", "synthetic",
         "--stages", *device_suite.STAGES],
        cwd=ROOT, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "device_suite.json").read_text())
    assert {k: v["status"] for k, v in results["stages"].items()} == dict.fromkeys(device_suite.STAGES, "ok")
    assert results["correctness"]["ok"] and results["correctness"]["step_vs_cpu"]["highest"]["max_rel"] <= 1e-3
    decision = results["forms"]["decision"]
    assert all(decision[dt][k]["fastest"] in ("native", "cpu") for dt in decision for k in decision[dt])
    rows = results["step"]["rows"]
    assert all("ms" in r and r["losses_finite"] for r in rows), rows
    assert any(r.get("largest_that_fits") for r in rows)
    runner = results["runner"]
    assert runner["profile_files"] >= 1 and runner["results_page"] and runner["images_per_s"] > 0
    assert runner["end_to_end_over_step"] > 0
    assert all("images_per_s" in r for r in results["translate"]["rows"])
    torch_rows = results["torch"].get("rows")
    if torch_rows is not None:  # torch installed: the official and the strong configuration ran
        assert {r["impl"] for r in torch_rows if "ms" in r} == {"torch-official", "torch-strong"}
    assert results["summary"]["paper_schedule"]["minutes"] > 0
    md = (out / "device_suite.md").read_text()
    assert "## Train step" in md and "## Runner end to end" in md and "## Correctness" in md


def test_quality_run_end_to_end_against_the_step_alone(tmp_path):
    # Logs every 10 steps of batch 8: the first interval holds the compilation, then 0.5 s per 10 steps.
    logs = [(10, 0.0, 30.0), (20, 0.0, 30.5), (30, 0.0, 31.0), (40, 0.0, 31.5)]
    suite = tmp_path / "device_suite.json"
    suite.write_text(
        json.dumps({"step": {"rows": [{"dtype": "bfloat16", "batch": 8, "ms": 40.0, "images_per_s": 200.0}]}})
    )
    rates = quality_gpu.end_to_end(logs, 8, str(suite), "bfloat16")
    assert rates["images_per_s"] == pytest.approx(160.0)
    assert rates["end_to_end_over_step"] == pytest.approx(0.8)
    assert rates["paper_schedule_minutes"] == pytest.approx(266_800 / 160 / 60, abs=0.05)
    assert "end_to_end_over_step" not in quality_gpu.end_to_end(logs, 8, None, "bfloat16")


def test_plan_schedule_fits_the_time_halves_the_epochs_and_trains_every_step():
    from jaxgan import optim

    plan = quality_gpu.plan_schedule(seconds=200, images_per_s=100, batch=8, images_per_epoch=1334)
    assert plan["steps"] == 2500 and plan["steps_per_epoch"] == 167
    assert plan["num_epochs"] + plan["num_epochs_decay"] == 16 and plan["num_epochs"] == 8  # 15 epochs run
    for seconds, last_lr in ((200, 1 / 9), (13.4, 1.0), (30, 1 / 3), (61, 1 / 4)):  # 2500, 167, 375, 762 steps
        plan = quality_gpu.plan_schedule(seconds=seconds, images_per_s=100, batch=8, images_per_epoch=1334)
        lr = optim.linear_decay_schedule(1.0, plan["num_epochs"], plan["num_epochs_decay"], plan["steps_per_epoch"])
        # The last planned step still learns, at a decayed rate once the run holds 2 epochs or more.
        assert float(lr(0)) == 1.0 and float(lr(plan["steps"] - 1)) == pytest.approx(last_lr)


def test_translations_round_trip_losslessly_and_drop_what_does_not_fit(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 16)
    smooth = ramp[:, None, None] + ramp[None, :, None] * np.array([0.2, 0.5, 0.1])  # photo-like, not noise
    images = np.clip(smooth[None] + rng.normal(0, 4, (3, 16, 16, 3)), 0, 255).astype(np.uint8)
    sets = {(w, d): ([f"x{i}.jpg" for i in range(3)], images) for w in ("ema", "raw") for d in ("AtoB", "BtoA")}
    monkeypatch.setattr(quality_gpu, "PART_BYTES", 2048)  # several parts
    files = quality_gpu.write_translations(tmp_path, sets)
    monkeypatch.setattr(quality_gpu, "TRANSLATION_BYTES", 10**6)
    files = quality_gpu.write_translations(tmp_path, sets)
    want = ["ema/AtoB", "ema/BtoA", "raw_q95/AtoB", "raw_q95/BtoA", "ema_q95/AtoB", "ema_q95/BtoA"]
    assert len(files["parts"]) > 1 and files["kept"] == want
    back = quality_gpu.read_translations(tmp_path)
    assert set(back) == set(want)
    np.testing.assert_array_equal(back["ema/BtoA"]["x2"], images[2])  # lossless
    lossy = back["raw_q95/BtoA"]["x2"].astype(int)
    assert lossy.shape == images[2].shape and np.abs(lossy - images[2]).mean() < 6
    limit = 2 * 2600 + tarfile.RECORDSIZE  # room for some sets only, and the tar's end
    monkeypatch.setattr(quality_gpu, "TRANSLATION_BYTES", limit)
    for p in tmp_path.glob("*.part*"):
        p.unlink()
    files = quality_gpu.write_translations(tmp_path, sets)
    assert files["kept"][0] == "ema/AtoB" and files["dropped"] and files["dropped"][-1] == "ema_q95/BtoA"
    assert files["bytes"] <= limit  # the parts that come back: never one more than planned


def test_quality_run_dry_run_trains_to_the_deadline_and_writes_its_files(tmp_path):
    out = tmp_path / "q"
    deadline = time.time() + 90
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.quality_gpu", "--dry-run", "--out", str(out), "--deadline", str(deadline),
         "--reserve-s", "30", "--startup-s", "25"],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.time() < deadline + 30  # the watchdog and the reserve keep the deadline
    result = json.loads((out / "quality.json").read_text())
    assert result["steps_done"] > 0 and result["translations"]["kept"][:3] == ["ema/AtoB", "ema/BtoA", "raw_q95/AtoB"]
    assert (out / "quality_grid.png").stat().st_size > 0
    sets = quality_gpu.read_translations(out)
    assert len(sets["ema/AtoB"]) == 4 and next(iter(sets["ema/AtoB"].values())).shape == (32, 32, 3)


def test_case_flags_are_checked_and_the_device_scripts_gap_cases_run(tmp_path, capsys):
    for flag, bad in (("--torch-cases", "fast:2"), ("--step-cases", "bf16:8"), ("--step-cases", "float32:0")):
        with pytest.raises(SystemExit) as e:
            device_suite.main(["--out", str(tmp_path), flag, bad])
        assert e.value.code == 2 and f"{flag}: {bad} not of the form KIND:BATCH" in capsys.readouterr().err
    # The cases device_run.sh hands the suite on the device: accepted, and in the scale the suite records.
    script = (ROOT / "benchmarks" / "device_run.sh").read_text()
    gaps = re.search(r'^DEFAULT_GAPS="([^"]*)"$', script, re.M).group(1).split()
    assert device_suite.main(["--dry-run", "--out", str(tmp_path), "--stages", "env", *gaps]) == 0
    scale = json.loads((tmp_path / "device_suite.json").read_text())["meta"]["scale"]
    step_at, torch_at = gaps.index("--step-cases"), gaps.index("--torch-cases")
    assert scale["step_cases"] == gaps[step_at + 1 : torch_at] and scale["torch_cases"] == gaps[torch_at + 1 :]
    assert scale["step_cases"][0] == "bfloat16:8"  # first: its rate plans the quality run
