"""``unfold-qdq``: stored weight codes behind ``DequantizeLinear`` become ``QuantizeLinear(W float) -> DQ``.

The inverse of ``fold-qdq``. The float weight is the dequantized one, or, with ``float-model``, the
original weight of a reference float model, found by the structure of the graph (the consuming node
and input slot), never by names: quantizers and clean-up passes rename values and delete nodes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir

from qdq_passes.infra.errors import QuantizationError
from qdq_passes.infra.options import PassOptions, option
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.registry import register_pass
from qdq_passes.points import scan_points
from qdq_passes.ir.qdq import (
    QPoint,
    add_initializer,
    constant_array,
    float_name,
    fresh_name,
    is_dequantize,
    is_quantize,
    node_label,
    reference_quantize_problem,
    remove_if_unused,
    same_spec,
    value_names,
)
from qdq_passes.ir.quant import QuantSpec, storage_dtype

__all__ = ["UnfoldQdqPass", "UnfoldQdqOptions"]

logger = logging.getLogger(__name__)

_SlotKey = tuple[str, str, int]  # (domain, op_type, input index)


@dataclasses.dataclass(frozen=True)
class UnfoldQdqOptions(PassOptions):
    """Options of ``unfold-qdq``."""

    float_model: str | None = option(
        None,
        "reference float model (.onnx or .onnxtxt) whose weights replace the dequantized ones; "
        "matched by graph structure (consuming op and input slot), not by names",
        input_path=True,
    )


@register_pass
class UnfoldQdqPass(QdqPass):
    """Unfold ``DequantizeLinear(W int const)`` into ``QuantizeLinear(W float const) -> DequantizeLinear``.

    Works on every graph, subgraphs (If/Loop/Scan bodies) included; new initializers go to the
    main graph, which every subgraph sees.

    1. A folded weight (``scan_qdq`` kind ``folded_weight``: a DQ of a constant integer or float8
       tensor): a new Q with the DQ's scale, zero point, ``axis``, ``block_size`` and domain
       (``com.microsoft`` too) now produces the DQ's input from a float initializer. The float
       initializer is named from the stored tensor's name (``w_quantized`` -> ``w``, otherwise
       ``<name>_float``), the Q output ``<that>_QuantizeLinear_Output`` (``_1``, ... when taken).
    2. Without ``float-model`` the float weight is ``spec.dequantize(codes)``, which quantizes back
       to exactly the stored codes (checked), so onnxruntime's outputs do not change.
    3. With ``float-model=PATH`` the float weight is the reference model's: for each consumer of
       the DQ, ``(op_type, input slot)`` and its rank k among the QDQ model's nodes of that op type
       whose input at that slot is constant (directly or through Q/DQ), in graph order, pick the
       k-th node of that op type with a constant at that slot in the float model. The shape and type
       must match, every consumer of a shared DQ must pick the same weight, and the weight must
       quantize to codes within +-1 of the stored ones (AdaRound moves codes by one; float8: equal);
       anything else raises :class:`QuantizationError` naming the node. Codes that differ are
       counted in ``num-codes-changed``: the new Q rounds to nearest.
    4. A stored tensor used only by DQs with equal parameters gets one Q for all of them; one also
       used by other nodes, by DQs with other parameters, or that is a graph output keeps those
       uses, each understood DQ getting its own Q. The stored tensor goes when unused.
    5. A DQ without a zero point whose type is not uint8 gets a zero initializer
       (``<name>_zero_point``) on its Q, since a Q without one produces uint8.
    6. int32 biases stay folded (a QuantizeLinear cannot produce int32): ``num-biases-kept``.
    7. Left alone, counted in ``num-skipped``: a DQ whose ``output_dtype`` differs from its scale's
       type, a weight whose Q onnxruntime would not divide in float32 (float16 at opset >= 23,
       bfloat16), and every Q/DQ ``scan_qdq`` did not understand (with a warning each).
    8. Invalid parameters: :class:`QuantizationError` naming the node; nothing is changed.

    A second run finds no folded weight (biases aside) and reports ``modified=False``.
    """

    argument = "unfold-qdq"
    summary = "Unfold stored weight codes into QuantizeLinear(float weight) -> DequantizeLinear"
    Options = UnfoldQdqOptions
    statistics = {
        "num-unfolded": "DequantizeLinear nodes whose stored codes became a Q of a float weight",
        "num-biases-kept": "int32 bias DequantizeLinear nodes left folded",
        "num-codes-changed": "weights from float-model whose nearest rounding differs from the stored codes",
        "num-skipped": "Q/DQ nodes left alone (not understood, or not unfoldable bit-exactly)",
    }

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        scan = scan_points(self, model)
        self.bump("num-biases-kept", sum(1 for p in scan.points if p.kind == "bias"))
        folded = [p for p in scan.points if p.kind == "folded_weight"]
        if not folded:
            return onnx_ir.passes.PassResult(model, False)

        matcher = None
        if self.options.float_model is not None:
            from qdq_passes.model_io import load_model

            matcher = _StructureMatcher(model, load_model(self.options.float_model))

        # Decide everything (and raise on any mismatch) before the first change.
        plans = []
        for group, shared in _groups(folded):
            reason = _not_unfoldable(model, group[0])
            if reason is not None:
                logger.warning("unfold-qdq: left %s alone: %s", node_label(group[0].dq), reason)
                self.bump("num-skipped", len(group))
                continue
            stored = group[0].source
            codes = constant_array(stored)
            assert codes is not None
            spec = group[0].spec
            if matcher is not None:
                weight = matcher.float_weight([p.dq for p in group], codes, spec)
                changed = not _same_codes(spec.quantize(weight), codes)
                if changed:
                    logger.warning(
                        "unfold-qdq: %s: the stored codes differ (by one) from the float weight's nearest "
                        "rounding; the new QuantizeLinear rounds to nearest", node_label(group[0].dq))
                    self.bump("num-codes-changed")
            else:
                weight = spec.dequantize(codes)
                if not _same_codes(spec.quantize(weight), codes):
                    logger.warning("unfold-qdq: left %s alone: its dequantized weight does not quantize back "
                                   "to the stored codes", node_label(group[0].dq))
                    self.bump("num-skipped", len(group))
                    continue
            plans.append((group, shared, weight))

        graph = model.graph  # new initializers go to the main graph, seen from every subgraph
        taken = value_names(model)
        for group, shared, weight in plans:
            self._unfold(graph, taken, group, shared, weight)
            self.bump("num-unfolded", len(group))
        return onnx_ir.passes.PassResult(model, bool(plans))

    @staticmethod
    def _unfold(
        graph: onnx_ir.Graph, taken: set[str], group: list[QPoint], shared: bool, weight: np.ndarray
    ) -> None:
        first = group[0]
        stored = first.source
        spec = first.spec
        base = float_name(stored.name or "weight")
        w_name = fresh_name(base, taken)
        w_value = add_initializer(graph, w_name, np.ascontiguousarray(weight))
        dq = first.dq
        scale = dq.inputs[1]
        zero_point = dq.inputs[2] if len(dq.inputs) > 2 else None
        if zero_point is None and spec.qdtype != onnx_ir.DataType.UINT8:
            zp_name = fresh_name(f"{base}_zero_point", taken)
            zeros = np.zeros(spec.scale.shape, storage_dtype(spec.qdtype))
            zero_point = add_initializer(graph, zp_name, zeros, spec.qdtype)
        attributes = [dq.attributes[key] for key in ("axis", "block_size") if key in dq.attributes]
        q_out = onnx_ir.Value(
            name=fresh_name(f"{base}_QuantizeLinear_Output", taken),
            shape=onnx_ir.Shape(weight.shape),
            type=onnx_ir.TensorType(spec.qdtype),
        )
        inputs = [w_value, scale] + ([zero_point] if zero_point is not None else [])
        q = onnx_ir.Node(
            dq.domain, "QuantizeLinear", inputs, attributes, outputs=[q_out], name=f"{q_out.name}_node"
        )
        dq.graph.insert_before(dq, q)
        if shared:
            stored.replace_all_uses_with(q_out)
        else:
            for point in group:
                point.dq.replace_input_with(0, q_out)
        remove_if_unused(stored)


def _groups(folded: list[QPoint]) -> list[tuple[list[QPoint], bool]]:
    """Group DQs by stored tensor and parameters; ``shared``: the group holds every use of the tensor."""
    groups: list[list[QPoint]] = []
    by_source: dict[onnx_ir.Value, list[list[QPoint]]] = {}
    for point in folded:
        candidates = by_source.setdefault(point.source, [])
        for group in candidates:
            if same_spec(group[0].spec, point.spec):
                group.append(point)
                break
        else:
            candidates.append([point])
            groups.append(candidates[-1])
    result = []
    for group in groups:
        stored = group[0].source
        dqs = {p.dq for p in group}
        shared = not stored.is_graph_output() and len({p.dq.graph for p in group}) == 1 and all(
            use.node in dqs and use.idx == 0 for use in stored.uses()
        )
        if not shared and len(group) > 1:
            result.extend(([p], False) for p in group)  # one Q per DQ, the tensor's other uses kept
        else:
            result.append((group, shared))
    return result


def _not_unfoldable(model: onnx_ir.Model, point: QPoint) -> str | None:
    dq = point.dq
    output_dtype = dq.attributes.get("output_dtype")
    scale_type = onnx_ir.DataType.from_numpy(point.spec.scale.dtype)
    if output_dtype is not None and output_dtype.as_int() not in (0, scale_type):
        return f"its output_dtype {onnx_ir.DataType(output_dtype.as_int()).name} differs from its scale's type"
    return reference_quantize_problem(model, dq, scale_type)


def _same_codes(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality of two code arrays (NaN float8 codes compare by their bits)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------- structure matching


def _is_constant(value: onnx_ir.Value | None) -> bool:
    if value is None:
        return False
    if value.const_value is not None and not value.is_graph_input():
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant" and producer.domain == ""


def _is_static(value: onnx_ir.Value | None, depth: int = 0) -> bool:
    """A constant, or computed from one through Q/DQ nodes only (a quantized weight or bias)."""
    if value is None:
        return False
    if _is_constant(value):
        return True
    producer = value.producer()
    if producer is None or depth > 8 or not (is_quantize(producer) or is_dequantize(producer)):
        return False
    return _is_static(producer.inputs[0], depth + 1)


def _slot_index(graph: onnx_ir.Graph, static: Callable[[onnx_ir.Value | None], bool]) -> dict[_SlotKey, list[onnx_ir.Node]]:
    """For each (domain, op_type, slot): the nodes, in graph order, whose input at that slot is static."""
    index: dict[_SlotKey, list[onnx_ir.Node]] = {}
    for node in onnx_ir.traversal.RecursiveGraphIterator(graph):
        for slot, value in enumerate(node.inputs):
            if static(value):
                index.setdefault((node.domain, node.op_type, slot), []).append(node)
    return index


def _ranks(index: dict[_SlotKey, list[onnx_ir.Node]]) -> dict[tuple[onnx_ir.Node, int], int]:
    """(node, slot) -> its rank among the nodes of its (domain, op_type, slot) list."""
    return {(node, key[2]): rank for key, nodes in index.items() for rank, node in enumerate(nodes)}


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class _StructureMatcher:
    """Finds a folded DQ's original float weight in a reference float model by graph structure."""

    def __init__(self, model: onnx_ir.Model, float_model: onnx_ir.Model) -> None:
        self.qdq_ranks = _ranks(_slot_index(model.graph, _is_static))
        self.float_index = _slot_index(float_model.graph, _is_constant)
        self.float_model = float_model  # keeps lazily loaded tensors alive

    def float_weight(self, dqs: Sequence[onnx_ir.Node], codes: np.ndarray, spec: QuantSpec) -> np.ndarray:
        """The matched float weight of these DQs (which share stored codes and parameters)."""
        found: np.ndarray | None = None
        first_where = ""
        for dq in dqs:
            uses = list(dq.outputs[0].uses())
            if not uses:
                raise QuantizationError(
                    f"node {node_label(dq)}: its output feeds no node, so no float weight can be matched by structure"
                )
            for use in uses:
                consumer, slot = use.node, use.idx
                key = (consumer.domain, consumer.op_type, slot)
                where = f"node {node_label(dq)} feeding {node_label(consumer)} input {slot}"
                rank = self.qdq_ranks[(consumer, slot)]
                candidates = self.float_index.get(key, [])
                op = f"{consumer.domain + '.' if consumer.domain else ''}{consumer.op_type}"
                if rank >= len(candidates):
                    raise QuantizationError(
                        f"{where}: the float model has {len(candidates)} {op} node(s) with a constant at input "
                        f"{slot}, this is the {_ordinal(rank + 1)}; the models' structures do not match"
                    )
                float_node = candidates[rank]
                value = float_node.inputs[slot]
                array = constant_array(value)
                assert array is not None and value is not None
                name = f"float model node {node_label(float_node)} input {slot} '{value.name}'"
                self._check(where, name, array, codes, spec)
                if found is None:
                    found, first_where = np.array(array), where
                elif found.tobytes() != array.tobytes() or found.shape != array.shape:
                    raise QuantizationError(
                        f"{where}: the float model has different weights here ({name}) and at {first_where}, "
                        "which share stored codes"
                    )
        assert found is not None
        return found

    @staticmethod
    def _check(where: str, name: str, array: np.ndarray, codes: np.ndarray, spec: QuantSpec) -> None:
        if array.dtype != spec.scale.dtype:
            raise QuantizationError(f"{where}: {name} is {array.dtype}, but the scale is {spec.scale.dtype}")
        if array.shape != codes.shape:
            raise QuantizationError(
                f"{where}: {name} has shape {list(array.shape)}, but the stored codes have shape {list(codes.shape)}"
            )
        requantized = spec.quantize(array)
        if spec.is_float8:
            if not _same_codes(requantized, codes):
                raise QuantizationError(f"{where}: {name} does not quantize to the stored float8 codes")
            return
        diff = np.abs(requantized.astype(np.int64) - codes.astype(np.int64))
        worst = int(diff.max()) if diff.size else 0
        if worst > 1:
            at = tuple(int(i) for i in np.unravel_index(int(diff.argmax()), diff.shape))
            raise QuantizationError(
                f"{where}: {name} quantizes to codes that differ from the stored ones by up to {worst} "
                f"(at {list(at)}); at most 1 is allowed (AdaRound), so it is not this weight's float original"
            )
