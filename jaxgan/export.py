"""Export one trained generator for serving outside jaxgan: ONNX, StableHLO or the official ``.pth``.

    python -m jaxgan.export --workdir runs/h2z --direction AtoB --format onnx --output h2z.onnx
    python -m jaxgan.export --checkpoint ckpt/horse2zebra --format stablehlo --output h2z.jaxexport
    python -m jaxgan.export --workdir runs/h2z --direction BtoA --format pth --output latest_net_G_B.pth

Formats (all float32; a bfloat16 run is exported in float32):

* ``onnx``: ``image: float32[N, 3, H, W]`` (NCHW, RGB in [-1, 1]) -> ``translated`` of the
  same shape; N, H, W dynamic, any H, W >= 5 (see :mod:`jaxgan.onnx_export`). Needs the
  ``export`` extra (``onnx``; ``onnxruntime`` for the check).
* ``stablehlo``: a ``jax.export`` artifact with the weights inside, for CPU, CUDA and TPU,
  input ``float32[B, 4h, 4w, 3]`` (NHWC) with symbolic ``B, h, w`` (``h, w >= 2``), plus
  ``PATH.json`` describing it. :func:`load` runs it with jax alone, padding any size.
* ``pth``: the official ``ResnetGenerator`` state dict (official key names, PyTorch
  layout), for ``load_state_dict`` in the official code. Needs torch.

After writing, the command runs the exported model (onnxruntime, jax, or a re-import of
the ``.pth``) on a random non-square batch and prints its largest difference from
jaxgan's own output (``--no_verify`` skips this).

This module imports no model code at import time, so :func:`load` needs only jax and NumPy.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxgan import compile_cache, output_files

PyTree = Any
FORMATS = ("onnx", "stablehlo", "pth")
PLATFORMS = ("cpu", "cuda", "tpu")
MIN_SIDE = 8  # the StableHLO artifact's smallest H and W (the 2x-downsampled blocks reflect-pad by 1)
VERIFY_SHAPE = (2, 68, 100)  # (batch, H, W) of the check: non-square, H not a multiple of 8
VERIFY_TOLERANCE = 1e-4  # largest allowed |exported - jaxgan| in [-1, 1] units


class ExportError(ValueError):
    """A request that cannot be exported (missing extra, unsupported model, unwritable output)."""


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    output_files.write_atomically(path, lambda tmp: tmp.write_bytes(data), ExportError)


def export_onnx(params: PyTree, path: str | os.PathLike) -> None:
    """Write ``params`` (a ``ResnetGenerator``'s) as an ONNX model file."""
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ExportError("ONNX export needs the onnx package: pip install 'jaxgan[export]'") from e
    from jaxgan import onnx_export

    _write_atomically(pathlib.Path(path), onnx_export.generator_to_onnx(params).SerializeToString())


_BACKEND = {"cpu": "cpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}  # jax.export platform -> conv_forms table


def _float32_generator(model_cfg: dict, platform: str = "tpu") -> Any:
    """The generator of ``model_cfg`` in float32 with the convolution forms that are fastest on ``platform``."""
    from jaxgan import conv_forms, generator_loading

    forms = conv_forms.AUTO[_BACKEND.get(platform, "tpu")]["float32"]
    impl = ",".join(f"{kind}={form}" for kind, form in forms.items())
    return generator_loading.make_generator({**model_cfg, "dtype": "float32", "conv_impl": impl})


def export_stablehlo(
    model_cfg: dict, params: PyTree, path: str | os.PathLike, platforms: Sequence[str] = PLATFORMS
) -> dict:
    """Serialize ``generator.apply`` with ``params`` baked in, via ``jax.export``; returns the metadata written.

    The artifact's input is ``float32[B, 4h, 4w, 3]`` in [-1, 1] with symbolic ``B``, ``h``,
    ``w`` (``h, w >= 2``); its output has the same shape. Each platform runs the convolution
    forms measured fastest there (``jaxgan.conv_forms.AUTO``), chosen when the artifact is
    run (``lax.platform_dependent``); the weights are stored once. ``PATH.json`` records the
    model config, the platforms and this interface.
    """
    import jax
    import jax.numpy as jnp
    from jax import export

    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float32), params)
    per_platform = {p: functools.partial(_float32_generator(model_cfg, p).apply, {"params": params}) for p in platforms}
    shape = export.symbolic_shape("b, 4*h, 4*w, 3", constraints=("h >= 2", "w >= 2"))
    exported = export.export(
        jax.jit(lambda x: jax.lax.platform_dependent(x, **per_platform)), platforms=tuple(platforms)
    )(jax.ShapeDtypeStruct(shape, jnp.float32))
    path = pathlib.Path(path)
    _write_atomically(path, bytes(exported.serialize()))
    meta = {
        "format": "jax.export",
        "input": "float32[B, H, W, 3] NHWC RGB in [-1, 1]; H, W multiples of 4 and >= 8",
        "output": "float32[B, H, W, 3] in [-1, 1]",
        "platforms": list(exported.platforms),
        "model": {k: model_cfg.get(k) for k in ("ngf", "n_blocks", "norm_affine")},
        "jax_version": jax.__version__,
    }
    _write_atomically(path.with_name(path.name + ".json"), json.dumps(meta, indent=2).encode())
    return meta


def load(path: str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
    """Load a ``stablehlo`` export; returns ``translate(images: float32[B, H, W, 3] in [-1, 1]) -> same shape``.

    Any ``H, W >= 8`` works: the images are reflect-padded to multiples of 4 for the
    network and the output cropped back (as ``jaxgan.translate`` does). Uses only jax;
    on CPU it compiles with jaxgan's XLA:CPU options, as ``jaxgan.translate`` does.
    """
    import jax
    import jax.numpy as jnp
    from jax import export

    from jaxgan import cpu_conv  # XLA:CPU options for these convolutions; jax only, no model code

    exported = export.deserialize(bytearray(pathlib.Path(path).read_bytes()))
    call = jax.jit(exported.call, compiler_options=cpu_conv.xla_compiler_options(backend=jax.default_backend()))

    def translate(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected float32[B, H, W, 3] images, got shape {images.shape}")
        h, w = images.shape[1:3]
        if min(h, w) < MIN_SIDE:
            raise ValueError(f"images must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {h}x{w}")
        padded = np.pad(images, ((0, 0), (0, -h % 4), (0, -w % 4), (0, 0)), mode="reflect")
        return np.asarray(call(jnp.asarray(padded)))[:, :h, :w]

    return translate


def export_pth(params: PyTree, path: str | os.PathLike) -> None:
    """Write the official-layout state dict (``model.1.weight`` ...) with ``torch.save``."""
    from jaxgan import interop

    if any(k.startswith("norm_") for k in params):
        raise ExportError("this generator has affine instance norms, which the official network does not have")
    try:
        import torch
    except ImportError as e:
        raise ExportError("the .pth format needs torch: pip install 'jaxgan[torch]' (a CPU build is enough)") from e
    state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in interop.flax_generator_to_torch(params).items()}

    def write(tmp: pathlib.Path) -> None:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # torch's for a file it cannot open or finish
            raise OSError(str(e).splitlines()[0]) from e

    output_files.write_atomically(path, write, ExportError)


def verify(fmt: str, path: str | os.PathLike, model_cfg: dict, params: PyTree) -> float:
    """Largest ``|exported - jaxgan|`` on a random ``VERIFY_SHAPE`` batch (``pth``: of the re-imported weights).

    The reference is jaxgan's own translation (``jaxgan.translate``) with the generator in float32.
    """
    from jaxgan import generator_loading, interop, translate

    images = np.random.default_rng(0).uniform(-1, 1, (*VERIFY_SHAPE, 3)).astype(np.float32)
    generator = generator_loading.make_generator({**model_cfg, "dtype": "float32"})
    want = np.asarray(translate._apply(generator, params, images))
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ExportError("checking the ONNX file needs onnxruntime: pip install 'jaxgan[export]'") from e
        session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": images.transpose(0, 3, 1, 2)})[0].transpose(0, 2, 3, 1)
    elif fmt == "stablehlo":
        got = load(path)(images)
    else:
        again = interop.torch_generator_to_flax(interop.load_torch_state_dict(path))
        got = np.asarray(translate._apply(generator, again, images))
    return float(np.abs(got - want).max())


def export(fmt: str, model_cfg: dict, params: PyTree, output: str | os.PathLike) -> None:
    """Write ``params`` of the generator ``model_cfg`` to ``output`` in format ``fmt`` (one of ``FORMATS``)."""
    output = check_output(fmt, output)
    if fmt == "onnx":
        export_onnx(params, output)
    elif fmt == "stablehlo":
        export_stablehlo(model_cfg, params, output)
    else:
        export_pth(params, output)


def check_output(fmt: str, output: str | os.PathLike) -> pathlib.Path:
    """``output`` as a path, if ``fmt`` is known and a file can be written there; else ``ExportError``."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return output_files.writable_file(output, f"model.{fmt}", ExportError, "--output")


def load_generator(
    direction: str, workdir: str | None = None, checkpoint_dir: str | None = None, weights: str = "ema"
) -> tuple[dict, PyTree, str]:
    """(model config, params, a description) of a run's newest (``weights``) or a checkpoint's generator."""
    from jaxgan import generator_loading

    _, params, model_cfg, source = generator_loading.load(direction, workdir, checkpoint_dir, weights)
    return model_cfg, params, source


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; exit status 0 written (and checked), 1 check failed, 2 error."""
    parser = argparse.ArgumentParser(prog="python -m jaxgan.export", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a training run (its newest checkpoint)")
    source.add_argument("--checkpoint", help="a generator checkpoint (jaxgan.interop or jaxgan.pretrained)")
    parser.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"))
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", required=True, help="the file to write")
    parser.add_argument("--weights", default="ema", choices=("ema", "raw"), help="with --workdir: which weights")
    parser.add_argument("--no_verify", action="store_true", help="skip running the exported model once")
    args = parser.parse_args(argv)
    compile_cache.enable()
    from jaxgan import generator_loading, interop

    try:
        check_output(args.format, args.output)  # a bad destination fails before the generator loads
        cfg, params, what = load_generator(args.direction, args.workdir, args.checkpoint, args.weights)
        export(args.format, cfg, params, args.output)
        print(f"wrote {args.output} ({args.format}): {args.direction} generator from {what}, "
              f"ngf={cfg['ngf']}, n_blocks={cfg['n_blocks']}")  # fmt: skip
        if not args.no_verify:
            err = verify(args.format, args.output, cfg, params)
            b, h, w = VERIFY_SHAPE
            print(f"checked: max |exported - jaxgan| = {err:.2e} on a random {b}x{h}x{w} batch")
            if err > VERIFY_TOLERANCE:
                print(f"error: the export differs from jaxgan by more than {VERIFY_TOLERANCE}", file=sys.stderr)
                return 1
    except (ExportError, generator_loading.GeneratorLoadError, interop.InteropError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
