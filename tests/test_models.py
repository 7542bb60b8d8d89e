"""Quick checks of the shared model builders and onnxruntime helpers (tests/models.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir
import pytest
from onnx import numpy_helper

from tests.models import (
    assert_bit_identical,
    attention_model,
    constant_weights_model,
    conv_relu_model,
    mlp_model,
    ort_quantize,
    random_inputs,
    run_ort,
)

BUILDERS = [conv_relu_model, constant_weights_model, mlp_model, attention_model]
CONFIGS = {
    "int8-per-channel": dict(per_channel=True, weight_type="QInt8"),
    "int8-per-tensor": dict(per_channel=False, weight_type="QInt8"),
    "int4-per-channel-opset21": dict(per_channel=True, weight_type="QInt4", opset=21),
}
WEIGHT_DTYPES = {"QInt8": onnx.TensorProto.INT8, "QInt4": onnx.TensorProto.INT4}


def _output_shapes(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    return [tuple(d.dim_value for d in o.type.tensor_type.shape.dim) for o in model.graph.output]


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
def test_builder_is_valid_and_runs(build):
    model = build()
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    [feed] = random_inputs(model)
    outputs = run_ort(model, feed)
    assert [o.shape for o in outputs] == _output_shapes(model)
    assert all(np.isfinite(o).all() for o in outputs)
    assert_bit_identical(outputs, run_ort(build(), feed))


def test_builders_are_seeded():
    a, b, c = conv_relu_model(0), conv_relu_model(0), conv_relu_model(1)
    assert a.SerializeToString() == b.SerializeToString() != c.SerializeToString()
    assert {t.name for t in mlp_model().graph.initializer} == {"fc1_w", "fc1_b", "fc2_w", "fc2_b", "proj_w"}
    assert not constant_weights_model().graph.initializer
    assert [n.op_type for n in constant_weights_model().graph.node].count("Constant") == 4


def test_random_inputs_follow_the_graph_inputs():
    feeds = random_inputs(attention_model(), n=3, seed=5)
    assert len(feeds) == 3 and list(feeds[0]) == ["x"]
    assert feeds[0]["x"].shape == (1, 8, 16) and feeds[0]["x"].dtype == np.float32
    assert not np.array_equal(feeds[0]["x"], feeds[1]["x"])
    np.testing.assert_array_equal(feeds[2]["x"], random_inputs(attention_model(), n=3, seed=5)[2]["x"])


@pytest.mark.parametrize("config", list(CONFIGS), ids=str)
@pytest.mark.parametrize("build", [conv_relu_model, mlp_model, attention_model], ids=lambda b: b.__name__)
def test_ort_quantize_gives_qdq(build, config, tmp_path):
    options = CONFIGS[config]
    qmodel = ort_quantize(build(), tmp_path, **options)
    onnx.checker.check_model(qmodel, full_check=True)
    ops = [n.op_type for n in qmodel.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert all(n.domain in ("", "ai.onnx") for n in qmodel.graph.node)
    if options.get("opset"):
        assert {o.domain: o.version for o in qmodel.opset_import}[""] == 21

    inits = {t.name: t for t in qmodel.graph.initializer}
    weight_dqs = [
        n
        for n in qmodel.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].data_type != onnx.TensorProto.INT32  # int32 = bias
    ]
    assert weight_dqs, "weights should be stored folded: integer initializer -> DQ"
    for dq in weight_dqs:
        assert inits[dq.input[0]].data_type == WEIGHT_DTYPES[options["weight_type"]]
        scale = numpy_helper.to_array(inits[dq.input[1]])
        assert (scale.size > 1) == options["per_channel"]

    [feed] = random_inputs(build(), seed=1)
    ref = run_ort(build(), feed)[0]
    out = run_ort(qmodel, feed)[0]
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert rel < (0.5 if options["weight_type"] == "QInt4" else 0.1), rel


def test_ort_quantize_misses_weights_in_constants(tmp_path):
    """Known onnxruntime.quantization quirk: Constant weights get activation-style uint8 Q/DQ."""
    qmodel = ort_quantize(constant_weights_model(), tmp_path, per_channel=True, weight_type="QInt8")
    inits = {t.name: t for t in qmodel.graph.initializer}
    q_of_weight = [n for n in qmodel.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "conv1_w"]
    assert len(q_of_weight) == 1
    zp = inits[q_of_weight[0].input[2]]
    assert zp.data_type == onnx.TensorProto.UINT8 and not zp.dims  # per-tensor uint8
    assert [n.op_type for n in qmodel.graph.node].count("Constant") == 4  # biases not quantized


def test_run_ort_accepts_proto_ir_and_paths(tmp_path):
    model = conv_relu_model()
    [feed] = random_inputs(model)
    expected = run_ort(model, feed)
    onnx.save(model, tmp_path / "m.onnx")
    assert_bit_identical(run_ort(tmp_path / "m.onnx", feed), expected)
    assert_bit_identical(run_ort(str(tmp_path / "m.onnx"), feed, threads=2), expected)
    assert_bit_identical(run_ort(onnx_ir.from_proto(conv_relu_model()), feed), expected)
    onnx_ir.save(
        onnx_ir.from_proto(conv_relu_model()),
        tmp_path / "ext.onnx",
        external_data="ext.data",
        size_threshold_bytes=0,
    )
    assert_bit_identical(run_ort(onnx_ir.load(tmp_path / "ext.onnx"), feed), expected)


def test_assert_bit_identical():
    a = np.array([1.0, np.nan, -0.0], np.float32)
    assert_bit_identical([a], [a.copy()])
    b = a.copy()
    b[0] = np.nextafter(b[0], np.float32(2))
    with pytest.raises(AssertionError, match=r"1 of 3 elements differ, max abs diff 1\.19"):
        assert_bit_identical([a], [b])
    with pytest.raises(AssertionError, match="dtype"):
        assert_bit_identical([a], [a.astype(np.float64)])
    with pytest.raises(AssertionError, match="2 of 2 elements differ, max abs diff 3"):
        assert_bit_identical([np.array([1, 2], np.int8)], [np.array([4, 0], np.int8)])
    with pytest.raises(AssertionError, match="outputs"):
        assert_bit_identical([a], [])
