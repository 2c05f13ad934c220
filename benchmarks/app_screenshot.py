"""A screenshot of the interactive page translating one photo with a real model (the README's picture).

Starts ``python -m jaxgan.app`` on 127.0.0.1, uploads ``--image`` in headless Chromium (Playwright,
Debian's ``/usr/bin/chromium``), translates it in ``--direction``, waits for the translation and its
reconstruction, and saves the page (256 colours, to keep the PNG small)::

    python -m benchmarks.app_screenshot --workdir runs/quality_cpu/jaxgan_seed0 \
        --image ../shared/datasets/horse2zebra/testA/n02381460_1000.jpg --out docs/app_screenshot.png
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

from PIL import Image

from benchmarks import common

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _wait_for_url(proc: subprocess.Popen, timeout_s: float) -> str:
    """The URL the app prints on its ``jaxgan app: NAME on URL`` line."""
    deadline = time.monotonic() + timeout_s
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("jaxgan app: "):
            return line.split(" on ")[-1].strip()
        if time.monotonic() > deadline:
            break
    raise RuntimeError("the app did not start:\n" + "".join(lines[-20:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--workdir")
    model.add_argument("--checkpoint")
    parser.add_argument("--image", required=True, help="the photo to translate")
    parser.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"))
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    source = ["--workdir", args.workdir] if args.workdir else ["--checkpoint", args.checkpoint]
    cmd = [sys.executable, "-m", "jaxgan.app", *source, "--port", str(common.free_port())]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = _wait_for_url(proc, 300)
        stem = pathlib.Path(args.image).stem
        label = {"AtoB": "A → B", "BtoA": "B → A"}[args.direction]
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as tmp:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.set_input_files("#input input[type=file]", args.image)
            page.locator("#direction label", has_text=label).click()
            page.click("#translate")
            page.wait_for_selector(f'#translated img[src*="{stem}_{args.direction}.png"]', timeout=300_000)
            page.wait_for_selector(f'#reconstructed img[src*="{stem}_{args.direction}_reconstructed.png"]')
            page.wait_for_timeout(500)  # let the images paint
            shot = pathlib.Path(tmp) / "page.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
            Image.open(shot).convert("RGB").quantize(256).save(args.out, optimize=True)
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
