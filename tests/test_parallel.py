"""Data parallelism on fake CPU devices and on two processes joined by jax.distributed (in subprocesses)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, cosine_and_ratio, cpu_devices_env, free_port, local_job
from jax.sharding import PartitionSpec as P

WORKER = str(ROOT / "tests" / "parallel_worker.py")


def _run(args, devices, timeout=600):
    env = cpu_devices_env(devices)
    return subprocess.Popen([sys.executable, WORKER, *map(str, args)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _check(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


# How far runs that differ only in how their sums are split over devices and processes may differ.
# Their gradients agree to float rounding, which in these tiny networks at initialisation is about 1e-4
# relative (sums over rows that nearly cancel). Adam normalises that away, except where it cannot: its
# first step is lr * g / (|g| + eps), so an element whose true gradient is zero moves by 0 or +-lr with its
# rounding noise (a few per 10,000 elements here; 146 of 190,968 in the 2-process run). Later GAN steps
# spread such differences to every parameter, so the comparisons are of single steps. A real error (a
# missing cross-device sum, a wrong batch split) changes the sign of a large share of all gradients.
# A second step from one checkpoint allows more: an element whose gradients so far were rounding noise
# has a second moment that is rounding noise too, so its update is again about +-lr whatever its sign.
# Measured between 1 and 4 devices: under 0.2 % on a quiet machine, 0.74 % in a loaded CI run (the share
# depends on how XLA:CPU's reductions are split over threads); a different batch moves more than 30 %.
LR = 2e-4
MAX_FLIPPED = 0.002  # share of parameters allowed to differ by up to one Adam step, first step
MAX_FLIPPED_SECOND_STEP = 0.02


def _differing(a, b, keys=None) -> tuple[int, int]:
    """(parameters differing by more than 1e-6, all parameters) over ``keys`` (default: all of ``a``)."""
    keys = keys or a.files
    return sum(int(np.sum(np.abs(a[k] - b[k]) > 1e-6)) for k in keys), sum(a[k].size for k in keys)


def _assert_same_params(a, b, keys=None, max_flipped=MAX_FLIPPED):
    keys = keys or a.files
    differing, total = _differing(a, b, keys)
    max_abs = max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)
    assert differing <= max_flipped * total, f"{differing} of {total} parameters differ by more than 1e-6"
    assert max_abs <= 2.5 * LR, f"max abs difference {max_abs} is more than one opposite Adam step"


def _gradient_agreement(a, b) -> dict[str, tuple[float, float]]:
    """Per network, (cosine, norm ratio) of two runs' gradients, read from Adam's first moments after one step.

    Unlike the parameters after Adam's sign-like first step, this compares magnitudes too: a gradient scaled
    by the device count, or summed over too few rows, shows (conftest.cosine_and_ratio: why not elementwise).
    """
    out = {}
    for net in ("g_ab", "g_ba", "d_a", "d_b"):
        keys = [k for k in a.files if k.startswith(f"['{net}']")]
        assert keys, net
        out[net] = cosine_and_ratio([a[k] for k in keys], [b[k] for k in keys])
    return out


def _assert_same_gradients(a, b, what: str) -> None:
    agreement = _gradient_agreement(a, b)
    print(f"gradients, {what}: (cosine, norm ratio) {agreement}")
    for net, (cosine, ratio) in agreement.items():
        assert cosine >= 0.999 and abs(ratio - 1) <= 0.01, (net, cosine, ratio)


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    """One 4-device process: 1-vs-4 equivalence (and the 4-device reference parameters)."""
    out = tmp_path_factory.mktemp("eq") / "eq.json"
    _check(_run(["equivalence", out], devices=4))
    return json.loads(out.read_text()), np.load(f"{out}.npz"), out


def test_four_devices_equal_one_device(four_devices):
    result, reference, eq = four_devices
    assert result["devices"] == 4
    _assert_same_params(reference, np.load(f"{eq}.one.npz"))
    # The criterion catches real errors: another batch changes most parameters' update.
    differing, total = _differing(reference, np.load(f"{eq}.other_batch.npz"))
    assert differing > 0.3 * total
    mu4 = np.load(f"{eq}.mu.npz")
    _assert_same_gradients(mu4, np.load(f"{eq}.one.mu.npz"), "4 devices against 1")
    other = _gradient_agreement(mu4, np.load(f"{eq}.other_batch.mu.npz"))  # another batch: far apart
    assert all(cosine < 0.9 for cosine, _ in other.values()), other
    np.testing.assert_allclose(result["losses4"], result["losses1"], rtol=1e-6)
    # One global pool, visited in global-batch order: same contents on any device count.
    assert result["pool_counts_equal"] and result["pool_max_abs_diff"] < 1e-5


def test_two_processes_equal_one_process_with_four_devices(tmp_path, four_devices):
    _, reference, eq = four_devices
    port, out = free_port(), tmp_path / "mp.npz"
    procs = [_run(["multiprocess", out, port, 2, i], devices=2) for i in range(2)]
    for p in procs:
        _check(p)
    info = [json.loads((tmp_path / f"mp.npz.{i}.json").read_text()) for i in range(2)]
    assert all(i["devices"] == 4 and i["local_devices"] == 2 for i in info)
    assert info[0]["losses"] == info[1]["losses"]
    # Each process fed only its own, disjoint rows of the global batch.
    for d in ("A", "B"):
        assert len(info[0]["rows_step0"][d]) == 2 and len(info[1]["rows_step0"][d]) == 2
    assert not set(info[0]["rows_step0"]["A"]) & set(info[1]["rows_step0"]["A"])
    _assert_same_params(np.load(out), reference)
    _assert_same_gradients(np.load(f"{eq}.mu.npz"), np.load(f"{out}.mu.npz"), "2 processes against 4 devices")


def test_checkpoint_moves_between_device_counts(tmp_path):
    # Saved on 4 devices -> restored on 1 and on 2; saved on 1 -> restored on 1 and on 4. Each continues one
    # step. Only runs continued from the same checkpoint are compared: the two checkpoints already differ by
    # Adam's isolated flips, which the next GAN step spreads to every parameter.
    ck4, ck1 = tmp_path / "ck4", tmp_path / "ck1"
    saves = [
        _run(["save", tmp_path / "s4.npz", ck4, 1], devices=4),
        _run(["save", tmp_path / "s1.npz", ck1, 1], devices=1),
    ]
    for p in saves:
        _check(p)
    runs = {
        "4to1": _run(["resume", tmp_path / "r41.npz", ck4], devices=1),
        "4to2": _run(["resume", tmp_path / "r42.npz", ck4], devices=2),
        "1to1": _run(["resume", tmp_path / "r11.npz", ck1], devices=1),
        "1to4": _run(["resume", tmp_path / "r14.npz", ck1], devices=4),
    }
    for p in runs.values():
        _check(p)
    saved4, saved1 = np.load(tmp_path / "s4.npz"), np.load(tmp_path / "s1.npz")
    finals = {}
    for name, devices, saved in (("r41", 1, saved4), ("r42", 2, saved4), ("r11", 1, saved1), ("r14", 4, saved1)):
        data = np.load(tmp_path / f"{name}.npz")
        meta = json.loads((tmp_path / f"{name}.npz.json").read_text())
        assert meta == {"step": 1, "devices": devices, "final_step": 2}
        for k in saved.files:  # restored exactly
            np.testing.assert_array_equal(data[f"restored{k}"], saved[k])
        finals[name] = {k: data[k] for k in saved.files}
    # Continuing on 1, 2 or 4 devices gives the same parameters up to rounding and Adam's isolated flips.
    keys = list(saved4.files)
    _assert_same_params(finals["r41"], finals["r42"], keys, MAX_FLIPPED_SECOND_STEP)
    _assert_same_params(finals["r11"], finals["r14"], keys, MAX_FLIPPED_SECOND_STEP)


def test_partition_rules_shard_matching_params_and_their_adam_moments():
    import jax
    from conftest import tiny_config
    from jax.sharding import PartitionSpec as P

    from jaxgan import parallel, train

    mesh = parallel.make_mesh((-1, 1), ("data", "model"))
    abstract = jax.eval_shape(lambda: train.create_train_state(tiny_config(), jax.random.PRNGKey(0)))
    rules = ((r"res_\d+/conv_\d/kernel", (None, None, None, "model")),)
    sh = parallel.state_sharding(abstract, mesh, rules)
    assert sh.params["g_ab"]["res_1"]["conv_0"]["kernel"].spec == P(None, None, None, "model")
    assert sh.opt_state["g_ba"][0].mu["res_0"]["conv_1"]["kernel"].spec == P(None, None, None, "model")
    assert sh.params["g_ab"]["res_1"]["conv_0"]["bias"].spec == P()  # rank differs: replicated
    assert sh.params["d_a"]["conv_0"]["kernel"].spec == P() and sh.pool_a.images.spec == P()
    with pytest.raises(parallel.ParallelError, match="data"):
        parallel.make_mesh((-1,), ("model",))


def test_partition_rules_that_cannot_apply_are_named(caplog):
    import jax
    from conftest import tiny_config

    from jaxgan import parallel, train

    abstract = jax.eval_shape(lambda: train.create_train_state(tiny_config(), jax.random.PRNGKey(0)))
    mesh = parallel.make_mesh((-1, 1), ("data", "model"))
    with pytest.raises(parallel.ParallelError, match=r"partition rule 'conv': axis 'tensor' is not in the mesh"):
        parallel.state_sharding(abstract, mesh, (("conv", ("tensor",)),))
    with caplog.at_level("WARNING", logger="jaxgan.parallel"):
        parallel.state_sharding(abstract, mesh, ((r"res_\d+/conv_\d/kernel", ("model",)),))  # rank 1: no kernel
    assert "shards nothing: no parameter path matches it with rank 1" in caplog.text
    # 2 ways along the generator's last output dimension, of 3 channels (on a mesh of 2 model devices).
    with pytest.raises(parallel.ParallelError, match=r"conv_out/kernel \(7, 7, 8, 3\).*3 does not divide into 2"):
        parallel.partition_specs(abstract, {"data": 1, "model": 2}, (("conv_out/kernel", (None, None, None, "model")),))
    with pytest.raises(parallel.ParallelError, match=r"partition rule 'kernel' names the mesh axis 'model' more"):
        parallel.partition_specs(abstract, {"data": 1, "model": 1}, (("kernel", (None, None, "model", "model")),))
    both = (("conv_out/kernel", (None, None, ("data", "model"), None)),)  # one dimension over two axes
    specs = parallel.partition_specs(abstract, {"data": 1, "model": 1}, both)
    assert specs.params["g_ab"]["conv_out"]["kernel"] == P(None, None, ("data", "model"), None)
    with pytest.raises(parallel.ParallelError, match=r"mesh_axes must be distinct names, got \('data', 'data'\)"):
        parallel.make_mesh((1, 1), ("data", "data"))  # it used to crash the process in the first compile


def test_connecting_the_collectives_checks_their_sums_and_names_a_failure(monkeypatch):
    # One CPU device here; two processes pretended: the sums run (one device: each is 1) and are checked.
    import jax

    from jaxgan import parallel

    mesh = parallel.make_mesh()
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    parallel.connect_collectives(mesh)

    def failing(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("UNKNOWN: Gloo context initialization failed: Connect timeout\nmore")

    monkeypatch.setattr(jax, "shard_map", lambda *a, **k: failing)
    with pytest.raises(parallel.ParallelError) as e:
        parallel.connect_collectives(mesh)
    assert "could not connect their CPU collectives (Gloo) within 30 s (UNKNOWN: Gloo context initialization " \
           "failed: Connect timeout). Gloo connects the hosts directly" in str(e.value)  # fmt: skip
    monkeypatch.setattr(jax, "shard_map", lambda *a, **k: lambda x: (x * 0,))
    with pytest.raises(parallel.ParallelError, match=r"gave \[0.0\], not \[1.0\]"):
        parallel.connect_collectives(mesh)


def test_a_process_id_alone_is_refused():
    from jaxgan import parallel

    with pytest.raises(parallel.ParallelError, match="--process_id=1 needs --coordinator_address"):
        parallel.initialize_distributed(process_id=1)
    assert parallel.initialize_distributed(process_id=0) is False  # the one process of a single-process run


def test_experiment_command_runs_as_two_processes(tmp_path):
    # The user-facing command, two processes x 2 CPU devices: training, cooperative checkpoint, process-0 outputs.
    procs = local_job([tmp_path] * 2, "--config.num_train_steps=4")  # the default forms, across processes
    outs = [_check(p) for p in procs]
    assert "2 process(es), 4 device(s)" in outs[0]
    assert "Results page" in outs[0] and "Results page" not in outs[1]  # only process 0 logs and writes
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4"]
    assert (tmp_path / "results" / "index.html").exists() and list((tmp_path / "samples").glob("*.png"))
    _one_device_readers(tmp_path)  # a checkpoint of two processes, read by one


# Every command that reads a run's checkpoint. translate, evaluate and export restore the generator alone
# (generator_loading.load_generator_from_run); the results mode and resuming restore the whole train state.
READERS = ("translate", "evaluate", "export", "results", "resume")


def _one_device_readers(workdir, readers=READERS):
    """Each of ``readers`` (by default all of them) in a plain one-device process, reading ``workdir``."""
    env = cpu_devices_env(1)
    src = workdir / "in"
    src.mkdir()
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(src / "a.png")
    commands = {
        "translate": ["-m", "jaxgan.translate", "--workdir", str(workdir), "--input", str(src), "--output",
                      str(workdir / "out")],
        "evaluate": ["-m", "jaxgan.evaluate", "--workdir", str(workdir)],
        "export": ["-m", "jaxgan.export", "--workdir", str(workdir), "--format", "onnx", "--output",
                   str(workdir / "g.onnx")],
        "results": ["-m", "experiments.horse2zebra", f"--workdir={workdir}", "--mode=results",
                    "--config=experiments/configs/horse2zebra.py:tiny", "--config.results_max_images=2"],
        "resume": ["-m", "experiments.horse2zebra", f"--workdir={workdir}",
                   "--config=experiments/configs/horse2zebra.py:tiny", "--config.num_train_steps=5",
                   "--config.results_max_images=2"],
    }  # fmt: skip
    for name in readers:
        args = commands[name]
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{name}: {out}"
        assert "Sharding info not provided" not in out and "Traceback" not in out, f"{name}: {out}"
    assert (workdir / "out" / "a.png").exists() and "5" in [p.name for p in (workdir / "checkpoints").iterdir()]
    if "evaluate" in readers:
        assert list((workdir / "eval").glob("eval_*_step*.json"))
    if "export" in readers:
        assert (workdir / "g.onnx").stat().st_size > 0


def test_checkpoints_of_several_devices_are_read_on_one(tmp_path):
    # One process with four devices (two processes: the test above; 4 -> 2 and 4 -> 1 for the train state:
    # test_checkpoint_moves_between_device_counts).
    devices = 4
    env = cpu_devices_env(devices)
    cmd = [sys.executable, "-m", "experiments.horse2zebra", f"--workdir={tmp_path}",
           "--config=experiments/configs/horse2zebra.py:tiny", "--config.num_train_steps=4",
           f"--config.batch_size={devices}", "--config.results_max_images=2"]  # fmt: skip
    _check(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    # Both restore paths (evaluate and export share translate's, which every reader ran on the two-process run).
    _one_device_readers(tmp_path, ("translate", "results", "resume"))
