"""``lower-qdq``: dialect quantizer nodes back to standard QuantizeLinear/DequantizeLinear.

The result holds no ``qdq_passes`` node, function or opset import, and runs in onnxruntime bit
for bit as the dialect model did.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import numpy as np
import onnx
import onnx.version_converter
import onnx_ir
from onnx_ir.passes.common import InlinePass

from qdq_passes.infra.errors import QuantizationError
from qdq_passes.infra.options import PassOptions, option
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.registry import register_pass
from qdq_passes.ir import dialect
from qdq_passes.ir.qdq import InvalidQdq, add_initializer, constant_array, node_label, remove_if_unused
from qdq_passes.ir.quant import QuantSpec, storage_dtype

__all__ = ["LowerQdqOptions", "LowerQdqPass", "MIN_OPSET", "MAX_OPSET"]

logger = logging.getLogger(__name__)

#: The opsets lower-qdq emits: QuantizeLinear exists from 10; onnxruntime 1.32 has no Q/DQ kernel at 28.
MIN_OPSET, MAX_OPSET = 10, 25


@dataclasses.dataclass(frozen=True)
class LowerQdqOptions(PassOptions):
    """Options of ``lower-qdq``."""

    opset: int = option(21, f"lowest default-domain opset of the result ({MIN_OPSET}-{MAX_OPSET}); a model below it is converted up, never down",
                        at_least=MIN_OPSET, at_most=MAX_OPSET)
    weights: Literal["pair", "folded"] = option(
        "pair",
        "constant weights: pair = Q -> DQ (stored codes as Q(dequantized) -> DQ, int32 biases excepted), "
        "folded = integer initializer -> DQ",
    )



@dataclasses.dataclass
class _Plan:
    """How one quantizer node is lowered (decided before anything changes)."""

    node: onnx_ir.Node
    params: dialect.QuantizerParams
    form: Literal["pair", "codes", "dq", "pair-from-codes", "inline"]
    spec: QuantSpec | None = None
    array: np.ndarray | None = None  # the constant x, where the form needs it


@register_pass
class LowerQdqPass(QdqPass):
    """Lower every dialect quantizer node to standard Q/DQ at the chosen opset.

    1. Not folded (``INTQuantizer``, ``AdaroundINTQuantizer`` with ``rounding="nearest"``, float8
       ``FPQuantizer``): ``Q -> DQ`` on ``x``; with ``weights=folded`` and a constant float ``x``,
       an integer initializer ``<x>_quantized`` of the codes (``QuantSpec.quantize``; int4/uint4 as
       ml_dtypes arrays) behind a DQ, and the float weight is dropped when nothing else uses it.
    2. Folded (``q_folded=1``): a DQ of the stored tensor as it is (an int4 range in an int8
       container stays int8). With ``weights=pair`` and a constant integer ``x``:
       ``Q(<x>_dequantized) -> DQ``, which round-trips exactly (checked; a code that would not
       stays DQ-only); int32 biases always stay DQ-only.
    3. float16/bfloat16 ``FPQuantizer``: no standard Q/DQ exists, so its function body (the cast
       sequence) is inlined.
    4. Opset: each emitted Q/DQ needs an opset (per-axis 13, float8 19, int4/uint4/int16/uint16
       and blocked 21); one needing more than ``max(model opset, opset)`` is an error naming the
       node, raised before anything changes.
    5. The dialect functions and the ``qdq_passes`` opset import are removed. Then, if the
       model's default-domain opset is below ``opset``, the whole model is converted with
       ``onnx.version_converter`` (after the dialect is gone; the graph object is replaced) and
       ``ir_version`` raised to match. This rule also applies to a model with no dialect nodes:
       ``lower-qdq`` then only raises the opset (a second run is a no-op).
    6. The lowered DQ's output keeps the quantizer's output name (graph outputs keep theirs).
    7. Invalid parameters or out-of-range stored codes raise ``QuantizationError`` naming the node.
    """

    argument = "lower-qdq"
    summary = "Lower qdq_passes quantizer nodes to standard QuantizeLinear/DequantizeLinear"
    Options = LowerQdqOptions
    statistics = {
        "num-pairs": "quantizers lowered to a Q -> DQ pair",
        "num-folded": "float weights quantized into an integer initializer -> DQ",
        "num-dequantize": "folded quantizers lowered to a DQ of their stored codes",
        "num-inlined": "float16/bfloat16 FPQuantizers inlined as casts",
        "num-opset-converted": "1 when the model's default-domain opset was converted up",
    }

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        model_opset = model.opset_imports.get("", 1)
        target = max(model_opset, self.options.opset)
        plans = [self._plan(node, target) for node in dialect.quantizer_nodes(model)]
        modified = False
        names = _Names(model)
        inline = [p for p in plans if p.form == "inline"]
        for plan in plans:
            if plan.form != "inline":
                self._lower(plan, names)
                modified = True
        if inline:
            self._inline(model)
            self.bump("num-inlined", len(inline))
            modified = True
        modified |= dialect.remove_unused_functions(model)
        if model_opset < self.options.opset:
            _convert_opset(model, self.options.opset)
            self.bump("num-opset-converted")
            logger.info("%s: default-domain opset converted from %d to %d", self.argument, model_opset, self.options.opset)
            modified = True
        return onnx_ir.passes.PassResult(model, modified)

    # -- planning (no change to the model)

    def _plan(self, node: onnx_ir.Node, target: int) -> _Plan:
        label = node_label(node)
        try:
            params = dialect.quantizer_params(node)
            spec = None if params.qdtype in dialect.CAST_QDTYPES else dialect.quantizer_spec(node)
        except InvalidQdq as exc:
            raise QuantizationError(str(exc)) from None
        x = node.inputs[0]
        array = constant_array(x)
        if params.qdtype in dialect.CAST_QDTYPES:
            plan = _Plan(node, params, "inline")
            needs = dialect.min_qdq_opset(None, params.granularity)
            if params.qdtype == onnx_ir.DataType.BFLOAT16:
                needs = max(needs, (13, "Cast to BFLOAT16"))
        elif not params.q_folded:
            use_codes = self.options.weights == "folded" and array is not None and array.dtype.kind == "f"
            plan = _Plan(node, params, "codes" if use_codes else "pair", spec, array if use_codes else None)
            needs = dialect.min_qdq_opset(params.qdtype, params.granularity)
        else:
            pair = (
                self.options.weights == "pair"
                and params.qdtype != onnx_ir.DataType.INT32
                and array is not None
                and _round_trips(spec, array)
            )
            if self.options.weights == "pair" and array is not None and not pair and params.qdtype != onnx_ir.DataType.INT32:
                logger.info("%s: %s stays DQ-only: its codes do not round-trip through Q", self.argument, label)
            plan = _Plan(node, params, "pair-from-codes" if pair else "dq", spec, array if pair else None)
            stored = params.qdtype if pair else x.dtype
            needs = dialect.min_qdq_opset(stored, params.granularity)
        if needs[0] > target:
            raise QuantizationError(
                f"node {label}: {needs[1]} need default-domain opset {needs[0]}, above {target}; "
                f"run {self.argument}{{opset={needs[0]}}}"
            )
        return plan

    # -- rewriting

    def _lower(self, plan: _Plan, names: _Names) -> None:
        node, params = plan.node, plan.params
        graph = node.graph
        assert graph is not None
        x, scale, zp = node.inputs
        old_out = node.outputs[0]
        attrs = _qdq_attributes(params)
        new_nodes: list[onnx_ir.Node] = []
        if plan.form == "pair":
            q = onnx_ir.Node("", "QuantizeLinear", [x, scale, zp], attrs, num_outputs=1)
            q.outputs[0].name = names.fresh(f"{old_out.name or 'x'}_quantized")
            new_nodes += [q, onnx_ir.Node("", "DequantizeLinear", [q.outputs[0], scale, zp], attrs, num_outputs=1)]
            self.bump("num-pairs")
        elif plan.form == "codes":
            assert plan.spec is not None and plan.array is not None
            codes = plan.spec.quantize(plan.array)
            codes_value = names.initializer(graph, f"{x.name or 'weight'}_quantized", codes, plan.spec.qdtype)
            new_nodes.append(onnx_ir.Node("", "DequantizeLinear", [codes_value, scale, zp], attrs, num_outputs=1))
            self.bump("num-folded")
        elif plan.form == "dq":
            new_nodes.append(onnx_ir.Node("", "DequantizeLinear", [x, scale, zp], attrs, num_outputs=1))
            self.bump("num-dequantize")
        else:  # pair-from-codes
            assert plan.spec is not None and plan.array is not None
            floats = plan.spec.dequantize(plan.array)
            float_value = names.initializer(graph, f"{x.name or 'weight'}_dequantized", floats, onnx_ir.DataType.from_numpy(floats.dtype))
            qzp = zp
            if zp.dtype != plan.spec.qdtype:  # a container: Q must clamp to qdtype's own range
                qzp = names.initializer(graph, f"{zp.name or 'zero_point'}_{plan.spec.qdtype.name.lower()}",
                                        plan.spec.zero_point, plan.spec.qdtype)
            q = onnx_ir.Node("", "QuantizeLinear", [float_value, scale, qzp], attrs, num_outputs=1)
            q.outputs[0].name = names.fresh(f"{old_out.name or 'x'}_quantized")
            new_nodes += [q, onnx_ir.Node("", "DequantizeLinear", [q.outputs[0], scale, qzp], attrs, num_outputs=1)]
            self.bump("num-pairs")
        onnx_ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, [old_out], [new_nodes[-1].outputs[0]])
        if plan.form in ("codes", "pair-from-codes"):
            remove_if_unused(x)
        node.meta.pop("qdq_passes.quantizer", None)

    def _inline(self, model: onnx_ir.Model) -> None:
        """Inline the float16/bfloat16 FPQuantizer functions (the only dialect nodes left)."""
        try:
            dialect.ensure_functions(model)
        except InvalidQdq as exc:
            raise QuantizationError(str(exc)) from None
        InlinePass(criteria=lambda f: f.domain == dialect.DOMAIN)(model)


def _qdq_attributes(params: dialect.QuantizerParams) -> list[onnx_ir.Attr]:
    attrs = []
    if params.axis is not None:
        attrs.append(onnx_ir.AttrInt64("axis", params.axis))
    if params.block_size > 0:
        attrs.append(onnx_ir.AttrInt64("block_size", params.block_size))
    return attrs


def _round_trips(spec: QuantSpec | None, codes: np.ndarray) -> bool:
    """Whether ``Q(DQ(codes)) == codes`` under ``spec`` (so a Q/DQ pair is exact)."""
    if spec is None or spec.qdtype == onnx_ir.DataType.INT32:
        return False
    again = spec.quantize(spec.dequantize(codes))
    return bool(np.array_equal(again.astype(np.float64), codes.astype(np.float64), equal_nan=True))


class _Names:
    """Fresh, deterministic value names for one model, and initializers reused when identical."""

    def __init__(self, model: onnx_ir.Model) -> None:
        self.taken: set[str] = set()
        for graph in model.graphs():
            self.taken.update(graph.initializers)
            self.taken.update(v.name for v in graph.inputs if v.name)
            self.taken.update(v.name for n in graph for v in n.outputs if v.name)

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name = f"{base}_{i}"
            i += 1
        self.taken.add(name)
        return name

    def initializer(self, graph: onnx_ir.Graph, base: str, array: np.ndarray, dtype: onnx_ir.DataType) -> onnx_ir.Value:
        """An initializer holding ``array`` as ``dtype``: an identical existing one, else a new one."""
        array = np.asarray(array)
        if dtype != onnx_ir.DataType.from_numpy(array.dtype):
            array = array.astype(storage_dtype(dtype))
        name, i = base, 1
        while True:
            existing = graph.initializers.get(name)
            if existing is not None and existing.const_value is not None and existing.dtype == dtype:
                old = existing.const_value.numpy()
                if old.shape == array.shape and old.tobytes() == array.tobytes():
                    return existing
            if existing is None and name not in self.taken:
                break
            name = f"{base}_{i}"
            i += 1
        self.taken.add(name)
        return add_initializer(graph, name, array, dtype)




def _convert_opset(model: onnx_ir.Model, target: int) -> None:
    """Convert the default-domain opset up to ``target`` in place (onnx.version_converter).

    The model goes through a ModelProto (so the 2 GB protobuf limit applies to in-memory
    tensors); initializers come back as the original tensor objects (external data stays lazy).
    """
    tensors = {name: v.const_value for name, v in model.graph.initializers.items() if v.const_value is not None}
    proto = onnx_ir.to_proto(model)
    try:
        converted = onnx.version_converter.convert_version(proto, target)
    except Exception as exc:  # noqa: BLE001 - the converter raises assorted C++ errors
        raise QuantizationError(f"converting the model to opset {target} failed: {' '.join(str(exc).split())}") from None
    new = onnx_ir.from_proto(converted)
    for name, value in new.graph.initializers.items():
        old = tensors.get(name)
        if old is not None and value.const_value is not None and old.dtype == value.const_value.dtype and old.shape == value.const_value.shape:
            value.const_value = old
    model.graph = new.graph
    model.functions.clear()
    model.functions.update(new.functions)
    min_ir = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", target)], ignore_unknown=True)
    model.ir_version = max(model.ir_version, min_ir)
