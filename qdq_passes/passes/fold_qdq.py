"""``fold-qdq``: constant float weights behind ``QuantizeLinear -> DequantizeLinear`` become stored codes.

The seed's *q_folded* form, as onnxruntime and Quark store weights: ``DQ(W int const)``.
"""

from __future__ import annotations

import logging

import onnx_ir

from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.registry import register_pass
from qdq_passes.points import scan_points
from qdq_passes.ir.qdq import (
    QPoint,
    add_initializer,
    constant_array,
    fresh_name,
    is_dequantize,
    node_label,
    reference_quantize_problem,
    remove_if_unused,
    value_names,
)

__all__ = ["FoldQdqPass"]

logger = logging.getLogger(__name__)


@register_pass
class FoldQdqPass(QdqPass):
    """Fold ``QuantizeLinear(W float const) -> DequantizeLinear`` into ``DequantizeLinear(W int const)``.

    Works on every graph, subgraphs (If/Loop/Scan bodies) included; new initializers go to the
    main graph, which every subgraph sees.

    1. A weight point (``scan_qdq`` kind ``weight``: a Q of a constant float tensor, an initializer
       or a Constant node's output, feeding DQs with the same parameters): the codes
       ``spec.quantize(W)`` (the numpy reference, bit-exact with onnxruntime's Q) become a new
       initializer named ``<W>_quantized`` (``_1``, ``_2``, ... when taken); every DQ of the Q takes
       it as input and keeps its scale, zero point, attributes and domain (``com.microsoft`` too).
       int4/uint4 codes are stored as 4-bit tensors (packed two per byte, low nibble first, on save).
    2. The Q is removed; so are the float W and the Q's own scale/zero point when nothing else uses
       them. A W that is a graph output or feeds other nodes stays.
    3. A Q that also feeds a DQ ``scan_qdq`` did not understand (e.g. with other parameters): left
       alone with all its DQs, counted in ``num-skipped``.
    4. A Q whose division onnxruntime does not do in float32 (float16 at opset >= 23 without
       ``precision``, bfloat16): left alone, counted in ``num-skipped`` (folding could change codes).
    5. Activation pairs, already folded weights and int32 biases: untouched.
    6. Q/DQ nodes ``scan_qdq`` did not understand (non-constant parameters, DQ parameters that
       differ from the Q's, ...): left alone, counted in ``num-skipped`` with a warning each.
    7. Invalid parameters (zero, negative, NaN or Inf scale, a zero point whose type disagrees with
       the Q/DQ's): :class:`QuantizationError` naming the node; nothing is changed.

    A second run finds no weight pair and reports ``modified=False``.
    """

    argument = "fold-qdq"
    summary = "Fold constant weight Q->DQ pairs into stored integer codes behind the DQ"
    statistics = {
        "num-folded": "DequantizeLinear nodes whose weight Q was folded into stored codes",
        "num-skipped": "Q/DQ nodes left alone (not understood, or not foldable bit-exactly)",
    }

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        scan = scan_points(self, model)

        by_q: dict[onnx_ir.Node, list[QPoint]] = {}
        for point in scan.points:
            if point.kind == "weight" and point.q is not None:
                by_q.setdefault(point.q, []).append(point)

        taken = value_names(model)
        modified = False
        for q, points in by_q.items():
            reason = self._not_foldable(model, q, points)
            if reason is not None:
                logger.warning("fold-qdq: left %s alone: %s", node_label(q), reason)
                self.bump("num-skipped", len(points))
                continue
            weight = q.inputs[0]
            assert weight is not None
            array = constant_array(weight)
            assert array is not None
            codes = points[0].spec.quantize(array)
            name = fresh_name(f"{weight.name or 'weight'}_quantized", taken)
            stored = add_initializer(model.graph, name, codes)  # the main graph's: seen from every subgraph
            q.outputs[0].replace_all_uses_with(stored)
            params = list(q.inputs)
            q.graph.remove(q, safe=True)
            for value in params:
                remove_if_unused(value)
            self.bump("num-folded", len(points))
            modified = True
        return onnx_ir.passes.PassResult(model, modified)

    @staticmethod
    def _not_foldable(model: onnx_ir.Model, q: onnx_ir.Node, points: list[QPoint]) -> str | None:
        """Why this weight Q cannot be folded bit-exactly, or None."""
        ours = {p.dq for p in points}
        for use in q.outputs[0].uses():
            if not is_dequantize(use.node) or use.node not in ours:
                return f"its output also feeds {node_label(use.node)}, which is not an understood DequantizeLinear"
        array = constant_array(q.inputs[0])
        assert array is not None
        return reference_quantize_problem(model, q, onnx_ir.DataType.from_numpy(array.dtype))
