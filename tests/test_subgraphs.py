"""Q/DQ inside If branches: every Q/DQ pass reaches into subgraphs, bit for bit in onnxruntime.

The model's whole network sits in the two branches of an If on a sample-rate input (as silero-vad's
8 kHz / 16 kHz split); the QDQ form is onnxruntime's own quantization of each branch. Both branches
are checked (sr 16000 takes one, 8000 the other).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir
import pytest

import qdq_passes
from qdq_passes.ir import dialect
from tests.models import assert_bit_identical, if_float_model, ort_quantized_if_model, run_ort

RATES = (16000, 8000)


def _feeds(n: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32), "sr": np.array(rate, np.int64)}
            for rate in RATES for _ in range(n)]


def _ops_in_branches(model: onnx_ir.Model) -> list[str]:
    return [n.op_type for graph in model.graphs() if graph is not model.graph for n in graph]


@pytest.fixture(scope="module")
def qdq(tmp_path_factory) -> onnx.ModelProto:
    return ort_quantized_if_model(tmp_path_factory.mktemp("if"))


def _run(model: onnx.ModelProto, pipeline: str, **options) -> onnx_ir.Model:
    return qdq_passes.run(model, pipeline, **options)


def test_the_fixture_has_its_qdq_in_the_branches(qdq):
    model = onnx_ir.from_proto(qdq)
    assert [n.op_type for n in model.graph] == ["Greater", "If"]
    assert _ops_in_branches(model).count("DequantizeLinear") == 2 * 6  # x, 2 weights, bias, relu out, y


@pytest.mark.parametrize(("pipeline", "quantize_nodes"), [
    # onnxruntime stores the weights folded (int8 -> DQ): 3 activation Qs per branch
    ("insert-quantizers,lower-qdq", 10),  # a folded weight lowers to Q(dequantized) -> DQ
    ("insert-quantizers{weights=adaround},lower-qdq", 10),
    ("insert-quantizers,lower-qdq{weights=folded}", 6),
    ("unfold-qdq", 10),
    ("unfold-qdq,fold-qdq", 6),
    ("unfold-qdq,insert-quantizers,lower-qdq", 10),
])
def test_qdq_passes_inside_branches_are_bit_exact(qdq, pipeline, quantize_nodes):
    result, report = qdq_passes.run_with_report(qdq, pipeline)
    assert all(r.modified for r in report.records), [(r.argument, r.modified) for r in report.records]
    for feed in _feeds():
        assert_bit_identical(run_ort(qdq, feed), run_ort(result, feed))
    assert _ops_in_branches(result).count("QuantizeLinear") == quantize_nodes
    assert [n.op_type for n in result.graph] == ["Greater", "If"]


def test_insert_quantizers_turns_branch_pairs_into_quantizers(qdq):
    result = _run(qdq, "insert-quantizers")
    inner = [n for n in dialect.quantizer_nodes(result) if n.graph is not result.graph]
    assert len(inner) == 12 and not [op for op in _ops_in_branches(result) if op.endswith("QuantizeLinear")]


def test_strip_qdq_removes_the_pairs_inside_branches(qdq):
    result = _run(qdq, "strip-qdq")
    assert not [op for op in _ops_in_branches(result) if op in ("QuantizeLinear", "DequantizeLinear")]
    reference = if_float_model()
    for feed in _feeds():  # the dequantized weights stand for the float ones: close, not equal
        np.testing.assert_allclose(run_ort(result, feed)[0], run_ort(reference, feed)[0], atol=0.05)


def _calib(folder, *, rate: bool = True):
    path = folder / ("calib.npz" if rate else "calib_no_rate.npz")
    x = np.random.default_rng(3).normal(size=(8, 3, 8, 8)).astype(np.float32)
    np.savez(path, x=x, **({"sr": np.array(16000, np.int64)} if rate else {}))
    return str(path)


def test_quantize_reaches_into_the_branch_the_calibration_takes(tmp_path, caplog):
    """Calibrated at 16 kHz: that branch is quantized as if it were the main graph (bit for bit what
    inlining the If first gives); the 8 kHz branch, never run, keeps float activations, said once."""
    model = if_float_model()
    with caplog.at_level(logging.WARNING, logger="qdq_passes"):
        result = _run(model, 'quantize{calib-batch-axis=["sr=none"]}', calib=_calib(tmp_path))
    assert "3 activation(s) computed in subgraphs stay float: no calibration sample reached them" in caplog.text
    branches = {g.name: g for g in result.graphs() if g.name.startswith("branch_")}
    wide, narrow = branches["branch_wide"], branches["branch_narrow"]
    assert [n.op_type for n in wide].count("QuantizeLinear") == 2 + 3  # 2 weights; Conv, Relu, Conv outputs
    assert [n.op_type for n in narrow].count("QuantizeLinear") == 2  # weights only
    assert [n.op_type for n in result.graph] == ["QuantizeLinear", "DequantizeLinear", "Greater", "If"]  # x's pair
    inlined = _run(model, 'fold-constants{inputs=["sr=16000"]},quantize', calib=_calib(tmp_path, rate=False))
    for feed in _feeds():
        float_out = run_ort(model, feed)[0]
        got = run_ort(result, feed)[0]
        if feed["sr"] == 16000:
            assert_bit_identical(run_ort(inlined, {"x": feed["x"]}), [got])
        error = float(np.mean((got - float_out) ** 2))
        assert 10 * np.log10(float(np.mean(float_out**2)) / error) > 30


def test_quantize_with_a_histogram_calibration_keeps_branch_activations_float(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="qdq_passes"):
        result = _run(if_float_model(), 'quantize{calibration=percentile calib-batch-axis=["sr=none"]}',
                      calib=_calib(tmp_path))
    assert "6 activation(s) computed in subgraphs stay float" in caplog.text
    assert _ops_in_branches(result).count("QuantizeLinear") == 4


def test_adaround_names_each_branch_weight_it_cannot_train_and_keeps_it_quantized(qdq, tmp_path, caplog):
    calib = _calib(tmp_path)
    with caplog.at_level(logging.WARNING, logger="qdq_passes"):
        result = _run(qdq, "insert-quantizers{weights=adaround},adaround{iters=5 calib-batch-axis=[\"sr=none\"]},"
                           "lower-qdq", calib=calib)
    lines = [r.getMessage() for r in caplog.records if "inside subgraph" in r.getMessage()]
    assert len(lines) == 4 and {line.split("'")[-2] for line in lines} == {"branch_wide", "branch_narrow"}
    assert "already holds learned codes" not in caplog.text
    nearest = _run(qdq, "insert-quantizers{weights=adaround},lower-qdq")
    for feed in _feeds():
        assert_bit_identical(run_ort(nearest, feed), run_ort(result, feed))


def _loop_model() -> onnx.ModelProto:
    """h <- Relu(MatMul(h, W)) three times in a Loop; W is the body's own initializer."""
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(11).normal(0, 0.4, (6, 6)) + 0.2).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["h_in", "w"], ["mm"], name="step_matmul"),
         helper.make_node("Relu", ["mm"], ["h_out"])],
        "loop_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, 6])],
        [numpy_helper.from_array(w, "w")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], body=body, name="steps")], "loop_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        [numpy_helper.from_array(np.array(3, np.int64), "trips"), numpy_helper.from_array(np.array(True), "keep_going")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_quantize_measures_every_iteration_of_a_loop_body(tmp_path):
    model = _loop_model()
    rng = np.random.default_rng(12)
    np.savez(tmp_path / "calib.npz", x=np.abs(rng.normal(size=(16, 6))).astype(np.float32))
    result, report = qdq_passes.run_with_report(model, "quantize", calib=str(tmp_path / "calib.npz"))
    body = [g for g in result.graphs() if g.name == "loop_body"][0]
    assert [n.op_type for n in body].count("QuantizeLinear") == 1 + 2  # the weight; h_in and mm (h_out: Relu's)
    signal = noise = 0.0
    for x in np.abs(rng.normal(size=(8, 1, 6))).astype(np.float32):
        want, got = run_ort(model, {"x": x})[0], run_ort(result, {"x": x})[0]
        signal, noise = signal + float(np.sum(want**2)), noise + float(np.sum((got - want) ** 2))
    assert signal > 0 and 10 * np.log10(signal / noise) > 25
