"""Import official PyTorch CycleGAN weights (and export ours in their format).

The official code (``junyanz/pytorch-CycleGAN-and-pix2pix``) saves each network
as a state dict: ``latest_net_G_A.pth`` (A -> B), ``latest_net_G_B.pth``,
``latest_net_D_A.pth`` ... and the released pretrained models as
``horse2zebra.pth`` etc. The converters here take that state dict as a mapping
from names to NumPy arrays, so torch is only needed to read a ``.pth`` file
(:func:`load_torch_state_dict`, the ``torch`` extra).

Layouts: PyTorch ``Conv2d`` weights are ``[O, I, kh, kw]`` and become Flax
``[kh, kw, I, O]`` kernels; ``ConvTranspose2d`` weights are ``[I, O, kh, kw]``
and become ``[kh, kw, I, O]`` with no spatial flip, the layout that
``jaxgan.models.ConvTranspose`` defines to reproduce PyTorch's
``ConvTranspose2d(k=3, s=2, p=1, output_padding=1)`` exactly.

Command line (writes a generator checkpoint, ``jaxgan.generator_checkpoint``, that ``jaxgan.translate``
reads)::

    python -m jaxgan.interop --pth horse2zebra.pth --direction AtoB --output ckpt/horse2zebra
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxgan import generator_checkpoint
from jaxgan.generator_checkpoint import DEFAULT_MODEL_CONFIG, DIRECTIONS

StateDict = dict[str, np.ndarray]

# Keys the official loader drops too (`__patch_instance_norm_state_dict`).
_IGNORED_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


class InteropError(ValueError):
    """A state dict that does not match the official architecture (a missing key, a shape, an extra key)."""


class UnreadableFileError(InteropError):
    """A file that ``torch.load`` cannot read as a state dict (truncated, not a torch file, a pickled module)."""


# ---------------------------------------------------------------------------
# State-dict hygiene


def clean_state_dict(state_dict: Mapping[str, Any]) -> StateDict:
    """Drop buffers the official loader ignores, strip ``module.``, convert to float32 NumPy.

    Args:
      state_dict: names -> arrays (NumPy arrays, or anything ``np.asarray`` takes,
        such as CPU torch tensors).

    Returns:
      ``{name: float32 ndarray}`` without ``running_mean`` / ``running_var`` /
      ``num_batches_tracked`` keys, with a ``module.`` prefix (``DataParallel``)
      removed.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        if key.startswith("module."):
            key = key[len("module.") :]
        if hasattr(value, "detach"):  # a torch tensor; avoid importing torch here
            value = value.detach().cpu().float().numpy()
        if isinstance(value, Mapping):  # a training checkpoint: {"epoch": ..., "G_A": {...}, "G_B": {...}}
            nested = [k for k, v in state_dict.items() if isinstance(v, Mapping)]
            raise InteropError(f"the file holds several state dicts ({', '.join(map(repr, nested))}), not one "
                               f"network's: save one of them alone, e.g. torch.save(checkpoint[{nested[0]!r}], "
                               "'generator.pth')")  # fmt: skip
        try:
            out[key] = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InteropError(f"state dict entry {key!r} is a {type(value).__name__}, not an array") from e
    return out


def _take(sd: StateDict, key: str, shape: tuple[int, ...], used: set[str]) -> np.ndarray:
    if key not in sd:
        raise InteropError(f"state dict has no key {key!r} (expected an array of shape {shape})")
    value = sd[key]
    if tuple(value.shape) != tuple(shape):
        raise InteropError(f"key {key!r} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    used.add(key)
    return value


def _check_all_used(sd: StateDict, used: set[str], what: str) -> None:
    extra = sorted(set(sd) - used)
    if extra:
        shown = ", ".join(repr(k) for k in extra[:8]) + (" ..." if len(extra) > 8 else "")
        raise InteropError(
            f"unexpected keys for an official {what}: {shown}. "
            "Only the ResNet generator / PatchGAN with non-affine instance norm is supported."
        )


def _conv(sd: StateDict, prefix: str, o: int, i: int, k: int, used: set[str]) -> dict[str, np.ndarray]:
    w = _take(sd, prefix + ".weight", (o, i, k, k), used)
    b = _take(sd, prefix + ".bias", (o,), used)
    return {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0)), "bias": b.copy()}


def _conv_transpose(sd: StateDict, prefix: str, i: int, o: int, used: set[str]) -> dict[str, np.ndarray]:
    # torch [I, O, kh, kw] -> ours [kh, kw, I, O]; jaxgan.models.ConvTranspose takes it unflipped.
    w = _take(sd, prefix + ".weight", (i, o, 3, 3), used)
    b = _take(sd, prefix + ".bias", (o,), used)
    return {"kernel": np.ascontiguousarray(w.transpose(2, 3, 0, 1)), "bias": b.copy()}


def _torch_conv(p: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    kernel = np.asarray(p["kernel"], np.float32).transpose(3, 2, 0, 1)  # HWIO -> OIHW
    return np.ascontiguousarray(kernel), np.asarray(p["bias"], np.float32)


def _torch_conv_transpose(p: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    kernel = np.asarray(p["kernel"], np.float32).transpose(2, 3, 0, 1)  # [kh, kw, I, O] -> [I, O, kh, kw]
    return np.ascontiguousarray(kernel), np.asarray(p["bias"], np.float32)


# ---------------------------------------------------------------------------
# Generator

_BLOCK_RE = re.compile(r"^model\.(\d+)\.conv_block\.")  # any key of a residual block (its missing ones named later)


def infer_generator_config(state_dict: Mapping[str, Any]) -> tuple[int, int]:
    """``(ngf, n_blocks)`` of an official ResNet generator state dict.

    ``ngf`` is the output width of the first conv (``model.1.weight``:
    ``[ngf, 3, 7, 7]``); ``n_blocks`` the number of ``model.{k}.conv_block``
    modules, which must be ``model.10 .. model.{9 + n_blocks}``.
    """
    sd = clean_state_dict(state_dict)
    if "model.1.weight" not in sd:
        raise InteropError(
            "state dict has no key 'model.1.weight' (expected an array of shape (ngf, 3, 7, 7)); "
            "is this an official ResNet generator (netG resnet_9blocks / resnet_6blocks)?"
        )
    ngf = int(sd["model.1.weight"].shape[0])
    blocks = sorted({int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k))})
    if not blocks:
        raise InteropError("state dict has no residual blocks ('model.10.conv_block.1.weight' missing)")
    if blocks != list(range(10, 10 + len(blocks))):
        raise InteropError(f"residual blocks are not model.10 .. model.{9 + len(blocks)}: found indices {blocks}")
    return ngf, len(blocks)


def _second_conv(sd: StateDict, idx: int) -> str:
    # With --use_dropout the official block inserts Dropout at index 4, moving the
    # second conv from conv_block.5 to conv_block.6; at inference both are the same net.
    alt = f"model.{idx}.conv_block.6"
    if f"model.{idx}.conv_block.5.weight" not in sd and alt + ".weight" in sd:
        return alt
    return f"model.{idx}.conv_block.5"


def torch_generator_to_flax(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Official ResNet generator state dict -> ``jaxgan.models.ResnetGenerator`` params.

    Args:
      state_dict: ``{name: array}`` as saved by the official code (``model.1.weight``
        ``[ngf, 3, 7, 7]``, ``model.10.conv_block.1.weight`` ``[4ngf, 4ngf, 3, 3]``,
        ``model.19.weight`` ``[4ngf, 2ngf, 3, 3]`` ...), 6 or 9 (or any number of) blocks.

    Returns:
      Flax params ``{"conv_in", "down_0", "down_1", "res_{i}": {"conv_0", "conv_1"},
      "up_0", "up_1", "conv_out"}``, each ``{"kernel": float32[kh, kw, I, O], "bias": float32[O]}``,
      for ``ResnetGenerator(ngf, n_blocks)`` with ``(ngf, n_blocks) = infer_generator_config(state_dict)``.

    Raises:
      InteropError: a key is missing or has the wrong shape (the message names the
        key and the expected shape), or there are keys this architecture does not have.
    """
    sd = clean_state_dict(state_dict)
    ngf, n_blocks = infer_generator_config(sd)
    used: set[str] = set()
    params: dict[str, Any] = {
        "conv_in": _conv(sd, "model.1", ngf, 3, 7, used),
        "down_0": _conv(sd, "model.4", 2 * ngf, ngf, 3, used),
        "down_1": _conv(sd, "model.7", 4 * ngf, 2 * ngf, 3, used),
    }
    for i in range(n_blocks):
        idx = 10 + i
        params[f"res_{i}"] = {
            "conv_0": _conv(sd, f"model.{idx}.conv_block.1", 4 * ngf, 4 * ngf, 3, used),
            "conv_1": _conv(sd, _second_conv(sd, idx), 4 * ngf, 4 * ngf, 3, used),
        }
    up = 10 + n_blocks
    params["up_0"] = _conv_transpose(sd, f"model.{up}", 4 * ngf, 2 * ngf, used)
    params["up_1"] = _conv_transpose(sd, f"model.{up + 3}", 2 * ngf, ngf, used)
    params["conv_out"] = _conv(sd, f"model.{up + 7}", 3, ngf, 7, used)
    _check_all_used(sd, used, "ResNet generator")
    return params


def flax_generator_to_torch(params: Mapping[str, Any]) -> StateDict:
    """``ResnetGenerator`` params -> official state dict ``{name: float32 ndarray}`` (inverse of the above)."""
    n_blocks = sum(1 for k in params if k.startswith("res_"))
    sd: StateDict = {}

    def put(prefix: str, pair: tuple[np.ndarray, np.ndarray]) -> None:
        sd[prefix + ".weight"], sd[prefix + ".bias"] = pair

    put("model.1", _torch_conv(params["conv_in"]))
    put("model.4", _torch_conv(params["down_0"]))
    put("model.7", _torch_conv(params["down_1"]))
    for i in range(n_blocks):
        put(f"model.{10 + i}.conv_block.1", _torch_conv(params[f"res_{i}"]["conv_0"]))
        put(f"model.{10 + i}.conv_block.5", _torch_conv(params[f"res_{i}"]["conv_1"]))
    up = 10 + n_blocks
    put(f"model.{up}", _torch_conv_transpose(params["up_0"]))
    put(f"model.{up + 3}", _torch_conv_transpose(params["up_1"]))
    put(f"model.{up + 7}", _torch_conv(params["conv_out"]))
    return sd


# ---------------------------------------------------------------------------
# Discriminator


def _discriminator_indices(n_layers: int) -> list[int]:
    # model.0 conv, 1 LeakyReLU; then (conv, norm, LeakyReLU) x n_layers; then the last conv.
    return [0] + [2 + 3 * n for n in range(n_layers)] + [2 + 3 * n_layers]


def infer_discriminator_config(state_dict: Mapping[str, Any]) -> tuple[int, int]:
    """``(ndf, n_layers)`` of an official ``NLayerDiscriminator`` state dict (``basic`` is ``n_layers=3``)."""
    sd = clean_state_dict(state_dict)
    if "model.0.weight" not in sd:
        raise InteropError(
            "state dict has no key 'model.0.weight' (expected an array of shape (ndf, 3, 4, 4)); "
            "is this an official PatchGAN discriminator (netD basic / n_layers)?"
        )
    ndf = int(sd["model.0.weight"].shape[0])
    n_convs = sum(1 for k in sd if k.endswith(".weight"))
    if n_convs < 3:
        raise InteropError(f"a PatchGAN has at least 3 convolutions, this state dict has {n_convs} weights")
    return ndf, n_convs - 2


def torch_discriminator_to_flax(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Official PatchGAN state dict -> ``jaxgan.models.PatchDiscriminator`` params.

    Args:
      state_dict: ``{name: array}``; for ``n_layers=3``: ``model.0/2/5/8/11.weight``
        ``[64,3,4,4]``, ``[128,64,4,4]``, ``[256,128,4,4]``, ``[512,256,4,4]``, ``[1,512,4,4]`` + biases.

    Returns:
      ``{"conv_0" .. "conv_{n_layers+1}": {"kernel": float32[4, 4, I, O], "bias": float32[O]}}``
      for ``PatchDiscriminator(ndf, n_layers)``.

    Raises:
      InteropError: as :func:`torch_generator_to_flax`.
    """
    sd = clean_state_dict(state_dict)
    ndf, n_layers = infer_discriminator_config(sd)
    used: set[str] = set()
    widths = [3] + [ndf * min(2**n, 8) for n in range(n_layers + 1)] + [1]
    params = {
        f"conv_{j}": _conv(sd, f"model.{idx}", widths[j + 1], widths[j], 4, used)
        for j, idx in enumerate(_discriminator_indices(n_layers))
    }
    _check_all_used(sd, used, "PatchGAN discriminator")
    return params


def flax_discriminator_to_torch(params: Mapping[str, Any]) -> StateDict:
    """``PatchDiscriminator`` params -> official state dict ``{name: float32 ndarray}``."""
    n_layers = len(params) - 2
    sd: StateDict = {}
    for j, idx in enumerate(_discriminator_indices(n_layers)):
        sd[f"model.{idx}.weight"], sd[f"model.{idx}.bias"] = _torch_conv(params[f"conv_{j}"])
    return sd


# ---------------------------------------------------------------------------
# Files


def load_torch_state_dict(path: str | os.PathLike) -> StateDict:
    """Read a ``.pth`` state dict with torch (CPU, ``weights_only=True``) into NumPy.

    Returns the cleaned ``{name: float32 ndarray}`` (see :func:`clean_state_dict`).
    Accepts a bare state dict or a dict holding one under ``"state_dict"``.

    Raises:
      ImportError: torch is not installed (``pip install 'jaxgan[torch]'``).
      InteropError: the file is not a state dict.
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "reading a PyTorch .pth file needs torch: pip install 'jaxgan[torch]' (a CPU build is enough)"
        ) from e
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a truncated zip, a pickle, a module
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UnreadableFileError(
            f"{path} is not a readable PyTorch state dict: {reason} (a truncated download, or a whole pickled "
            "model: save model.state_dict() instead)"
        ) from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise InteropError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    return clean_state_dict(obj)


def convert_generator_file(pth: str | os.PathLike, direction: str, output_dir: str | os.PathLike) -> dict[str, Any]:
    """``.pth`` generator -> Orbax checkpoint; returns the model config written."""
    sd = load_torch_state_dict(pth)
    ngf, n_blocks = infer_generator_config(sd)
    params = torch_generator_to_flax(sd)
    cfg = {**DEFAULT_MODEL_CONFIG, "ngf": ngf, "n_blocks": n_blocks}
    generator_checkpoint.save_generator_checkpoint(params, direction, cfg, output_dir)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxgan.interop",
        description="Convert an official PyTorch CycleGAN generator (.pth) into a jaxgan checkpoint.",
    )
    parser.add_argument("--pth", required=True, help="official generator state dict, e.g. horse2zebra.pth")
    parser.add_argument(
        "--direction",
        default="AtoB",
        choices=sorted(DIRECTIONS),
        help="what the generator translates: AtoB (official G_A, the released pretrained models) or BtoA (G_B)",
    )
    parser.add_argument("--output", required=True, help="checkpoint directory to create")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.pth):
        parser.error(f"--pth {args.pth}: no such file")
    try:
        cfg = convert_generator_file(args.pth, args.direction, args.output)
    except (InteropError, generator_checkpoint.GeneratorCheckpointError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {os.path.abspath(args.output)}: {DIRECTIONS[args.direction]} = ResnetGenerator("
        f"ngf={cfg['ngf']}, n_blocks={cfg['n_blocks']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
