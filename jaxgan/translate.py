"""Translate images with a trained generator: a library function and a command line.

    python -m jaxgan.translate --workdir runs/h2z --direction AtoB --input photo.jpg --output out/
    python -m jaxgan.translate --checkpoint ckpt/horse2zebra --direction AtoB --input testA/ --output out/

``--workdir`` reads the newest checkpoint of a training run; ``--checkpoint``
reads a generator checkpoint written by ``python -m jaxgan.interop`` (official
PyTorch weights) or ``jaxgan.pretrained``; both through ``jaxgan.generator_loading``.
Any image size works: sizes not divisible by 4 are
reflection-padded for the network and cropped back. Folders are searched
recursively, images of equal size are batched, file names are kept (as PNG).
Unreadable images in a folder are skipped with a warning that lists them (exit
status 1); the folder's valid images are still written.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pathlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from jaxgan import (
    compile_cache,
    conv_forms,
    cpu_memory,
    generator_loading,
    global_norm,
    image_io,
    models,
    output_files,
    tiling,
)

PyTree = Any


class TranslateError(ValueError):
    """Bad input or output: a missing or unreadable image, an output folder that cannot be written."""


def _apply_fn(
    generator: models.ResnetGenerator, params: PyTree, images: jax.Array, norm_stats: PyTree = None
) -> jax.Array:
    h, w = images.shape[1:3]
    ph, pw = (-h) % 4, (-w) % 4
    if ph or pw:  # reflect-pad to a multiple of 4, translate, crop back
        mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
        images = jnp.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)
    variables = {"params": params} if norm_stats is None else {"params": params, models.NORM_STATS: norm_stats}
    out = generator.apply(variables, images)
    return out[:, :h, :w].astype(jnp.float32)


@functools.cache
def _compiled_apply(backend: str) -> Callable:
    options = conv_forms.xla_compiler_options(backend=backend)
    return jax.jit(_apply_fn, static_argnums=0, compiler_options=options)


def _apply(
    generator: models.ResnetGenerator, params: PyTree, images: jax.Array, norm_stats: PyTree = None
) -> jax.Array:
    """``generator`` on ``images: float[B, H, W, 3]`` (any H, W) -> float32, jitted with the XLA:CPU options.

    ``norm_stats``: optional instance-norm statistics used in place of the images' own (tiles).
    """
    return _compiled_apply(jax.default_backend())(generator, params, images, norm_stats)


def generate(generator: models.ResnetGenerator, params: PyTree, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Translate ``float32[N, H, W, 3]`` in [-1, 1] (any H, W) in batches; returns the same shape."""
    if batch_size < 1:
        raise TranslateError(f"batch_size must be at least 1, got {batch_size}.")
    outs = [
        np.asarray(_apply(generator, params, cpu_memory.settle(jnp.asarray(images[i : i + batch_size]))))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(outs) if outs else np.zeros_like(images)


def _real(path: pathlib.Path) -> pathlib.Path:
    """The path with every link followed; unlike ``Path.resolve``, a link loop is no error (it stays a path)."""
    return pathlib.Path(os.path.realpath(path))


def _collect_inputs(path: pathlib.Path, output: pathlib.Path) -> list[pathlib.Path]:
    """The image files to translate: ``path`` itself, or the images below it (links followed, pipes left
    out) except those under ``output``, so that a second run into a folder inside the input does not
    translate the first run's results again."""
    if not path.exists():
        raise TranslateError(f"Input {path} does not exist.")
    if path.is_file():
        return [path]
    files = [path / name for name in image_io.find_images(str(path))[0]]
    top, out = _real(path), _real(output)
    if out != top and out.is_relative_to(top):  # (the input itself: _destinations refuses overwriting)
        files = [f for f in files if not _real(f).is_relative_to(out)]
    if not files:
        kinds = ", ".join(e.lstrip(".") for e in image_io.IMAGE_EXTENSIONS)
        raise TranslateError(f"No images ({kinds}) found under {path}.")
    return files


def _limit_size(image: np.ndarray, max_size: int) -> np.ndarray:
    """Shrink (bicubic, aspect kept) so that the longer side is at most ``max_size``; 0: unchanged."""
    h, w = image.shape[:2]
    if not max_size or max(h, w) <= max_size:
        return image
    scale = max_size / max(h, w)
    return image_io.resize(image, max(4, round(h * scale)), max(4, round(w * scale)))


HELD_BATCHES = 4  # batches' worth of decoded images that may wait for others of their size


def _batches_by_size(
    files: list[pathlib.Path],
    batch_size: int,
    max_size: int = 0,
    tile: int = 0,
    skipped: list[str] | None = None,
) -> Iterator[tuple[list[pathlib.Path], np.ndarray]]:
    """Images grouped by size into batches; an image larger than ``tile`` (when set) comes alone.

    At most ``HELD_BATCHES * batch_size`` decoded images wait for others of their size: in a folder of
    many sizes the largest waiting group then goes as a short batch, so memory stays bounded.
    An unreadable image raises ``TranslateError``, unless ``skipped`` is a list: then it is
    recorded there (``"path: reason"``) and left out.
    """
    groups: dict[tuple[int, ...], list[tuple[pathlib.Path, np.ndarray]]] = {}  # only sizes now waiting

    def take(shape: tuple[int, ...]) -> tuple[list[pathlib.Path], np.ndarray]:
        group = groups.pop(shape)
        return [p for p, _ in group], image_io.to_float(np.stack([i for _, i in group]))

    for f in files:
        try:
            img = _limit_size(image_io.load_image(f), max_size)
        except image_io.DataError as e:
            if skipped is None:
                raise TranslateError(str(e)) from e  # (it names the file)
            skipped.append(str(e))
            continue
        if tile and max(img.shape[:2]) > tile:
            yield [f], image_io.to_float(img[None])
            continue
        group = groups.setdefault(img.shape, [])
        group.append((f, img))
        if len(group) == batch_size:
            yield take(img.shape)
        elif sum(map(len, groups.values())) >= HELD_BATCHES * batch_size:
            yield take(max(groups, key=lambda shape: len(groups[shape])))
    while groups:
        yield take(next(iter(groups)))


def prepare_output(output: str | pathlib.Path) -> pathlib.Path:
    """Create the output folder and check that files can be written there; ``TranslateError`` if not.

    Called before the generator is loaded, so that a bad ``--output`` fails in a second, not
    after a compile.
    """
    output = pathlib.Path(output)
    if output.exists() and not output.is_dir():
        raise TranslateError(f"--output {output} is a file; give a folder (it is created if missing).")
    return output_files.writable_folder(output, TranslateError)


def _destinations(
    files: list[pathlib.Path], root: pathlib.Path, output: pathlib.Path
) -> dict[pathlib.Path, pathlib.Path]:
    """Input -> output path (same relative name, ``.png``).

    Two inputs that would share one output, and an output that would overwrite an input (``--output``
    the input folder, PNG inputs), are errors.
    """
    dests = {f: (output / f.relative_to(root)).with_suffix(".png") for f in files}
    inputs = {_real(f) for f in files}
    seen: dict[pathlib.Path, pathlib.Path] = {}
    for f, d in dests.items():
        if d in seen:
            raise TranslateError(f"{seen[d]} and {f} would both be written to {d}; rename one of them.")
        if _real(d) in inputs:
            raise TranslateError(f"The translation of {f} would overwrite the input {d}; give another --output.")
        seen[d] = f
    return dests


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a translation reads and writes, checked before any generator is loaded (see :func:`plan`)."""

    inputs: pathlib.Path  # the file or folder given
    output: pathlib.Path  # the output folder: it exists and is writable
    destinations: dict[pathlib.Path, pathlib.Path]  # input image -> output PNG, in reading order


def _image_suffixes() -> set[str]:
    """The extensions of every image format Pillow knows (``.gif``, ``.jp2``, ...): an ``--output`` with one
    names a file, not a folder."""
    return set(image_io.IMAGE_EXTENSIONS) | {e.lower() for e in Image.registered_extensions()}


def plan(inputs: str | pathlib.Path, output: str | pathlib.Path) -> Plan:
    """List the input images and their outputs; ``TranslateError`` for a missing input, no images, an
    unwritable output, or outputs that would collide or overwrite an input. A missing input leaves no
    output folder behind.

    ``output`` is a folder, or, for one input file, a ``.png`` file name (its folder is created if missing,
    and the file replaced if it exists).
    """
    inputs, output = pathlib.Path(inputs), pathlib.Path(output)
    files = _collect_inputs(inputs, output)
    if output.suffix.lower() in _image_suffixes() and not output.is_dir():  # a file name
        if inputs.is_dir():
            raise TranslateError(f"--output {output} names an image file, but --input {inputs} is a folder: give "
                                 "an output folder (it is created if missing).")  # fmt: skip
        if output.suffix.lower() != ".png":
            raise TranslateError(f"--output {output}: translations are written as PNG; name it "
                                 f"{output.with_suffix('.png').name}, or give a folder.")  # fmt: skip
        dest = prepare_output(output.parent) / output.name
        if _real(dest) == _real(inputs):
            raise TranslateError(f"The translation of {inputs} would overwrite it; give another --output.")
        return Plan(inputs, dest.parent, {inputs: dest})
    output = prepare_output(output)
    return Plan(inputs, output, _destinations(files, inputs if inputs.is_dir() else inputs.parent, output))


NORM_STATS = ("global", "tile")  # the first is the default
TILE, OVERLAP = 512, 64  # default tile side and overlap, in pixels (the command line's and jaxgan.app's)
MIN_TILE = 64  # smaller tiles see too little context: the generator's output turns to noise


def translate_image(
    generator: models.ResnetGenerator,
    params: PyTree,
    image: np.ndarray,
    tile: int = TILE,
    overlap: int = OVERLAP,
    norm_stats: str = NORM_STATS[0],
) -> np.ndarray:
    """One ``float32[H, W, 3]`` image: whole when both sides fit in ``tile`` (or ``tile == 0``), else tiled.

    Tiled translation (``jaxgan.tiling``) keeps memory bounded by the tile for any photo size.
    ``norm_stats="global"`` normalises every tile with the whole image's instance-norm statistics,
    estimated on a copy downscaled to ``2 * tile`` (``jaxgan.global_norm``); ``"tile"`` uses each
    tile's own, which makes the result patchier.
    """
    if not tile or max(image.shape[:2]) <= tile:
        return generate(generator, params, image[None], 1)[0]
    stats = global_norm.proxy_stats(generator, params, image, 2 * tile) if norm_stats == "global" else None

    def apply(tiles: np.ndarray) -> np.ndarray:
        return np.asarray(_apply(generator, params, cpu_memory.settle(jnp.asarray(tiles)), stats))

    return tiling.translate_tiled(apply, image, tile, overlap, batch_size=2)


def _save_png(path: pathlib.Path, image: np.ndarray) -> None:
    image_io.save_image(path, image, "PNG")


def translate_files(
    generator: models.ResnetGenerator,
    params: PyTree,
    inputs: str | pathlib.Path | Plan,
    output: str | pathlib.Path | None,
    batch_size: int = 8,
    tile: int = 512,
    overlap: int = 64,
    max_size: int = 0,
    skipped: list[str] | None = None,
    norm_stats: str = "global",
    on_progress: Callable[[int], None] | None = None,
) -> list[pathlib.Path]:
    """Translate a file or a folder tree into ``output`` (same relative names, ``.png``).

    ``inputs`` may instead be a :class:`Plan` made earlier (``output`` is then ``None``): its listing and
    checks are not repeated.

    Images with a side over ``tile`` are translated in overlapping tiles (``tile=0``: always
    whole; ``norm_stats`` as in :func:`translate_image`); ``max_size`` first shrinks images whose
    longer side exceeds it (0: never). In a
    folder, unreadable images are left out and recorded in ``skipped`` when it is given (else
    the first one raises ``TranslateError``); a single unreadable input file always raises.
    ``on_progress(n)`` is called after each batch with the number of inputs done (written or skipped).
    """
    if batch_size < 1 or max_size < 0:
        raise TranslateError(f"batch_size must be >= 1 and max_size >= 0, got {batch_size} and {max_size}.")
    if isinstance(inputs, Plan):
        if output is not None and _real(pathlib.Path(output)) != _real(inputs.output):
            raise TranslateError(f"output {output} differs from the plan's {inputs.output}; pass None.")
        planned = inputs
    elif output is None:
        raise TranslateError("output is None: give the output folder (None is only for a Plan, which has one).")
    else:
        planned = plan(inputs, output)
    dests, output = planned.destinations, planned.output
    files = list(dests)
    written, ready = [], {output}  # folders checked writable (each once)
    tolerant = skipped if planned.inputs.is_dir() else None
    skipped_before = len(tolerant or ())

    def report() -> None:
        if on_progress is not None:
            on_progress(len(written) + len(tolerant or ()) - skipped_before)

    for paths, images in _batches_by_size(files, batch_size, max_size, tile, tolerant):
        if tile and max(images.shape[1:3]) > tile:
            outs = [translate_image(generator, params, images[0], tile, overlap, norm_stats)]
        else:
            outs = generate(generator, params, images, batch_size)
        for path, out in zip(paths, outs, strict=True):
            dest, image = dests[path], image_io.to_uint8(out)
            if dest.parent not in ready:
                ready.add(output_files.writable_folder(dest.parent, TranslateError))
            output_files.write_atomically(dest, functools.partial(_save_png, image=image), TranslateError)
            written.append(dest)
        report()
    report()  # images skipped after the last batch
    return written


def run(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status: 0 all written, 1 some unreadable images skipped, 2 error."""
    parser = argparse.ArgumentParser(prog="python -m jaxgan.translate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="a training run directory (uses its newest checkpoint)")
    parser.add_argument("--checkpoint", help="a generator checkpoint written by `python -m jaxgan.interop`")
    parser.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"), help="AtoB (G) or BtoA (F)")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True,
                        help="folder for the translated images (same names, .png); for one input image, also a "
                        ".png file name")  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument(
        "--weights",
        default="ema",
        choices=generator_loading.WEIGHTS,
        help="with --workdir: ema (the moving average, if kept) or raw",
    )
    parser.add_argument(
        "--tile",
        type=int,
        default=TILE,
        help="images with a side over this are translated in overlapping tiles of this size, so "
        "memory stays bounded (a multiple of 4; 0: always whole)",
    )
    parser.add_argument("--overlap", type=int, default=OVERLAP, help="pixels shared by neighbouring tiles (blended)")
    parser.add_argument(
        "--norm_stats",
        choices=NORM_STATS,
        default=NORM_STATS[0],
        help="tiles are normalised with the whole image's statistics (estimated at twice the tile size) "
        "or with their own",
    )
    parser.add_argument(
        "--max_size",
        type=int,
        default=0,
        help="first shrink images whose longer side exceeds this (0: never); outputs keep that size",
    )
    args = parser.parse_args(argv)
    if args.tile and (args.tile % 4 or args.tile < MIN_TILE or args.tile <= args.overlap or args.overlap < 0):
        parser.error(f"--tile must be a multiple of 4, at least {MIN_TILE} and larger than --overlap (>= 0), or 0")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.max_size < 0 or 0 < args.max_size < 16:
        parser.error(f"--max_size must be 0 (never shrink) or at least 16 pixels, got {args.max_size}")
    cpu_memory.reuse_step_memory()  # before JAX starts; only on CPU-only machines
    compile_cache.enable()  # each image size compiles once per machine, not once per run
    skipped: list[str] = []
    try:
        # A bad output, a missing input or an input the output would overwrite fail before the generator loads.
        planned = plan(args.input, args.output)
        # Its source names the step and weights used: a newer checkpoint may have been unreadable.
        generator, params, _, source = generator_loading.load(args.direction, args.workdir, args.checkpoint,
                                                              args.weights)  # fmt: skip
        with tqdm(total=len(planned.destinations), unit="image", disable=None) as bar:  # shown on a terminal only
            written = translate_files(generator, params, planned, None, args.batch_size, args.tile,
                                      args.overlap, args.max_size, skipped, args.norm_stats,
                                      lambda done: bar.update(done - bar.n))  # fmt: skip
    except (TranslateError, generator_loading.GeneratorLoadError, image_io.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    where = f"into {args.output}" if len(written) != 1 else f"to {written[0]}"
    print(f"Translated {len(written)} image(s) {args.direction} {where} with {source}")
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image(s):", *skipped, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
