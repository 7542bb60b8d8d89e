"""``quantize``: a float model becomes a QDQ model, laid out as ``onnxruntime.quantization`` lays it out.

The layout, the weight/activation parameters and the int32 biases reproduce
``onnxruntime.quantization.quantize_static(quant_format=QDQ)`` for the same settings (so
onnxruntime's QDQ fusions apply and outputs are bit-identical), minus three of its quirks: Q/DQ are
always standard ops at opset 21 (never ``com.microsoft``), weights held in Constant nodes are
quantized as weights (``constants-to-initializers`` runs first), and blocked weights work on Gemm.

Activation statistics come from onnxruntime's own calibrators (``create_calibrator``) run on a
temporary copy of the model; scales and zero points from onnxruntime's ``compute_scale_zp``,
``compute_data_quant_params`` and ``compute_scale_zp_blocked``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnx.version_converter
import onnx_ir

from qdq_passes.calib import (CalibrationData, calib_batch_axis_option, calib_option, check_batch_axis_option,
                              load_calibration, max_samples_option, parse_batch_axes)
from qdq_passes.passes.cleanup import ConstantsToInitializersPass
from qdq_passes.infra.errors import OptionError, PreconditionFailed, QuantizationError
from qdq_passes.infra.options import PassOptions, option
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.registry import register_pass
from qdq_passes.ir import dialect
from qdq_passes.ir.qdq import (add_initializer, constant_array, fresh_name, is_dequantize, is_quantize, node_label,
                               remove_if_unused, value_names)
from qdq_passes.ir.quant import QuantSpec

__all__ = ["QuantizeOptions", "QuantizePass", "SUPPORTED_OP_TYPES"]

logger = logging.getLogger(__name__)

#: Ops the pass quantizes, with the input index of their weight and of their bias (None: no bias).
SUPPORTED_OP_TYPES: dict[str, int | None] = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "MatMul": None}
TARGET_OPSET = 21

_QTYPES = {
    "int4": onnx_ir.DataType.INT4,
    "uint4": onnx_ir.DataType.UINT4,
    "int8": onnx_ir.DataType.INT8,
    "uint8": onnx_ir.DataType.UINT8,
    "int16": onnx_ir.DataType.INT16,
    "uint16": onnx_ir.DataType.UINT16,
}
_FLOAT = onnx_ir.DataType.FLOAT


@dataclasses.dataclass(frozen=True)
class QuantizeOptions(PassOptions):
    """Options of ``quantize``."""

    weights: Literal["int4", "uint4", "int8", "uint8", "int16"] = option("int8", "weight type")
    weight_granularity: Literal["tensor", "channel", "block"] = option(
        "channel", "weight scales: one per tensor, per output channel (onnxruntime's axes), or per block"
    )
    block_size: int = option(32, "elements per block along the reduction axis (weight-granularity=block)",
                             at_least=1)
    symmetric: bool | None = option(
        None, "symmetric weights; none: onnxruntime's default (signed types and per-channel: symmetric)"
    )
    acts: Literal["uint8", "int8", "uint16", "int16", "none"] = option(
        "uint8", "activation type; none: weight-only (no calibration, biases stay float)"
    )
    calibration: Literal["minmax", "percentile", "entropy", "mse"] = option(
        "minmax", "activation ranges: onnxruntime's MinMax, Percentile or Entropy calibrator, or an MSE search"
    )
    op_types: tuple[str, ...] = option(("Conv", "ConvTranspose", "Gemm", "MatMul"), "op types to quantize")
    exclude: tuple[str, ...] = option((), "node names or op types left in float")
    keep_float_weights: bool = option(True, "weights as float Q->DQ pairs (what AdaRound needs); false: stored codes")
    calib: str | None = calib_option()
    calib_batch_axis: tuple[str, ...] = calib_batch_axis_option()
    max_samples: int = max_samples_option()

    def validate(self) -> None:
        check_batch_axis_option(self.calib_batch_axis)
        unknown = [t for t in self.op_types if t not in SUPPORTED_OP_TYPES]
        if unknown:
            raise OptionError(f"option 'op-types': '{unknown[0]}' is not supported (supported: "
                              f"{', '.join(SUPPORTED_OP_TYPES)})", key="op-types")


@dataclasses.dataclass
class _Weight:
    """A weight initializer to quantize, with the axis its first consumer asks for."""

    value: onnx_ir.Value
    channel_axis: int
    block_axis: int
    spec: QuantSpec | None = None
    dq_out: onnx_ir.Value | None = None


@dataclasses.dataclass
class _Bias:
    """A float bias of one node, with the scale of its int32 codes (``x_scale * w_scale * beta``)."""

    node: onnx_ir.Node
    index: int
    value: onnx_ir.Value
    x_spec: QuantSpec
    weight: _Weight
    beta: float


@register_pass
class QuantizePass(QdqPass):
    """Quantize a float model to QDQ as ``onnxruntime.quantization.quantize_static`` does.

    Works on every graph, subgraphs (If/Loop/Scan bodies) included. For each node whose op type is
    in ``op-types`` and that ``exclude`` does not name (by node name or op type), in graph order:

    1. Inputs 0 and 1 (Conv, ConvTranspose, Gemm, MatMul): a float initializer is a **weight**:
       per tensor, per channel (axis Conv 0, ConvTranspose 1, Gemm 0 if transB else 1, MatMul 1) or
       per block along the reduction axis (MatMul 0, Gemm 1 if transB else 0; rank-2 weights only).
       Anything else is an **activation**.
    2. A weight shared by several nodes is quantized once, with the axis of its first consumer;
       with ``keep-float-weights`` it becomes ``W -> Q -> DQ``, else ``W_quantized -> DQ`` (and the
       float W goes when unused).
    3. Activations (the node's float inputs that are not weights, and its output) get one
       ``Q -> DQ`` pair each, shared by every consumer; a graph output keeps its name on the DQ.
       Parameters come from the calibration ranges (asymmetric, as onnxruntime's default).
    4. A float initializer bias of Conv/ConvTranspose/Gemm becomes int32 codes behind a DQ with
       scale ``x_scale * w_scale`` (Gemm: ``* beta``, then ``beta=1``); a bias shared by nodes gets a
       DQ per node. Weight scales too small for the bias are enlarged as onnxruntime does. Blocked
       weights, ``acts=none`` and non-constant biases leave the bias float.
    5. Constant nodes are lifted to initializers first; a default opset below 21 is converted to 21.
    6. Inside a subgraph, nodes are quantized as in the main graph, each Q/DQ pair in the graph of
       its value (parameters in the main graph). onnxruntime's calibrators measure main-graph values
       only, so in the calibration copy the values computed in the body of a main-graph
       ``If``/``Loop``/``Scan`` are made outputs of that node (:func:`_lift_subgraph_values`); a
       value in a deeper subgraph stays float, counted in one warning.
    7. A model that already holds QuantizeLinear/DequantizeLinear or quantizer nodes: left alone
       (``modified=False``, a warning), so a second run changes nothing.
    8. Errors, raised before anything changes: no node to quantize, missing or mismatched
       calibration data, an unsupported op type in ``op-types``, blocked weights that are not rank 2.
    """

    argument = "quantize"
    summary = "Quantize a float model to QDQ (onnxruntime.quantization's layout, opset 21)"
    Options = QuantizeOptions
    statistics = {
        "num-nodes": "nodes quantized",
        "num-weights": "weights quantized",
        "num-activations": "activation Q/DQ pairs inserted",
        "num-biases": "biases quantized to int32",
        "num-excluded": "nodes of a quantized op type left in float by 'exclude'",
    }

    def precondition(self, model: onnx_ir.Model) -> None:
        if _already_quantized(model) is not None:
            return
        if self.options.acts != "none" and self.options.calib is None:
            raise PreconditionFailed("needs calibration data for activations: give calib=PATH (qdq-opt --calib PATH), or acts=none")

    def prerequisites(self, model: onnx_ir.Model) -> list[QdqPass]:
        """Constant weights become initializers first (``constants-to-initializers``)."""
        return [] if _already_quantized(model) is not None else [ConstantsToInitializersPass()]

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        found = _already_quantized(model)
        if found is not None:
            logger.warning("quantize: the model is already quantized (%s); left alone", node_label(found))
            return onnx_ir.passes.PassResult(model, False)
        opts = self.options
        targets = self._targets(model)
        self._check_blocked(targets)
        data = None
        if opts.acts != "none":
            assert opts.calib is not None
            data = load_calibration(opts.calib, model, max_samples=opts.max_samples or None,
                                    batch_axes=parse_batch_axes(opts.calib_batch_axis))

        _convert_opset(model)
        targets = self._targets(model)  # the same nodes, seen in the converted graph
        weights = self._plan_weights(model, targets)
        inner = {v.name for node in targets for v in self._activation_values(node, weights)
                 if v.graph is not model.graph and v.name}
        ranges = _calibrate(model, data, opts, _outer_reads(model, targets), inner) if data is not None else {}
        acts: dict[onnx_ir.Value, QuantSpec] = {}
        for node in targets:
            for value in self._activation_values(node, weights):
                if value not in acts and value.name in ranges:
                    acts[value] = _activation_spec(ranges[value.name], _QTYPES[opts.acts])
        biases = self._plan_biases(targets, weights, acts)

        unmeasured = sorted(name for name in inner if name not in ranges) if data is not None else []
        if unmeasured:
            logger.warning("quantize: %d activation(s) computed in subgraphs stay float: no calibration sample "
                           "reached them (an If branch not taken, or a deeper subgraph; with calibration other than "
                           "minmax, every If branch), e.g. '%s'", len(unmeasured), unmeasured[0])
        taken = value_names(model)
        self._quantize_weights(model, weights, taken)
        for value, spec in acts.items():
            self._insert_activation_pair(model.graph, value, spec, taken)  # the pair goes beside the value
        for bias in biases:
            self._quantize_bias(model.graph, bias, taken)
        self.bump("num-nodes", len(targets))
        return onnx_ir.passes.PassResult(model, True)

    # ------------------------------------------------------------------ planning

    def _targets(self, model: onnx_ir.Model) -> list[onnx_ir.Node]:
        """The nodes to quantize, in graph order; raises if there are none."""
        wanted = set(self.options.op_types)
        excluded = set(self.options.exclude)
        targets = []
        self.stats["num-excluded"] = 0
        for node in onnx_ir.traversal.RecursiveGraphIterator(model.graph):
            if node.domain not in ("", "ai.onnx") or node.op_type not in wanted:
                continue
            if node.name in excluded or node.op_type in excluded:
                self.bump("num-excluded")
                continue
            targets.append(node)
        if not targets:
            ops = ", ".join(sorted(wanted))
            tail = " (all excluded)" if self.stats["num-excluded"] else ""
            raise QuantizationError(f"quantize: the model has no node to quantize: no {ops} in any graph{tail}")
        return targets

    def _check_blocked(self, targets: list[onnx_ir.Node]) -> None:
        """Blocked weights must be rank 2 (checked before anything changes; Constant weights included)."""
        if self.options.weight_granularity != "block":
            return
        for node in targets:
            for value in node.inputs[:2]:
                array = constant_array(value)
                if value is not None and array is not None and array.dtype == np.float32 and array.ndim != 2:
                    raise QuantizationError(
                        f"quantize: blocked weights need a rank-2 weight; {node_label(node)} has a rank-{array.ndim} "
                        f"weight '{value.name}' (use weight-granularity=channel, or exclude={node.op_type})"
                    )

    def _plan_weights(self, model: onnx_ir.Model, targets: list[onnx_ir.Node]) -> dict[onnx_ir.Value, _Weight]:
        """Every float initializer weight of the targets, with its axes and parameters."""
        weights: dict[onnx_ir.Value, _Weight] = {}
        for node in targets:
            for index in (0, 1):
                value = node.inputs[index] if len(node.inputs) > index else None
                if value is None or value in weights or not _is_float_initializer(value):
                    continue
                channel, block = _weight_axes(node, index, len(value.const_value.shape))  # type: ignore[union-attr]
                weights[value] = w = _Weight(value, channel, block)
                w.spec = _weight_spec(value.const_value.numpy(), _QTYPES[self.options.weights], self.options, w)  # type: ignore[union-attr]
        return weights

    def _plan_biases(self, targets: list[onnx_ir.Node], weights: dict[onnx_ir.Value, _Weight],
                     acts: dict[onnx_ir.Value, QuantSpec]) -> list[_Bias]:
        """The biases to store as int32; enlarges weight scales too small for them (onnxruntime's rule)."""
        biases = []
        for node in targets:
            index = SUPPORTED_OP_TYPES[node.op_type]
            bias = node.inputs[index] if index is not None and len(node.inputs) > index else None
            if bias is None or not acts:
                continue
            if not _is_float_initializer(bias):
                logger.warning("quantize: bias of %s is not a float initializer; left float", node_label(node))
                continue
            x_spec = acts.get(node.inputs[0])  # type: ignore[arg-type]
            w = weights.get(node.inputs[1])  # type: ignore[arg-type]
            if x_spec is None or w is None or w.spec is None or w.spec.granularity == "block":
                continue
            beta_attr = node.attributes.get("beta") if node.op_type == "Gemm" else None
            beta = beta_attr.as_float() if beta_attr is not None else 1.0
            biases.append(_Bias(node, index, bias, x_spec, w, beta))
            w.spec = _adjust_weight_scale(w.spec, x_spec, bias)
        return biases

    def _activation_values(self, node: onnx_ir.Node, weights: dict[onnx_ir.Value, _Weight]) -> Iterator[onnx_ir.Value]:
        """The node's inputs 0 and 1 that are not weights, then its output (onnxruntime's order)."""
        for value in list(node.inputs[:2]) + [node.outputs[0]]:
            if value is not None and value not in weights and not value.is_initializer():
                yield value

    # ------------------------------------------------------------------ rewriting

    def _quantize_weights(self, model: onnx_ir.Model, weights: dict[onnx_ir.Value, _Weight], taken: set[str]) -> None:
        graph = model.graph  # parameters go to the main graph, seen from every subgraph
        qtype = _QTYPES[self.options.weights]
        for w in weights.values():
            array = w.value.const_value.numpy()  # type: ignore[union-attr]
            assert w.spec is not None
            base = w.value.name or "weight"
            scale, zp = _param_initializers(graph, base, w.spec, taken)
            attrs = _axis_attrs(w.spec)
            if self.options.keep_float_weights:
                q_out = onnx_ir.Value(name=fresh_name(f"{base}_QuantizeLinear_Output", taken), type=onnx_ir.TensorType(qtype),
                                      shape=w.value.shape)
                q = onnx_ir.Node("", "QuantizeLinear", [w.value, scale, zp], attrs, outputs=[q_out],
                                 name=fresh_name(f"{base}_QuantizeLinear", taken))
                stored = q_out
                new = [q]
            else:
                codes = w.spec.quantize(array)
                stored = add_initializer(graph, fresh_name(f"{base}_quantized", taken), codes)
                new = []
            dq_out = onnx_ir.Value(name=fresh_name(f"{base}_DequantizeLinear_Output", taken),
                                   type=onnx_ir.TensorType(_FLOAT), shape=w.value.shape)
            dq = onnx_ir.Node("", "DequantizeLinear", [stored, scale, zp], attrs, outputs=[dq_out],
                              name=fresh_name(f"{base}_DequantizeLinear", taken))
            new.append(dq)
            for use in list(w.value.uses()):
                if use.node is not new[0]:
                    use.node.replace_input_with(use.idx, dq_out)
            _insert_at_start(w.value.graph or graph, new)  # in the graph owning the weight
            if not self.options.keep_float_weights:
                remove_if_unused(w.value)
            w.dq_out = dq_out
            self.bump("num-weights")

    def _insert_activation_pair(self, graph: onnx_ir.Graph, value: onnx_ir.Value, spec: QuantSpec,
                                taken: set[str]) -> None:
        base = value.name or "activation"
        scale, zp = _param_initializers(graph, base, spec, taken)
        q_out = onnx_ir.Value(name=fresh_name(f"{base}_QuantizeLinear_Output", taken), type=onnx_ir.TensorType(spec.qdtype),
                              shape=value.shape)
        dq_out = onnx_ir.Value(name=fresh_name(f"{base}_DequantizeLinear_Output", taken), type=value.type, shape=value.shape)
        is_output = value.is_graph_output()
        value.replace_all_uses_with(dq_out, replace_graph_outputs=True)  # before the Q reads value
        q = onnx_ir.Node("", "QuantizeLinear", [value, scale, zp], outputs=[q_out], name=fresh_name(f"{base}_QuantizeLinear", taken))
        dq = onnx_ir.Node("", "DequantizeLinear", [q_out, scale, zp], outputs=[dq_out],
                          name=fresh_name(f"{base}_DequantizeLinear", taken))
        if is_output:  # the graph output keeps its name, now on the DQ (as onnxruntime does)
            value.name = fresh_name(f"{base}_QuantizeLinear_Input", taken)
            dq_out.name = base
        producer = value.producer()
        if producer is None:
            _insert_at_start(value.graph or graph, [q, dq])
        else:
            producer.graph.insert_after(producer, [q, dq])
        self.bump("num-activations")

    def _quantize_bias(self, graph: onnx_ir.Graph, bias: _Bias, taken: set[str]) -> None:
        """``bias_quantized (int32) -> DQ`` in place of the float bias, as onnxruntime's ``quantize_bias_static_impl``."""
        assert bias.weight.spec is not None
        b = bias.value.const_value.numpy()  # type: ignore[union-attr]
        beta = bias.beta
        if beta == 0:
            b, beta = np.zeros_like(b), 1.0
        bias_scale = np.asarray(bias.x_spec.scale * bias.weight.spec.scale * beta, np.float32).reshape(-1)
        ratio = b.astype(np.float64) / bias_scale.astype(np.float64)
        int32 = np.iinfo(np.int32)
        if np.any(np.abs(ratio) > int32.max):
            logger.warning("quantize: the int32 bias of %s is clipped (its scale is too small)", node_label(bias.node))
        codes = np.clip(np.round(ratio), int32.min, int32.max).astype(np.int32).reshape(b.shape)
        base = bias.value.name or "bias"
        per_channel = bias_scale.size > 1
        stored = add_initializer(graph, fresh_name(f"{base}_quantized", taken), codes)
        scale = add_initializer(graph, fresh_name(f"{base}_quantized_scale", taken), bias_scale)
        zp = add_initializer(graph, fresh_name(f"{base}_quantized_zero_point", taken),
                          np.zeros(bias_scale.shape if per_channel else (), np.int32))
        attrs = {"axis": onnx_ir.AttrInt64("axis", 0)} if per_channel else {}
        dq_out = onnx_ir.Value(name=fresh_name(f"{base}_DequantizeLinear_Output", taken), type=onnx_ir.TensorType(_FLOAT),
                               shape=bias.value.shape)
        dq = onnx_ir.Node("", "DequantizeLinear", [stored, scale, zp], attrs, outputs=[dq_out],
                          name=fresh_name(f"{base}_DequantizeLinear", taken))
        _insert_at_start(bias.node.graph or graph, [dq])  # beside the node it feeds
        bias.node.replace_input_with(bias.index, dq_out)
        if "beta" in bias.node.attributes:
            bias.node.attributes["beta"] = onnx_ir.AttrFloat32("beta", 1.0)
        remove_if_unused(bias.value)
        self.bump("num-biases")


# ---------------------------------------------------------------------- helpers


def _insert_at_start(graph: onnx_ir.Graph, nodes: list[onnx_ir.Node]) -> None:
    """Put new constant-fed nodes at the start of ``graph`` (which may be empty)."""
    if len(graph):
        graph.insert_before(graph.node(0), nodes)
    else:
        graph.extend(nodes)


def _already_quantized(model: onnx_ir.Model) -> onnx_ir.Node | None:
    """The first Q, DQ or quantizer node of any graph, or None."""
    for node in onnx_ir.traversal.RecursiveGraphIterator(model.graph):
        if is_quantize(node) or is_dequantize(node) or node.domain == dialect.DOMAIN:
            return node
    return None


def _is_float_initializer(value: onnx_ir.Value) -> bool:
    return (value.is_initializer() and not value.is_graph_input() and value.const_value is not None
            and value.const_value.dtype == _FLOAT)


def _weight_axes(node: onnx_ir.Node, index: int, rank: int) -> tuple[int, int]:
    """(per-channel axis as onnxruntime picks it, reduction axis for blocks) of a weight input."""
    if node.op_type == "Conv":
        return 0, 1
    if node.op_type == "ConvTranspose":
        return 1, 0
    if node.op_type == "Gemm":
        trans_attr = node.attributes.get("transB" if index == 1 else "transA")
        trans = bool(trans_attr.as_int()) if trans_attr is not None else False
        if index == 1:
            return (0, 1) if trans else (1, 0)
        return (1, 0) if trans else (0, 1)
    # MatMul: onnxruntime uses axis 1 for both inputs; blocks run along K (rank-2 weights only)
    return min(1, rank - 1), (0 if index == 1 else max(rank - 1, 0))


def _adjust_weight_scale(spec: QuantSpec, x_spec: QuantSpec, bias: onnx_ir.Value) -> QuantSpec:
    """onnxruntime's enlargement of symmetric int8/int16 weight scales whose bias scale would clip int32 codes."""
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    if spec.qdtype not in (onnx_ir.DataType.INT8, onnx_ir.DataType.INT16) or np.any(spec.zero_point.astype(np.int64)):
        return spec
    bias_proto = onnx.numpy_helper.from_array(bias.const_value.numpy(), bias.name or "bias")  # type: ignore[union-attr]
    # The method reads no instance state; it is called unbound so the rule stays onnxruntime's own.
    changed, scale = QDQQuantizer._adjust_weight_scale_for_int32_bias(
        None, np.asarray(x_spec.scale, np.float32), np.array(spec.scale, np.float32), bias.name, bias_proto,
        spec.granularity == "channel",
    )
    return dataclasses.replace(spec, scale=np.asarray(scale, np.float32)) if changed else spec


def _weight_spec(array: np.ndarray, qtype: onnx_ir.DataType, opts: QuantizeOptions, w: _Weight) -> QuantSpec:
    """The weight's parameters, computed by onnxruntime's own functions."""
    from onnxruntime.quantization.quant_utils import compute_data_quant_params, compute_scale_zp_blocked

    granularity = opts.weight_granularity
    if opts.symmetric is not None:
        symmetric = opts.symmetric
    else:  # onnxruntime: per-channel weights always symmetric, else symmetric for signed types
        symmetric = granularity == "channel" or qtype in (onnx_ir.DataType.INT4, onnx_ir.DataType.INT8, onnx_ir.DataType.INT16)
    if granularity == "tensor":
        zp, scale = compute_data_quant_params(array.ravel(), int(qtype), symmetric)
        return QuantSpec.from_arrays(np.asarray(scale, np.float32), np.asarray(zp), qtype)
    if granularity == "block":
        zp, scale = compute_scale_zp_blocked(array, int(qtype), w.block_axis, opts.block_size, symmetric)
        return QuantSpec.from_arrays(np.asarray(scale, np.float32), np.asarray(zp), qtype, axis=w.block_axis,
                                     block_size=opts.block_size)
    axis = w.channel_axis
    params = [compute_data_quant_params(array.take(i, axis).ravel(), int(qtype), symmetric) for i in range(array.shape[axis])]
    zps = np.asarray([p[0] for p in params]).astype(np.int64)
    scales = np.asarray([p[1] for p in params], np.float32)
    return QuantSpec.from_arrays(scales, zps, qtype, axis=axis)


def _activation_spec(tensor_data: object, qtype: onnx_ir.DataType) -> QuantSpec:
    """Activation parameters from a calibrated range, as onnxruntime's ``calc_quant_params`` computes them."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    rmin, rmax = tensor_data.range_value  # type: ignore[attr-defined]
    qmin, qmax = get_qmin_qmax_for_qType(int(qtype), reduce_range=False, symmetric=False)
    zp, scale = compute_scale_zp(rmin, rmax, qmin, qmax, symmetric=False)
    return QuantSpec.from_arrays(np.asarray(scale, np.float32).squeeze(), np.asarray(zp).astype(np.int64).squeeze(), qtype)


def _axis_attrs(spec: QuantSpec) -> dict[str, onnx_ir.Attr]:
    attrs: dict[str, onnx_ir.Attr] = {}
    if spec.granularity != "tensor":
        attrs["axis"] = onnx_ir.AttrInt64("axis", int(spec.axis))  # type: ignore[arg-type]
    if spec.block_size:
        attrs["block_size"] = onnx_ir.AttrInt64("block_size", spec.block_size)
    return attrs


def _param_initializers(graph: onnx_ir.Graph, base: str, spec: QuantSpec, taken: set[str]) -> tuple[onnx_ir.Value, onnx_ir.Value]:
    scale = add_initializer(graph, fresh_name(f"{base}_scale", taken), np.asarray(spec.scale, np.float32))
    zp = add_initializer(graph, fresh_name(f"{base}_zero_point", taken), np.asarray(spec.zero_point))
    return scale, zp


def _convert_opset(model: onnx_ir.Model) -> None:
    """Raise the default opset to 21 (ONNX's converter) in place; initializer tensors are kept as they are."""
    opset = model.opset_imports.get("", 1)
    if opset >= TARGET_OPSET:
        model.ir_version = max(model.ir_version, 10)
        return
    old = {name: value.const_value for name, value in model.graph.initializers.items()}
    proto = onnx.version_converter.convert_version(onnx_ir.to_proto(model), TARGET_OPSET)
    converted = onnx_ir.from_proto(proto)
    for name, value in converted.graph.initializers.items():
        if name in old and old[name] is not None:
            value.const_value = old[name]
    model.graph = converted.graph
    model.functions.clear()
    model.functions.update(converted.functions)
    model.ir_version = max(converted.ir_version, 10)
    logger.info("quantize: converted the model from opset %d to %d", opset, TARGET_OPSET)


class _Reader:
    """An onnxruntime ``CalibrationDataReader`` over calibration samples, one model batch per call."""

    def __init__(self, data: CalibrationData, batch: int) -> None:
        self._data, self._batch = data, batch
        self._it = data.batches(batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._data.batches(self._batch)


def _outer_reads(model: onnx_ir.Model, targets: list[onnx_ir.Node]) -> list[str]:
    """Main-graph values that targets inside subgraphs read (onnxruntime's calibrators do not see them)."""
    names = []
    for node in targets:
        if node.graph is not model.graph:
            names += [v.name for v in node.inputs[:2] if v is not None and v.graph is model.graph and v.name
                      and not v.is_initializer() and v.name not in names]
    return names


def _lift_subgraph_values(proto: onnx.ModelProto, wanted: set[str], *, branches: bool) -> dict[str, str]:
    """Make values computed in the bodies of main-graph ``If``/``Loop``/``Scan`` nodes outputs of
    those nodes, in the calibration copy: ``{lifted name: inner name}``.

    A loop body adds them as scan outputs, stacked over the iterations. With ``branches``, an
    ``If`` branch outputs its values and the other branch a NaN in their place, which the MinMax
    calibrator's ``nanmin``/``nanmax`` skip: a branch no calibration sample takes gets a NaN range
    (the caller leaves its values float). Values in deeper subgraphs are not reached.
    """
    lifted: dict[str, str] = {}

    def produced(graph: onnx.GraphProto) -> list[str]:
        """The wanted values the body defines: its inputs (a loop's carried state), its nodes' outputs."""
        names = [v.name for v in graph.input] + [name for node in graph.node for name in node.output]
        return [name for name in names if name in wanted and name not in lifted.values()]

    def float_output(name: str) -> onnx.ValueInfoProto:
        return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)

    for node in proto.graph.node:
        bodies = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
        if node.op_type == "If" and node.domain in ("", "ai.onnx") and branches:
            then, other = bodies["then_branch"], bodies["else_branch"]
            for mine, theirs in ((then, other), (other, then)):
                for name in produced(mine):
                    zero = f"{name}__qdq_nan"
                    theirs.node.append(onnx.helper.make_node(
                        "Constant", [], [zero], value=onnx.numpy_helper.from_array(np.full((), np.nan, np.float32))))
                    pair = {id(mine): name, id(theirs): zero}
                    for branch in (then, other):
                        branch.output.append(float_output(pair[id(branch)]))
                    node.output.append(f"{name}__qdq_lift")
                    lifted[f"{name}__qdq_lift"] = name
        elif node.op_type in ("Loop", "Scan") and node.domain in ("", "ai.onnx"):
            body = bodies["body"]
            for name in produced(body):
                body.output.append(float_output(name))
                node.output.append(f"{name}__qdq_lift")
                lifted[f"{name}__qdq_lift"] = name
                for attr in node.attribute:
                    if attr.name in ("scan_output_axes", "scan_output_directions"):
                        attr.ints.append(0)
    return lifted


def _calibrate(model: onnx_ir.Model, data: CalibrationData, opts: QuantizeOptions,
               outer: list[str], inner: set[str]) -> dict[str, object]:
    """Activation ranges (``TensorData`` by tensor name) from onnxruntime's calibrators on a temporary copy.

    The calibrators measure the inputs and outputs of main-graph nodes of the quantized op types;
    each ``outer`` value (a main-graph value read inside a subgraph) is measured through an
    ``Identity`` probe added to the copy, and each ``inner`` value (computed inside a subgraph)
    through a probe on its lifted copy (:func:`_lift_subgraph_values`).
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, create_calibrator

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy, "mse": CalibrationMethod.Distribution}[opts.calibration]
    batch = 1
    for value in model.graph.inputs:
        if value.shape is not None and len(value.shape) and isinstance(value.shape[0], int) and value.shape[0] > 1:
            batch = value.shape[0]
    with tempfile.TemporaryDirectory(prefix="qdq-quantize-") as tmp:
        path = Path(tmp) / "float.onnx"
        proto = onnx_ir.to_proto(model)
        lifted = _lift_subgraph_values(proto, inner, branches=opts.calibration == "minmax")
        probes = {f"{name}__qdq_probe": lifted.get(name, name) for name in [*outer, *lifted]}
        outer = [*outer, *lifted]
        proto.graph.node.extend(onnx.helper.make_node("Identity", [name], [f"{name}__qdq_probe"]) for name in outer)
        onnx.save_model(proto, path, save_as_external_data=True, location="float.onnx.data", size_threshold=1024)
        op_types = list(opts.op_types) + (["Identity"] if probes else [])
        calibrator = create_calibrator(path, op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=method, providers=["CPUExecutionProvider"])
        # onnxruntime's histogram calibrators print progress; an If branch no sample took is all NaN
        # (see _lift_subgraph_values): numpy's warning about it is expected
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "All-NaN", RuntimeWarning)
            calibrator.collect_data(_Reader(data, batch))
        if opts.calibration == "mse":
            qtype = _QTYPES[opts.acts]
            ranges = {name: _mse_range(hist, qtype, TensorData) for name, hist in calibrator.collector.histogram_dict.items()}
        else:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "All-NaN", RuntimeWarning)
                ranges = dict(calibrator.compute_data().data)
        del calibrator
    for probe, name in probes.items():
        if probe in ranges:
            ranges[name] = ranges.pop(probe)
    return {name: r for name, r in ranges.items() if np.all(np.isfinite(r.range_value))}


def _mse_range(histogram: tuple, qtype: onnx_ir.DataType, tensor_data: type) -> object:
    """The range [a*min, a*max], a in (0, 1], whose quantization has the least squared error on the histogram."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    hist, edges, rmin, rmax = histogram[:4]
    centers = ((edges[:-1] + edges[1:]) / 2).astype(np.float32)
    counts = hist.astype(np.float64)
    qmin, qmax = get_qmin_qmax_for_qType(int(qtype), reduce_range=False, symmetric=False)
    best, best_err = (np.float32(rmin), np.float32(rmax)), np.inf
    for alpha in np.linspace(1.0, 0.05, 96):
        lo, hi = np.float32(rmin * alpha), np.float32(rmax * alpha)
        zp, scale = compute_scale_zp(np.asarray(lo), np.asarray(hi), qmin, qmax, symmetric=False)
        spec = QuantSpec.from_arrays(np.asarray(scale, np.float32), np.asarray(zp).astype(np.int64), qtype)
        err = float(np.sum(counts * (spec.dequantize(spec.quantize(centers)) - centers).astype(np.float64) ** 2))
        if err < best_err:
            best, best_err = (lo, hi), err
    return tensor_data(lowest=np.asarray(best[0], np.float32), highest=np.asarray(best[1], np.float32))
