"""``strip-qdq``: remove all quantization, giving the float model that a QDQ model approximates."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir

from qdq_passes.infra.options import PassOptions, option
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.registry import register_pass
from qdq_passes.points import scan_points
from qdq_passes.ir.qdq import (
    QPoint,
    constant_array,
    float_name,
    fresh_name,
    node_label,
    remove_if_unused,
    same_spec,
    value_names,
)

__all__ = ["StripQdqPass", "StripQdqOptions"]

logger = logging.getLogger(__name__)

#: Ops whose output is never negative: a Q after them needs no restored Relu.
_NON_NEGATIVE = ("Relu", "Sigmoid", "Softmax")


@dataclasses.dataclass(frozen=True)
class StripQdqOptions(PassOptions):
    """Options of ``strip-qdq``."""

    restore_relu: bool = option(
        True,
        "insert a Relu where a removed activation Q's range starts at exactly 0 (onnxruntime deletes "
        "the Relu there, the Q's clamp doing its job)",
    )


@register_pass
class StripQdqPass(QdqPass):
    """Remove every understood Q/DQ: the float model that the QDQ model approximates.

    Works on every graph, subgraphs (If/Loop/Scan bodies) included; new initializers go to the
    main graph, which every subgraph sees.

    1. Activation ``Q(x) -> DQ``: the DQ's uses go to ``x``; the DQ goes, and the Q when none of
       its DQs is left (a Q shared by several DQs goes with the last). Counted per DQ in
       ``num-activation-pairs-removed``.
    2. **Relu restoration** (``restore-relu``, default on): onnxruntime deletes a Relu in front of
       an activation Q whose representable range starts at exactly 0 (``(qmin - zp) * scale == 0``,
       e.g. uint8 with zp 0, int8 with zp -128), since the Q's clamp does the Relu's job. Removing
       that Q would silently drop the Relu, so when every removed DQ of such a Q has this range and
       ``x`` is not already non-negative (produced by Relu, Clip with a constant min >= 0, Sigmoid or
       Softmax), the uses go to a new ``Relu(x)`` instead (``<x>_relu``; ``num-relus-restored``).
       This holds for graph inputs too: the float model keeps what the clamp did.
    3. Weight ``Q(W float const) -> DQ``: the DQ's uses go to ``W`` itself (``num-weights-restored``).
    4. Folded weights and int32 biases ``DQ(codes)``: replaced by a float initializer holding
       ``spec.dequantize(codes)`` (what the DQ computed), named from the codes (``w_quantized`` ->
       ``w``, otherwise ``<name>_float``); DQs sharing codes and parameters share it. Counted in
       ``num-weights-restored``.
    5. A DQ output that is a graph output keeps its name, so the signature does not change: the
       replacement value is renamed to it, or, when the replacement is a graph input, an
       initializer or already a graph output, an ``Identity`` carries the name.
    6. Codes, scales and zero points (initializers or Constant nodes) go when nothing uses them.
    7. Q/DQ ``scan_qdq`` did not understand (non-constant parameters, DQ parameters that differ
       from the Q's, a Q output used by other nodes, ...), and folded DQs whose ``output_dtype``
       differs from the scale's type: left exactly as they were, counted in ``num-skipped``, with a
       warning each. A Q also feeding such a DQ stays for it.
    8. Invalid parameters: :class:`QuantizationError` naming the node; nothing is changed.

    A second run finds nothing to strip and reports ``modified=False``.
    """

    argument = "strip-qdq"
    summary = "Remove all quantization (Q/DQ), giving the float model the QDQ model approximates"
    Options = StripQdqOptions
    statistics = {
        "num-activation-pairs-removed": "activation DequantizeLinear nodes removed (with their Q)",
        "num-weights-restored": "weight and bias DequantizeLinear nodes replaced by float weights",
        "num-relus-restored": "Relu nodes inserted where a removed Q clamped at 0",
        "num-skipped": "Q/DQ nodes left alone (not understood)",
    }

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        scan = scan_points(self, model)

        graph = model.graph  # new initializers go to the main graph, seen from every subgraph
        taken = value_names(model)
        leftovers: list[onnx_ir.Value | None] = []
        by_q: dict[onnx_ir.Node, list[QPoint]] = {}
        folded: list[QPoint] = []
        for point in scan.points:
            if point.q is not None:
                by_q.setdefault(point.q, []).append(point)
            elif self._dequantizable(point):
                folded.append(point)
        modified = False
        for q, points in by_q.items():
            self._strip_pair(graph, taken, q, points, leftovers)
            modified = True
        restored: dict[onnx_ir.Value, list[tuple[QPoint, onnx_ir.Value]]] = {}
        for point in folded:
            self._restore_folded(graph, taken, point, leftovers, restored)
            modified = True
        for value in leftovers:
            remove_if_unused(value)
        return onnx_ir.passes.PassResult(model, modified)

    def _dequantizable(self, point: QPoint) -> bool:
        output_dtype = point.dq.attributes.get("output_dtype")
        scale_type = onnx_ir.DataType.from_numpy(point.spec.scale.dtype)
        if output_dtype is not None and output_dtype.as_int() not in (0, scale_type):
            logger.warning("strip-qdq: left %s alone: its output_dtype differs from its scale's type", node_label(point.dq))
            self.bump("num-skipped")
            return False
        return True

    def _strip_pair(
        self, graph: onnx_ir.Graph, taken: set[str], q: onnx_ir.Node, points: list[QPoint],
        leftovers: list[onnx_ir.Value | None],
    ) -> None:
        x = q.inputs[0]
        assert x is not None
        weight = points[0].kind == "weight"
        replacement = x
        if not weight and self.options.restore_relu and _clamps_at_zero(points) and not _non_negative(x):
            base = x.name or "x"
            relu_out = onnx_ir.Value(name=fresh_name(f"{base}_relu", taken), shape=x.shape, type=x.type)
            relu = onnx_ir.Node("", "Relu", [x], outputs=[relu_out], name=f"{relu_out.name}_node")
            q.graph.insert_before(q, relu)
            replacement = relu_out
            self.bump("num-relus-restored")
        for point in points:
            leftovers.extend(point.dq.inputs[1:])
            _replace_dq(point.dq.graph, taken, point.dq, replacement)
            self.bump("num-weights-restored" if weight else "num-activation-pairs-removed")
        if not q.outputs[0].uses() and not q.outputs[0].is_graph_output():
            leftovers.extend(q.inputs[1:])
            q.graph.remove(q, safe=True)

    def _restore_folded(
        self, graph: onnx_ir.Graph, taken: set[str], point: QPoint, leftovers: list[onnx_ir.Value | None],
        restored: dict[onnx_ir.Value, list[tuple[QPoint, onnx_ir.Value]]],
    ) -> None:
        stored = point.source
        leftovers.extend(point.dq.inputs)
        same = [value for other, value in restored.get(stored, []) if same_spec(other.spec, point.spec)]
        if same:  # codes shared by DQs with equal parameters: one float initializer for all
            _replace_dq(point.dq.graph, taken, point.dq, same[0])
            remove_if_unused(stored)
            self.bump("num-weights-restored")
            return
        codes = constant_array(stored)
        assert codes is not None
        weight = np.ascontiguousarray(point.spec.dequantize(codes))
        value = onnx_ir.Value(
            shape=onnx_ir.Shape(weight.shape), type=onnx_ir.TensorType(onnx_ir.DataType.from_numpy(weight.dtype))
        )
        out = point.dq.outputs[0]
        freed = [] if out.is_graph_output() else [out.name]
        _replace_dq(point.dq.graph, taken, point.dq, value)
        if remove_if_unused(stored):
            freed.append(stored.name)
        # Named once the DQ is gone: its output often holds the natural name (onnxruntime's biases).
        taken.difference_update(name for name in freed if name)
        name = fresh_name(float_name(stored.name or "weight"), taken)
        value.name = name
        value.const_value = onnx_ir.Tensor(weight, name=name)
        graph.register_initializer(value)
        restored.setdefault(stored, []).append((point, value))
        self.bump("num-weights-restored")


def _replace_dq(graph: onnx_ir.Graph, taken: set[str], dq: onnx_ir.Node, replacement: onnx_ir.Value) -> None:
    """Send the DQ output's uses to ``replacement`` and remove the DQ, keeping a graph output's name."""
    out = dq.outputs[0]
    if not out.is_graph_output():
        out.replace_all_uses_with(replacement)
        graph.remove(dq, safe=True)
        return
    name = out.name
    if replacement.is_graph_input() or replacement.is_initializer() or replacement.is_graph_output() or (
        replacement.graph is None and replacement.producer() is None
    ):
        identity_out = onnx_ir.Value(shape=out.shape, type=out.type)
        graph.insert_before(dq, onnx_ir.Node("", "Identity", [replacement], outputs=[identity_out]))
        replacement = identity_out
    # A graph output needs a type: take the DQ output's where the replacement has none.
    if replacement.type is None:
        replacement.type = out.type
    if replacement.shape is None:
        replacement.shape = out.shape
    out.replace_all_uses_with(replacement, replace_graph_outputs=True)
    graph.remove(dq, safe=True)
    replacement.name = name
    if name:
        taken.add(name)


def _clamps_at_zero(points: list[QPoint]) -> bool:
    """Whether every DQ's range starts at exactly 0: ``(qmin - zp) * scale == 0``."""
    for point in points:
        spec = point.spec
        if spec.is_float8:
            return False
        start = (np.float32(spec.qmin) - spec.zero_point.astype(np.float32)) * spec.scale.astype(np.float32)
        if not np.all(start == 0):
            return False
    return True


def _non_negative(x: onnx_ir.Value) -> bool:
    """Whether ``x`` is produced by Relu, Sigmoid, Softmax or a Clip with a constant min >= 0."""
    producer = x.producer()
    if producer is None or producer.domain != "":
        return False
    if producer.op_type in _NON_NEGATIVE:
        return True
    if producer.op_type != "Clip":
        return False
    attr = producer.attributes.get("min")  # opset < 11
    if attr is not None:
        return attr.as_float() >= 0
    low = constant_array(producer.inputs[1] if len(producer.inputs) > 1 else None)
    return low is not None and low.size == 1 and bool(low.reshape(()) >= 0)
