"""A compact copy of an unpaired data set, small enough to travel to a device machine (64 MiB for everything).

Training images are re-encoded as JPEG at ``--train-quality`` (upright, RGB, their
size kept); test images are copied unchanged, so that evaluation reads exactly
the official files. Prints the copy's size and the number of images per split.

    python -m benchmarks.compact_dataset --src ../shared/datasets/horse2zebra --dst .devdata/horse2zebra
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

from PIL import Image

from jaxgan import image_io

SPLITS = ("trainA", "trainB", "testA", "testB")


def compact(src: pathlib.Path, dst: pathlib.Path, train_quality: int = 85) -> dict[str, int]:
    """Write the copy; returns ``{split: images, "bytes": total}``. Files already there are kept."""
    counts: dict[str, int] = {}
    total = 0
    for split in SPLITS:
        files = sorted(p for p in (src / split).rglob("*") if p.is_file() and image_io.is_image_file(p.name))
        if not files:
            raise SystemExit(f"{src / split} holds no images.")
        (dst / split).mkdir(parents=True, exist_ok=True)
        for f in files:
            if split.startswith("test"):
                out = dst / split / f.name
                if not out.exists():
                    shutil.copyfile(f, out)
            else:
                out = dst / split / (f.stem + ".jpg")
                if not out.exists():
                    Image.fromarray(image_io.decode_image(f)).save(out, "JPEG", quality=train_quality)
            total += out.stat().st_size
        counts[split] = len(files)
    counts["bytes"] = total
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, type=pathlib.Path)
    parser.add_argument("--dst", required=True, type=pathlib.Path)
    parser.add_argument("--train-quality", type=int, default=85)
    parser.add_argument("--max-mib", type=float, default=60.0, help="fail if the copy is larger")
    args = parser.parse_args(argv)
    counts = compact(args.src, args.dst, args.train_quality)
    print(json.dumps({"dst": str(args.dst), **counts, "mib": round(counts["bytes"] / 2**20, 1)}))
    if counts["bytes"] > args.max_mib * 2**20:
        print(f"error: the copy is larger than {args.max_mib} MiB; lower --train-quality", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
