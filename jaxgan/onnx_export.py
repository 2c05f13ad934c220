"""The ResNet generator as an ONNX graph, built node by node with the ``onnx`` package.

Why this route (README "Deploy"): the generator needs only seven ONNX operators
(``Pad`` reflect, ``Conv``, ``ConvTranspose``, ``InstanceNormalization``, ``Relu``,
``Add``, ``Tanh``), so the graph is written here directly from the official-layout
weights (:func:`jaxgan.interop.flax_generator_to_torch`). That needs neither torch
nor ``jax2onnx`` (whose 0.17.1 wheel pins ``orbax-checkpoint<0.11.37``, which our
checkpoints cannot use), and every operator is the exact PyTorch operation the
official network runs, so the graph is the official one.

Interface of the graph (opset 17):

* input ``image``: ``float32[N, 3, H, W]`` (NCHW, RGB, in [-1, 1]); N, H and W are
  dynamic. H and W need not be multiples of 4: the graph reflect-pads them up to
  the next multiple (as ``jaxgan.translate`` does) and crops the output back.
  H and W must be at least 5 (padded to 8: the residual blocks reflect-pad a quarter-size map by 1).
* output ``translated``: ``float32[N, 3, H, W]`` in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxgan import interop

OPSET = 17
INPUT, OUTPUT = "image", "translated"
_EPS = 1e-5  # InstanceNorm2d's default, as jaxgan.models.InstanceNorm


class _Graph:
    """Collects nodes and initializers; each ``op`` call returns its output's name."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0
        self._names: set[str] = set()

    def const(self, name: str, value: np.ndarray) -> str:
        """An initializer; a second call with the same name reuses the first (shared constants such as pads)."""
        from onnx import numpy_helper

        if name in self._names:
            return name
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        self._count += 1
        out = name or f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{self._count}_{op_type}", **attrs))
        return out


def _layers(g: _Graph, sd: Mapping[str, np.ndarray], norm: Mapping[str, Any], x: str, ngf: int, n_blocks: int) -> str:
    """The official ``ResnetGenerator.model`` sequence on ``x: [N, 3, H', W']`` (H', W' multiples of 4)."""

    def pad(y: str, p: int) -> str:  # ReflectionPad2d(p)
        return g.op("Pad", [y, g.const(f"pads_{p}", np.array([0, 0, p, p, 0, 0, p, p], np.int64))], mode="reflect")

    def conv(y: str, key: str, stride: int = 1, padding: int = 0) -> str:
        w, b = g.const(key + ".weight", sd[key + ".weight"]), g.const(key + ".bias", sd[key + ".bias"])
        k = int(sd[key + ".weight"].shape[-1])
        return g.op("Conv", [y, w, b], kernel_shape=[k, k], strides=[stride] * 2, pads=[padding] * 4)

    def up(y: str, key: str) -> str:  # ConvTranspose2d(3, stride=2, padding=1, output_padding=1)
        w, b = g.const(key + ".weight", sd[key + ".weight"]), g.const(key + ".bias", sd[key + ".bias"])
        return g.op(
            "ConvTranspose", [y, w, b], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4, output_padding=[1, 1]
        )

    def inorm(y: str, name: str, channels: int) -> str:
        scale = np.asarray(norm.get(name, {}).get("scale", np.ones(channels)), np.float32)
        bias = np.asarray(norm.get(name, {}).get("bias", np.zeros(channels)), np.float32)
        return g.op("InstanceNormalization", [y, g.const(name + ".scale", scale), g.const(name + ".bias", bias)],
                    epsilon=_EPS)  # fmt: skip

    x = g.op("Relu", [inorm(conv(pad(x, 3), "model.1"), "norm_in", ngf)])
    x = g.op("Relu", [inorm(conv(x, "model.4", 2, 1), "norm_down_0", 2 * ngf)])
    x = g.op("Relu", [inorm(conv(x, "model.7", 2, 1), "norm_down_1", 4 * ngf)])
    for i in range(n_blocks):
        block, c = f"model.{10 + i}.conv_block", 4 * ngf
        y = g.op("Relu", [inorm(conv(pad(x, 1), block + ".1"), f"res_{i}.norm_0", c)])
        y = inorm(conv(pad(y, 1), block + ".5"), f"res_{i}.norm_1", c)
        x = g.op("Add", [x, y])
    u = 10 + n_blocks
    x = g.op("Relu", [inorm(up(x, f"model.{u}"), "norm_up_0", 2 * ngf)])
    x = g.op("Relu", [inorm(up(x, f"model.{u + 3}"), "norm_up_1", ngf)])
    return g.op("Tanh", [conv(pad(x, 3), f"model.{u + 7}")])


def _norm_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"norm_in": {"scale", "bias"}, "res_0.norm_0": ...}`` of an affine-norm generator (empty otherwise)."""
    out: dict[str, Any] = {}
    for name, sub in params.items():
        if name.startswith("norm_") and "scale" in sub:
            out[name] = sub
        elif name.startswith("res_"):
            out.update({f"{name}.{k}": v for k, v in sub.items() if k.startswith("norm_") and "scale" in v})
    return out


def generator_to_onnx(params: Mapping[str, Any], name: str = "jaxgan_generator") -> Any:
    """``ResnetGenerator`` params -> a checked ``onnx.ModelProto`` (see the module docstring for its interface).

    Args:
      params: Flax params of ``jaxgan.models.ResnetGenerator`` (any ngf and number of
        blocks; affine instance norms are kept when present).
      name: the graph's name.
    """
    import onnx
    from onnx import TensorProto, helper

    sd = {k: np.asarray(v, np.float32) for k, v in interop.flax_generator_to_torch(params).items()}
    ngf, n_blocks = interop.infer_generator_config(sd)
    g = _Graph()
    # Pad H and W up to multiples of 4 (reflect), remembering the size to crop back to.
    hw = g.op("Slice", [g.op("Shape", [INPUT]), g.const("two", np.array([2], np.int64)),
                        g.const("four", np.array([4], np.int64))])  # fmt: skip
    four = g.const("four_s", np.array(4, np.int64))
    extra = g.op("Mod", [g.op("Sub", [four, g.op("Mod", [hw, four])]), four])
    pads = g.op("Concat", [g.const("zeros6", np.zeros(6, np.int64)), extra], axis=0)
    x = g.op("Pad", [INPUT, pads], mode="reflect")
    y = _layers(g, sd, _norm_params(params), x, ngf, n_blocks)
    g.op("Slice", [y, g.const("zeros2", np.zeros(2, np.int64)), hw, g.const("axes_hw", np.array([2, 3], np.int64))],
         name=OUTPUT)  # fmt: skip
    dims = ["N", 3, "H", "W"]
    graph = helper.make_graph(
        g.nodes,
        name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, dims)],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="jaxgan")
    model.doc_string = f"CycleGAN ResnetGenerator(ngf={ngf}, n_blocks={n_blocks}): image NCHW float32 in [-1, 1]"
    onnx.checker.check_model(model)
    return model
