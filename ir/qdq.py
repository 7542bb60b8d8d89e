"""Reading Q/DQ in real models: which QuantizeLinear/DequantizeLinear nodes form quantization points.

Understood (as onnxruntime's and Quark's quantizers write them, opsets 10 to 25, standard or
``com.microsoft`` domain):

1. ``Q(x) -> DQ`` with constant, equal parameters: an **activation** point, or a **weight** point
   when ``x`` is a constant float tensor (an initializer that is not a graph input, or a Constant).
2. ``DQ(W)`` with ``W`` a constant integer tensor: a **folded weight** (the seed's ``q_folded``),
   or a **bias** when ``W`` is int32.

Left alone and reported with the reason (never silently changed): a non-constant scale or zero
point; DQ parameters that differ from its Q's; a Q whose output also feeds something other than a
DQ (or is a graph output); a Q with no DQ; a DQ of a non-constant integer (e.g. a graph input).

Invalid parameters raise :class:`InvalidQdq` naming the node: a zero, negative, NaN, Inf or
float16 denormal scale, a zero point whose dtype disagrees with the Q's output type or the DQ's input type,
shapes that do not fit the input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

import numpy as np
import onnx_ir

from qdq_passes.ir.quant import QuantSpec

__all__ = [
    "InvalidQdq",
    "QPoint",
    "Skipped",
    "QdqScan",
    "scan_qdq",
    "is_quantize",
    "is_dequantize",
    "constant_array",
    "add_initializer",
    "node_label",
    "read_spec",
    "same_spec",
    "value_names",
    "fresh_name",
    "float_name",
    "remove_if_unused",
    "reference_quantize_problem",
]

QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")
PointKind = Literal["activation", "weight", "folded_weight", "bias"]


class InvalidQdq(ValueError):
    """A Q/DQ node with parameters no runtime should accept; the message names the node."""


def node_label(node: onnx_ir.Node) -> str:
    """``'name' (Op)`` for messages; unnamed nodes are labelled by their first output."""
    op = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
    if node.name:
        return f"'{node.name}' ({op})"
    first = node.outputs[0].name if node.outputs else "?"
    return f"{op} -> '{first}'"


def is_quantize(node: onnx_ir.Node) -> bool:
    """A QuantizeLinear of the standard or com.microsoft domain."""
    return node.op_type == "QuantizeLinear" and node.domain in QDQ_DOMAINS


def is_dequantize(node: onnx_ir.Node) -> bool:
    """A DequantizeLinear of the standard or com.microsoft domain."""
    return node.op_type == "DequantizeLinear" and node.domain in QDQ_DOMAINS


def add_initializer(graph: onnx_ir.Graph, name: str, array: np.ndarray,
                    dtype: onnx_ir.DataType | None = None) -> onnx_ir.Value:
    """A new initializer of ``graph`` holding ``array``; ``dtype`` when its ONNX type is not the
    array's (INT4 codes stored as int8, say)."""
    value = onnx_ir.Value(name=name, shape=onnx_ir.Shape(array.shape),
                          type=onnx_ir.TensorType(dtype or onnx_ir.DataType.from_numpy(array.dtype)),
                          const_value=onnx_ir.Tensor(array, name=name))
    graph.register_initializer(value)
    return value


def constant_array(value: onnx_ir.Value | None) -> np.ndarray | None:
    """The value's constant contents (an initializer that is not a graph input, or a Constant node's)."""
    if value is None:
        return None
    if value.const_value is not None and not value.is_graph_input():
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        attr = producer.attributes.get("value")
        if attr is not None and attr.type == onnx_ir.AttributeType.TENSOR:
            return attr.as_tensor().numpy()
    return None


@dataclasses.dataclass
class QPoint:
    """One understood quantization point: its DQ, its Q (None when folded) and its parameters."""

    kind: PointKind
    dq: onnx_ir.Node
    q: onnx_ir.Node | None
    spec: QuantSpec

    @property
    def source(self) -> onnx_ir.Value:
        """The float input of the Q, or the stored integer tensor of a folded point."""
        node = self.q if self.q is not None else self.dq
        source = node.inputs[0]
        assert source is not None
        return source


@dataclasses.dataclass
class Skipped:
    """A Q or DQ node left alone, and why."""

    node: onnx_ir.Node
    reason: str


@dataclasses.dataclass
class QdqScan:
    """The result of :func:`scan_qdq`: understood points and the nodes left alone."""

    points: list[QPoint]
    skipped: list[Skipped]


class _NotUnderstood(Exception):
    pass


def _opset(model: onnx_ir.Model, node: onnx_ir.Node) -> int:
    domain = "" if node.domain == "ai.onnx" else node.domain
    if domain == "com.microsoft":
        return 21  # com.microsoft Q/DQ v1 behaves as opset 13+ with the newer types (no block_size)
    return model.opset_imports.get(domain, model.opset_imports.get("", 21))


def read_spec(model: onnx_ir.Model, node: onnx_ir.Node) -> QuantSpec:
    """The :class:`QuantSpec` of a Q or DQ node; raises :class:`InvalidQdq` on bad parameters.

    Raises ``_NotUnderstood`` (internal) for non-constant parameters.
    """
    scale = constant_array(node.inputs[1] if len(node.inputs) > 1 else None)
    zp_value = node.inputs[2] if len(node.inputs) > 2 else None
    zero_point = constant_array(zp_value)
    if scale is None:
        raise _NotUnderstood("its scale is not a constant")
    if zp_value is not None and zero_point is None:
        raise _NotUnderstood("its zero point is not a constant")
    opset = _opset(model, node)
    axis_attr = node.attributes.get("axis")
    axis = axis_attr.as_int() if axis_attr is not None else 1
    block_attr = node.attributes.get("block_size")
    block_size = block_attr.as_int() if block_attr is not None else 0
    saturate_attr = node.attributes.get("saturate")
    saturate = bool(saturate_attr.as_int()) if saturate_attr is not None else True
    stored = _stored_type(node)
    if zero_point is not None:
        qdtype = onnx_ir.DataType.from_numpy(zero_point.dtype)
        if stored is not None and stored != qdtype:
            side = "output type" if is_quantize(node) else "input type"
            raise InvalidQdq(f"node {node_label(node)}: zero point is {qdtype.name} but the {side} is {stored.name}")
    else:
        qdtype = stored if stored is not None else onnx_ir.DataType.UINT8
    x = node.inputs[0]
    x_shape = tuple(x.shape.numpy()) if x is not None and x.shape is not None and x.shape.is_static() else None
    if opset < 13 and scale.size != 1:
        raise InvalidQdq(f"node {node_label(node)}: opset {opset} allows only a per-tensor scale, got shape {scale.shape}")
    try:
        spec = QuantSpec.from_arrays(scale, zero_point, qdtype, axis=axis, block_size=block_size, saturate=saturate)
        if x_shape is not None and spec.granularity != "tensor":
            spec = dataclasses.replace(spec, axis=spec.axis % len(x_shape))
        spec.validate(x_shape)
    except ValueError as exc:
        raise InvalidQdq(f"node {node_label(node)}: {exc}") from None
    return spec


def _stored_type(node: onnx_ir.Node) -> onnx_ir.DataType | None:
    """The integer type on the quantized side: Q's output_dtype/output type, DQ's input type."""
    if is_quantize(node):
        attr = node.attributes.get("output_dtype")
        if attr is not None and attr.as_int() != 0:
            return onnx_ir.DataType(attr.as_int())
        return node.outputs[0].dtype
    x = node.inputs[0]
    return x.dtype if x is not None else None


def same_spec(a: QuantSpec, b: QuantSpec) -> bool:
    """Whether two specs quantize identically (same type, granularity and parameter bits)."""
    return (
        a.qdtype == b.qdtype
        and a.granularity == b.granularity
        and (a.granularity == "tensor" or a.axis == b.axis)
        and a.block_size == b.block_size
        and a.saturate == b.saturate
        and a.scale.dtype == b.scale.dtype
        and np.array_equal(a.scale.reshape(-1).view(np.uint8), b.scale.reshape(-1).view(np.uint8))
        and np.array_equal(a.zero_point.reshape(-1).astype(np.float64), b.zero_point.reshape(-1).astype(np.float64))
    )


def scan_qdq(model: onnx_ir.Model, nodes: Iterable[onnx_ir.Node] | None = None) -> QdqScan:
    """Find the quantization points of every graph, subgraphs (If/Loop/Scan bodies) included, or of
    the given nodes; a point's nodes live in ``point.dq.graph``."""
    points: list[QPoint] = []
    skipped: list[Skipped] = []
    seen_q: set[onnx_ir.Node] = set()
    nodes = list(onnx_ir.traversal.RecursiveGraphIterator(model.graph) if nodes is None else nodes)
    for node in nodes:
        if not is_dequantize(node):
            continue
        try:
            point = _read_point(model, node, seen_q)
        except _NotUnderstood as exc:
            skipped.append(Skipped(node, str(exc)))
            continue
        points.append(point)
    for node in nodes:
        if is_quantize(node) and node not in seen_q:
            if not any(is_dequantize(use.node) for use in node.outputs[0].uses()):
                skipped.append(Skipped(node, "Q without a DequantizeLinear after it"))
    return QdqScan(points, skipped)


def _read_point(model: onnx_ir.Model, dq: onnx_ir.Node, seen_q: set[onnx_ir.Node]) -> QPoint:
    x = dq.inputs[0]
    if x is None:
        raise InvalidQdq(f"node {node_label(dq)}: has no input")
    producer = x.producer()
    if producer is not None and is_quantize(producer):
        q = producer
        q_spec = read_spec(model, q)
        dq_spec = read_spec(model, dq)
        if not same_spec(q_spec, dq_spec):
            seen_q.add(q)
            raise _NotUnderstood(f"its parameters differ from those of its Q {node_label(q)}")
        out = q.outputs[0]
        if out.is_graph_output():
            seen_q.add(q)
            raise _NotUnderstood(f"its Q {node_label(q)} output is also a graph output")
        others = [use.node for use in out.uses() if not is_dequantize(use.node)]
        if others:
            seen_q.add(q)
            raise _NotUnderstood(f"its Q {node_label(q)} output also feeds {node_label(others[0])}")
        seen_q.add(q)
        source = q.inputs[0]
        is_weight = constant_array(source) is not None and source is not None and source.dtype in _FLOATS
        return QPoint("weight" if is_weight else "activation", dq, q, q_spec)
    stored = constant_array(x)
    if stored is None:
        raise _NotUnderstood("its input is neither a QuantizeLinear output nor a constant")
    spec = read_spec(model, dq)
    kind: PointKind = "bias" if spec.qdtype == onnx_ir.DataType.INT32 else "folded_weight"
    return QPoint(kind, dq, None, spec)


_FLOATS = (onnx_ir.DataType.FLOAT, onnx_ir.DataType.FLOAT16, onnx_ir.DataType.BFLOAT16, None)


# --------------------------------------------------------------------------- helpers of the Q/DQ passes


def value_names(model: onnx_ir.Model | onnx_ir.Graph) -> set[str]:
    """Every value name in the model's (or graph's) graphs, subgraphs included, to pick fresh names from."""
    graphs = model.graphs() if isinstance(model, onnx_ir.Model) else [model]
    names: set[str] = set()
    for graph in graphs:
        names.update(v.name for v in graph.inputs if v.name)
        names.update(v.name for v in graph.outputs if v.name)
        names.update(name for name in graph.initializers if name)
        for node in onnx_ir.traversal.RecursiveGraphIterator(graph):
            names.update(v.name for v in node.outputs if v.name)
    return names


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first not in ``taken`` (which it is added to)."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def float_name(stored: str) -> str:
    """The name of a float tensor made from stored codes: ``w_quantized`` -> ``w``, else ``<name>_float``."""
    suffix = "_quantized"
    if stored.endswith(suffix) and len(stored) > len(suffix):
        return stored[: -len(suffix)]
    return f"{stored}_float"


def remove_if_unused(value: onnx_ir.Value | None) -> bool:
    """Remove an unused constant: an initializer, or a Constant node's output (the node goes).

    Kept: a value with uses, a graph input or output, a value produced by any other node.
    """
    if value is None or value.uses() or value.is_graph_output() or value.is_graph_input():
        return False
    graph = value.graph
    if value.is_initializer():
        if graph is None or value.name is None or graph.initializers.get(value.name) is not value:
            return False
        graph.initializers.pop(value.name)
        return True
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        if producer.graph is not None and not any(out.uses() or out.is_graph_output() for out in producer.outputs):
            producer.graph.remove(producer, safe=True)
            return True
    return False


def reference_quantize_problem(
    model: onnx_ir.Model, node: onnx_ir.Node, x_dtype: onnx_ir.DataType | None
) -> str | None:
    """Why ``QuantSpec.quantize`` would not match this Q (or a Q built like this DQ) bit for bit, or None.

    ``QuantSpec.quantize`` divides in float32, which is what onnxruntime does for float32 x and
    scale, for float16 at opsets 19-21 and in ``com.microsoft``, with ``precision=FLOAT``, and
    whenever the scale is float32 from opset 23. float16 division (opset >= 23 with a float16
    scale) and bfloat16 are not emulated.
    """
    f32, f16 = onnx_ir.DataType.FLOAT, onnx_ir.DataType.FLOAT16
    scale = constant_array(node.inputs[1] if len(node.inputs) > 1 else None)
    s_dtype = onnx_ir.DataType.from_numpy(scale.dtype) if scale is not None else None
    if x_dtype not in (f32, f16) or s_dtype not in (f32, f16):
        x_name = x_dtype.name if x_dtype is not None else "unknown"
        s_name = s_dtype.name if s_dtype is not None else "unknown"
        return f"a QuantizeLinear of {x_name} x with a {s_name} scale is not emulated"
    precision = node.attributes.get("precision")
    if node.domain == "com.microsoft" or s_dtype == f32 or (precision is not None and precision.as_int() == f32):
        return None
    opset = _opset(model, node)
    if opset < 23:
        return None
    return f"a float16 QuantizeLinear at opset {opset} divides in float16, which is not emulated"
