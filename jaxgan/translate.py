"""Translate images with a trained generator: a library function and a command line.

    python -m jaxgan.translate --workdir runs/h2z --direction AtoB --input photo.jpg --output out/
    python -m jaxgan.translate --checkpoint ckpt/horse2zebra --direction AtoB --input testA/ --output out/

``--workdir`` reads the newest checkpoint of a training run; ``--checkpoint``
reads a generator checkpoint written by ``python -m jaxgan.interop`` (official
PyTorch weights). Any image size works: sizes not divisible by 4 are
reflection-padded for the network and cropped back. Folders are searched
recursively, images of equal size are batched, file names are kept (as PNG).
Unreadable images in a folder are skipped with a warning that lists them (exit
status 1); the folder's valid images are still written.
"""

from __future__ import annotations

import argparse
import functools
import logging
import pathlib
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxgan import checkpoint, conv_forms, cpu_memory, global_norm, image_io, models, tiling, train
from jaxgan.generator_checkpoint import DIRECTIONS, load_generator_checkpoint  # DIRECTIONS["AtoB"] = "g_ab"

PyTree = Any
WEIGHTS = ("ema", "raw")


class TranslateError(ValueError):
    """Bad command-line input: missing checkpoint, non-image file, unknown direction."""


def make_generator(model_cfg: dict) -> models.ResnetGenerator:
    """The generator described by a saved ``config["model"]`` dict."""
    return models.ResnetGenerator(
        ngf=int(model_cfg.get("ngf", 64)),
        n_blocks=int(model_cfg.get("n_blocks", 9)),
        norm_affine=bool(model_cfg.get("norm_affine", False)),
        dtype=train.DTYPES[model_cfg.get("dtype", "float32")],
        conv_impl=str(model_cfg.get("conv_impl", "auto")),
    )


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


def _check_stored_shapes(path: pathlib.Path, group: str, name: str, shapes: PyTree) -> None:
    """ValueError naming the first parameter whose stored shape differs from ``shapes`` (the run's config.json).

    Read from the checkpoint's metadata before any array: a restore that fails on shapes leaves Orbax's
    asynchronous readers to print pages of tracebacks at exit. Where the metadata cannot be read, the restore
    itself decides.
    """
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)  # Orbax warns about the step-level metadata file it does not need here
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            tree = getattr(ckptr.metadata(path), "item_metadata", None)
        stored = {jax.tree_util.keystr(k): tuple(m.shape) for k, m in jax.tree_util.tree_leaves_with_path(
            tree[group][name], is_leaf=lambda m: hasattr(m, "shape"))}  # fmt: skip
    except Exception:  # noqa: BLE001 - no readable metadata: the restore reports what is wrong
        return
    finally:
        absl_log.setLevel(level)
    for key, want in jax.tree_util.tree_leaves_with_path(shapes):
        have = stored.get(jax.tree_util.keystr(key))
        if have is not None and have != tuple(want.shape):
            raise ValueError(
                f"{jax.tree_util.keystr(key)} is {have} in the checkpoint but {tuple(want.shape)} for the run's "
                "config.json: the two do not belong together"
            )


def _restore_generator(path: pathlib.Path, group: str, name: str, shapes: PyTree) -> PyTree:
    """``state[group][name]`` of one checkpoint (``group``: ``params`` or ``ema``), onto this process's first device.

    Explicit shardings: a checkpoint written by N devices (or processes) restores on one.
    """
    _check_stored_shapes(path, group, name, shapes)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {group: {name: shapes}}
    restore_args = jax.tree_util.tree_map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(
            path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        )
    return restored[group][name]


def load_generator_from_run(
    workdir: str | pathlib.Path, direction: str, step: int | None = None, weights: str = "ema"
) -> tuple[models.ResnetGenerator, PyTree, int, str]:
    """(generator, params, step, weights used) of the newest (or given) checkpoint of a training run.

    ``weights``: ``"ema"`` (the moving average, where the run keeps one; else the raw
    weights, and the fourth value says ``"raw"``) or ``"raw"``.
    """
    if weights not in WEIGHTS:
        raise TranslateError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}.")
    workdir = pathlib.Path(workdir).absolute()  # Orbax refuses relative paths
    saved = checkpoint.load_config(workdir)
    ckpt_dir = workdir / "checkpoints"
    if saved is None or not ckpt_dir.is_dir():
        raise TranslateError(f"No training run in {workdir}: expected {workdir}/config.json and {ckpt_dir}/.")
    steps = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit() and (p / "default").is_dir())
    if step is not None:
        steps = [s for s in steps if s == step]
    if not steps:
        raise TranslateError(f"No checkpoint{'' if step is None else f' for step {step}'} in {ckpt_dir}.")
    generator = make_generator(saved["model"])
    shapes = jax.eval_shape(lambda: generator.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))["params"])
    name = DIRECTIONS[direction]
    groups = ["ema", "params"] if weights == "ema" and float(saved.get("ema_decay", 0) or 0) > 0 else ["params"]
    errors = []
    for s in reversed(steps):  # the newest readable one
        for group in groups:
            try:
                params = _restore_generator(ckpt_dir / str(s) / "default", group, name, shapes)
                return generator, params, s, "ema" if group == "ema" else "raw"
            except Exception as e:  # noqa: BLE001 - fall back to the raw weights, then to an older checkpoint
                errors.append(f"step {s} {group}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    raise TranslateError(f"No readable checkpoint in {ckpt_dir}:\n  " + "\n  ".join(errors))


def load_generator(
    direction: str, workdir: str | None = None, checkpoint_dir: str | None = None, weights: str = "ema"
) -> tuple[models.ResnetGenerator, PyTree]:
    """(generator, params) from a run directory (its EMA or raw weights) or an imported generator checkpoint."""
    if direction not in DIRECTIONS:
        raise TranslateError(f"--direction must be one of {sorted(DIRECTIONS)}, got {direction!r}.")
    if bool(workdir) == bool(checkpoint_dir):
        raise TranslateError("Give exactly one of --workdir (a training run) or --checkpoint (an imported model).")
    if workdir:
        generator, params, _, _ = load_generator_from_run(workdir, direction, weights=weights)
        return generator, params
    path = pathlib.Path(checkpoint_dir)
    if not path.is_dir():
        raise TranslateError(f"Checkpoint directory {path} does not exist.")
    if (path / "checkpoints").is_dir() and checkpoint.load_config(path) is not None:
        raise TranslateError(f"{path} is a training run: give it as --workdir {path} (--checkpoint takes a "
                             "generator written by `python -m jaxgan.interop` or `jaxgan.pretrained`).")  # fmt: skip
    try:
        params_by_name, model_cfg = load_generator_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - turn any reading failure into one clear message
        raise TranslateError(f"Cannot read a generator checkpoint from {path}: {e}") from e
    name = DIRECTIONS[direction]
    if name not in params_by_name:
        have = [d for d, n in DIRECTIONS.items() if n in params_by_name]
        raise TranslateError(f"{path} holds a generator for {have}, not {direction}.")
    return make_generator(model_cfg), params_by_name[name]


def _collect_inputs(path: pathlib.Path) -> list[pathlib.Path]:
    if not path.exists():
        raise TranslateError(f"Input {path} does not exist.")
    if path.is_file():
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and image_io.is_image_file(p.name)
        and not any(q.startswith(".") for q in p.relative_to(path).parts)  # hidden below the input only
    )
    if not files:
        raise TranslateError(f"No images (jpg, jpeg, png, bmp, webp) found under {path}.")
    return files


def _limit_size(image: np.ndarray, max_size: int) -> np.ndarray:
    """Shrink (bicubic, aspect kept) so that the longer side is at most ``max_size``; 0: unchanged."""
    h, w = image.shape[:2]
    if not max_size or max(h, w) <= max_size:
        return image
    scale = max_size / max(h, w)
    return image_io.resize(image, max(4, round(h * scale)), max(4, round(w * scale)))


def _batches_by_size(
    files: list[pathlib.Path],
    batch_size: int,
    max_size: int = 0,
    tile: int = 0,
    skipped: list[str] | None = None,
) -> Iterator[tuple[list[pathlib.Path], np.ndarray]]:
    """Images grouped by size into batches; an image larger than ``tile`` (when set) comes alone.

    An unreadable image raises ``TranslateError``, unless ``skipped`` is a list: then it is
    recorded there (``"path: reason"``) and left out.
    """
    groups: dict[tuple[int, ...], list[tuple[pathlib.Path, np.ndarray]]] = {}
    for f in files:
        try:
            img = _limit_size(image_io.load_image(f), max_size)
        except image_io.DataError as e:
            if skipped is None:
                raise TranslateError(f"{f} is not a readable image: {e}") from e
            skipped.append(f"{f}: {e}")
            continue
        if tile and max(img.shape[:2]) > tile:
            yield [f], image_io.to_float(img[None])
            continue
        group = groups.setdefault(img.shape, [])
        group.append((f, img))
        if len(group) == batch_size:
            yield [p for p, _ in group], image_io.to_float(np.stack([i for _, i in group]))
            group.clear()
    for group in groups.values():
        if group:
            yield [p for p, _ in group], image_io.to_float(np.stack([i for _, i in group]))


def prepare_output(output: str | pathlib.Path) -> pathlib.Path:
    """Create the output folder and check that files can be written there; ``TranslateError`` if not.

    Called before the generator is loaded, so that a bad ``--output`` fails in a second, not
    after a compile.
    """
    output = pathlib.Path(output)
    if output.exists() and not output.is_dir():
        raise TranslateError(f"--output {output} is a file; give a folder (it is created if missing).")
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as e:
        raise TranslateError(f"Cannot write into the output folder {output}: {e.strerror or e}.") from e
    return output


def _destinations(
    files: list[pathlib.Path], root: pathlib.Path, output: pathlib.Path
) -> dict[pathlib.Path, pathlib.Path]:
    """Input -> output path (same relative name, ``.png``).

    Two inputs that would share one output, and an output that would overwrite an input (``--output``
    the input folder, PNG inputs), are errors.
    """
    dests = {f: (output / f.relative_to(root)).with_suffix(".png") for f in files}
    inputs = {f.resolve() for f in files}
    seen: dict[pathlib.Path, pathlib.Path] = {}
    for f, d in dests.items():
        if d in seen:
            raise TranslateError(f"{seen[d]} and {f} would both be written to {d}; rename one of them.")
        if d.resolve() in inputs:
            raise TranslateError(f"The translation of {f} would overwrite the input {d}; give another --output.")
        seen[d] = f
    return dests


NORM_STATS = ("global", "tile")  # the first is the default
TILE, OVERLAP = 512, 64  # default tile side and overlap, in pixels (the command line's and jaxgan.app's)


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


def translate_files(
    generator: models.ResnetGenerator,
    params: PyTree,
    inputs: str | pathlib.Path,
    output: str | pathlib.Path,
    batch_size: int = 8,
    tile: int = 512,
    overlap: int = 64,
    max_size: int = 0,
    skipped: list[str] | None = None,
    norm_stats: str = "global",
) -> list[pathlib.Path]:
    """Translate a file or a folder tree into ``output`` (same relative names, ``.png``).

    Images with a side over ``tile`` are translated in overlapping tiles (``tile=0``: always
    whole; ``norm_stats`` as in :func:`translate_image`); ``max_size`` first shrinks images whose
    longer side exceeds it (0: never). In a
    folder, unreadable images are left out and recorded in ``skipped`` when it is given (else
    the first one raises ``TranslateError``); a single unreadable input file always raises.
    """
    if batch_size < 1 or max_size < 0:
        raise TranslateError(f"batch_size must be >= 1 and max_size >= 0, got {batch_size} and {max_size}.")
    inputs = pathlib.Path(inputs)
    output = prepare_output(output)
    files = _collect_inputs(inputs)
    root = inputs if inputs.is_dir() else inputs.parent
    dests = _destinations(files, root, output)
    written = []
    tolerant = skipped if inputs.is_dir() else None
    for paths, images in _batches_by_size(files, batch_size, max_size, tile, tolerant):
        if tile and max(images.shape[1:3]) > tile:
            outs = [translate_image(generator, params, images[0], tile, overlap, norm_stats)]
        else:
            outs = generate(generator, params, images, batch_size)
        for path, out in zip(paths, outs, strict=True):
            dest = dests[path]
            dest.parent.mkdir(parents=True, exist_ok=True)
            image_io.save_image(dest, image_io.to_uint8(out))
            written.append(dest)
    return written


def run(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status: 0 all written, 1 some unreadable images skipped, 2 error."""
    parser = argparse.ArgumentParser(prog="python -m jaxgan.translate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="a training run directory (uses its newest checkpoint)")
    parser.add_argument("--checkpoint", help="a generator checkpoint written by `python -m jaxgan.interop`")
    parser.add_argument("--direction", default="AtoB", help="AtoB (G) or BtoA (F)")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the translated images")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--weights", default="ema", help="with --workdir: ema (the moving average, if kept) or raw")
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
    if args.tile and (args.tile % 4 or args.tile <= args.overlap or args.overlap < 0):
        parser.error("--tile must be a multiple of 4 and larger than --overlap (>= 0), or 0")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.max_size < 0 or 0 < args.max_size < 16:
        parser.error(f"--max_size must be 0 (never shrink) or at least 16 pixels, got {args.max_size}")
    cpu_memory.reuse_step_memory()  # before JAX starts; only on CPU-only machines
    skipped: list[str] = []
    try:
        # A bad output, a missing input or an input the output would overwrite fail before the generator loads.
        output = prepare_output(args.output)
        inputs = pathlib.Path(args.input)
        _destinations(_collect_inputs(inputs), inputs if inputs.is_dir() else inputs.parent, output)
        source = args.checkpoint
        if (
            args.workdir and args.direction in DIRECTIONS
        ):  # say which checkpoint and weights: a newer one may be unreadable
            generator, params, step, used = load_generator_from_run(args.workdir, args.direction, weights=args.weights)
            source = f"the {used} weights of step {step} of {args.workdir}"
        else:
            generator, params = load_generator(args.direction, args.workdir, args.checkpoint, args.weights)
        written = translate_files(generator, params, args.input, args.output, args.batch_size, args.tile,
                                  args.overlap, args.max_size, skipped, args.norm_stats)  # fmt: skip
    except (TranslateError, image_io.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Translated {len(written)} image(s) {args.direction} into {args.output} with {source}")
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image(s):", *skipped, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
