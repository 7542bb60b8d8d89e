"""The qdq_passes dialect: builders, validation, and function bodies run by onnxruntime.

Every function body (op x overload x layout) runs in onnxruntime and must equal the numpy
reference (``QuantSpec``) bit for bit; the FPQuantizer body must equal the torch ``FPQuantizer``
that ``materialize`` builds, for float16 and bfloat16 (onnxruntime 1.32 CPU runs Cast to and from
bfloat16) and for float8, where it must also equal onnxruntime's own float8 Q -> DQ.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir
import pytest
import torch

from qdq_passes.ir import dialect
from qdq_passes.ir.qdq import InvalidQdq
from qdq_passes.ir.quant import QuantSpec, storage_dtype
from qdq_passes.quantizers.materialize import materialize
from tests.models import assert_bit_identical, run_ort

DT = onnx_ir.DataType


def _init(graph: onnx_ir.Graph, name: str, array: np.ndarray) -> onnx_ir.Value:
    value = onnx_ir.Value(name=name, shape=onnx_ir.Shape(array.shape), type=onnx_ir.TensorType(DT.from_numpy(array.dtype)),
                          const_value=onnx_ir.Tensor(array, name=name))
    graph.register_initializer(value)
    return value


def quantizer_model(
    *,
    op: str,
    scale: np.ndarray,
    zero_point: np.ndarray,
    qdtype: DT,
    axis: int = 1,
    block_size: int = 0,
    x_shape: tuple[int, ...] | None = None,
    codes: np.ndarray | None = None,
    opset: int = 21,
    rounding: str | None = None,
) -> onnx_ir.Model:
    """One quantizer: a graph input ``x`` (or stored ``codes``, q_folded) -> quantizer -> ``y``."""
    graph = onnx_ir.Graph([], [], nodes=[], opset_imports={"": opset}, name="g")
    if codes is None:
        x = onnx_ir.Value(name="x", shape=onnx_ir.Shape(x_shape), type=onnx_ir.TensorType(DT.FLOAT))
        graph.inputs.append(x)
    else:
        x = _init(graph, "codes", codes)
    s = _init(graph, "s", scale)
    z = _init(graph, "z", zero_point)
    node = dialect.make_quantizer(x, s, z, op=op, axis=axis, block_size=block_size, qdtype=qdtype,
                                  q_folded=codes is not None, rounding=rounding)
    graph.append(node)
    node.outputs[0].name = "y"
    graph.outputs.append(node.outputs[0])
    model = onnx_ir.Model(graph, ir_version=10)
    assert dialect.ensure_functions(model)
    return model


def assert_bits_equal(expected: np.ndarray, got: np.ndarray) -> None:
    """Bit for bit, signed zeros included (``assert_bit_identical`` treats -0.0 == 0.0); NaN == NaN."""
    assert_bit_identical([expected], [got])
    width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[expected.dtype.itemsize]
    same = (expected.view(width) == got.view(width)) | (np.isnan(expected) & np.isnan(got))
    assert same.all(), f"{int((~same).sum())} elements differ in their bits, first at {np.argwhere(~same)[0]}"


def _run(model: onnx_ir.Model, x: np.ndarray | None = None) -> np.ndarray:
    return run_ort(model, {} if x is None else {"x": x})[0]


def _inputs(shape: tuple[int, ...], spec: QuantSpec, seed: int = 0) -> np.ndarray:
    """Random values spanning past the range, with exact ties, -0.0, NaN and +-Inf."""
    rng = np.random.default_rng(seed)
    s = spec.expand(spec.scale.astype(np.float32), shape)
    span = float(spec.qmax) - float(spec.qmin) if not spec.is_float8 else 2 * float(spec.qmax)
    x = (rng.uniform(-0.7, 0.7, shape) * span).astype(np.float32)
    ties = np.floor(x[::2]) + 0.5
    x[::2] = ties
    x = (x * s).astype(np.float32)
    flat = x.reshape(-1)
    flat[:5] = [np.nan, np.inf, -np.inf, -0.0, 0.0]
    return x


# layouts: (qdtype, scale, zero point, axis, block_size, x shape)
_RNG = np.random.default_rng(1)
LAYOUTS = {
    "tensor-uint8": (DT.UINT8, np.array(0.05, np.float32), np.array(131, np.uint8), 1, 0, (3, 8)),
    "channel-int8": (DT.INT8, _RNG.uniform(0.01, 0.1, 4).astype(np.float32), np.array([0, 3, -2, 1], np.int8), 0, 0, (4, 6)),
    "channel-int16": (DT.INT16, _RNG.uniform(0.001, 0.01, 6).astype(np.float32), np.array([0, 7, -9, 1, 2, 3], np.int16), 1, 0, (2, 6)),
    "block-int4": (DT.INT4, _RNG.uniform(0.05, 0.2, (3, 4)).astype(np.float32), np.array([[0, 1, -1, 2]] * 3, ml_dtypes.int4), 0, 4, (10, 4)),
    "block-uint4": (DT.UINT4, _RNG.uniform(0.05, 0.2, (2, 3)).astype(np.float32), np.full((2, 3), 8, ml_dtypes.uint4), 1, 3, (2, 7)),
}


@pytest.mark.parametrize("op", [dialect.INT_QUANTIZER, dialect.ADAROUND_QUANTIZER])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_int_body_matches_numpy_reference(op, layout):
    qdtype, scale, zp, axis, block, shape = LAYOUTS[layout]
    spec = QuantSpec.from_arrays(scale, zp, qdtype, axis=axis, block_size=block)
    model = quantizer_model(op=op, scale=scale, zero_point=zp, qdtype=qdtype, axis=axis, block_size=block, x_shape=shape)
    assert {f[2] for f in model.functions} == {""}
    x = _inputs(shape, spec)
    assert_bits_equal(spec.dequantize(spec.quantize(x)), _run(model, x))


@pytest.mark.parametrize("op", [dialect.INT_QUANTIZER, dialect.ADAROUND_QUANTIZER])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_folded_body_matches_numpy_reference(op, layout):
    qdtype, scale, zp, axis, block, shape = LAYOUTS[layout]
    spec = QuantSpec.from_arrays(scale, zp, qdtype, axis=axis, block_size=block)
    codes = spec.quantize(_inputs(shape, spec, seed=3))
    model = quantizer_model(op=op, scale=scale, zero_point=zp, qdtype=qdtype, axis=axis, block_size=block, codes=codes,
                            rounding=dialect.ADAROUND if op == dialect.ADAROUND_QUANTIZER else None)
    assert set(model.functions) == {(dialect.DOMAIN, op, dialect.FOLDED)}
    assert_bits_equal(spec.dequantize(codes), _run(model))


def test_int32_bias_body():
    scale = np.array([1e-4, 3e-3], np.float32)
    codes = np.array([[2**24 + 1, -(2**30)], [5, -7]], np.int32).T.copy()
    model = quantizer_model(op=dialect.INT_QUANTIZER, scale=scale, zero_point=np.zeros(2, np.int32), qdtype=DT.INT32,
                            axis=0, codes=codes)
    spec = QuantSpec.from_arrays(scale, np.zeros(2, np.int32), DT.INT32, axis=0)
    assert_bits_equal(spec.dequantize(codes), _run(model))


@pytest.mark.parametrize("opset", [13, 17, 19])
def test_bodies_follow_the_model_opset(opset):
    qdtype, scale, zp, axis, block, shape = LAYOUTS["channel-int8"]
    model = quantizer_model(op=dialect.INT_QUANTIZER, scale=scale, zero_point=zp, qdtype=qdtype, axis=axis, x_shape=shape, opset=opset)
    (function,) = model.functions.values()
    assert function.opset_imports == {"": opset}
    assert all("block_size" not in n.attributes for n in function)  # block_size exists from 21
    spec = QuantSpec.from_arrays(scale, zp, qdtype, axis=axis)
    x = _inputs(shape, spec)
    assert_bits_equal(spec.dequantize(spec.quantize(x)), _run(model, x))
    onnx.checker.check_model(onnx_ir.to_proto(model))


def test_int4_below_opset_21_uses_com_microsoft_bodies():
    qdtype = DT.INT4
    scale = np.array([0.1, 0.2, 0.3], np.float32)
    zp = np.array([0, 1, -1], ml_dtypes.int4)
    model = quantizer_model(op=dialect.INT_QUANTIZER, scale=scale, zero_point=zp, qdtype=qdtype, axis=1, x_shape=(2, 3), opset=17)
    assert dialect.body_domain(model) == dialect.CONTRIB_DOMAIN
    assert model.opset_imports[dialect.CONTRIB_DOMAIN] == 1
    (function,) = model.functions.values()
    assert {n.domain for n in function} == {dialect.CONTRIB_DOMAIN}
    spec = QuantSpec.from_arrays(scale, zp, qdtype, axis=1)
    x = _inputs((2, 3), spec)
    assert_bits_equal(spec.dequantize(spec.quantize(x)), _run(model, x))


def test_blocked_below_opset_21_is_an_error():
    qdtype, scale, zp, axis, block, shape = LAYOUTS["block-int4"]
    with pytest.raises(InvalidQdq, match=r"blocked scales need default-domain opset 21, the model imports 19"):
        quantizer_model(op=dialect.INT_QUANTIZER, scale=scale, zero_point=zp, qdtype=qdtype, axis=axis,
                        block_size=block, x_shape=shape, opset=19)


# --------------------------------------------------------------------------- FPQuantizer

FP_LAYOUTS = {
    "tensor": (np.array(0.5, np.float32), 1, 0, (3, 5)),
    "channel": (np.array([0.25, 2.0, 1e-3], np.float32), 0, 0, (3, 4)),
    "block": (np.array([[0.5, 3.0], [1e-2, 8.0]], np.float32), 1, 3, (2, 5)),
}


def _fp_inputs(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * np.exp(rng.uniform(-12, 12, shape))).astype(np.float32)
    flat = x.reshape(-1)
    flat[:7] = [np.nan, np.inf, -np.inf, -0.0, 0.0, 70000.0, -1e38]
    return x


def _zero_points(qdtype: DT, shape: tuple[int, ...]) -> np.ndarray:
    if qdtype == DT.FLOAT16:
        return np.linspace(-3, 3, int(np.prod(shape))).reshape(shape).astype(np.float16)
    if qdtype == DT.BFLOAT16:
        return np.linspace(-2, 2, int(np.prod(shape))).reshape(shape).astype(ml_dtypes.bfloat16)
    return np.zeros(shape, storage_dtype(qdtype))


@pytest.mark.parametrize("folded", [False, True], ids=["fake", "folded"])
@pytest.mark.parametrize("layout", list(FP_LAYOUTS))
@pytest.mark.parametrize("qdtype", [DT.FLOAT16, DT.BFLOAT16, DT.FLOAT8E4M3FN, DT.FLOAT8E5M2FNUZ], ids=lambda d: d.name)
def test_fp_body_matches_torch_fpquantizer(qdtype, layout, folded):
    scale, axis, block, shape = FP_LAYOUTS[layout]
    zp = _zero_points(qdtype, scale.shape)
    x = _fp_inputs(shape)
    codes = None
    if folded:
        with np.errstate(over="ignore"):
            codes = (x / 4).astype(np.float16 if qdtype == DT.FLOAT16 else ml_dtypes.bfloat16 if qdtype == DT.BFLOAT16
                                   else storage_dtype(qdtype))
    model = quantizer_model(op=dialect.FP_QUANTIZER, scale=scale, zero_point=zp, qdtype=qdtype, axis=axis,
                            block_size=block, x_shape=shape, codes=codes)
    node = model.graph.node(0)
    module = materialize(node)
    with torch.no_grad():
        if folded:
            expected = module(torch.from_numpy(codes.astype(np.float32))).numpy()
        else:
            expected = module(torch.from_numpy(x)).numpy()
    got = _run(model) if folded else _run(model, x)
    assert_bits_equal(expected, got)
    onnx.checker.check_model(onnx_ir.to_proto(model))


@pytest.mark.parametrize("qdtype", [DT.FLOAT8E4M3FN, DT.FLOAT8E4M3FNUZ, DT.FLOAT8E5M2, DT.FLOAT8E5M2FNUZ], ids=lambda d: d.name)
def test_fp_body_equals_onnxruntime_float8_qdq(qdtype):
    scale = np.array([0.5, 3.0, 1e-3], np.float32)
    zp = np.zeros(3, storage_dtype(qdtype))
    x = _fp_inputs((4, 3), seed=5)
    model = quantizer_model(op=dialect.FP_QUANTIZER, scale=scale, zero_point=zp, qdtype=qdtype, axis=1, x_shape=(4, 3))
    spec = QuantSpec.from_arrays(scale, zp, qdtype, axis=1)
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)],
            "qdq", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 3])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 3])],
            [onnx.numpy_helper.from_array(scale, "s"), onnx.numpy_helper.from_array(zp, "z")]),
        opset_imports=[onnx.helper.make_opsetid("", 21)], ir_version=10)
    reference = run_ort(proto, {"x": x})[0]
    assert_bits_equal(reference, _run(model, x))
    assert_bits_equal(spec.dequantize(spec.quantize(x)), reference)


# --------------------------------------------------------------------------- validation


def test_quantizer_spec_reads_the_node():
    qdtype, scale, zp, axis, block, shape = LAYOUTS["block-int4"]
    model = quantizer_model(op=dialect.INT_QUANTIZER, scale=scale, zero_point=zp, qdtype=qdtype, axis=axis,
                            block_size=block, x_shape=shape)
    spec = dialect.quantizer_spec(model.graph.node(0))
    assert (spec.qdtype, spec.axis, spec.block_size, spec.granularity) == (DT.INT4, 0, 4, "block")
    assert np.array_equal(spec.scale, scale)


def test_int4_codes_out_of_range_in_an_int8_container_name_the_node():
    codes = np.array([[1, -8, 7, 9]], np.int8)
    graph = onnx_ir.Graph([], [], nodes=[], opset_imports={"": 21}, name="g")
    node = dialect.make_quantizer(_init(graph, "w_codes", codes), _init(graph, "s", np.array(0.1, np.float32)),
                                  _init(graph, "z", np.array(0, np.int8)), op=dialect.INT_QUANTIZER, axis=1,
                                  block_size=0, qdtype=DT.INT4, q_folded=True, name="conv1_w_quantizer")
    graph.append(node)
    with pytest.raises(InvalidQdq, match=r"'conv1_w_quantizer'.*stored code\[0, 3\] is 9, outside the INT4 range \[-8, 7\]"):
        dialect.quantizer_spec(node)


def test_int4_range_in_an_int8_container_is_accepted():
    codes = np.array([[1, -8, 7, 0]], np.int8)
    model = quantizer_model(op=dialect.INT_QUANTIZER, scale=np.array(0.1, np.float32), zero_point=np.array(0, np.int8),
                            qdtype=DT.INT4, codes=codes)
    spec = dialect.quantizer_spec(model.graph.node(0))
    assert spec.qdtype == DT.INT4 and spec.zero_point.dtype == ml_dtypes.int4
    assert_bits_equal(spec.dequantize(codes), _run(model))


def test_zero_scale_names_the_node():
    graph = onnx_ir.Graph([], [], nodes=[], opset_imports={"": 21}, name="g")
    x = onnx_ir.Value(name="x", shape=onnx_ir.Shape([4]), type=onnx_ir.TensorType(DT.FLOAT))
    graph.inputs.append(x)
    node = dialect.make_quantizer(x, _init(graph, "s", np.array(0.0, np.float32)), _init(graph, "z", np.array(0, np.uint8)),
                                  op=dialect.INT_QUANTIZER, axis=1, block_size=0, qdtype=DT.UINT8, q_folded=False,
                                  name="act_q")
    graph.append(node)
    with pytest.raises(InvalidQdq, match=r"node 'act_q' \(qdq_passes.INTQuantizer\): scale is 0.0"):
        dialect.quantizer_spec(node)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda n: n.attributes.__setitem__("qdtype", onnx_ir.AttrInt64("qdtype", int(DT.INT8))), "zero point is uint8, qdtype INT8 needs int8"),
        (lambda n: setattr(n, "overload", "folded"), "overload 'folded' disagrees with q_folded=0"),
        (lambda n: n.attributes.__setitem__("rounding", onnx_ir.AttrString("rounding", "nearest")), "only AdaroundINTQuantizer has a 'rounding'"),
        (lambda n: n.attributes.__setitem__("axis", onnx_ir.AttrInt64("axis", 3)), None),
    ],
)
def test_quantizer_params_rejects_inconsistent_nodes(change, message):
    model = quantizer_model(op=dialect.INT_QUANTIZER, scale=np.array(0.5, np.float32), zero_point=np.array(3, np.uint8),
                            qdtype=DT.UINT8, x_shape=(2, 2))
    node = model.graph.node(0)
    change(node)
    if message is None:  # axis is ignored for a per-tensor scale
        assert dialect.quantizer_params(node).axis is None
        return
    with pytest.raises(InvalidQdq, match=message):
        dialect.quantizer_params(node)


def test_adaround_rounding_rules():
    graph = onnx_ir.Graph([], [], nodes=[], opset_imports={"": 21}, name="g")
    w = _init(graph, "w", np.ones((2, 2), np.float32))
    s, z = _init(graph, "s", np.array(0.5, np.float32)), _init(graph, "z", np.array(0, np.int8))
    node = dialect.make_quantizer(w, s, z, op=dialect.ADAROUND_QUANTIZER, axis=1, block_size=0, qdtype=DT.INT8, q_folded=False)
    assert node.attributes["rounding"].as_string() == dialect.NEAREST
    graph.append(node)
    node.attributes["rounding"] = onnx_ir.AttrString("rounding", dialect.ADAROUND)
    with pytest.raises(InvalidQdq, match="rounding 'adaround' needs q_folded=1"):
        dialect.quantizer_params(node)
    with pytest.raises(ValueError, match="only AdaroundINTQuantizer takes a rounding"):
        dialect.make_quantizer(w, s, z, op=dialect.INT_QUANTIZER, axis=1, block_size=0, qdtype=DT.INT8, q_folded=False,
                               rounding="nearest")
    with pytest.raises(ValueError, match="unknown quantizer op"):
        dialect.make_quantizer(w, s, z, op="Quantizer", axis=1, block_size=0, qdtype=DT.INT8, q_folded=False)


# --------------------------------------------------------------------------- functions


def test_ensure_functions_is_exact_and_idempotent():
    qdtype, scale, zp, axis, block, shape = LAYOUTS["channel-int8"]
    model = quantizer_model(op=dialect.INT_QUANTIZER, scale=scale, zero_point=zp, qdtype=qdtype, axis=axis, x_shape=shape)
    assert model.opset_imports[dialect.DOMAIN] == dialect.VERSION and model.ir_version >= 10
    assert not dialect.ensure_functions(model)
    before = onnx_ir.to_proto(model).SerializeToString(deterministic=True)
    # A stale extra function is removed, a changed body is rebuilt.
    model.functions[(dialect.DOMAIN, dialect.FP_QUANTIZER, "")] = onnx_ir.serde.deserialize_function(
        dialect.function_proto(dialect.FP_QUANTIZER, False, 21))
    model.functions[(dialect.DOMAIN, dialect.INT_QUANTIZER, "")] = onnx_ir.serde.deserialize_function(
        dialect.function_proto(dialect.INT_QUANTIZER, True, 21))
    assert dialect.ensure_functions(model)
    assert onnx_ir.to_proto(model).SerializeToString(deterministic=True) == before
    # Without quantizer nodes, the functions and the opset import go.
    node = model.graph.node(0)
    model.graph.outputs[0] = model.graph.inputs[0]
    model.graph.remove(node, safe=True)
    assert dialect.remove_unused_functions(model)
    assert not model.functions and dialect.DOMAIN not in model.opset_imports
    assert not dialect.remove_unused_functions(model)


def test_functions_of_other_domains_are_kept():
    model = quantizer_model(op=dialect.INT_QUANTIZER, scale=np.array(0.5, np.float32), zero_point=np.array(3, np.uint8),
                            qdtype=DT.UINT8, x_shape=(2,))
    other = onnx_ir.serde.deserialize_function(onnx.helper.make_function(
        "custom", "Twice", ["a"], ["b"], [onnx.helper.make_node("Add", ["a", "a"], ["b"])], [onnx.helper.make_opsetid("", 21)]))
    model.functions[other.identifier()] = other
    assert not dialect.ensure_functions(model)
    assert other.identifier() in model.functions


def test_make_quantizer_sets_overload_and_types():
    graph = onnx_ir.Graph([], [], nodes=[], opset_imports={"": 21}, name="g")
    codes = _init(graph, "c", np.zeros((2, 3), np.int8))
    s, z = _init(graph, "s", np.array(0.5, np.float32)), _init(graph, "z", np.array(0, np.int8))
    node = dialect.make_quantizer(codes, s, z, op=dialect.INT_QUANTIZER, axis=0, block_size=0, qdtype=DT.INT8, q_folded=1)
    assert node.overload == dialect.FOLDED and node.outputs[0].dtype == DT.FLOAT
    assert node.outputs[0].shape == onnx_ir.Shape([2, 3])
    assert dialect.is_quantizer(node)
    assert {a: node.attributes[a].as_int() for a in ("axis", "block_size", "qdtype", "q_folded")} == {
        "axis": 0, "block_size": 0, "qdtype": int(DT.INT8), "q_folded": 1}
