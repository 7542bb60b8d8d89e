"""``insert-quantizers``: every understood Q/DQ quantization point becomes a ``qdq_passes`` quantizer node.

The dialect nodes carry model-local functions equal to the Q/DQ they replace, so onnxruntime runs
the result bit-identically to the input (see :mod:`qdq_passes.ir.dialect`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import numpy as np
import onnx_ir

from qdq_passes.infra.errors import OptionError, PreconditionFailed, QuantizationError
from qdq_passes.infra.options import PassOptions, option
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.registry import register_pass
from qdq_passes.points import scan_points
from qdq_passes.ir import dialect
from qdq_passes.ir.qdq import InvalidQdq, QPoint, add_initializer, is_dequantize, node_label
from qdq_passes.ir.quant import storage_dtype

__all__ = ["InsertQuantizersOptions", "InsertQuantizersPass"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InsertQuantizersOptions(PassOptions):
    """Options of ``insert-quantizers``."""

    weights: Literal["int", "adaround"] = option(
        "int",
        "integer weight quantizers: int = INTQuantizer, adaround = AdaroundINTQuantizer (nearest rounding until AdaRound runs)",
    )
    adaround_ops: tuple[str, ...] = option(
        (), "with weights=adaround: only weights read by these op types (e.g. [Conv,Gemm,MatMul]) get "
        "AdaroundINTQuantizer, the others INTQuantizer (nearest rounding, never trained); empty: every weight")
    float_model: str | None = option(
        None,
        "reference float model: folded weights first get their original float weights back (as unfold-qdq "
        "does, matched by graph structure), so AdaRound can round them again",
        input_path=True,
    )

    def validate(self) -> None:
        if self.adaround_ops and self.weights != "adaround":
            raise OptionError("option 'adaround-ops' needs weights=adaround", key="adaround-ops")


@register_pass
class InsertQuantizersPass(QdqPass):
    """Replace each quantization point found by ``scan_qdq`` by one dialect quantizer node.

    1. Activation ``Q -> DQ``: ``INTQuantizer(x, scale, zero_point)`` replaces the DQ (one per DQ:
       a Q shared by several DQs gives one quantizer each); the Q is removed once unused.
    2. Weight ``Q(W float constant) -> DQ``: ``INTQuantizer(W, ...)``, or with ``weights=adaround``
       ``AdaroundINTQuantizer(W, ..., rounding="nearest")`` (with ``adaround-ops``, only where every
       op reading it is one of those).
    3. Folded weight ``DQ(W integer constant)``: the same ops with ``q_folded=1`` on the stored codes.
    4. int32 bias ``DQ``: ``INTQuantizer(q_folded=1, qdtype=INT32)``, never AdaRound.
    5. float8 points: ``FPQuantizer`` when it is exact (``saturate=1``, float32 scale and input);
       otherwise left alone and counted as skipped.
    6. ``com.microsoft`` Q/DQ map to the same ops as standard ones.
    7. Not understood Q/DQ (non-constant parameters, a Q also feeding other nodes or a graph
       output, DQ parameters differing from the Q's, ...): left alone, counted in ``num-skipped``
       and logged with the reason.
    8. The new nodes reuse the existing scale and zero-point values (a zero ``zero_point``
       initializer is added where the Q/DQ had none); the quantizer output takes the DQ output's
       name, so graph output names never change.
    9. The model gets exactly the dialect functions it uses (and the ``qdq_passes`` opset import).
    10. Invalid parameters (zero scale, wrong zero-point type, ...) raise ``QuantizationError``
        naming the node. Only the main graph is scanned.
    11. With ``float-model``, folded weights are first unfolded with the reference model's float
        weights (``unfold-qdq{float-model=...}``, run as a prerequisite), then become non-folded
        quantizers as in 2.

    A second run finds no understood Q/DQ and returns ``modified=False``.
    """

    argument = "insert-quantizers"
    summary = "Turn Q/DQ quantization points into qdq_passes quantizer nodes (runnable via ONNX functions)"
    Options = InsertQuantizersOptions
    statistics = {
        "num-activation": "activation Q/DQ pairs replaced",
        "num-weight": "float weight Q/DQ pairs replaced",
        "num-folded": "folded (integer) weight DQs replaced",
        "num-bias": "int32 bias DQs replaced",
        "num-float8": "float8 points replaced by FPQuantizer (also counted by kind)",
        "num-skipped": "Q/DQ nodes left alone (not understood or not exact)",
    }

    def precondition(self, model: onnx_ir.Model) -> None:
        nodes = list(onnx_ir.traversal.RecursiveGraphIterator(model.graph))
        if not any(is_dequantize(n) or dialect.is_quantizer(n) for n in nodes):
            raise PreconditionFailed("the model has no Q/DQ pairs to turn into quantizers: quantize it first "
                                     "(the 'quantize' pass, or onnxruntime.quantization)")

    def prerequisites(self, model: onnx_ir.Model) -> list[QdqPass]:
        if self.options.float_model is None:
            return []
        from qdq_passes.passes.unfold_qdq import UnfoldQdqPass

        return [UnfoldQdqPass(float_model=self.options.float_model)]

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        scan = scan_points(self, model)
        modified = False
        quantizes: list[onnx_ir.Node] = []
        for point in scan.points:
            reason = _not_exact(point)
            if reason is not None:
                self._skip(point.dq, reason)
                continue
            new = self._quantizer_for(point, model)
            old_out = point.dq.outputs[0]
            onnx_ir.convenience.replace_nodes_and_values(
                point.dq.graph, point.dq, [point.dq], [new], [old_out], [new.outputs[0]]
            )
            if point.q is not None and point.q not in quantizes:
                quantizes.append(point.q)
            self.bump({"activation": "num-activation", "weight": "num-weight",
                       "folded_weight": "num-folded", "bias": "num-bias"}[point.kind])
            if point.spec.is_float8:
                self.bump("num-float8")
            modified = True
        for q in quantizes:
            out = q.outputs[0]
            if not out.uses() and not out.is_graph_output():
                q.graph.remove(q, safe=True)
        try:
            modified |= dialect.ensure_functions(model)
        except InvalidQdq as exc:
            raise QuantizationError(str(exc)) from None
        if not scan.points:
            logger.warning("%s: no Q/DQ pairs left to insert quantizers for (already inserted?); nothing to do",
                           self.argument)
        return onnx_ir.passes.PassResult(model, modified)

    def _skip(self, node: onnx_ir.Node, reason: str) -> None:
        self.bump("num-skipped")
        logger.info("%s: left %s alone: %s", self.argument, node_label(node), reason)

    def _trained(self, point: QPoint) -> bool:
        """Whether ``adaround-ops`` lets AdaRound train this weight: every op reading it is listed."""
        ops = self.options.adaround_ops
        return not ops or all(use.node.op_type in ops for use in point.dq.outputs[0].uses())

    def _quantizer_for(self, point: QPoint, model: onnx_ir.Model) -> onnx_ir.Node:
        spec = point.spec
        folded = point.q is None
        if spec.is_float8:
            op = dialect.FP_QUANTIZER
        elif point.kind in ("weight", "folded_weight") and self.options.weights == "adaround" and self._trained(point):
            op = dialect.ADAROUND_QUANTIZER
        else:
            op = dialect.INT_QUANTIZER
        scale = point.dq.inputs[1]
        assert scale is not None
        zp = _input(point.dq, 2) or (_input(point.q, 2) if point.q is not None else None)
        if zp is None:
            zp = _zero_point(model.graph, scale, spec.qdtype, np.zeros(np.shape(spec.scale), storage_dtype(spec.qdtype)))
        return dialect.make_quantizer(
            point.source,
            scale,
            zp,
            op=op,
            axis=1 if spec.axis is None else spec.axis,
            block_size=spec.block_size,
            qdtype=spec.qdtype,
            q_folded=folded,
        )


def _input(node: onnx_ir.Node, index: int) -> onnx_ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _not_exact(point: QPoint) -> str | None:
    """Why a float8 point has no exact FPQuantizer (None when it has one, or is not float8)."""
    spec = point.spec
    if not spec.is_float8:
        return None
    if not spec.saturate:
        return "float8 with saturate=0 has no exact FPQuantizer (the dialect's cast saturates)"
    if spec.scale.dtype != np.float32:
        return f"FPQuantizer needs a float32 scale, this {spec.qdtype.name} point has {spec.scale.dtype}"
    if point.q is not None and point.source.dtype not in (None, onnx_ir.DataType.FLOAT):
        return f"FPQuantizer needs a float32 input, got {point.source.dtype.name}"
    return None


def _zero_point(graph: onnx_ir.Graph, scale: onnx_ir.Value, qdtype: onnx_ir.DataType, zeros: np.ndarray) -> onnx_ir.Value:
    """A zero zero-point initializer named from the scale (reused when it already exists)."""
    base = f"{scale.name or 'scale'}_zero_point_{qdtype.name.lower()}"
    taken = {v.name for n in graph for v in n.outputs} | {v.name for v in graph.inputs}
    name, i = base, 1
    while name in graph.initializers or name in taken:
        existing = graph.initializers.get(name)
        tensor = existing.const_value if existing is not None else None
        if tensor is not None and existing.dtype == qdtype and tensor.numpy().shape == zeros.shape and not tensor.numpy().astype(np.float64).any():
            return existing
        name = f"{base}_{i}"
        i += 1
    return add_initializer(graph, name, zeros, qdtype)
