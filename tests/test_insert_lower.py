"""insert-quantizers and lower-qdq: bit-exact in onnxruntime on the quantized-model matrix, and
their rules one by one (not-understood points, float8, names, opsets, errors)."""

from __future__ import annotations

import functools
import logging

import ml_dtypes
import numpy as np
import onnx
import onnx_ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import qdq_passes
from qdq_passes.infra.errors import OptionError, QdqError, QuantizationError
from qdq_passes.passes.insert_quantizers import InsertQuantizersPass
from qdq_passes.ir import dialect
from qdq_passes.passes.lower_qdq import LowerQdqPass
from tests.models import assert_bit_identical, run_ort
from tests.qdq_matrix import CASES, feeds, quantized

PIPELINES = [
    "insert-quantizers",
    "insert-quantizers,lower-qdq",
    "insert-quantizers,lower-qdq{weights=folded}",
    "insert-quantizers{weights=adaround}",
]
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@functools.cache
def _reference(model: str, config: str) -> tuple[tuple[np.ndarray, ...], ...]:
    src = quantized(model, config)
    return tuple(tuple(run_ort(src, feed)) for feed in feeds(model))


def _ops(proto: onnx.ModelProto) -> list[tuple[str, str]]:
    return [(n.domain, n.op_type) for n in proto.graph.node]


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("case", CASES, ids=[f"{m}-{c}" for m, c in CASES])
def test_bit_identical_on_the_matrix(case, pipeline):
    model_name, config = case
    source = quantized(model_name, config)
    out = onnx_ir.to_proto(qdq_passes.run(quantized(model_name, config), pipeline))
    for feed, expected in zip(feeds(model_name), _reference(model_name, config)):
        assert_bit_identical(list(expected), run_ort(out, feed))
    assert [o.name for o in out.graph.output] == [o.name for o in source.graph.output]
    onnx.checker.check_model(out)
    ops = _ops(out)
    if "lower-qdq" in pipeline:
        assert all(d != dialect.DOMAIN for d, _ in ops)
        assert not out.functions
        assert dialect.DOMAIN not in {o.domain for o in out.opset_import}
        assert {o.domain: o.version for o in out.opset_import}[""] >= 21
        if "folded" in pipeline:  # every constant float weight became integer codes
            assert not any(n.op_type == "QuantizeLinear" and n.input[0] in {i.name for i in out.graph.initializer}
                           for n in out.graph.node)
    else:
        assert not [op for d, op in ops if op in QDQ_OPS], "an understood Q/DQ was left"
        used = {(n.domain, n.op_type, n.overload) for n in out.graph.node if n.domain == dialect.DOMAIN}
        assert {(f.domain, f.name, f.overload) for f in out.functions} == used
        weight_ops = {op for _, op in ops if op == dialect.ADAROUND_QUANTIZER}
        assert bool(weight_ops) == ("adaround" in pipeline)


def test_statistics_and_second_run():
    model = onnx_ir.from_proto(quantized("mlp", "u8s8-pair"))
    insert = InsertQuantizersPass()
    assert insert(model).modified
    assert insert.stats == {"num-activation": 5, "num-weight": 3, "num-folded": 0, "num-bias": 2, "num-float8": 0,
                            "num-skipped": 0}
    assert not insert(model).modified
    lower = LowerQdqPass(weights="folded")
    assert lower(model).modified
    assert lower.stats == {"num-pairs": 5, "num-folded": 3, "num-dequantize": 2, "num-inlined": 0, "num-opset-converted": 1}
    assert not lower(model).modified


def test_adaround_weights_wrap_folded_weights_but_never_biases():
    model = qdq_passes.run(quantized("conv", "u8s8-channel"), "insert-quantizers{weights=adaround}")
    kinds = {(n.op_type, n.overload, n.attributes["qdtype"].as_int()) for n in model.graph if dialect.is_quantizer(n)}
    assert kinds == {
        (dialect.ADAROUND_QUANTIZER, dialect.FOLDED, int(onnx_ir.DataType.INT8)),
        (dialect.INT_QUANTIZER, dialect.FOLDED, int(onnx_ir.DataType.INT32)),
        (dialect.INT_QUANTIZER, "", int(onnx_ir.DataType.UINT8)),
    }
    assert {n.attributes["rounding"].as_string() for n in model.graph if n.op_type == dialect.ADAROUND_QUANTIZER} == {"nearest"}


def test_com_microsoft_qdq_map_to_the_same_ops():
    model = qdq_passes.run(quantized("conv", "int4-contrib"), "insert-quantizers")
    assert {n.domain for n in model.graph} == {"", dialect.DOMAIN}
    assert {f.opset_imports.get(dialect.CONTRIB_DOMAIN) for f in model.functions.values()} == {1}  # opset 17 has no int4


# --------------------------------------------------------------------------- small models


def _model(nodes, inputs, outputs, inits, opset=21) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def mixed_model() -> onnx.ModelProto:
    """An understood activation pair, a DQ with a non-constant scale, a Q whose output is a graph output."""
    n = helper.make_node
    return _model(
        [
            n("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            n("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            n("QuantizeLinear", ["xd", "s", "z"], ["codes"]),          # its output is a graph output
            n("DequantizeLinear", ["codes", "s", "z"], ["yd"]),
            n("DequantizeLinear", ["codes", "runtime_scale", "z"], ["y2"]),  # scale is a graph input
            n("Relu", ["yd"], ["y"]),
        ],
        [_vi("x", [4]), _vi("runtime_scale", [])],
        [_vi("y", [4]), _vi("y2", [4]), _vi("codes", [4], TensorProto.UINT8)],
        {"s": np.array(0.25, np.float32), "z": np.array(128, np.uint8)},
    )


def test_not_understood_points_are_left_alone_counted_and_logged(caplog):
    model = onnx_ir.from_proto(mixed_model())
    insert = InsertQuantizersPass()
    with caplog.at_level(logging.INFO, logger="qdq_passes"):
        assert insert(model).modified
    assert insert.stats["num-activation"] == 1 and insert.stats["num-skipped"] == 2
    ops = [n.op_type for n in model.graph]
    assert ops == [dialect.INT_QUANTIZER, "QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "Relu"]
    text = caplog.text
    assert "output is also a graph output" in text and "its scale is not a constant" in text
    feed = {"x": np.linspace(-40, 40, 4, dtype=np.float32), "runtime_scale": np.array(0.5, np.float32)}
    assert_bit_identical(run_ort(mixed_model(), feed), run_ort(model, feed))
    assert not insert(model).modified


def test_graph_output_dq_keeps_its_name():
    n = helper.make_node
    proto = _model([n("QuantizeLinear", ["x", "s", "z"], ["q"]), n("DequantizeLinear", ["q", "s", "z"], ["out"])],
                   [_vi("x", [3])], [_vi("out", [3])], {"s": np.array(0.5, np.float32), "z": np.array(3, np.int8)})
    model = qdq_passes.run(proto, "insert-quantizers")
    (node,) = list(model.graph)
    assert node.outputs[0].name == "out" and model.graph.outputs[0] is node.outputs[0]
    lowered = qdq_passes.run(model, "lower-qdq")
    assert [n.op_type for n in lowered.graph] == ["QuantizeLinear", "DequantizeLinear"]
    assert lowered.graph.outputs[0].name == "out"


def float8_model(saturate: int = 1) -> onnx.ModelProto:
    n = helper.make_node
    zp = np.zeros(3, ml_dtypes.float8_e4m3fn)
    w = np.array([[0.3, -500.0, 2.0], [1e-3, 7.0, -0.0]], np.float32)
    return _model(
        [n("QuantizeLinear", ["x", "s", "z"], ["xq"], saturate=saturate, axis=1),
         n("DequantizeLinear", ["xq", "s", "z"], ["xd"], axis=1),
         n("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=1),
         n("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=1),
         n("Add", ["xd", "wd"], ["y"])],
        [_vi("x", [2, 3])], [_vi("y", [2, 3])],
        {"s": np.array([0.5, 1.0, 0.01], np.float32), "z": zp, "w": w},
    )


def test_float8_points_become_fpquantizers():
    x = np.array([[np.nan, 1e9, -0.0], [3.3, -7.1, 0.004]], np.float32)
    expected = run_ort(float8_model(), {"x": x})
    inserted = qdq_passes.run(float8_model(), "insert-quantizers")
    assert {n.op_type for n in inserted.graph if dialect.is_quantizer(n)} == {dialect.FP_QUANTIZER}
    assert_bit_identical(expected, run_ort(inserted, {"x": x}))
    for weights in ("pair", "folded"):
        lowered = qdq_passes.run(inserted, f"lower-qdq{{weights={weights}}}")
        assert not any(dialect.is_quantizer(n) for n in lowered.graph)
        assert_bit_identical(expected, run_ort(lowered, {"x": x}))


def test_float8_without_saturation_is_left_alone():
    model = onnx_ir.from_proto(float8_model(saturate=0))
    insert = InsertQuantizersPass()
    insert(model)
    assert insert.stats["num-skipped"] == 1 and insert.stats["num-float8"] == 1  # the weight pair saturates
    assert [n.op_type for n in model.graph].count("QuantizeLinear") == 1


def test_invalid_qdq_becomes_a_quantization_error_naming_the_node():
    n = helper.make_node
    proto = _model([n("QuantizeLinear", ["x", "s", "z"], ["q"], name="bad_q"), n("DequantizeLinear", ["q", "s", "z"], ["y"])],
                   [_vi("x", [3])], [_vi("y", [3])], {"s": np.array(0.0, np.float32), "z": np.array(3, np.int8)})
    with pytest.raises(QuantizationError, match=r"insert-quantizers: node 'bad_q' \(QuantizeLinear\): scale is 0.0"):
        qdq_passes.run(proto, "insert-quantizers")


# --------------------------------------------------------------------------- lower-qdq


def _dialect_model(codes: np.ndarray, zp: np.ndarray, qdtype: onnx_ir.DataType, opset: int = 21, op=dialect.INT_QUANTIZER,
                   name: str | None = None) -> onnx_ir.Model:
    """y = quantizer(stored codes) + x, folded."""
    graph = onnx_ir.Graph([], [], nodes=[], opset_imports={"": opset}, name="g")
    x = onnx_ir.Value(name="x", shape=onnx_ir.Shape(list(codes.shape)), type=onnx_ir.TensorType(onnx_ir.DataType.FLOAT))
    graph.inputs.append(x)

    def init(n, a):
        v = onnx_ir.Value(name=n, shape=onnx_ir.Shape(a.shape), type=onnx_ir.TensorType(onnx_ir.DataType.from_numpy(a.dtype)),
                          const_value=onnx_ir.Tensor(a, name=n))
        graph.register_initializer(v)
        return v

    node = dialect.make_quantizer(init("w_codes", codes), init("w_scale", np.array(0.125, np.float32)), init("w_zp", zp),
                                  op=op, axis=1, block_size=0, qdtype=qdtype, q_folded=True, name=name,
                                  rounding=dialect.ADAROUND if op == dialect.ADAROUND_QUANTIZER else None)
    graph.append(node)
    add = onnx_ir.Node("", "Add", [x, node.outputs[0]], num_outputs=1)
    add.outputs[0].name = "y"
    graph.append(add)
    graph.outputs.append(add.outputs[0])
    return onnx_ir.Model(graph, ir_version=10)


def test_folded_int4_range_in_an_int8_container_lowers_both_ways():
    codes = np.array([[-8, 7, 0, 3]], np.int8)
    x = np.ones((1, 4), np.float32)
    expected = [x + 0.125 * codes.astype(np.float32)]
    for weights, ops in (("folded", ["DequantizeLinear", "Add"]), ("pair", ["QuantizeLinear", "DequantizeLinear", "Add"])):
        model = _dialect_model(codes, np.array(0, np.int8), onnx_ir.DataType.INT4)
        dialect.ensure_functions(model)
        assert_bit_identical(expected, run_ort(model, {"x": x}))
        LowerQdqPass(weights=weights)(model)
        assert [n.op_type for n in model.graph] == ops
        assert_bit_identical(expected, run_ort(model, {"x": x}))
        if weights == "pair":  # Q clamps to the int4 range: its zero point is int4, not the int8 container
            assert model.graph.node(0).inputs[2].dtype == onnx_ir.DataType.INT4


def test_bad_stored_codes_are_a_quantization_error():
    model = _dialect_model(np.array([[9, 0]], np.int8), np.array(0, np.int8), onnx_ir.DataType.INT4, name="w_quant")
    with pytest.raises(QuantizationError, match=r"'w_quant'.*stored code\[0, 0\] is 9, outside the INT4 range"):
        qdq_passes.run(model, "lower-qdq")


def test_an_opset_too_low_for_a_quantizer_is_an_error_before_any_change():
    model = _dialect_model(np.array([[300, -2]], np.int16), np.array(0, np.int16), onnx_ir.DataType.INT16, opset=17, name="w16")
    dialect.ensure_functions(model)  # com.microsoft bodies: onnxruntime runs it at opset 17
    before = onnx_ir.to_proto(model).SerializeToString()
    with pytest.raises(QuantizationError, match=r"node 'w16' .*INT16 codes need default-domain opset 21, above 17; run lower-qdq\{opset=21\}"):
        LowerQdqPass(opset=17)(model)
    assert onnx_ir.to_proto(model).SerializeToString() == before
    assert LowerQdqPass(opset=21)(model).modified
    assert model.opset_imports[""] == 21 and dialect.DOMAIN not in model.opset_imports


def test_lower_without_dialect_nodes_only_raises_the_opset():
    proto = quantized("conv", "s8s8-tensor")
    model = onnx_ir.from_proto(quantized("conv", "s8s8-tensor"))
    lower = LowerQdqPass()
    assert lower(model).modified and model.opset_imports[""] == 21 and model.ir_version >= 10
    assert lower.stats["num-opset-converted"] == 1
    assert not lower(model).modified
    for feed in feeds("conv"):
        assert_bit_identical(run_ort(proto, feed), run_ort(model, feed))
    assert not LowerQdqPass()(onnx_ir.from_proto(quantized("conv", "int4-channel"))).modified  # already at 21


def test_written_back_adaround_lowers_to_dq():
    model = _dialect_model(np.array([[1, -3]], np.int8), np.array(0, np.int8), onnx_ir.DataType.INT8,
                           op=dialect.ADAROUND_QUANTIZER)
    LowerQdqPass(weights="folded")(model)
    assert [n.op_type for n in model.graph] == ["DequantizeLinear", "Add"]


@pytest.mark.parametrize("qdtype", [onnx_ir.DataType.FLOAT16, onnx_ir.DataType.BFLOAT16])
def test_fp_cast_quantizers_are_inlined(qdtype):
    from tests.ir.test_dialect import quantizer_model

    zp = np.array(0.5, np.float16 if qdtype == onnx_ir.DataType.FLOAT16 else ml_dtypes.bfloat16)
    model = quantizer_model(op=dialect.FP_QUANTIZER, scale=np.array(0.5, np.float32), zero_point=zp, qdtype=qdtype,
                            x_shape=(5,))
    x = np.array([1.0001, -3.3, 7e4, -0.0, np.nan], np.float32)
    expected = run_ort(model, {"x": x})
    lower = LowerQdqPass()
    assert lower(model).modified and lower.stats["num-inlined"] == 1
    assert not model.functions and all(n.domain == "" for n in model.graph)
    assert model.graph.outputs[0].name == "y"
    assert_bit_identical(expected, run_ort(model, {"x": x}))


def test_lower_opset_option_is_checked():
    with pytest.raises(OptionError, match=r"option 'opset' must be at most 25, got 28"):
        qdq_passes.parse_pipeline("lower-qdq{opset=28}")
    with pytest.raises(QdqError):
        LowerQdqPass(opset=9)
