"""The ``qdq_passes`` dialect: quantizer nodes that onnxruntime can still run.

Domain ``qdq_passes``, version 1, one op per quantizer class of the seed API:

=========================  =====================================================================
op                         meaning
=========================  =====================================================================
``INTQuantizer``           integer Q->DQ (``q_folded=0``) or DQ of stored codes (``q_folded=1``)
``AdaroundINTQuantizer``   as ``INTQuantizer``, for a weight whose rounding AdaRound may learn
``FPQuantizer``            ``(cast_T(x / s + z) - z) * s`` for T = ``qdtype`` (float16, bfloat16,
                           a float8 type); ``q_folded=1``: x is stored in T, only ``(x - z) * s``
=========================  =====================================================================

Inputs ``(x, scale, zero_point)``, all three always present (the passes create a zero
``zero_point`` where a Q/DQ had none). Attributes, always all written:

* ``axis`` (int): the quantization axis; ignored when the scale has one element (per-tensor);
* ``block_size`` (int): ``0`` = none, else blocked along ``axis`` (ONNX opset 21 layout);
* ``qdtype`` (int): the ONNX ``DataType`` of the codes. ``q_folded=0``: equal to the zero point's
  type (Q's output type). ``q_folded=1``: the codes' range; the stored tensor and the zero point
  may use a wider *container* (an int4 range stored in int8), and every stored code must lie in
  ``qdtype``'s range;
* ``q_folded`` (int 0/1): ``x`` is the stored integer codes (a folded weight or an int32 bias);
* ``rounding`` (string, ``AdaroundINTQuantizer`` only): ``"nearest"`` until AdaRound decided,
  then ``"adaround"`` (which implies ``q_folded=1``: the decided codes are stored).

Each op ships a model-local ONNX function (:func:`ensure_functions`) whose body is the equivalent
standard computation, so onnxruntime runs every intermediate model, bit for bit as the Q/DQ it
replaced. Functions are overloaded on ``q_folded``: overload ``""`` for 0, ``"folded"`` for 1
(a node's ``overload`` field always agrees with its ``q_folded``):

1. ``INTQuantizer`` / ``AdaroundINTQuantizer``, overload ``""``: ``QuantizeLinear -> DequantizeLinear``;
   overload ``"folded"``: ``DequantizeLinear`` alone. ``axis`` and ``block_size`` are attribute
   references, written only where the opset has them (``axis`` from 13, ``block_size`` from 21).
2. ``FPQuantizer``: ``Div, Sub, Cast(to=qdtype), Cast(to=float), Sub, Mul`` (overload ``"folded"``:
   the last three), written as the torch ``FPQuantizer`` computes it: ``x / s - (0 - z)`` so that
   ``-0.0`` stays ``-0.0``, round to nearest even on the cast, float16/bfloat16 overflow to +-inf
   (no clamp), float8 casts saturating (``Cast``'s default), which is bit-identical to float8
   ``QuantizeLinear`` with ``saturate=1``. Scale and zero point are broadcast to ``x`` by a
   ``DequantizeLinear`` of a tensor of ones (exact: ``1 * s``), which covers per-tensor,
   per-axis and blocked layouts alike. x and the scale must be float32.
3. The bodies use the model's default-domain opset. When that opset cannot express a quantizer
   (int4/uint4/int16/uint16 below opset 21, per-axis below 13) the bodies use onnxruntime's
   ``com.microsoft`` QuantizeLinear/DequantizeLinear (v1: axis, no block size), as
   ``onnxruntime.quantization`` itself does; blocked quantizers below opset 21, float8 below 19
   and bfloat16 below 13 have no body and raise :class:`InvalidQuantizer`.

This module is part of the IR layer: numpy, onnx and onnx_ir only.
"""

from __future__ import annotations

import dataclasses
import ml_dtypes
import numpy as np
import onnx
import onnx_ir
from onnx import AttributeProto, TensorProto, helper

from qdq_passes.ir.qdq import InvalidQdq, constant_array, node_label
from qdq_passes.ir.quant import QuantSpec, qrange, storage_dtype

__all__ = [
    "DOMAIN",
    "VERSION",
    "INT_QUANTIZER",
    "ADAROUND_QUANTIZER",
    "FP_QUANTIZER",
    "OPS",
    "FOLDED",
    "NEAREST",
    "ADAROUND",
    "ROUNDINGS",
    "CONTRIB_DOMAIN",
    "INT_QDTYPES",
    "FLOAT8_QDTYPES",
    "CAST_QDTYPES",
    "FP_QDTYPES",
    "InvalidQuantizer",
    "QuantizerParams",
    "is_quantizer",
    "make_quantizer",
    "quantizer_params",
    "quantizer_spec",
    "quantizer_nodes",
    "mark_folded",
    "body_domain",
    "min_qdq_opset",
    "function_proto",
    "ensure_functions",
    "is_adaround_quantizer",
    "remove_unused_functions",
]

DOMAIN = "qdq_passes"
VERSION = 1
INT_QUANTIZER = "INTQuantizer"
ADAROUND_QUANTIZER = "AdaroundINTQuantizer"
FP_QUANTIZER = "FPQuantizer"
OPS = (INT_QUANTIZER, ADAROUND_QUANTIZER, FP_QUANTIZER)
FOLDED = "folded"
NEAREST = "nearest"
ADAROUND = "adaround"
ROUNDINGS = (NEAREST, ADAROUND)
CONTRIB_DOMAIN = "com.microsoft"

_DT = onnx_ir.DataType
INT_QDTYPES = (_DT.INT4, _DT.UINT4, _DT.INT8, _DT.UINT8, _DT.INT16, _DT.UINT16, _DT.INT32)
FLOAT8_QDTYPES = (_DT.FLOAT8E4M3FN, _DT.FLOAT8E4M3FNUZ, _DT.FLOAT8E5M2, _DT.FLOAT8E5M2FNUZ)
CAST_QDTYPES = (_DT.FLOAT16, _DT.BFLOAT16)
FP_QDTYPES = CAST_QDTYPES + FLOAT8_QDTYPES
_NEEDS_21 = (_DT.INT4, _DT.UINT4, _DT.INT16, _DT.UINT16)
_ATTRIBUTES = ("axis", "block_size", "qdtype", "q_folded")


class InvalidQuantizer(InvalidQdq):
    """A quantizer node with bad attributes, parameters or stored codes; the message names the node."""


# --------------------------------------------------------------------------- predicates and reading


def is_quantizer(node: onnx_ir.Node) -> bool:
    """A node of one of the dialect's ops."""
    return node.domain == DOMAIN and node.op_type in OPS


def is_adaround_quantizer(node: onnx_ir.Node) -> bool:
    """A node of the dialect's AdaRound quantizer op."""
    return node.domain == DOMAIN and node.op_type == ADAROUND_QUANTIZER


def quantizer_nodes(model_or_graph: onnx_ir.Model | onnx_ir.Graph) -> list[onnx_ir.Node]:
    """Every quantizer node of the graph and its subgraphs, in graph order."""
    graph = model_or_graph.graph if isinstance(model_or_graph, onnx_ir.Model) else model_or_graph
    return [n for n in onnx_ir.traversal.RecursiveGraphIterator(graph) if is_quantizer(n)]


def _np_dtype(qdtype: onnx_ir.DataType) -> np.dtype:
    """Numpy dtype of one value of ``qdtype`` (integer, float8, float16, bfloat16)."""
    if qdtype == _DT.FLOAT16:
        return np.dtype(np.float16)
    if qdtype == _DT.BFLOAT16:
        return np.dtype(ml_dtypes.bfloat16)
    return storage_dtype(qdtype)


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizerParams:
    """Everything a quantizer node says, read and validated by :func:`quantizer_params`.

    ``axis`` is None for a per-tensor scale (one element, no block size), else normalised to
    ``x``'s rank where that is known. ``zero_point`` keeps the stored (container) dtype.
    """

    op: str
    scale: np.ndarray
    zero_point: np.ndarray
    qdtype: onnx_ir.DataType
    axis: int | None
    block_size: int
    q_folded: bool
    rounding: str | None

    @property
    def is_float8(self) -> bool:
        """True when the codes are a float8 type."""
        return self.qdtype in FLOAT8_QDTYPES

    @property
    def granularity(self) -> str:
        """``"tensor"``, ``"channel"`` or ``"block"``."""
        if self.block_size > 0:
            return "block"
        return "tensor" if self.axis is None else "channel"


def _attr_int(node: onnx_ir.Node, name: str, default: int | None = None) -> int:
    attr = node.attributes.get(name)
    if attr is None:
        if default is None:
            raise InvalidQuantizer(f"node {node_label(node)}: attribute '{name}' is missing")
        return default
    if attr.type != onnx_ir.AttributeType.INT:
        raise InvalidQuantizer(f"node {node_label(node)}: attribute '{name}' must be an int, not {attr.type.name}")
    return attr.as_int()


def quantizer_params(node: onnx_ir.Node) -> QuantizerParams:
    """Read and validate a quantizer node; raise :class:`InvalidQuantizer` naming the node.

    Checks: the op and its attributes; a constant scale and zero point; valid scales (positive,
    finite, normal) and layout against ``x``'s shape where known; the zero point's type against
    ``qdtype`` (equal when not folded; a container at least as wide when folded); for a folded
    quantizer with a constant ``x``, that ``x`` has the zero point's type and every stored code
    lies in ``qdtype``'s range.
    """
    label = node_label(node)
    if not is_quantizer(node):
        raise InvalidQuantizer(f"node {label}: not a {DOMAIN} quantizer")
    if len(node.inputs) != 3 or any(v is None for v in node.inputs):
        raise InvalidQuantizer(f"node {label}: needs three inputs (x, scale, zero_point), got {len(node.inputs)}")
    x, scale_v, zp_v = node.inputs
    op = node.op_type
    q_folded = _attr_int(node, "q_folded", 0)
    if q_folded not in (0, 1):
        raise InvalidQuantizer(f"node {label}: q_folded is {q_folded}, must be 0 or 1")
    expected_overload = FOLDED if q_folded else ""
    if node.overload != expected_overload:
        raise InvalidQuantizer(f"node {label}: overload '{node.overload}' disagrees with q_folded={q_folded}")
    try:
        qdtype = _DT(_attr_int(node, "qdtype"))
    except ValueError:
        raise InvalidQuantizer(f"node {label}: qdtype {_attr_int(node, 'qdtype')} is not an ONNX data type") from None
    axis_attr = _attr_int(node, "axis", 1)
    block_size = _attr_int(node, "block_size", 0)
    rounding_attr = node.attributes.get("rounding")
    rounding = rounding_attr.as_string() if rounding_attr is not None else None
    if op == ADAROUND_QUANTIZER:
        if rounding not in ROUNDINGS:
            raise InvalidQuantizer(f"node {label}: rounding is {rounding!r}, must be one of {', '.join(ROUNDINGS)}")
        if rounding == ADAROUND and not q_folded:
            raise InvalidQuantizer(f"node {label}: rounding 'adaround' needs q_folded=1 (the decided codes are stored)")
        if qdtype not in INT_QDTYPES or qdtype == _DT.INT32:
            raise InvalidQuantizer(f"node {label}: AdaRound needs an integer qdtype other than INT32, got {qdtype.name}")
    elif rounding is not None:
        raise InvalidQuantizer(f"node {label}: only {ADAROUND_QUANTIZER} has a 'rounding' attribute")
    if op == INT_QUANTIZER and qdtype not in INT_QDTYPES:
        raise InvalidQuantizer(f"node {label}: {op} needs an integer qdtype, got {qdtype.name}")
    if op == FP_QUANTIZER and qdtype not in FP_QDTYPES:
        raise InvalidQuantizer(f"node {label}: {op} needs a float16, bfloat16 or float8 qdtype, got {qdtype.name}")
    if qdtype == _DT.INT32 and not q_folded:
        raise InvalidQuantizer(f"node {label}: INT32 codes exist only folded (QuantizeLinear has no int32 output)")

    scale = constant_array(scale_v)
    zero_point = constant_array(zp_v)
    if scale is None:
        raise InvalidQuantizer(f"node {label}: its scale '{scale_v.name}' is not a constant")
    if zero_point is None:
        raise InvalidQuantizer(f"node {label}: its zero point '{zp_v.name}' is not a constant")
    scale, zero_point = np.array(scale), np.array(zero_point)  # small, writable copies
    want = _np_dtype(qdtype)
    if op == FP_QUANTIZER:
        if scale.dtype != np.float32:
            raise InvalidQuantizer(f"node {label}: {op} needs a float32 scale, got {scale.dtype}")
        if zero_point.dtype != want:
            raise InvalidQuantizer(f"node {label}: zero point is {zero_point.dtype}, qdtype {qdtype.name} needs {want}")
        if not q_folded and x.dtype not in (None, _DT.FLOAT):
            raise InvalidQuantizer(f"node {label}: {op} needs a float32 input, got {x.dtype.name}")
    elif q_folded:
        container = onnx_ir.DataType.from_numpy(zero_point.dtype)
        if container not in INT_QDTYPES:
            raise InvalidQuantizer(f"node {label}: zero point is {zero_point.dtype}, not an integer container")
        lo, hi = qrange(qdtype)
        c_lo, c_hi = qrange(container)
        if lo < c_lo or hi > c_hi:
            raise InvalidQuantizer(f"node {label}: a {container.name} zero point cannot hold {qdtype.name} codes")
    elif zero_point.dtype != want:
        raise InvalidQuantizer(f"node {label}: zero point is {zero_point.dtype}, qdtype {qdtype.name} needs {want}")
    if q_folded and x.dtype is not None and x.dtype != onnx_ir.DataType.from_numpy(zero_point.dtype):
        raise InvalidQuantizer(f"node {label}: stored input is {x.dtype.name} but the zero point is {zero_point.dtype}")

    x_shape = tuple(x.shape.numpy()) if x.shape is not None and x.shape.is_static() else None
    per_tensor = scale.size == 1 and scale.ndim <= 1 and block_size == 0
    axis: int | None = None if per_tensor else axis_attr
    if axis is not None and x_shape is not None:
        if not -len(x_shape) <= axis < len(x_shape):
            raise InvalidQuantizer(f"node {label}: axis {axis} is out of range for rank {len(x_shape)}")
        axis %= len(x_shape)
    # Validate scale, zero point and layout through a QuantSpec (an int8 proxy for float16/bfloat16).
    try:
        if qdtype in CAST_QDTYPES:
            proxy_zp = np.zeros(scale.shape, np.int8)
            QuantSpec.from_arrays(scale, proxy_zp, _DT.INT8, axis=axis, block_size=block_size).validate(x_shape)
        else:
            QuantSpec.from_arrays(scale, zero_point, qdtype, axis=axis, block_size=block_size).validate(x_shape)
    except ValueError as exc:
        raise InvalidQuantizer(f"node {label}: {exc}") from None
    if q_folded and qdtype in INT_QDTYPES and onnx_ir.DataType.from_numpy(zero_point.dtype) != qdtype:
        codes = constant_array(x)  # a container wider than qdtype: check the stored codes
        if codes is not None:
            _check_codes(label, codes, qdtype)
    return QuantizerParams(op, scale, zero_point, qdtype, axis, block_size, bool(q_folded), rounding)


def _check_codes(label: str, codes: np.ndarray, qdtype: onnx_ir.DataType) -> None:
    """Every stored code within ``qdtype``'s range (free when the container is ``qdtype`` itself)."""
    if codes.size == 0 or onnx_ir.DataType.from_numpy(codes.dtype) == qdtype:
        return
    lo, hi = qrange(qdtype)
    if lo <= int(codes.min()) and int(codes.max()) <= hi:
        return
    wide = codes.astype(np.int64)
    bad = (wide < lo) | (wide > hi)
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f"[{', '.join(map(str, idx))}]" if codes.ndim else ""
    raise InvalidQuantizer(
        f"node {label}: stored code{where} is {int(wide[idx])}, outside the {qdtype.name} range [{lo}, {hi}]"
        f" ({int(bad.sum())} of {codes.size} codes out of range)"
    )


def quantizer_spec(node: onnx_ir.Node) -> QuantSpec:
    """The :class:`QuantSpec` of an integer or float8 quantizer (validated as by :func:`quantizer_params`).

    A folded quantizer's zero point is converted to ``qdtype``'s storage type (the container's
    values fit, as checked). float16/bfloat16 ``FPQuantizer`` nodes have no QuantSpec: use
    :func:`quantizer_params`.
    """
    p = quantizer_params(node)
    if p.qdtype in CAST_QDTYPES:
        raise InvalidQuantizer(f"node {node_label(node)}: a {p.qdtype.name} FPQuantizer has no QuantSpec")
    try:
        return QuantSpec.from_arrays(p.scale, p.zero_point, p.qdtype, axis=p.axis, block_size=p.block_size)
    except ValueError as exc:  # pragma: no cover - quantizer_params validated the same arrays
        raise InvalidQuantizer(f"node {node_label(node)}: {exc}") from None


# --------------------------------------------------------------------------- building nodes


def make_quantizer(
    x: onnx_ir.Value,
    scale: onnx_ir.Value,
    zp: onnx_ir.Value,
    *,
    op: str,
    axis: int,
    block_size: int,
    qdtype: int | onnx_ir.DataType,
    q_folded: bool | int,
    rounding: str | None = None,
    name: str | None = None,
) -> onnx_ir.Node:
    """A new quantizer node (not yet in a graph), overload set from ``q_folded``.

    ``rounding`` defaults to ``"nearest"`` for ``AdaroundINTQuantizer`` and must be None for the
    other ops. The output has ``x``'s shape and type (folded: the scale's float type).
    """
    if op not in OPS:
        raise ValueError(f"unknown quantizer op '{op}' (one of {', '.join(OPS)})")
    q_folded = int(bool(q_folded))
    attrs = [
        onnx_ir.AttrInt64("axis", int(axis)),
        onnx_ir.AttrInt64("block_size", int(block_size)),
        onnx_ir.AttrInt64("qdtype", int(qdtype)),
        onnx_ir.AttrInt64("q_folded", q_folded),
    ]
    if op == ADAROUND_QUANTIZER:
        rounding = NEAREST if rounding is None else rounding
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        attrs.append(onnx_ir.AttrString("rounding", rounding))
    elif rounding is not None:
        raise ValueError(f"only {ADAROUND_QUANTIZER} takes a rounding, not {op}")
    node = onnx_ir.Node(DOMAIN, op, [x, scale, zp], attrs, overload=FOLDED if q_folded else "", num_outputs=1, name=name)
    out = node.outputs[0]
    if q_folded:
        out.dtype = _DT.FLOAT if op == FP_QUANTIZER else (scale.dtype or _DT.FLOAT)
    else:
        out.type = x.type
    out.shape = x.shape
    return node


def mark_folded(node: onnx_ir.Node, rounding: str | None = None) -> None:
    """Set ``q_folded=1`` and the ``"folded"`` overload (and ``rounding`` for AdaRound nodes)."""
    node.attributes["q_folded"] = onnx_ir.AttrInt64("q_folded", 1)
    node.overload = FOLDED
    if rounding is not None:
        node.attributes["rounding"] = onnx_ir.AttrString("rounding", rounding)


# --------------------------------------------------------------------------- opsets


def min_qdq_opset(dtype: onnx_ir.DataType | None, granularity: str) -> tuple[int, str]:
    """The lowest default-domain opset whose QuantizeLinear/DequantizeLinear handle this form, and why."""
    needs = [(10, "8-bit and int32 Q/DQ")]
    if granularity == "channel":
        needs.append((13, "per-axis scales"))
    if granularity == "block":
        needs.append((21, "blocked scales"))
    if dtype in FLOAT8_QDTYPES:
        needs.append((19, f"{dtype.name} codes"))
    if dtype in _NEEDS_21:
        needs.append((21, f"{dtype.name} codes"))
    return max(needs)


def _body_needs(params: QuantizerParams, node: onnx_ir.Node) -> tuple[int, str, bool]:
    """(opset, reason, com.microsoft can do it) for one quantizer's function body."""
    stored = node.inputs[0].dtype if params.q_folded else None
    dtypes = {onnx_ir.DataType.from_numpy(params.zero_point.dtype), stored}
    best = (10, "", True)
    for dtype in dtypes:
        opset, why = min_qdq_opset(dtype if dtype not in CAST_QDTYPES else None, params.granularity)
        contrib_ok = params.granularity != "block" and dtype not in FLOAT8_QDTYPES
        if opset > best[0]:
            best = (opset, why, contrib_ok)
    if params.op == FP_QUANTIZER and params.qdtype == _DT.BFLOAT16 and best[0] < 13:
        best = (13, "Cast to BFLOAT16", False)
    return best


def body_domain(model: onnx_ir.Model) -> str:
    """``""`` when the model's default-domain opset can express every quantizer's body, else
    ``"com.microsoft"``; raises :class:`InvalidQuantizer` when neither can."""
    opset = model.opset_imports.get("", 1)
    domain = ""
    for node in quantizer_nodes(model):
        params = quantizer_params(node)
        need, why, contrib_ok = _body_needs(params, node)
        if need <= opset:
            continue
        if not contrib_ok:
            raise InvalidQuantizer(
                f"node {node_label(node)}: {why} need default-domain opset {need}, the model imports {opset}"
            )
        domain = CONTRIB_DOMAIN
    return domain


# --------------------------------------------------------------------------- function bodies


def _ref(name: str, ref: str | None = None, attr_type: int = AttributeProto.INT) -> AttributeProto:
    return helper.make_attribute_ref(name, attr_type, ref_attr_name=ref)


def _qdq_node(op: str, inputs: list[str], output: str, opset: int, domain: str) -> onnx.NodeProto:
    node = helper.make_node(op, inputs, [output], domain=domain)
    if domain or opset >= 13:
        node.attribute.append(_ref("axis"))
    if not domain and opset >= 21:
        node.attribute.append(_ref("block_size"))
    return node


def _int_body(folded: bool, opset: int, domain: str) -> list[onnx.NodeProto]:
    if folded:
        return [_qdq_node("DequantizeLinear", ["x", "scale", "zero_point"], "y", opset, domain)]
    return [
        _qdq_node("QuantizeLinear", ["x", "scale", "zero_point"], "codes", opset, domain),
        _qdq_node("DequantizeLinear", ["codes", "scale", "zero_point"], "y", opset, domain),
    ]


def _fp_body(folded: bool, opset: int, domain: str) -> list[onnx.NodeProto]:
    make = helper.make_node
    one = helper.make_tensor("one", TensorProto.INT8, [1], [1])
    nodes = [
        make("Shape", ["x"], ["x_shape"]),
        make("ConstantOfShape", ["x_shape"], ["ones"], value=one),
        # DQ of ones broadcasts scale and zero point over x in any layout, exactly (1 * s).
        _qdq_node("DequantizeLinear", ["ones", "scale"], "scale_full", opset, domain),
        make("Cast", ["zero_point"], ["zero_point_float"], to=TensorProto.FLOAT),
        _qdq_node("DequantizeLinear", ["ones", "zero_point_float"], "zero_point_full", opset, domain),
    ]
    stored = "x"
    if not folded:
        cast = make("Cast", ["shifted"], ["codes"])
        cast.attribute.append(_ref("to", "qdtype"))
        nodes += [
            make("Constant", [], ["zero"], value=helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])),
            make("Sub", ["zero", "zero_point_full"], ["neg_zero_point"]),
            make("Div", ["x", "scale_full"], ["scaled"]),
            make("Sub", ["scaled", "neg_zero_point"], ["shifted"]),  # x / s + z, keeping -0.0
            cast,
        ]
        stored = "codes"
    nodes += [
        make("Cast", [stored], ["codes_float"], to=TensorProto.FLOAT),
        make("Sub", ["codes_float", "zero_point_full"], ["centered"]),
        make("Mul", ["centered", "scale_full"], ["y"]),
    ]
    return nodes


def function_proto(op: str, folded: bool, opset: int, domain: str = "") -> onnx.FunctionProto:
    """The ONNX function of ``op`` (overload ``"folded"`` when ``folded``) at a default-domain
    ``opset``; ``domain="com.microsoft"`` builds the Q/DQ with onnxruntime's contrib ops."""
    if op not in OPS:
        raise ValueError(f"unknown quantizer op '{op}'")
    body = _fp_body(folded, opset, domain) if op == FP_QUANTIZER else _int_body(folded, opset, domain)
    imports = [helper.make_opsetid("", opset)]
    if domain:
        imports.append(helper.make_opsetid(domain, 1))
    attributes = list(_ATTRIBUTES) + (["rounding"] if op == ADAROUND_QUANTIZER else [])
    return helper.make_function(
        DOMAIN,
        op,
        ["x", "scale", "zero_point"],
        ["y"],
        body,
        imports,
        attributes=attributes,
        doc_string=_DOCS[op] + (" Folded: x holds the stored codes." if folded else ""),
        overload=FOLDED if folded else "",
    )


_DOCS = {
    INT_QUANTIZER: "qdq_passes integer quantizer: QuantizeLinear then DequantizeLinear.",
    ADAROUND_QUANTIZER: "qdq_passes AdaRound weight quantizer: nearest rounding until AdaRound stores its codes.",
    FP_QUANTIZER: "qdq_passes floating-point quantizer: (cast_qdtype(x / s + z) - z) * s.",
}


def _function(op: str, folded: bool, opset: int, domain: str) -> onnx_ir.Function:
    return onnx_ir.serde.deserialize_function(function_proto(op, folded, opset, domain))


def _same_function(a: onnx_ir.Function, b: onnx_ir.Function) -> bool:
    def text(f: onnx_ir.Function) -> bytes:
        return onnx_ir.serde.serialize_function(f, create_value_info=False).SerializeToString(deterministic=True)

    return text(a) == text(b)


def _used_identifiers(model: onnx_ir.Model) -> set[tuple[str, str, str]]:
    return {n.op_identifier() for n in quantizer_nodes(model)}


def ensure_functions(model: onnx_ir.Model) -> bool:
    """Give the model exactly the dialect functions its quantizer nodes call; return whether it changed.

    1. Each used ``(op, overload)`` gets its function at the model's default-domain opset (or
       with ``com.microsoft`` Q/DQ, see :func:`body_domain`); an outdated definition is replaced.
    2. Dialect functions no node calls are removed.
    3. The ``qdq_passes: 1`` opset import is present while quantizer nodes exist (removed when
       none do); ``com.microsoft: 1`` is added when the bodies need it; ``ir_version`` is raised
       to 10 (function overloads).
    Idempotent: a second call returns False.
    """
    used = _used_identifiers(model)
    changed = False
    if used:
        domain = body_domain(model)
        opset = model.opset_imports.get("", 1)
        for ident in sorted(used):
            _, op, overload = ident
            wanted = _function(op, overload == FOLDED, opset, domain)
            existing = model.functions.get(ident)
            if existing is None or not _same_function(existing, wanted):
                model.functions[ident] = wanted
                changed = True
        if model.opset_imports.get(DOMAIN) != VERSION:
            model.opset_imports[DOMAIN] = VERSION
            changed = True
        if domain and model.opset_imports.get(domain) is None:
            model.opset_imports[domain] = 1
            changed = True
        if model.ir_version < 10:
            model.ir_version = 10
            changed = True
    changed |= remove_unused_functions(model)
    return changed


def remove_unused_functions(model: onnx_ir.Model) -> bool:
    """Remove the dialect's functions that no node calls, and the ``qdq_passes`` opset import when
    no dialect node is left; other domains' functions are left alone. Returns whether it changed."""
    used = _used_identifiers(model)
    changed = False
    for ident in [i for i in model.functions if i[0] == DOMAIN and i not in used]:
        del model.functions[ident]
        changed = True
    if not used and DOMAIN in model.opset_imports:
        del model.opset_imports[DOMAIN]
        changed = True
    return changed

