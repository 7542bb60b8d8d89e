"""The float path of the block loop: what each quantizer means when the block runs in float.

An activation quantizer whose range starts at exactly 0 becomes ``clamp(x, 0, upper end of its
range)`` (the Relu or Clip onnxruntime folded into it); other quantizers become identities; stored
codes without a float weight (biases) dequantize. Defined here once, for torch
(:func:`float_quantizer`) and for onnxruntime (:func:`float_nodes`).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir
import torch

from qdq_passes.ir import dialect
from qdq_passes.ir.qdq import constant_array
from qdq_passes.quantizers import materialize

__all__ = ["zero_based", "float_clamp", "float_nodes", "float_quantizer", "compared_after_relu"]


def zero_based(node: onnx_ir.Node) -> bool:
    """Whether an activation quantizer's representable range starts at exactly 0 (a Relu's clamp)."""
    if constant_array(node.inputs[0]) is not None:
        return False
    spec = dialect.quantizer_spec(node)
    lower = (spec.qmin - spec.zero_point.astype(np.float64)) * spec.scale.astype(np.float64)
    return bool(np.all(lower == 0))


def float_clamp(node: onnx_ir.Node) -> float | None:
    """The upper end of the float meaning ``clamp(x, 0, upper)`` of a zero-based activation
    quantizer (``math.inf`` for a plain Relu, and for per-axis quantizers), None for the others
    (identity). Why the upper end: docs/design-notes.md, "The float path"."""
    if not zero_based(node):
        return None
    spec = dialect.quantizer_spec(node)
    if spec.scale.size != 1:
        return math.inf
    upper = (spec.qmax - float(spec.zero_point.reshape(-1)[0])) * float(spec.scale.reshape(-1)[0])
    return float(np.float32(upper))


def float_nodes(node: onnx_ir.Node, initializers: dict[str, onnx.TensorProto]) -> list[onnx.NodeProto]:
    """The float meaning of a dialect quantizer as standard nodes writing its output (constants
    they need go to ``initializers``)."""
    x, out = node.inputs[0], node.outputs[0]
    assert x is not None
    clamp = float_clamp(node)
    if clamp is None:
        return [onnx.helper.make_node("Identity", [x.name], [out.name])]
    if clamp == math.inf:
        return [onnx.helper.make_node("Relu", [x.name], [out.name])]
    dtype = onnx_ir.DataType.FLOAT if x.dtype is None else x.dtype
    lo, hi = f"{out.name}__float_min", f"{out.name}__float_max"
    for name, value in ((lo, 0.0), (hi, clamp)):
        initializers[name] = onnx.numpy_helper.from_array(np.array(value, dtype.numpy()), name)
    return [onnx.helper.make_node("Clip", [x.name, lo, hi], [out.name])]


def float_quantizer(node: onnx_ir.Node) -> torch.nn.Module:
    """The float meaning of a quantizer as a torch module: a clamp, an identity, or a dequantize."""
    if dialect.quantizer_params(node).q_folded:
        return materialize(node)  # stored codes without a float weight (biases): their dequantized value
    clamp = float_clamp(node)
    if clamp is None:
        return torch.nn.Identity()
    return torch.nn.ReLU() if clamp == math.inf else torch.nn.Hardtanh(0.0, clamp)


def compared_after_relu(value: onnx_ir.Value) -> bool:
    """Whether a block output is read only by zero-based activation quantizers: its loss compares
    after a Relu (the clamp that follows it)."""
    uses = [use.node for use in value.uses()]
    return bool(uses) and not value.is_graph_output() and all(
        dialect.is_quantizer(n) and zero_based(n) for n in uses)
