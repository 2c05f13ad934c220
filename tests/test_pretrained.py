"""The official pretrained models: download (resume, failures) from a local HTTP server, conversion, the CLI."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import socket
import threading
import time

import jax
import numpy as np
import pytest

from jaxgan import generator_checkpoint, generator_loading, interop, pretrained, translate

# As listed by the official scripts/download_cyclegan_model.sh.
OFFICIAL = [
    "apple2orange", "orange2apple", "summer2winter_yosemite", "winter2summer_yosemite", "horse2zebra", "zebra2horse",
    "monet2photo", "style_monet", "style_cezanne", "style_ukiyoe", "style_vangogh", "sat2map", "map2sat",
    "cityscapes_photo2label", "cityscapes_label2photo", "facades_photo2label", "facades_label2photo",
    "iphone2dslr_flower",
]  # fmt: skip


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.routes[path]`` with ``Range: bytes=N-`` support and scripted failures.

    A route is ``{"body": bytes, "type": content type, "cut_after": K (the next response stops after
    K body bytes, then the connection closes), "ignore_range": answer 200 with the whole body,
    "delay": seconds before answering}``.
    """

    def do_GET(self) -> None:
        self.server.log.append((self.path, self.headers.get("Range")))
        time.sleep(self.server.routes.get(self.path, {}).get("delay", 0))
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body, start = route["body"], 0
        asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if asked and not route.get("ignore_range"):
            start = int(asked.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", route.get("type", "application/octet-stream"))
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = route.pop("cut_after", None)
        self.wfile.write(body[start:] if cut is None else body[start : start + cut])
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.log = {}, []
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/models"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _serve(server, name: str, body: bytes, **route) -> None:
    server.routes[f"/models/{name}.pth"] = {"body": body, **route}


@pytest.fixture(scope="module")
def nets():
    """``{name: (torch ResnetGenerator(16, 6), its .pth bytes)}`` for horse2zebra and zebra2horse."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    from benchmarks import torch_replica

    out = {}
    for seed, name in enumerate(["horse2zebra", "zebra2horse"]):
        net = torch_replica.randomize_(torch_replica.ResnetGenerator(16, 6), seed=seed).eval()
        buffer = io.BytesIO()
        torch.save(net.state_dict(), buffer)
        out[name] = net, buffer.getvalue()
    return out


def _flax_params(net) -> dict:
    return interop.torch_generator_to_flax({k: v.numpy() for k, v in net.state_dict().items()})


# ---------------------------------------------------------------------------
# The list (no torch needed)


def test_models_follow_the_official_list(capsys):
    assert list(pretrained.MODELS) == OFFICIAL
    assert all(pretrained.MODELS.values())
    assert pretrained.REVERSE["horse2zebra"] == "zebra2horse" and pretrained.REVERSE["style_monet"] == "monet2photo"
    assert len(pretrained.REVERSE) == 14
    assert all(pretrained.REVERSE[b] == a and a in pretrained.MODELS for a, b in pretrained.REVERSE.items())
    assert pretrained.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == OFFICIAL
    assert "horses -> zebras" in lines[OFFICIAL.index("horse2zebra")]


def test_unknown_name_lists_the_valid_ones(capsys, tmp_path):
    assert pretrained.main(["horse2zebr", "--cache_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "did you mean horse2zebra" in err and "iphone2dslr_flower" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit) as e:
        pretrained.main([])
    assert e.value.code == 2


def test_without_torch_nothing_is_downloaded(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(pretrained.PretrainedError, match=r"needs torch: pip install 'jaxgan\[torch\]'"):
        pretrained.download("horse2zebra", "http://127.0.0.1:9/unused", tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_cached_file_without_torch_to_convert_it_is_not_called_bad(monkeypatch, tmp_path):
    # A cache shared with an environment that has torch: the good .pth was called bad, "delete it".
    pth = tmp_path / "cache" / "horse2zebra.pth"

    def without_torch(path):
        raise ImportError("reading a PyTorch .pth file needs torch")

    monkeypatch.setattr(pretrained, "download", lambda *a, **k: pth)
    monkeypatch.setattr(pretrained.interop, "load_torch_state_dict", without_torch)
    with pytest.raises(pretrained.PretrainedError) as e:
        pretrained.fetch("horse2zebra", tmp_path / "out", "http://127.0.0.1:9/unused", tmp_path / "cache")
    assert str(e.value) == f"cannot convert {pth}: reading a PyTorch .pth file needs torch", str(e.value)


# ---------------------------------------------------------------------------
# Fetch and convert


def test_fetch_translates_like_torch_and_is_cached(nets, server, tmp_path, capsys):
    import torch

    net, body = nets["horse2zebra"]
    _serve(server, "horse2zebra", body)
    out, cache = tmp_path / "ckpt", tmp_path / "cache"
    argv = ["horse2zebra", "--output", str(out), "--base_url", server.base_url, "--cache_dir", str(cache)]
    assert pretrained.main(argv) == 0
    stdout = capsys.readouterr().out
    assert str(out) in stdout and f"python -m jaxgan.translate --checkpoint {out} --direction AtoB" in stdout
    assert (cache / "horse2zebra.pth").read_bytes() == body and not list(cache.glob("*.part"))
    info = json.loads((out / pretrained.PRETRAINED_FILE).read_text())
    assert info["name"] == "horse2zebra" and info["direction"] == "AtoB" and info["reverse"] is None
    assert info["url"] == f"{server.base_url}/horse2zebra.pth"
    assert info["sha256"] == hashlib.sha256(body).hexdigest()

    generator, params = generator_loading.load_generator("AtoB", checkpoint_dir=str(out))
    assert (generator.ngf, generator.n_blocks) == (16, 6)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 32, 48, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    assert want.std() > 0.1  # not saturated: the comparison means something
    np.testing.assert_allclose(translate.generate(generator, params, x), want, atol=1e-4)

    # Again: the output is reused; a new conversion reads the cached .pth. One request in all.
    assert pretrained.main(argv) == 0
    default = pretrained.fetch("horse2zebra", base_url=server.base_url, cache_dir=cache, progress=False)
    assert default == cache / "converted" / "horse2zebra"
    assert len(server.log) == 1
    with pytest.raises(pretrained.PretrainedError, match="holds something else"):
        pretrained.fetch("zebra2horse", out, server.base_url, cache, progress=False)


def test_with_reverse_stores_both_directions(nets, server, tmp_path):
    for name, (_, body) in nets.items():
        _serve(server, name, body)
    out = pretrained.fetch("horse2zebra", base_url=server.base_url, cache_dir=tmp_path, with_reverse=True)
    assert out == tmp_path / "converted" / "horse2zebra+zebra2horse"
    for direction, name in [("AtoB", "horse2zebra"), ("BtoA", "zebra2horse")]:
        _, params = generator_loading.load_generator(direction, checkpoint_dir=str(out))
        jax.tree.map(np.testing.assert_array_equal, params, _flax_params(nets[name][0]))
    info = json.loads((out / pretrained.PRETRAINED_FILE).read_text())
    assert info["reverse"]["name"] == "zebra2horse" and info["reverse"]["direction"] == "BtoA"
    assert pretrained.fetch("horse2zebra", None, server.base_url, tmp_path, with_reverse=True) == out
    assert len(server.log) == 2


# ---------------------------------------------------------------------------
# Download: resume, restart, failures


def test_interrupted_download_resumes(nets, server, tmp_path, monkeypatch):
    body = nets["horse2zebra"][1]
    _serve(server, "horse2zebra", body, cut_after=5000)
    monkeypatch.setenv("JAXGAN_PRETRAINED_URL", server.base_url)
    monkeypatch.setenv("JAXGAN_CACHE_DIR", str(tmp_path))
    with pytest.raises(pretrained.PretrainedError, match=r"stopped at 5000 of \d+ bytes.*run the same command again"):
        pretrained.download("horse2zebra", progress=False)
    assert (tmp_path / "horse2zebra.pth.part").stat().st_size == 5000 and not (tmp_path / "horse2zebra.pth").exists()
    path = pretrained.download("horse2zebra", progress=False)
    assert path == tmp_path / "horse2zebra.pth" and path.read_bytes() == body
    assert server.log == [("/models/horse2zebra.pth", None), ("/models/horse2zebra.pth", "bytes=5000-")]
    assert not (tmp_path / "horse2zebra.pth.part").exists()


def test_two_downloads_of_one_model_at_once_transfer_it_once(nets, server, tmp_path, monkeypatch):
    # Two pages (or commands) started together: the second waits on the first's lock and finds the file.
    body = nets["horse2zebra"][1]
    _serve(server, "horse2zebra", body, delay=0.5)
    monkeypatch.setenv("JAXGAN_PRETRAINED_URL", server.base_url)
    results = []
    threads = [threading.Thread(target=lambda: results.append(pretrained.download("horse2zebra", cache_dir=tmp_path,
                                                                                  progress=False)))
               for _ in range(2)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [tmp_path / "horse2zebra.pth"] * 2 and results[0].read_bytes() == body
    assert server.log == [("/models/horse2zebra.pth", None)]


def test_two_conversions_of_one_model_at_once_both_succeed(nets, server, tmp_path, monkeypatch):
    # Two pages started together on one cache: both convert, the second to finish finds the first's result.
    _serve(server, "horse2zebra", nets["horse2zebra"][1])
    save = generator_checkpoint.save_generators_checkpoint
    other = []

    def the_other_process_finishes_first(*args, **kwargs):
        if not other:
            other.append(None)  # (the other's own conversion comes back here: it just saves)
            other[0] = pretrained.fetch("horse2zebra", base_url=server.base_url, cache_dir=tmp_path, progress=False)
        return save(*args, **kwargs)

    monkeypatch.setattr(generator_checkpoint, "save_generators_checkpoint", the_other_process_finishes_first)
    out = pretrained.fetch("horse2zebra", base_url=server.base_url, cache_dir=tmp_path, progress=False)
    assert out == other[0] == tmp_path / "converted" / "horse2zebra"
    generator_loading.load_generator("AtoB", checkpoint_dir=str(out))
    assert not list(out.parent.glob(".*.tmp"))  # the loser's own conversion is gone


def test_restart_when_the_server_cannot_continue(nets, server, tmp_path):
    body = nets["horse2zebra"][1]
    # A server that ignores Range (200, whole body): the partial file is rewritten from byte 0.
    _serve(server, "horse2zebra", body, ignore_range=True)
    (tmp_path / "horse2zebra.pth.part").write_bytes(b"x" * 100)
    assert pretrained.download("horse2zebra", server.base_url, tmp_path, False).read_bytes() == body
    # 416 for a partial file that is already complete: kept, checked, no body sent again.
    _serve(server, "zebra2horse", body)
    (tmp_path / "zebra2horse.pth.part").write_bytes(body)
    assert pretrained.download("zebra2horse", server.base_url, tmp_path, False).read_bytes() == body
    # 416 for a partial file longer than the file: thrown away, downloaded afresh.
    _serve(server, "apple2orange", body)
    (tmp_path / "apple2orange.pth.part").write_bytes(body + b"stale")
    assert pretrained.download("apple2orange", server.base_url, tmp_path, False).read_bytes() == body
    assert [r for _, r in server.log] == ["bytes=100-", f"bytes={len(body)}-", f"bytes={len(body) + 5}-", None]


HTML = b"<!DOCTYPE html>\n<html><body>Please log in</body></html>\n"


@pytest.mark.parametrize(
    "case, route, message",
    [
        ("404", None, r"HTTP 404"),
        ("html", {"body": HTML, "type": "text/html; charset=utf-8"}, r"HTML page"),
        ("html as binary", {"body": HTML}, r"HTML/XML page"),
        ("truncated", "half", r"truncated or corrupt"),
        ("wrong architecture", "discriminator", r"not an official CycleGAN ResNet generator.*model\.1\.weight"),
    ],
)
def test_bad_downloads_fail_clearly_and_leave_no_file(nets, server, tmp_path, capsys, case, route, message):
    import torch

    body = nets["horse2zebra"][1]
    if route == "half":
        route = {"body": body[: len(body) // 2]}
    elif route == "discriminator":
        buffer = io.BytesIO()
        torch.save({"model.0.weight": torch.zeros(8, 3, 4, 4)}, buffer)
        route = {"body": buffer.getvalue()}
    if route is not None:
        server.routes["/models/horse2zebra.pth"] = route
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = ["horse2zebra", "--output", str(out), "--base_url", server.base_url, "--cache_dir", str(cache)]
    assert pretrained.main(argv) == 2
    err = capsys.readouterr().err
    lines = re.split(r"[\r\n]+", err.strip())  # a progress bar may come first
    assert lines[-1].startswith("error: ") and sum("error" in line for line in lines) == 1
    assert "Traceback" not in err
    assert re.search(message, err) and f"{server.base_url}/horse2zebra.pth" in err
    assert "python -m jaxgan.interop --pth horse2zebra.pth --direction AtoB --output DIR" in err
    assert not list(cache.glob("horse2zebra.pth*")) and not out.exists()


def test_unreachable_server_names_the_url_and_the_manual_way(nets, tmp_path, capsys):
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/models"
    argv = ["style_vangogh", "--base_url", url, "--cache_dir", str(tmp_path)]
    assert pretrained.main(argv) == 2
    err = capsys.readouterr().err
    assert f"cannot reach {url}/style_vangogh.pth" in err and "Traceback" not in err
    assert "python -m jaxgan.interop --pth style_vangogh.pth --direction AtoB --output DIR" in err
    assert not list(tmp_path.glob("style_vangogh*"))
    # An --output that cannot be written fails before any transfer (the same unreachable server).
    (tmp_path / "afile").write_text("x")
    assert pretrained.main([*argv, "--output", str(tmp_path / "afile" / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'afile'} is a file, not a folder" in err and "cannot reach" not in err


def test_a_local_folder_as_base_url_is_a_file_url(nets, tmp_path):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "horse2zebra.pth").write_bytes(nets["horse2zebra"][1])
    assert pretrained.model_url("horse2zebra", str(tmp_path / "mirror")) == (
        (tmp_path / "mirror").as_uri() + "/horse2zebra.pth"
    )
    out = pretrained.fetch("horse2zebra", base_url=str(tmp_path / "mirror"), cache_dir=tmp_path / "cache")
    assert (out / "config.json").is_file()
