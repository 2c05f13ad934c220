"""Export: ONNX (onnxruntime), StableHLO (jax.export, in a fresh process) and the official .pth (PyTorch replica)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

from experiments.configs import horse2zebra
from jaxgan import export, generator_checkpoint, generator_loading, loop, models, translate

TOL = 1e-4  # the bound on |exported - jaxgan|, in [-1, 1] units


def _random_generator(ngf: int, n_blocks: int, affine: bool = False, seed: int = 0):
    """A generator whose weights (and affine norms) are far from their initial values, so every layer matters."""
    gen = models.ResnetGenerator(ngf=ngf, n_blocks=n_blocks, norm_affine=affine)
    params = gen.init(jax.random.PRNGKey(seed), jnp.zeros((1, 16, 16, 3)))["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    noisy = [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    return gen, jax.tree_util.tree_unflatten(tree, noisy)


def _images(b: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (b, h, w, 3)).astype(np.float32)


def _reference(gen, params, images):
    return np.asarray(translate._apply(gen, params, jnp.asarray(images)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step tiny training run (EMA on), the source of the command-line exports."""
    workdir = tmp_path_factory.mktemp("run")
    config = horse2zebra.get_config("tiny")
    config.num_train_steps, config.results_max_images = 3, 2
    loop.train_and_evaluate(config, workdir)
    return workdir


@pytest.mark.parametrize(("ngf", "n_blocks", "affine"), [(8, 2, False), (8, 1, True), (64, 9, False)])
def test_onnx_equals_jaxgan_at_three_sizes(tmp_path, ngf, n_blocks, affine):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    gen, params = _random_generator(ngf, n_blocks, affine)
    path = tmp_path / "g.onnx"
    export.export_onnx(params, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sizes = [(2, 32, 32), (1, 36, 52), (1, 31, 45)] if ngf < 64 else [(1, 64, 96), (1, 68, 60), (1, 80, 80)]
    for b, h, w in sizes:  # square, non-square, and neither side a multiple of 4 (padded inside the graph)
        x = _images(b, h, w)
        got = session.run(None, {"image": x.transpose(0, 3, 1, 2)})[0].transpose(0, 2, 3, 1)
        err = np.abs(got - _reference(gen, params, x)).max()
        print(f"onnx ngf={ngf} blocks={n_blocks} affine={affine} {b}x{h}x{w}: max abs diff {err:.2e}")
        assert got.shape == x.shape and err <= TOL


_LOAD_IN_A_FRESH_PROCESS = """
import sys, numpy as np
from jaxgan import export
f = export.load(sys.argv[1])
np.save(sys.argv[3], f(np.load(sys.argv[2])))
loaded = sorted(m for m in sys.modules if m.startswith(("flax", "jaxgan.models", "jaxgan.translate", "orbax")))
print("model code loaded:", loaded)
"""


def test_stablehlo_runs_in_a_fresh_process_without_model_code(tmp_path):
    gen, params = _random_generator(8, 2)
    path = tmp_path / "g.jaxexport"
    meta = export.export_stablehlo({"ngf": 8, "n_blocks": 2}, params, path)
    assert set(meta["platforms"]) == {"cpu", "cuda", "tpu"}
    assert json.loads((tmp_path / "g.jaxexport.json").read_text())["model"]["n_blocks"] == 2
    for b, h, w in [(1, 32, 32), (3, 40, 56), (2, 30, 45)]:  # symbolic batch and size; 30x45 is padded
        x = _images(b, h, w, seed=h)
        np.save(tmp_path / "x.npy", x)
        args = [
            sys.executable,
            "-c",
            _LOAD_IN_A_FRESH_PROCESS,
            str(path),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ]
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "model code loaded: []" in proc.stdout
        err = np.abs(np.load(tmp_path / "y.npy") - _reference(gen, params, x)).max()
        print(f"stablehlo {b}x{h}x{w}: max abs diff {err:.2e}")
        assert err <= 1e-6  # the same XLA program: measured 0 (2026-12-02), as the README says
    with pytest.raises(ValueError, match="at least 8x8"):
        export.load(path)(_images(1, 4, 16))


def test_pth_loads_into_the_official_network(tmp_path):
    torch = pytest.importorskip("torch")
    from benchmarks import torch_replica

    gen, params = _random_generator(16, 6)
    path = tmp_path / "latest_net_G_A.pth"
    export.export_pth(params, path)
    net = torch_replica.ResnetGenerator(16, 6)
    net.load_state_dict(torch.load(path, weights_only=True), strict=True)  # every official key, no others
    x = _images(1, 64, 96)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    err = np.abs(_reference(gen, params, x) - want).max()
    print(f"pth in the PyTorch replica 1x64x96: max abs diff {err:.2e}")
    assert err <= TOL
    _, affine = _random_generator(8, 1, affine=True)
    with pytest.raises(export.ExportError, match="affine"):
        export.export_pth(affine, tmp_path / "affine.pth")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxgan.export", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def test_cli_exports_a_run_in_every_format_and_checks_each(run, tmp_path):
    formats = {"onnx": "g.onnx", "stablehlo": "g.jaxexport"}
    try:
        import torch  # noqa: F401

        formats["pth"] = "g.pth"
    except ImportError:
        pass
    for fmt, name in formats.items():
        proc = _cli("--workdir", str(run), "--direction", "BtoA", "--format", fmt, "--output", str(tmp_path / name))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (
            f"the ema weights of step 3 of {run}" in proc.stdout and "checked: max |exported - jaxgan|" in proc.stdout
        )
        err = float(proc.stdout.split("= ")[-1].split()[0])
        assert err <= TOL and (tmp_path / name).stat().st_size > 0
        assert not list(tmp_path.glob("*.part"))
    # The ONNX file of a run equals translating with the run's own (EMA) generator.
    ort = pytest.importorskip("onnxruntime")
    gen, params, _, _ = generator_loading.load_generator_from_run(run, "BtoA")
    x = _images(1, 48, 40)
    got = ort.InferenceSession(str(tmp_path / "g.onnx")).run(None, {"image": x.transpose(0, 3, 1, 2)})[0]
    assert np.abs(got.transpose(0, 2, 3, 1) - _reference(gen, params, x)).max() <= TOL


def test_cli_exports_an_imported_official_model(tmp_path):
    gen, params = _random_generator(8, 2)
    ckpt = tmp_path / "imported"
    generator_checkpoint.save_generator_checkpoint(params, "AtoB", {"ngf": 8, "n_blocks": 2}, ckpt)
    proc = _cli("--checkpoint", str(ckpt), "--format", "stablehlo", "--output", str(tmp_path / "g.jaxexport"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ngf=8, n_blocks=2" in proc.stdout
    x = _images(2, 24, 36)
    assert np.abs(export.load(tmp_path / "g.jaxexport")(x) - _reference(gen, params, x)).max() <= TOL
    # The checkpoint holds only AtoB: asking for BtoA is one clear line.
    proc = _cli("--checkpoint", str(ckpt), "--direction", "BtoA", "--format", "onnx", "--output", str(tmp_path / "x"))
    assert proc.returncode == 2 and "not BtoA" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_errors_are_one_line(run, tmp_path):
    cases = {
        "is a folder": ["--workdir", str(run), "--format", "onnx", "--output", str(tmp_path)],
        "No training run": ["--workdir", str(tmp_path / "nothing"), "--format", "onnx", "--output", "x.onnx"],
        "does not exist": ["--checkpoint", str(tmp_path / "nothing"), "--format", "pth", "--output", "x.pth"],
        "is a file, not a folder": ["--workdir", str(run), "--format", "onnx", "--output", str(tmp_path / "f" / "m")],
    }
    (tmp_path / "f").write_text("a file where a folder is needed")
    for message, args in cases.items():
        proc = _cli(*args)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    # The destination is checked before the generator loads (a missing run is not even looked at).
    proc = _cli("--workdir", str(tmp_path / "nothing"), "--format", "onnx", "--output", str(tmp_path / "f" / "m"))
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr, proc.stderr
