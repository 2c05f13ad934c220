r"""Translating large photos: peak memory and time of ``jaxgan.translate``, tiled and whole, in fresh processes.

    python -m benchmarks.translate_large                           # 4000x3000 tiled; 2048x1536 tiled and whole
    python -m benchmarks.translate_large --sizes 1024x768 --ngf 8  # quick
    python -m benchmarks.translate_large --sizes 2048x1536:both --norm_stats global tile --workdir RUN

The generator is the paper's (ResNet-9, ngf 64; official N(0, 0.02) init) saved as a
generator checkpoint; the input is a real photo (a horse2zebra test image when the data set
is at hand, else a synthetic scene) upscaled to each size. Each translation runs as the
command users run (``python -m jaxgan.translate``) in its own process, whose peak RSS
(``VmHWM``) and wall time are reported. Where a size runs both ways, the PSNR of each tiled
output against the whole-image one says what tiling changes: with ``--norm_stats global tile``,
for the whole image's estimated instance-norm statistics and for each tile's own. ``--workdir RUN``
uses a trained run's generator instead (an untrained one says little about colours).
Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
PHOTO = ROOT.parent / "shared" / "datasets" / "horse2zebra" / "testA"


def _photo(width: int, height: int) -> np.ndarray:
    from jaxgan import image_io, synthetic

    files = sorted(PHOTO.glob("*.jpg")) if PHOTO.is_dir() else []
    base = image_io.load_image(files[0]) if files else synthetic.split_with_truth(0, "testA", 1, 256)[0][0]
    return image_io.resize(base, height, width)


def _checkpoint(folder: pathlib.Path, ngf: int) -> pathlib.Path:
    import jax
    import jax.numpy as jnp

    from jaxgan import generator_checkpoint, models

    gen = models.ResnetGenerator(ngf=ngf)
    params = gen.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))["params"]
    written = generator_checkpoint.save_generator_checkpoint(params, "AtoB", {"ngf": ngf, "n_blocks": 9}, folder)
    return pathlib.Path(written)


def _run(source: list[str], image: pathlib.Path, out: pathlib.Path, tile: int, norm_stats: str) -> dict:
    """One ``jaxgan.translate`` process; its peak RSS from /proc while it runs (polled), and its wall time."""
    cmd = [sys.executable, "-m", "jaxgan.translate", *source, "--input", str(image), "--output", str(out),
           "--tile", str(tile), "--norm_stats", norm_stats]  # fmt: skip
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0.0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 2**20)
        except OSError:
            pass
        time.sleep(0.2)
    output = proc.stdout.read()
    return {"ok": proc.returncode == 0, "wall_s": round(time.perf_counter() - t, 1), "peak_rss_gb": round(peak, 2),
            "tail": output[-300:] if proc.returncode else ""}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["4000x3000:tiled", "2048x1536:both"],
                        help="WIDTHxHEIGHT[:tiled|whole|both]")  # fmt: skip
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--norm_stats", nargs="+", default=["global"], choices=["global", "tile"],
                        help="tiled runs: each of these (jaxgan.translate --norm_stats)")  # fmt: skip
    parser.add_argument("--workdir", default=None,
                        help="a trained run's generator instead of the untrained paper one (for the PSNR)")  # fmt: skip
    args = parser.parse_args(argv)
    from jaxgan import image_io

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="jaxgan-large-"))
    if args.workdir:
        source, ngf = ["--workdir", str(pathlib.Path(args.workdir).resolve())], "run"
    else:
        source, ngf = ["--checkpoint", str(_checkpoint(tmp / "ckpt", args.ngf))], args.ngf
    for spec in args.sizes:
        size, _, how = spec.partition(":")
        width, height = (int(v) for v in size.split("x"))
        src = tmp / f"photo_{width}x{height}.png"
        image_io.save_image(src, _photo(width, height))
        outs = {}
        modes = [f"tiled:{n}" for n in args.norm_stats] if how in ("tiled", "both", "") else []
        modes += ["whole"] if how in ("whole", "both") else []
        for mode in modes:
            tiled, _, norm = mode.partition(":")
            out = tmp / f"out_{width}x{height}_{tiled}_{norm}"
            tile = args.tile if norm else 0
            rec = _run(source, src, out, tile, norm or "global")
            rec.update({"size": f"{width}x{height}", "mode": mode, "tile": tile or None, "ngf": ngf,
                        "cpu_count": os.cpu_count()})  # fmt: skip
            if rec["ok"]:
                outs[mode] = image_io.load_image(out / src.with_suffix(".png").name).astype(np.float64)
                rec["output_shape"] = list(outs[mode].shape)
            print(json.dumps(rec), flush=True)
        for mode in (m for m in outs if m != "whole" and "whole" in outs):
            mse = np.mean(np.square(outs[mode] - outs["whole"]))
            psnr = round(10 * np.log10(255.0**2 / mse), 2) if mse else None
            print(json.dumps({"size": f"{width}x{height}", "mode": mode, "vs_whole_psnr_db": psnr}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
