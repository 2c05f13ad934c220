"""An interactive page for a trained model: drop an image, see it translated and reconstructed, download it.

    python -m jaxgan.app --workdir runs/h2z            # a training run (its newest checkpoint, EMA weights)
    python -m jaxgan.app --checkpoint ckpt/horse2zebra  # a generator checkpoint (python -m jaxgan.interop)
    python -m jaxgan.app --pretrained horse2zebra       # a published model (python -m jaxgan.pretrained)

A local Gradio page (``pip install 'jaxgan[app]'``) on http://127.0.0.1:7860. Uploads are decoded by
:func:`jaxgan.image_io.decode_image` (EXIF orientation applied), shrunk to ``--max_size`` on the long
side, and translated by :func:`jaxgan.translate.translate_image` with its defaults (tiles of 512, overlap
64, whole-image normalisation statistics), so a result equals ``python -m jaxgan.translate``'s for the
same image. Results are PNG files written here and served as they are, not re-encoded.

The model (:class:`Model`, :func:`load_run`, :func:`load_checkpoint`) and one translation
(:func:`translate_upload`) need no Gradio; :func:`build_app` lays out the page around them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import pathlib
import re
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from jaxgan import checkpoint, compile_cache, generator_checkpoint, generator_loading, image_io, models, translate

if TYPE_CHECKING:
    import gradio as gr  # an optional extra: imported where the page is built

PyTree = Any
INSTALL = "pip install 'jaxgan[app]'"
LABELS = {"AtoB": "A → B", "BtoA": "B → A"}
REVERSE = {"AtoB": "BtoA", "BtoA": "AtoB"}
TILE, OVERLAP, NORM_STATS = translate.TILE, translate.OVERLAP, translate.NORM_STATS[0]  # as jaxgan.translate
EXAMPLES_PER_DOMAIN = 3
HEIGHT = 320  # of the three image panels, in CSS pixels


class AppError(ValueError):
    """Bad command-line input: no model, an unreadable checkpoint, a missing examples folder."""


@dataclasses.dataclass(frozen=True)
class Model:
    """The generators of one model by direction (``"AtoB"``, ``"BtoA"``; one or both) and what the page says of it."""

    generators: dict[str, tuple[models.ResnetGenerator, PyTree]]
    name: str
    description: str  # Markdown: where the model comes from, its step and weights, its FID when known

    def reconstruction_note(self, direction: str) -> str | None:
        """Why ``direction`` cannot be reconstructed (its reverse generator is missing), or None."""
        if REVERSE[direction] in self.generators:
            return None
        return (f"No reconstruction: it needs both generators, and this model has only "
                f"{', '.join(LABELS[d] for d in self.generators)}.")  # fmt: skip


class Translation(NamedTuple):
    """One translated upload: PNG paths and what the page says about them."""

    translated: pathlib.Path
    reconstructed: pathlib.Path | None  # None without the reverse generator
    note: str


# ---------------------------------------------------------------------------
# Loading a model


def load_run(workdir: str | pathlib.Path, weights: str = "ema") -> Model:
    """Both generators of a training run's newest readable checkpoint; ``AppError`` when there is none."""
    workdir = pathlib.Path(workdir).absolute()
    generators, step, used = {}, 0, weights
    try:
        for direction in generator_checkpoint.DIRECTIONS:
            generator, params, step, used = generator_loading.load_generator_from_run(
                workdir, direction, weights=weights
            )
            generators[direction] = (generator, params)
    except generator_loading.GeneratorLoadError as e:
        raise AppError(str(e)) from e
    dataset = (checkpoint.load_config(workdir) or {}).get("dataset")
    source = f"**{workdir.name}**: training run `{workdir}`, step {step}, {used} weights, dataset `{dataset}`"
    fid = _scores(workdir, step, used) or f"FID: not evaluated (`python -m jaxgan.evaluate --workdir {workdir}`)"
    return Model(generators, workdir.name, f"{source}\n\n{fid}")


def _scores(workdir: pathlib.Path, step: int, weights: str) -> str | None:
    """FID/KID from ``WORKDIR/eval/*.json`` or ``WORKDIR/results/summary.json``: this checkpoint's, else the newest."""
    found = []  # (same checkpoint, step, file, scores)
    for path in [*sorted((workdir / "eval").glob("*.json")), workdir / "results" / "summary.json"]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        rows = data.get("checkpoints") if "checkpoints" in data else [{**data, **(data.get("results") or {})}]
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict) or not any(isinstance(row.get(f"{d}/fid"), float) for d in LABELS):
                continue
            try:
                at, used = int(row.get("step", -1)), str(row.get("weights", "")).lower()
            except (TypeError, ValueError):
                continue
            found.append((at == step and used == weights, at, f"{path.parent.name}/{path.name}", row))
    if not found:
        return None
    same, at, source, row = max(found, key=lambda f: f[:2])
    parts = [f"{LABELS[d]} {row[f'{d}/fid']:.2f}" + (f" (KID {row[f'{d}/kid']:.4f})" if f"{d}/kid" in row else "")
             for d in LABELS if isinstance(row.get(f"{d}/fid"), float)]  # fmt: skip
    where = f"`{source}`, step {at}" + ("" if same else ", not the checkpoint shown")
    return f"FID: {', '.join(parts)} ({where})"


def load_checkpoint(checkpoint_dir: str | pathlib.Path) -> Model:
    """The generator(s) of a ``jaxgan.interop`` / ``jaxgan.pretrained`` checkpoint folder; ``AppError`` if unreadable.

    Its name is ``pretrained.json``'s ``name`` (linked to its ``url``) when the folder has one, else the folder's.
    """
    path = pathlib.Path(checkpoint_dir).absolute()
    if not path.is_dir():
        what = "is a file, not a checkpoint directory" if path.exists() else "does not exist"
        raise AppError(f"Checkpoint directory {path} {what}.")
    if generator_loading.is_training_run(path):
        raise AppError(f"{path} is a training run: give it as --workdir {path}.")
    try:
        params_by_name, model_cfg = generator_checkpoint.load_generator_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - any reading failure becomes one clear message
        raise AppError(f"Cannot read a generator checkpoint from {path}: {e}") from e
    generator = generator_loading.make_generator(model_cfg)
    for params in params_by_name.values():
        try:
            generator_loading.check_params(generator, params, path)
        except generator_loading.GeneratorLoadError as e:
            raise AppError(str(e)) from e
    generators = {
        d: (generator, params_by_name[n]) for d, n in generator_checkpoint.DIRECTIONS.items() if n in params_by_name
    }
    if not generators:
        raise AppError(f"{path} holds no generator ({' or '.join(generator_checkpoint.DIRECTIONS.values())}).")
    meta: Any = {}
    with contextlib.suppress(OSError, ValueError):  # optional; a damaged one only loses the name
        meta = json.loads((path / "pretrained.json").read_text())
    meta = meta if isinstance(meta, dict) else {}
    name = str(meta.get("name") or path.name)
    title = f"[{name}]({meta['url']})" if meta.get("url") else name
    directions = [LABELS[d] for d in generators]
    reverse = meta.get("reverse")
    if "BtoA" in generators and isinstance(reverse, dict) and reverse.get("name"):
        directions[-1] += f" ({reverse['name']})"
    about = f" ({meta['description']})" if meta.get("description") else ""
    source = f"**{title}**{about}: generator checkpoint `{path}`, {', '.join(directions)}"
    evaluate = f"python -m jaxgan.evaluate --checkpoint {path} --source testA --real testB"
    fid = f"FID: {meta['fid']}" if meta.get("fid") is not None else f"FID: not evaluated (`{evaluate}`)"
    return Model(generators, name, f"{source}\n\n{fid}")


def run_examples(workdir: str | pathlib.Path, per_domain: int = EXAMPLES_PER_DOMAIN) -> list[pathlib.Path]:
    """A few images of the run's test split when its data set is a ``folder:`` still found from here; else []."""
    saved = checkpoint.load_config(pathlib.Path(workdir)) or {}
    dataset = str(saved.get("dataset", ""))
    if not dataset.startswith("folder:"):
        return []
    root = pathlib.Path(dataset.removeprefix("folder:")).expanduser()
    return [p for split in ("testA", "testB") for p in folder_examples(root / split, per_domain)]


def folder_examples(folder: str | pathlib.Path, limit: int = 8) -> list[pathlib.Path]:
    """The first ``limit`` images (by name, recursively) under ``folder``; [] when it is not a folder."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and image_io.is_image_file(p.name))[:limit]


# ---------------------------------------------------------------------------
# One translation


def translate_upload(
    model: Model,
    path: str | pathlib.Path,
    direction: str,
    out_dir: str | pathlib.Path,
    max_size: int = 1024,
    name: str | None = None,
) -> Translation:
    """Translate one image file (and back, when the model has the reverse generator) into PNGs in ``out_dir``.

    As ``python -m jaxgan.translate --max_size MAX_SIZE``: decoded upright (EXIF), shrunk so that the long
    side is at most ``max_size`` (0: never), tiled when a side exceeds 512. The reconstruction translates
    the translated PNG's pixels, i.e. what translating the downloaded file back gives.

    Args:
      model: the generators.
      path: the uploaded file (any format Pillow reads).
      direction: ``"AtoB"`` or ``"BtoA"``, one of ``model.generators``.
      out_dir: an existing folder; files are named after ``name`` (default: the file's stem).
      max_size: the long-side cap in pixels; 0: none.

    Returns:
      ``Translation(translated, reconstructed or None, note)``; ``note`` says what was done (size, shrink,
      tiles, time) and why there is no reconstruction.

    Raises:
      image_io.DataError: the file is not a readable image.
    """
    start = time.perf_counter()
    path, out_dir = pathlib.Path(path), pathlib.Path(out_dir)
    label = name or path.name
    original = image_io.decode_image(path, name=label)
    image = translate._limit_size(original, max_size)
    (h, w), (h0, w0) = image.shape[:2], original.shape[:2]
    generator, params = model.generators[direction]
    out = translate.translate_image(generator, params, image_io.to_float(image), TILE, OVERLAP, NORM_STATS)
    fake = image_io.to_uint8(out)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", pathlib.Path(label).stem)[:80] or "image"
    translated = out_dir / f"{stem}_{direction}.png"
    image_io.save_image(translated, fake)
    notes = [f"{LABELS[direction]}: {w}×{h} pixels"]
    if (h, w) != (h0, w0):
        notes.append(f"shrunk from {w0}×{h0} (long side capped at {max_size}: `--max_size`, 0 = no cap)")
    if max(h, w) > TILE:
        notes.append(f"translated in {TILE}-pixel tiles ({OVERLAP} overlap, whole-image normalisation)")
    reconstructed = None
    if (missing := model.reconstruction_note(direction)) is None:
        back, back_params = model.generators[REVERSE[direction]]
        rec = translate.translate_image(back, back_params, image_io.to_float(fake), TILE, OVERLAP, NORM_STATS)
        reconstructed = out_dir / f"{stem}_{direction}_reconstructed.png"
        image_io.save_image(reconstructed, image_io.to_uint8(rec))
    notes.append(f"{time.perf_counter() - start:.1f} s")
    note = "; ".join(notes) + "." + (f" {missing}" if missing else "")
    return Translation(translated, reconstructed, note)


# ---------------------------------------------------------------------------
# The page


def build_app(
    model: Model,
    max_size: int = 1024,
    examples: Sequence[str | pathlib.Path] = (),
    out_dir: str | pathlib.Path | None = None,
) -> gr.Blocks:
    """The page, a ``gr.Blocks``: input | translated | reconstructed, the direction, examples, a PNG download.

    ``out_dir``: where results are written (default: a new temporary folder).
    """
    import gradio as gr

    out_root = pathlib.Path(out_dir or tempfile.mkdtemp(prefix="jaxgan_app_"))
    directions = list(model.generators)
    no_reconstruction = model.reconstruction_note(directions[0])  # one generator: no direction has its reverse

    def run(upload: dict | None, direction: str) -> tuple:
        # Gradio's preprocessing is skipped for this handler: it would open every upload with PIL and turn an
        # unreadable one into a traceback. The upload arrives as Gradio's file record, its path already checked
        # to lie in Gradio's upload cache, and is decoded here.
        if not upload or not upload.get("path"):
            raise gr.Error("Pick or drop an image first.", print_exception=False)
        if direction not in model.generators:
            raise gr.Error(f"Choose a direction: {', '.join(LABELS[d] for d in directions)}.", print_exception=False)
        folder = tempfile.mkdtemp(dir=out_root)  # one per request: equal names never collide
        name = upload.get("orig_name") or pathlib.Path(upload["path"]).name
        try:
            result = translate_upload(model, upload["path"], direction, folder, max_size, name)
        except image_io.DataError as e:  # the message names the upload, not the server's copy of it
            raise gr.Error(str(e).replace(upload["path"], name), print_exception=False) from e
        images = [result.translated, result.reconstructed] if result.reconstructed else [result.translated]
        return (*map(str, images), result.note, str(result.translated))

    def result_image(label: str, elem_id: str) -> gr.Image:
        # Shown and served as the PNG file written here: a path is passed through, never re-encoded.
        return gr.Image(type="filepath", format="png", label=label, interactive=False, height=HEIGHT,
                        elem_id=elem_id, buttons=["download", "fullscreen"])  # fmt: skip

    with gr.Blocks(title=f"jaxgan: {model.name}", analytics_enabled=False) as app:
        gr.Markdown("## jaxgan: CycleGAN image translation")
        gr.Markdown(model.description, elem_id="model-info")
        with gr.Row(equal_height=True):
            # image_mode=None: Gradio keeps the uploaded file as it is (no conversion, no re-encoding).
            source = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="Input",
                              height=HEIGHT, elem_id="input")  # fmt: skip
            outputs = [result_image("Translated", "translated")]
            if no_reconstruction:
                gr.Markdown(f"**Reconstructed**\n\n{no_reconstruction}", elem_id="reconstructed")
            else:
                outputs.append(result_image("Reconstructed", "reconstructed"))
        with gr.Row():
            direction = gr.Radio([(LABELS[d], d) for d in directions], value=directions[0], label="Direction",
                                 elem_id="direction")  # fmt: skip
            button = gr.Button("Translate", variant="primary", elem_id="translate")
        note = gr.Markdown(elem_id="note")
        download = gr.File(label="Download (PNG)", interactive=False, elem_id="download")
        if examples:
            gr.Examples([[str(p)] for p in examples], inputs=[source], cache_examples=False, elem_id="examples")
        button.click(run, [source, direction], [*outputs, note, download], preprocess=False)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: load the model, start the page, serve until interrupted; 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m jaxgan.app", description=__doc__.split("\n\n")[0])
    model_args = parser.add_mutually_exclusive_group(required=True)
    model_args.add_argument("--workdir", help="a training run directory (its newest checkpoint)")
    model_args.add_argument("--checkpoint", help="a generator checkpoint folder (python -m jaxgan.interop)")
    model_args.add_argument("--pretrained", help="a published model's name (python -m jaxgan.pretrained)")
    parser.add_argument(
        "--weights", default="ema", choices=generator_loading.WEIGHTS, help="with --workdir: ema or raw"
    )
    parser.add_argument("--max_size", type=int, default=1024, help="shrink inputs to this long side first (0: never)")
    parser.add_argument(
        "--examples",
        help="a folder of example images shown under the input (default: the run's test images with --workdir; "
        "none with --checkpoint or --pretrained)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    args = parser.parse_args(argv)
    compile_cache.enable()
    if args.max_size < 0:
        parser.error("--max_size must be >= 0 (0: no cap)")
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    try:
        import gradio  # noqa: F401 - the optional extra; checked before the model loads
    except ImportError:
        print(f"error: the interactive page needs Gradio: {INSTALL}", file=sys.stderr)
        return 2
    from jaxgan import cpu_memory

    cpu_memory.reuse_step_memory()  # before JAX starts, as jaxgan.translate does
    try:
        check_address(args.host, args.port)  # before the model loads: a wrong --host fails in a second
        if args.examples and not pathlib.Path(args.examples).is_dir():
            raise AppError(f"--examples {args.examples} is not a folder.")
        if args.workdir:
            model = load_run(args.workdir, args.weights)
        else:
            ckpt = args.checkpoint or _fetch_pretrained(args.pretrained)
            model = load_checkpoint(ckpt)
    except AppError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    examples = folder_examples(args.examples) if args.examples else run_examples(args.workdir) if args.workdir else []
    out_dir = tempfile.TemporaryDirectory(prefix="jaxgan_app_")
    app = build_app(model, args.max_size, examples, out_dir.name)
    try:
        _, url, share_url = app.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True,
                                       prevent_thread_lock=True, ssr_mode=False, allowed_paths=[out_dir.name],
                                       footer_links=[])  # fmt: skip
    except OSError as e:
        print(f"error: cannot serve on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    print(f"jaxgan app: {model.name} on {url}" + (f" (public: {share_url})" if share_url else ""), flush=True)
    try:
        app.block_thread()
    finally:
        out_dir.cleanup()
    return 0


def check_address(host: str, port: int) -> None:
    """:class:`AppError` when the page could not be served on ``host:port``: a name that does not resolve,
    an address this machine does not have, or a port in use."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise AppError(f"--host {host}: not a name or address this machine can resolve ({e}).") from e
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port left in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise AppError(f"port {port} on {host} is in use: choose another --port.") from e
            raise AppError(f"cannot serve on {host}:{port}: {e.strerror} (--host must be an address of this "
                           "machine: 127.0.0.1 for this machine only, 0.0.0.0 for every network).") from e  # fmt: skip


def _fetch_pretrained(name: str) -> pathlib.Path:
    """The checkpoint folder of a published model, downloaded (and cached) by ``jaxgan.pretrained``."""
    from jaxgan import pretrained

    try:
        return pretrained.fetch(name, with_reverse=True)
    except pretrained.PretrainedError as e:
        raise AppError(str(e)) from e


if __name__ == "__main__":
    sys.exit(main())
