"""The interactive page (jaxgan.app): one translation without a browser, and the page driven in headless Chromium."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, free_port
from PIL import Image

from jaxgan import app, generator_checkpoint, generator_loading, image_io, translate

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium")) if p and os.path.exists(p)), None)


def _checkpoint(path: pathlib.Path, directions=("AtoB",)) -> pathlib.Path:
    """A small random generator checkpoint (jaxgan.interop's layout) holding ``directions``."""
    cfg = {"ngf": 4, "n_blocks": 1}
    generator = generator_loading.make_generator(cfg)
    params = {d: generator.init(jax.random.PRNGKey(i), jnp.zeros((1, 32, 32, 3)))["params"]
              for i, d in enumerate(directions)}  # fmt: skip
    generator_checkpoint.save_generators_checkpoint(params, cfg, path)
    return path


def _gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + 2 * y) % 256], -1).astype(np.uint8)


def _rotated_jpeg(path: pathlib.Path, stored_h: int, stored_w: int) -> pathlib.Path:
    """A JPEG stored ``stored_w`` wide and ``stored_h`` high, tagged EXIF orientation 6 (shown turned 90° clockwise)."""
    exif = Image.Exif()
    exif[274] = 6
    Image.fromarray(_gradient(stored_h, stored_w)).save(path, exif=exif.tobytes(), quality=95)
    return path


def _pixels(source: pathlib.Path | bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(source) if isinstance(source, bytes) else source).convert("RGB"))


@pytest.fixture(scope="module")
def one_way(tmp_path_factory) -> app.Model:
    """A checkpoint with only G (A -> B), as an imported official generator can be."""
    return app.load_checkpoint(_checkpoint(tmp_path_factory.mktemp("ckpt") / "h2z_g"))


def test_translation_equals_translate_and_notes_the_missing_reconstruction(tmp_path, one_way):
    assert list(one_way.generators) == ["AtoB"] and one_way.name == "h2z_g"
    assert "FID: not evaluated" in one_way.description and "--checkpoint" in one_way.description
    src = tmp_path / "photo.png"
    Image.fromarray(_gradient(40, 72)).save(src)
    result = app.translate_upload(one_way, src, "AtoB", tmp_path)
    assert result.translated == tmp_path / "photo_AtoB.png" and result.reconstructed is None
    assert "72×40" in result.note and "No reconstruction: it needs both generators" in result.note
    assert "shrunk" not in result.note
    generator, params = one_way.generators["AtoB"]
    (expected,) = translate.translate_files(generator, params, src, tmp_path / "cli")
    assert expected.read_bytes() == result.translated.read_bytes()


def test_max_size_shrinks_the_long_side_and_says_so(tmp_path, one_way):
    src = tmp_path / "big.png"
    Image.fromarray(_gradient(60, 100)).save(src)
    capped = app.translate_upload(one_way, src, "AtoB", tmp_path, max_size=48)
    assert Image.open(capped.translated).size == (48, 29)
    assert "shrunk from 100×60" in capped.note and "--max_size" in capped.note
    whole = app.translate_upload(one_way, src, "AtoB", tmp_path, max_size=0)
    assert Image.open(whole.translated).size == (100, 60) and "shrunk" not in whole.note


def test_exif_orientation_is_applied(tmp_path, one_way):
    src = _rotated_jpeg(tmp_path / "phone.jpg", stored_h=24, stored_w=40)
    result = app.translate_upload(one_way, src, "AtoB", tmp_path, name="phone.jpg")
    assert Image.open(result.translated).size == (24, 40)  # upright: 24 wide, 40 high


def test_unreadable_image_is_a_data_error_and_a_gradio_error(tmp_path, one_way):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(image_io.DataError, match="bad.png: not a readable image"):
        app.translate_upload(one_way, bad, "AtoB", tmp_path)
    gr = pytest.importorskip("gradio", reason="gradio missing: pip install 'jaxgan[app]'")
    page = app.build_app(one_way, out_dir=tmp_path)
    (run,) = [f.fn for f in page.fns.values() if f.fn is not None and f.fn.__name__ == "run"]
    with pytest.raises(gr.Error, match="bad.png: not a readable image") as error:
        run({"path": str(bad), "orig_name": "bad.png"}, "AtoB")
    assert str(tmp_path) not in error.value.message  # the upload's name, not the server's path
    with pytest.raises(gr.Error, match="Choose a direction: A → B"):
        run({"path": str(bad), "orig_name": "bad.png"}, "BtoA")
    with pytest.raises(gr.Error, match="Pick or drop an image first"):
        run(None, "AtoB")


def test_pretrained_json_names_the_model_and_both_generators_reconstruct(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt", ("AtoB", "BtoA"))
    meta = {"name": "horse2zebra", "url": "https://example.org/h2z", "reverse": {"name": "zebra2horse"}}
    (ckpt / "pretrained.json").write_text(json.dumps(meta))  # as jaxgan.pretrained.fetch writes it
    model = app.load_checkpoint(ckpt)
    assert model.name == "horse2zebra" and model.description.startswith("**[horse2zebra](https://example.org/h2z)**")
    assert "A → B, B → A (zebra2horse)" in model.description
    src = tmp_path / "x.png"
    Image.fromarray(_gradient(20, 28)).save(src)
    result = app.translate_upload(model, src, "BtoA", tmp_path)
    assert _pixels(result.reconstructed).shape == (20, 28, 3) and "No reconstruction" not in result.note


def test_pretrained_fetches_both_directions_and_its_errors_are_one_line(tmp_path, monkeypatch):
    """``--pretrained`` through the real ``jaxgan.pretrained``, served by a local HTTP server (no network)."""
    torch = pytest.importorskip("torch")
    from benchmarks import torch_replica

    served = tmp_path / "served"
    served.mkdir()
    for seed, name in enumerate(["horse2zebra", "zebra2horse"]):
        net = torch_replica.randomize_(torch_replica.ResnetGenerator(8, 2), seed=seed)
        torch.save(net.state_dict(), served / f"{name}.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            monkeypatch.setenv("JAXGAN_PRETRAINED_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
            monkeypatch.setenv("JAXGAN_CACHE_DIR", str(tmp_path / "cache"))
            model = app.load_checkpoint(app._fetch_pretrained("horse2zebra"))
            assert set(model.generators) == {"AtoB", "BtoA"} and model.name == "horse2zebra"
            assert "zebra2horse" in model.description
            with pytest.raises(app.AppError, match="unknown model 'nope'"):
                app._fetch_pretrained("nope")
        finally:
            httpd.shutdown()
    monkeypatch.setenv("JAXGAN_CACHE_DIR", str(tmp_path / "empty_cache"))  # the server is gone: one clear line
    with pytest.raises(app.AppError, match="cannot reach http://127.0.0.1"):
        app._fetch_pretrained("horse2zebra")


def test_examples_of_a_folder_run_are_a_few_test_images_of_each_domain(tmp_path):
    for split in ("testA", "testB"):
        (tmp_path / "data" / split).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(_gradient(8, 8)).save(tmp_path / "data" / split / f"{i}.png")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"dataset": f"folder:{tmp_path / 'data'}"}))
    names = [f"{p.parent.name}/{p.name}" for p in app.run_examples(tmp_path / "run")]
    assert names == ["testA/0.png", "testA/1.png", "testA/2.png", "testB/0.png", "testB/1.png", "testB/2.png"]
    (tmp_path / "run" / "config.json").write_text(json.dumps({"dataset": "synthetic"}))
    assert app.run_examples(tmp_path / "run") == []


def test_scores_prefer_this_checkpoint_and_say_when_they_are_of_another(tmp_path):
    assert app._scores(tmp_path, 400, "ema") is None
    (tmp_path / "eval").mkdir()
    rows = [{"step": 200, "weights": "ema", "AtoB/fid": 80.5, "AtoB/kid": 0.05, "BtoA/fid": 90.25},
            {"step": 400, "weights": "ema", "AtoB/fid": 61.234, "AtoB/kid": 0.0321, "BtoA/fid": 70.0}]  # fmt: skip
    (tmp_path / "eval" / "eval_ema_curve.json").write_text(json.dumps({"checkpoints": rows}))
    line = app._scores(tmp_path, 400, "ema")
    assert line == "FID: A → B 61.23 (KID 0.0321), B → A 70.00 (`eval/eval_ema_curve.json`, step 400)"
    assert app._scores(tmp_path, 600, "ema").endswith("step 400, not the checkpoint shown)")


def test_command_line_errors_exit_2_before_the_page_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("jaxgan.cpu_memory.reuse_step_memory", lambda: False)  # JAX already runs in this process
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the extra were not installed
    assert app.main(["--workdir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: the interactive page needs Gradio: pip install 'jaxgan[app]'\n"
    monkeypatch.undo()
    monkeypatch.setattr("jaxgan.cpu_memory.reuse_step_memory", lambda: False)
    pytest.importorskip("gradio", reason="gradio missing: pip install 'jaxgan[app]'")
    assert app.main(["--workdir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: No training run in {tmp_path}")
    (tmp_path / "empty").mkdir()
    assert app.main(["--checkpoint", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: Cannot read a generator checkpoint")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text("{}")
    assert app.main(["--checkpoint", str(tmp_path / "run")]) == 2
    assert f"is a training run: give it as --workdir {tmp_path / 'run'}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        app.main(["--workdir", str(tmp_path), "--port", "99999"])
    assert e.value.code == 2 and "--port must be in 1..65535" in capsys.readouterr().err
    # Checked before the model loads (the workdir here holds none): Gradio said "Cannot find empty port in range".
    assert app.main(["--workdir", str(tmp_path), "--host", "192.0.2.1"]) == 2  # TEST-NET-1: no machine's own
    assert capsys.readouterr().err.startswith("error: cannot serve on 192.0.2.1:7860: Cannot assign requested")
    assert app.main(["--workdir", str(tmp_path), "--host", "no-such-host.invalid"]) == 2
    assert capsys.readouterr().err.startswith("error: --host no-such-host.invalid: not a name or address")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert app.main(["--workdir", str(tmp_path), "--port", str(port)]) == 2
    assert capsys.readouterr().err == f"error: port {port} on 127.0.0.1 is in use: choose another --port.\n"


# ---------------------------------------------------------------------------
# The page in a real browser


def _browser_or_skip():
    if CHROMIUM is None:
        pytest.skip("no Chromium at /usr/bin/chromium or on PATH (CI installs Debian's chromium in .ci/run)")
    pytest.importorskip("playwright.sync_api", reason="playwright missing: pip install 'jaxgan[test]'")
    pytest.importorskip("gradio", reason="gradio missing: pip install 'jaxgan[app]'")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> pathlib.Path:
    """A 2-step run of the :tiny config (both generators; it translates badly, which is fine here)."""
    _browser_or_skip()
    workdir = tmp_path_factory.mktemp("run") / "tiny_h2z"
    cmd = [sys.executable, "-m", "experiments.horse2zebra", f"--workdir={workdir}",
           "--config=experiments/configs/horse2zebra.py:tiny", "--config.num_train_steps=2",
           "--config.results_max_images=2"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return workdir


def _start(cmd: list[str]) -> tuple[subprocess.Popen, list[str], threading.Event]:
    """A subprocess whose output lines are collected by a thread; the event is set at the app's URL line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, ready = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("jaxgan app: "):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    return proc, lines, ready


def _translate_cli(workdir, direction, src, out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jaxgan.translate", "--workdir", str(workdir), "--direction",
                             direction, "--input", str(src), "--output", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.mark.slow
def test_page_translates_uploads_exactly_as_the_translate_command(tmp_path, tiny_run):
    from playwright.sync_api import sync_playwright

    start = time.perf_counter()
    examples = tmp_path / "examples"
    examples.mkdir()
    wide = tmp_path / "wide.png"  # 72 wide, 40 high
    Image.fromarray(_gradient(40, 72)).save(wide)
    shutil.copy(wide, examples / "wide.png")
    rotated = _rotated_jpeg(tmp_path / "rotated.jpg", stored_h=72, stored_w=40)  # shown 72 wide, 40 high
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")

    port = free_port()
    server, log, ready = _start([sys.executable, "-m", "jaxgan.app", "--workdir", str(tiny_run), "--port", str(port),
                                 "--examples", str(examples)])  # fmt: skip
    cli = [_translate_cli(tiny_run, "AtoB", wide, tmp_path / "cli_ab"),
           _translate_cli(tiny_run, "BtoA", rotated, tmp_path / "cli_ba")]  # fmt: skip
    try:
        for proc in cli:
            out = proc.communicate(timeout=300)[0]
            assert proc.returncode == 0, out
        assert ready.wait(240) and server.poll() is None, "".join(log)
        (line,) = [x for x in log if x.startswith("jaxgan app: ")]
        url = line.split(" on ")[-1].strip()
        assert url == f"http://127.0.0.1:{port}/", line  # binds 127.0.0.1 and says where, in one line

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            info = page.inner_text("#model-info")
            assert "tiny_h2z" in info and "step 2" in info and "ema weights" in info, info
            assert "FID: not evaluated (python -m jaxgan.evaluate --workdir" in info, info

            def translate_and_fetch(name: str) -> bytes:
                page.click("#translate")
                image = page.wait_for_selector(f'#translated img[src*="{name}"]', timeout=180_000)
                served = page.request.get(image.get_attribute("src")).body()
                link = page.wait_for_selector(f'#download a[href*="{name}"]')
                assert page.request.get(link.get_attribute("href")).body() == served
                return served

            # An example, clicked into the input, A -> B; the reconstruction comes with it.
            page.click('#examples button:has(img[src*="wide.png"])')
            page.wait_for_selector('#input img[src*="wide.png"]')
            served, cli_png = translate_and_fetch("wide_AtoB.png"), tmp_path / "cli_ab" / "wide.png"
            assert _pixels(served).shape == (40, 72, 3)
            np.testing.assert_array_equal(_pixels(served), _pixels(cli_png))
            assert served == cli_png.read_bytes()  # same pixels, same PNG encoder: served as written
            assert page.wait_for_selector('#reconstructed img[src*="wide_AtoB_reconstructed.png"]')
            assert "A → B: 72×40 pixels" in page.inner_text("#note")

            # An unreadable upload: a message on the page, and the page keeps working.
            page.set_input_files("#input input[type=file]", str(bad))
            page.click("#translate")
            message = page.get_by_text("bad.png: not a readable image").first
            message.wait_for(timeout=60_000)
            page.locator(".toast-close").first.click()
            message.wait_for(state="hidden")

            # An uploaded phone photo (EXIF orientation 6), B -> A.
            page.set_input_files("#input input[type=file]", str(rotated))
            page.locator("#direction label", has_text="B → A").click()
            served, cli_png = translate_and_fetch("rotated_BtoA.png"), tmp_path / "cli_ba" / "rotated.png"
            assert _pixels(served).shape == (40, 72, 3)  # upright
            np.testing.assert_array_equal(_pixels(served), _pixels(cli_png))
            assert served == cli_png.read_bytes()

            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)  # README's: benchmarks/app_screenshot.py
            browser.close()
    finally:
        for proc in [*cli, server]:
            proc.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        for proc in cli:
            proc.wait(timeout=30)
    print(f"\nbrowser test: {time.perf_counter() - start:.1f} s wall (after the training fixture)")
