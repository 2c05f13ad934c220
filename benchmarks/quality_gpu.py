r"""A timed quality run on a device: the paper networks on horse2zebra, translations brought home for FID.

On the device (after the device suite, in the same lease)::

  python -m benchmarks.quality_gpu --out $OUT --data folder:.devdata/horse2zebra --deadline EPOCH \
      --suite-json $OUT/device_suite.json

trains the paper configuration (ResNet-9 generators, 70x70 PatchGANs, 256x256 crops of
286x286 loads, bf16 compute, EMA 0.999) with ``loop.train_and_evaluate`` for as many
steps as fit before ``--deadline`` (a ``date +%s`` value), the learning rate held and then
decayed linearly to 0 over the steps that fit (the paper's schedule, compressed). The
step count comes from the suite's measured end-to-end rate (``--suite-json``), else from
``--guess-images-per-s``; a watchdog stops training at the deadline either way (the
runner's SIGTERM path: checkpoint, then return). Then both test splits are translated
with the EMA and the raw weights, and written as lossless images (WebP where Pillow has
it, else PNG) into ``quality_translations.tar.partN`` files of at most 15 MiB (the device
tool brings back 8 files of at most 16 MiB), with ``quality.json`` and a sample grid.

At home, FID/KID of those translations with the identity baseline and the noise floor::

  python -m benchmarks.quality_gpu --evaluate DIR --data ../shared/datasets/horse2zebra

``--dry-run`` does all of it at tiny sizes on the CPU (the tiny networks on the synthetic pair).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import math
import os
import pathlib
import signal
import sys
import tarfile
import tempfile
import time
from typing import Any

import numpy as np

PART_BYTES = 15 * 2**20
TRANSLATION_BYTES = 3 * PART_BYTES  # with the suite's two files, quality.json, the grid and the autotuning cache: 8
# (weights, direction, encoding), kept in this order while they fit. Lossless EMA translations give the headline
# FID; the lossy (quality 95) copies of both weights, about a fifth of the size, compare raw and EMA like for like.
SETS = (
    ("ema", "AtoB", "lossless"), ("ema", "BtoA", "lossless"),
    ("raw", "AtoB", "q95"), ("raw", "BtoA", "q95"), ("ema", "AtoB", "q95"), ("ema", "BtoA", "q95"),
)  # fmt: skip


def plan_schedule(seconds: float, images_per_s: float, batch: int, images_per_epoch: int) -> dict[str, int]:
    """Steps that fit in ``seconds`` at ``images_per_s``, and whole epochs for the hold-then-decay schedule.

    The official linear rule (``optim.linear_decay_schedule``) reaches 0 in epoch
    ``num_epochs + num_epochs_decay``: one epoch of 200 in the paper, but a quarter of a 4-epoch run. So the
    schedule is planned one epoch longer than the ``R = ceil(steps / steps_per_epoch)`` epochs that run,
    about half of it held, and every planned step trains (the last epoch at ``1 / (num_epochs_decay + 1)``
    of the base rate). ``steps_per_epoch = ceil(images_per_epoch / batch)``; at least 2 epochs run.
    """
    steps_per_epoch = math.ceil(images_per_epoch / batch)
    steps = max(1, int(seconds * images_per_s / batch))
    schedule_epochs = max(2, math.ceil(steps / steps_per_epoch)) + 1
    held = math.ceil(schedule_epochs / 2)
    return {
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "num_epochs": held,
        "num_epochs_decay": schedule_epochs - held,
    }


def _suite_rate(path: str | None, batch: int, dtype: str) -> float | None:
    """End-to-end images/s of the suite's runner stage (or its step alone) at ``batch`` and ``dtype``."""
    if not path or not os.path.isfile(path):
        return None
    results = json.loads(pathlib.Path(path).read_text())
    runner = results.get("runner") or {}
    if runner.get("batch") == batch and runner.get("dtype") == dtype and runner.get("images_per_s"):
        return float(runner["images_per_s"])
    for row in (results.get("step") or {}).get("rows", []):
        if row.get("batch") == batch and row.get("dtype") == dtype and row.get("images_per_s"):
            return 0.9 * float(row["images_per_s"])
    return None


PROFILE_STEPS = (40, 42)  # a profiler trace of these steps checks jax.profiler on the device


def end_to_end(
    intervals: list[tuple[int, float, float]], batch: int, suite_json: str | None, dtype: str, profiled: bool = False
) -> dict:
    """The run's steady images/s (``device_speed.runner_rates``) against the suite's step alone at this batch.

    ``profiled``: the run traced :data:`PROFILE_STEPS`; the intervals that started and wrote the trace are left out.
    ``paper_schedule_minutes``: the paper schedule (200 epochs of horse2zebra) at this run's own end-to-end rate.
    """
    from benchmarks import device_report, device_speed

    one_off = PROFILE_STEPS if profiled else ()
    rates: dict[str, Any] = dict(device_speed.runner_rates(intervals, batch, sample_every=0, one_off_steps=one_off))
    if rates.get("images_per_s"):
        rates["paper_schedule_minutes"] = round(device_report.PAPER_IMAGES / rates["images_per_s"] / 60, 1)
    if suite_json and os.path.isfile(suite_json) and "images_per_s" in rates:
        rows = (json.loads(pathlib.Path(suite_json).read_text()).get("step") or {}).get("rows", [])
        alone = next((r for r in rows if r.get("batch") == batch and r.get("dtype") == dtype and "ms" in r), None)
        if alone:
            rates["step_alone_images_per_s"] = alone["images_per_s"]
            rates["end_to_end_over_step"] = round(rates["images_per_s"] / alone["images_per_s"], 3)
    return rates


def make_config(args: argparse.Namespace, plan: dict[str, int]) -> Any:
    from experiments.configs import horse2zebra

    config = horse2zebra.get_config("tiny" if args.dry_run else "")
    config.dataset = args.data
    config.model.dtype = args.dtype
    config.batch_size = args.batch
    config.lr = 2e-4 * (math.sqrt(args.batch) if args.sqrt_lr else 1.0)
    config.num_epochs, config.num_epochs_decay = plan["num_epochs"], plan["num_epochs_decay"]
    config.num_train_steps = plan["steps"]
    config.log_every_steps = max(1, min(100, plan["steps"] // 20))
    config.sample_every_steps = 0
    config.checkpoint_every_steps = 0  # the last step only
    config.keep_checkpoints = 1
    config.results_max_images = 4  # the full translations are made below, with both weights
    config.results_fid = False
    if plan["steps"] > 100:
        config.profile_steps = "{}..{}".format(*PROFILE_STEPS)
    return config


def _encoding(encoding: str) -> tuple[str, str, dict[str, Any]]:
    """(Pillow format, extension, save options): WebP where Pillow has it, else PNG (lossless) or JPEG (q95)."""
    from PIL import features

    webp = features.check("webp")
    if encoding == "lossless":
        return ("WEBP", "webp", {"lossless": True}) if webp else ("PNG", "png", {})
    return ("WEBP", "webp", {"quality": 95}) if webp else ("JPEG", "jpg", {"quality": 95})


def _encode(image: np.ndarray, encoding: str) -> bytes:
    from PIL import Image

    fmt, _, options = _encoding(encoding)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **options)
    return buf.getvalue()


def write_translations(out: pathlib.Path, sets: dict[tuple[str, str], tuple[list[str], np.ndarray]]) -> dict:
    """Each (weights, direction) set in each encoding of :data:`SETS` into a tar split in ``PART_BYTES`` parts.

    Members are ``weights[_q95]/direction/stem.ext``; sets are added in :data:`SETS` order while the
    tar stays under ``TRANSLATION_BYTES``.
    """
    buf = io.BytesIO()
    kept, dropped = [], []
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for weights, direction, encoding in SETS:
            if (weights, direction) not in sets:
                continue
            names, images = sets[weights, direction]
            with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # Pillow encodes without the GIL
                encoded = list(pool.map(lambda im, e=encoding: _encode(im, e), images))
            label = weights if encoding == "lossless" else f"{weights}_{encoding}"
            ext = _encoding(encoding)[1]
            blobs = [
                (f"{label}/{direction}/{pathlib.Path(n).stem}.{ext}", b) for n, b in zip(names, encoded, strict=True)
            ]
            # (each member: a 512-byte header and padding; the end: up to one tar record of padding)
            if buf.tell() + sum(len(b) + 1024 for _, b in blobs) + tarfile.RECORDSIZE > TRANSLATION_BYTES:
                dropped.append(f"{label}/{direction}")
                continue
            for name, blob in blobs:
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
            kept.append(f"{label}/{direction}")
    data = buf.getvalue()
    parts = []
    for i in range(0, len(data), PART_BYTES):
        path = out / f"quality_translations.tar.part{i // PART_BYTES}"
        path.write_bytes(data[i : i + PART_BYTES])
        parts.append(path.name)
    return {"formats": {e: _encoding(e)[0] for e in ("lossless", "q95")}, "kept": kept, "dropped": dropped,
            "parts": parts, "bytes": len(data)}  # fmt: skip


def read_translations(folder: pathlib.Path) -> dict[str, dict[str, np.ndarray]]:
    """``{"ema/AtoB": {stem: uint8[H, W, 3]}, ...}`` from the parts in ``folder``."""
    from jaxgan import image_io

    parts = sorted(folder.glob("quality_translations.tar.part*"), key=lambda p: int(p.name.rsplit("part", 1)[1]))
    data = b"".join(p.read_bytes() for p in parts)
    sets: dict[str, dict[str, np.ndarray]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            weights, direction, name = member.name.split("/")
            blob = tar.extractfile(member).read()
            sets.setdefault(f"{weights}/{direction}", {})[pathlib.Path(name).stem] = image_io.decode_image(blob, name)
    return sets


def _profile_summary(folder: pathlib.Path) -> dict[str, Any]:
    """Where the traced steps spent device time (``benchmarks.profile_summary``); a failure is recorded, not raised."""
    from benchmarks import profile_summary

    try:
        return profile_summary.summarize(folder, steps=PROFILE_STEPS[1] - PROFILE_STEPS[0] + 1)
    except Exception as e:  # noqa: BLE001  (the translations matter more than the summary)
        return {"error": f"{type(e).__name__}: {e}"}


def train_and_translate(args: argparse.Namespace) -> dict[str, Any]:
    """The device side: train until the deadline, translate both test splits with both weights, write files."""
    import jax

    from jaxgan import image_io, input_pipeline, loop, report, translate

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    # Reserve time after training for the final checkpoint, the translations and the files.
    train_seconds = args.deadline - start - args.reserve_s
    if train_seconds < 20:
        raise SystemExit(f"Too little time before the deadline ({args.deadline - start:.0f} s).")
    rate = _suite_rate(args.suite_json, args.batch, args.dtype)
    source = "suite" if rate else "guess"
    rate = rate or args.guess_images_per_s
    images_per_epoch = 1334 if not args.dry_run else 16
    # Compilation and data loading come out of the training time before the first step.
    plan = plan_schedule(max(5.0, train_seconds - args.startup_s), rate, args.batch, images_per_epoch)
    config = make_config(args, plan)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="jaxgan-quality-"))
    logs: list[dict[str, float]] = []
    intervals: list[tuple[int, float, float]] = []
    stop_at = start + train_seconds

    def on_log(step: int, metrics: dict[str, float]) -> None:
        logs.append({"step": step, "t": round(time.time() - start, 1), **{k: round(v, 4) for k, v in metrics.items()}})
        intervals.append((step, metrics["images_per_s"], time.perf_counter()))
        if time.time() > stop_at:  # the runner's preemption path: checkpoint, then return the state
            os.kill(os.getpid(), signal.SIGTERM)

    state = loop.train_and_evaluate(config, workdir, on_log=on_log)
    trained_s = time.time() - start
    profile_files = len(list((workdir / "profile").rglob("*.xplane.pb")))
    profile = _profile_summary(workdir / "profile") if profile_files else None
    step = int(jax.device_get(state.step))
    generator = state.config.generator
    sets = {}
    for direction, domain, net in (("AtoB", "A", "g_ab"), ("BtoA", "B", "g_ba")):
        test = input_pipeline.load_test_split(config, domain)
        for weights in ("ema", "raw"):
            params = state.generator_params(weights)[net]
            # Batches of 20 divide both official test splits (120, 140): one compiled shape.
            fake = translate.generate(generator, params, test.images, batch_size=20)
            sets[(weights, direction)] = (test.names, image_io.to_uint8(fake))
    files = write_translations(out, sets)
    # A grid of the first test images: real, translated (EMA), reconstructed (EMA), both directions.
    a = input_pipeline.load_test_split(config, "A", max_images=4).images
    b = input_pipeline.load_test_split(config, "B", max_images=4).images
    ema = state.generator_params("ema")
    fb = translate.generate(generator, ema["g_ab"], a)
    fa = translate.generate(generator, ema["g_ba"], b)
    cols = [
        a,
        fb,
        translate.generate(generator, ema["g_ba"], fb),
        b,
        fa,
        translate.generate(generator, ema["g_ab"], fa),
    ]
    image_io.save_image(out / "quality_grid.png", report.sample_grid(cols))
    result = {
        "config": {
            k: config[k]
            for k in (
                "dataset",
                "batch_size",
                "lr",
                "num_epochs",
                "num_epochs_decay",
                "num_train_steps",
                "crop_size",
                "load_size",
                "ema_decay",
            )
        },
        "dtype": args.dtype,
        "plan": {**plan, "rate_images_per_s": rate, "rate_source": source, "train_seconds": round(train_seconds, 1)},
        "steps_done": step,
        "epochs_done": round(step * args.batch / images_per_epoch, 2),
        "train_wall_s": round(trained_s, 1),
        "total_wall_s": round(time.time() - start, 1),
        "device": jax.devices()[0].device_kind,
        "profile_files": profile_files,
        "profile": profile,
        "end_to_end": end_to_end(intervals, args.batch, args.suite_json, args.dtype, bool(config.profile_steps)),
        "last_log": logs[-1] if logs else None,
        "logs": logs[-40:],
        "translations": files,
    }
    (out / "quality.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def evaluate(folder: pathlib.Path, data: str, crop_size: int = 256) -> dict[str, Any]:
    """FID/KID of the brought-home translations per set, with the identity baseline and the noise floor."""
    from experiments.configs import horse2zebra
    from jaxgan import evaluate as ev
    from jaxgan import image_io, input_pipeline

    config = horse2zebra.get_config()
    config.dataset, config.crop_size = data, crop_size
    test = {d: input_pipeline.load_test_split(config, d) for d in ("A", "B")}
    real = {d: list(image_io.to_uint8(test[d].images)) for d in ("A", "B")}
    rows: dict[str, Any] = {}
    for key, images in sorted(read_translations(folder).items()):
        target = "B" if key.endswith("AtoB") else "A"
        rows[key] = ev.fid_kid(real[target], list(images.values()))
    rows["identity/AtoB"] = ev.fid_kid(real["B"], real["A"])
    rows["identity/BtoA"] = ev.fid_kid(real["A"], real["B"])
    larger = "B" if len(real["B"]) >= len(real["A"]) else "A"
    half = len(real[larger]) // 2
    rows[f"noise_floor/test{larger}_halves"] = ev.fid_kid(real[larger][:half], real[larger][half:])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="where the device side writes its files")
    parser.add_argument("--data", default="folder:.devdata/horse2zebra")
    parser.add_argument("--deadline", type=float, default=None, help="a `date +%%s` value: everything ends before it")
    parser.add_argument("--suite-json", default=None, help="device_suite.json: the measured end-to-end rate")
    parser.add_argument("--guess-images-per-s", type=float, default=60.0, help="rate when the suite has none")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--no-sqrt-lr", dest="sqrt_lr", action="store_false", help="keep lr 2e-4 at any batch")
    parser.add_argument("--reserve-s", type=float, default=45.0, help="seconds kept for checkpoint and translations")
    # 2026-12-04 on the H200: about 79 s from start to the end of the first step (data, state, compile; XLA's
    # autotuning cache empty), so a 60 s guess left 174 of 655 planned steps undone.
    parser.add_argument("--startup-s", type=float, default=90.0, help="seconds of compile and data loading")
    parser.add_argument("--evaluate", type=pathlib.Path, default=None, help="at home: FID/KID of a brought-home folder")
    parser.add_argument("--crop-size", type=int, default=256, help="with --evaluate: the test transform's size")
    parser.add_argument("--dry-run", action="store_true", help="tiny networks on the synthetic pair, on the CPU")
    args = parser.parse_args(argv)
    if args.evaluate:
        rows = evaluate(args.evaluate, args.data, args.crop_size)
        (args.evaluate / "quality_fid.json").write_text(json.dumps(rows, indent=1))
        for key, m in rows.items():
            print(f"{key:28s} FID {m['fid']:8.2f}  KID {m['kid']:.4f}")
        return 0
    if args.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"
        if args.data == parser.get_default("data"):
            args.data = "synthetic"
    if not args.out or args.deadline is None:
        parser.error("--out and --deadline are needed (or --evaluate)")
    result = train_and_translate(args)
    print(json.dumps({k: v for k, v in result.items() if k != "logs"}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
