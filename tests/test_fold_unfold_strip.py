"""fold-qdq, unfold-qdq and strip-qdq: bit-exact in onnxruntime, structure matching, bad input."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import qdq_passes
from qdq_passes.infra.errors import QuantizationError
from qdq_passes.ir.printer import print_model
from qdq_passes.ir.qdq import constant_array, is_dequantize, is_quantize
from tests.models import assert_bit_identical, constant_weights_model, ort_quantize, run_ort
from tests.qdq_matrix import CASES, MODELS, feeds, float_model, quantized

PAIR_CASES = [(m, c) for m, c in CASES if c.endswith("-pair")]
FOLDED_CASES = [(m, c) for m, c in CASES if not c.endswith("-pair")]


def _ids(cases):
    return [f"{m}-{c}" for m, c in cases]


def run(model, pipeline: str):
    """Run a pipeline through the Python API: (output proto, {pass: statistics})."""
    out, report = qdq_passes.run_with_report(model, pipeline)
    return onnx_ir.to_proto(out), {r.argument: r.stats for r in report.records}


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, model: str) -> None:
    for feed in feeds(model):
        assert_bit_identical(run_ort(a, feed), run_ort(b, feed))


def _text(model: onnx.ModelProto) -> str:
    ir_model = onnx_ir.from_proto(onnx.load_model_from_string(model.SerializeToString()))
    for key in ("qdq_passes.pipeline", "qdq_passes.version"):
        ir_model.metadata_props.pop(key, None)
    return print_model(ir_model)


def _weight_qs(model: onnx_ir.Model) -> list[onnx_ir.Node]:
    """Q nodes whose input is a constant (weights as float Q -> DQ pairs)."""
    return [n for n in model.graph if is_quantize(n) and constant_array(n.inputs[0]) is not None]


def _stored_codes(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """DQ output name -> stored codes, for every DQ of a constant."""
    ir_model = onnx_ir.from_proto(onnx.load_model_from_string(model.SerializeToString()))
    return {
        n.outputs[0].name: constant_array(n.inputs[0])
        for n in ir_model.graph
        if is_dequantize(n) and constant_array(n.inputs[0]) is not None
    }


# --------------------------------------------------------------------------- bit-exactness on the matrix


@pytest.mark.parametrize(("model", "config"), CASES, ids=_ids(CASES))
def test_unfold_then_fold_is_bit_identical(model, config):
    qdq = quantized(model, config)
    out, stats = run(qdq, "unfold-qdq,fold-qdq")
    assert_same_outputs(qdq, out, model)
    assert not _weight_qs(onnx_ir.from_proto(out)), "weights must end folded"
    if config.endswith("-pair"):
        assert stats["unfold-qdq"]["num-unfolded"] == 0
    else:
        # On onnxruntime's folded models the round trip is the identity, names and codes included.
        assert stats["unfold-qdq"]["num-unfolded"] == stats["fold-qdq"]["num-folded"] > 0
        assert _text(out) == _text(qdq)


@pytest.mark.parametrize(("model", "config"), PAIR_CASES, ids=_ids(PAIR_CASES))
def test_fold_of_weight_pairs_is_bit_identical_and_matches_onnxruntime_folding(model, config):
    qdq = quantized(model, config)
    n_pairs = len(_weight_qs(onnx_ir.from_proto(quantized(model, config))))
    out, stats = run(qdq, "fold-qdq")
    assert_same_outputs(qdq, out, model)
    assert stats["fold-qdq"] == {"num-folded": n_pairs, "num-skipped": 0}
    assert not _weight_qs(onnx_ir.from_proto(out))
    # The same weights folded by onnxruntime itself (the config without AddQDQPairToWeight).
    ort_folded = _stored_codes(quantized(model, config.replace("-pair", "-channel")))
    ours = _stored_codes(out)
    weights = [name for name in ort_folded if ort_folded[name].dtype != np.int32]
    assert weights
    for name in weights:
        assert ours[name].dtype == ort_folded[name].dtype  # int4 stays int4
        np.testing.assert_array_equal(ours[name], ort_folded[name])


def test_fold_stores_int4_packed_and_keeps_the_contrib_domain():
    qdq = quantized("mlp", "int4-contrib")
    unfolded, _ = run(qdq, "unfold-qdq")
    ir_unfolded = onnx_ir.from_proto(unfolded)
    assert {q.domain for q in _weight_qs(ir_unfolded)} == {"com.microsoft"}
    out, _ = run(unfolded, "fold-qdq")
    stored = {t.name: t for t in out.graph.initializer}
    for name in ("fc1_w_quantized", "fc2_w_quantized", "proj_w_quantized"):
        tensor = stored[name]
        assert tensor.data_type == TensorProto.INT4
        assert len(tensor.raw_data) == (int(np.prod(tensor.dims)) + 1) // 2  # two codes per byte
    assert all(n.domain == "com.microsoft" for n in out.graph.node if n.op_type == "DequantizeLinear")
    assert_same_outputs(qdq, out, "mlp")


def test_fold_removes_constant_node_weights():
    with tempfile.TemporaryDirectory() as tmp:
        qdq = ort_quantize(constant_weights_model(), tmp)
    before = sum(n.op_type == "Constant" for n in qdq.graph.node)
    out, stats = run(qdq, "fold-qdq")
    after = sum(n.op_type == "Constant" for n in out.graph.node)
    assert stats["fold-qdq"]["num-folded"] > 0 and after < before
    x = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    assert_bit_identical(run_ort(qdq, x), run_ort(out, x))


# --------------------------------------------------------------------------- strip-qdq


@pytest.fixture(scope="module")
def pair_models(tmp_path_factory) -> dict[str, onnx.ModelProto]:
    """Each model quantized with float weight pairs and float biases (the strip-qdq acceptance case)."""
    folder = tmp_path_factory.mktemp("pairs")
    options = {"AddQDQPairToWeight": True, "QuantizeBias": False}
    return {m: ort_quantize(float_model(m), folder / m, extra_options=options) for m in MODELS}


@pytest.mark.parametrize("model", list(MODELS))
def test_strip_reproduces_the_float_model_bit_for_bit(model, pair_models):
    out, stats = run(pair_models[model], "strip-qdq")
    assert_same_outputs(float_model(model), out, model)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in out.graph.node)
    assert [o.name for o in out.graph.output] == [o.name for o in float_model(model).graph.output]
    # onnxruntime deleted the Relu of conv and mlp (uint8 zp 0): it must come back.
    assert stats["strip-qdq"]["num-relus-restored"] == (0 if model == "attention" else 1)
    assert stats["strip-qdq"]["num-skipped"] == 0


def test_strip_without_relu_restoration_loses_the_relu(pair_models):
    out, stats = run(pair_models["conv"], "strip-qdq{restore-relu=false}")
    assert stats["strip-qdq"]["num-relus-restored"] == 0
    feed = feeds("conv")[0]
    with pytest.raises(AssertionError, match="elements differ"):
        assert_bit_identical(run_ort(float_model("conv"), feed), run_ort(out, feed))


@pytest.mark.parametrize(("model", "config"), [("conv", "u8s8-channel"), ("mlp", "int4-contrib"),
                                               ("attention", "int4-block32")], ids=str)
def test_strip_of_folded_models_dequantizes_weights_and_biases(model, config):
    qdq = quantized(model, config)
    out, stats = run(qdq, "strip-qdq")
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in out.graph.node)
    codes = _stored_codes(qdq)
    assert stats["strip-qdq"]["num-weights-restored"] == len(codes)
    again, stats2 = run(out, "strip-qdq")
    assert stats2["strip-qdq"]["num-weights-restored"] == 0 and _text(again) == _text(out)
    # The float model runs and stays close to the quantized one.
    feed = feeds(model)[0]
    a, b = run_ort(qdq, feed)[0], run_ort(out, feed)[0]
    assert np.abs(a - b).max() < 0.2 * np.abs(a).max()


# --------------------------------------------------------------------------- unfold-qdq{float-model}


@pytest.fixture(scope="module")
def float_paths(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("float")
    paths = {}
    for name in MODELS:
        paths[name] = folder / f"{name}.onnx"
        onnx.save(float_model(name), paths[name])
    return paths


def _float_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


UNFOLD_CASES = [("conv", "u8s8-channel"), ("conv", "int16-weights"), ("mlp", "s8s8-tensor"),
                ("mlp", "int4-contrib"), ("attention", "int4-block32"), ("attention", "u8s8-dedicated")]


@pytest.mark.parametrize(("model", "config"), UNFOLD_CASES, ids=_ids(UNFOLD_CASES))
def test_unfold_with_float_model_restores_original_weights(model, config, float_paths):
    qdq = quantized(model, config)
    out, stats = run(qdq, f"unfold-qdq{{float-model={float_paths[model]}}}")
    assert stats["unfold-qdq"]["num-codes-changed"] == 0
    ir_out = onnx_ir.from_proto(onnx.load_model_from_string(out.SerializeToString()))
    qs = _weight_qs(ir_out)
    assert len(qs) == stats["unfold-qdq"]["num-unfolded"] > 0
    originals = [w for name, w in _float_weights(float_model(model)).items() if name.endswith("_w") or name.startswith("w")]
    for q in qs:
        weight = constant_array(q.inputs[0])
        assert any(w.dtype == weight.dtype and w.shape == weight.shape and w.tobytes() == weight.tobytes()
                   for w in originals), f"{q.inputs[0].name} is not an original float weight"
    refolded, _ = run(out, "fold-qdq")
    assert_same_outputs(qdq, refolded, model)
    assert _text(refolded) == _text(qdq)


def test_float_model_is_matched_by_structure_not_names(tmp_path):
    reference = float_model("conv")
    renames = {}
    for i, t in enumerate(reference.graph.initializer):
        renames[t.name] = f"tensor{i}"
        t.name = renames[t.name]
    for node in reference.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.name = f"n_{node.name}"
    reference.graph.initializer.reverse()  # the order of initializers does not matter either
    path = tmp_path / "renamed.onnx"
    onnx.save(reference, path)
    qdq = quantized("conv", "u8s8-channel")
    out, _ = run(qdq, f"unfold-qdq{{float-model={path}}}")
    weights = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    original = _float_weights(float_model("conv"))
    for name in ("conv1_w", "conv2_w"):
        assert weights[name].tobytes() == original[name].tobytes()


def test_codes_moved_by_one_are_accepted_and_counted(tmp_path, float_paths):
    qdq = quantized("conv", "u8s8-channel")
    codes = next(t for t in qdq.graph.initializer if t.name == "conv2_w_quantized")
    array = numpy_helper.to_array(codes).copy()
    array.flat[5] = array.flat[5] + (1 if array.flat[5] < 127 else -1)  # what AdaRound may do
    codes.CopyFrom(numpy_helper.from_array(array, codes.name))
    out, stats = run(qdq, f"unfold-qdq{{float-model={float_paths['conv']}}}")
    assert stats["unfold-qdq"]["num-codes-changed"] == 1
    assert stats["unfold-qdq"]["num-unfolded"] == 2


def _other_shape(tmp_path: Path) -> Path:
    reference = float_model("conv")
    for i, t in enumerate(reference.graph.initializer):
        if t.name == "conv2_w":
            reference.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "conv2_w"))
    path = tmp_path / "other_shape.onnx"
    onnx.save(reference, path)
    return path


def _other_values(tmp_path: Path) -> Path:
    path = tmp_path / "other_values.onnx"
    onnx.save(MODELS["conv"](seed=3), path)
    return path


def _other_model(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(float_model("mlp"), path)
    return path


@pytest.mark.parametrize(("make", "message"), [
    (_other_model, r"Conv .*input 1: the float model has 0 Conv node\(s\) with a constant at input 1"),
    (_other_shape, r"conv2_w_DequantizeLinear.* feeding Conv .*has shape \[4, 4, 1, 1\], but the stored codes have shape \[4, 4, 3, 3\]"),
    (_other_values, r"conv\d_w_DequantizeLinear.*quantizes to codes that differ from the stored ones by up to \d+"),
], ids=["other-model", "other-shape", "other-values"])
def test_mismatched_float_model_fails_naming_the_node(make, message, tmp_path):
    path = make(tmp_path)
    with pytest.raises(QuantizationError, match=message):
        qdq_passes.run(quantized("conv", "u8s8-channel"), f"unfold-qdq{{float-model={path}}}")


def test_cli_fails_cleanly_on_a_mismatched_float_model(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(quantized("conv", "u8s8-channel"), src)
    reference = _other_model(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "qdq_passes.cli", str(src), "-o", str(out), "-p", f"unfold-qdq{{float-model={reference}}}"],
        capture_output=True, timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "unfold-qdq" in lines[0] and "Conv" in lines[0], lines
    assert "Traceback" not in result.stderr.decode()
    assert not out.exists()


# --------------------------------------------------------------------------- bad input


def _model(nodes, inputs, outputs, initializers, opset=21) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _weight_pair_model(scale: float, zp_dtype=np.int8, q_attrs=None) -> onnx.ModelProto:
    """x[1,2] @ DQ(Q(W[2,2])) with the given scale and zero point type."""
    w = numpy_helper.from_array(np.array([[0.5, -0.25], [0.125, 1.0]], np.float32), "w")
    s = numpy_helper.from_array(np.array(scale, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, zp_dtype), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], name="bad_q", **(q_attrs or {})),
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], name="bad_dq"),
        helper.make_node("MatMul", ["x", "wd"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    return _model(nodes, [x], [y], [w, s, z])


def _folded_model(codes_dtype=np.int8, zp_dtype=np.int8, scale=0.1) -> onnx.ModelProto:
    c = numpy_helper.from_array(np.array([[5, -3], [0, 7]], codes_dtype), "c")
    s = numpy_helper.from_array(np.array(scale, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, zp_dtype), "z")
    nodes = [helper.make_node("DequantizeLinear", ["c", "s", "z"], ["wd"], name="bad_dq"),
             helper.make_node("MatMul", ["x", "wd"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    return _model(nodes, [x], [y], [c, s, z])


BAD = {
    "zero-scale": (lambda: _weight_pair_model(0.0), r"'bad_(q|dq)'.*scale is 0\.0"),
    "negative-scale": (lambda: _weight_pair_model(-0.5), r"'bad_(q|dq)'.*scale is -0\.5, scales must be positive"),
    "nan-scale": (lambda: _weight_pair_model(float("nan")), r"'bad_(q|dq)'.*scale is nan"),
    "inf-scale": (lambda: _weight_pair_model(float("inf")), r"'bad_(q|dq)'.*scale is inf"),
    "q-zp-type": (lambda: _weight_pair_model(0.1, np.uint8, {"output_dtype": TensorProto.INT8}),
                  r"'bad_q'.*zero point is UINT8 but the output type is INT8"),
    "dq-zp-type": (lambda: _folded_model(np.int8, np.uint8), r"'bad_dq'.*zero point is UINT8 but the input type is INT8"),
    "folded-zero-scale": (lambda: _folded_model(scale=0.0), r"'bad_dq'.*scale is 0\.0"),
}


@pytest.mark.parametrize("pass_name", ["fold-qdq", "unfold-qdq", "strip-qdq"])
@pytest.mark.parametrize("case", list(BAD))
def test_invalid_parameters_raise_quantization_error_naming_the_node(case, pass_name):
    make, message = BAD[case]
    with pytest.raises(QuantizationError, match=f"^{pass_name}: node {message}"):
        qdq_passes.run(make(), pass_name)


def test_cli_writes_nothing_for_invalid_parameters(tmp_path):
    src, out = tmp_path / "bad.onnx", tmp_path / "out.onnx"
    onnx.save(_weight_pair_model(0.0), src)
    result = subprocess.run([sys.executable, "-m", "qdq_passes.cli", str(src), "-o", str(out), "-p", "fold-qdq"],
                            capture_output=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and ("'bad_q'" in lines[0] or "'bad_dq'" in lines[0]), lines
    assert not out.exists()


# --------------------------------------------------------------------------- understood and not-understood Q/DQ


def _mixed_model() -> onnx.ModelProto:
    """w1: understood pair; w2: Q scale is a graph input; w3: DQ scale differs from Q's; c4: folded with
    a graph-input scale; x: an activation pair."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w1", rng.standard_normal((4, 2)).astype(np.float32)), ("w2", rng.standard_normal((4, 2)).astype(np.float32)),
        ("w3", rng.standard_normal((4, 2)).astype(np.float32)), ("c4", np.arange(8, dtype=np.int8).reshape(4, 2)),
        ("s", np.array(0.02, np.float32)), ("s_other", np.array(0.03, np.float32)), ("z", np.array(0, np.int8)),
        ("xs", np.array(0.05, np.float32)), ("xz", np.array(128, np.uint8)),
    ]]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="x_dq"),
        helper.make_node("QuantizeLinear", ["w1", "s", "z"], ["w1q"], name="w1_q"),
        helper.make_node("DequantizeLinear", ["w1q", "s", "z"], ["w1d"], name="w1_dq"),
        helper.make_node("QuantizeLinear", ["w2", "s_in", "z"], ["w2q"], name="w2_q"),
        helper.make_node("DequantizeLinear", ["w2q", "s_in", "z"], ["w2d"], name="w2_dq"),
        helper.make_node("QuantizeLinear", ["w3", "s", "z"], ["w3q"], name="w3_q"),
        helper.make_node("DequantizeLinear", ["w3q", "s_other", "z"], ["w3d"], name="w3_dq"),
        helper.make_node("DequantizeLinear", ["c4", "s_in", "z"], ["w4d"], name="c4_dq"),
    ] + [helper.make_node("MatMul", ["xd", f"w{i}d"], [f"y{i}"]) for i in (1, 2, 3, 4)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    s_in = helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [])
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 2]) for i in (1, 2, 3, 4)]
    return _model(nodes, [x, s_in], outs, inits)


LEFT_ALONE = ["w2_q", "w2_dq", "w3_q", "w3_dq", "c4_dq"]


def _node_texts(model: onnx.ModelProto) -> dict[str, str]:
    return {n.name: str(n) for n in model.graph.node if n.name}


@pytest.mark.parametrize(("pass_name", "changed"), [
    ("fold-qdq", {"num-folded": 1}),
    ("unfold-qdq", {"num-unfolded": 0}),
    ("strip-qdq", {"num-activation-pairs-removed": 1, "num-weights-restored": 1}),
])
def test_not_understood_qdq_is_left_exactly_as_it_was(pass_name, changed, caplog):
    model = _mixed_model()
    before = _node_texts(model)
    before_inits = _float_weights(model)
    with caplog.at_level(logging.WARNING):
        out, stats = run(model, pass_name)
    after = _node_texts(out)
    for name in LEFT_ALONE:
        assert after[name] == before[name], name
    after_inits = _float_weights(out)
    for name in ("w2", "w3", "c4", "s", "s_other", "z"):
        assert after_inits[name].tobytes() == before_inits[name].tobytes(), name
    # w2's DQ, w3's DQ and c4's DQ, each with a warning giving the reason
    assert stats[pass_name]["num-skipped"] == 3
    for key, value in changed.items():
        assert stats[pass_name][key] == value
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'w2_dq'" in w and "scale is not a constant" in w for w in warnings)
    assert any("'w3_dq'" in w and "differ from those of its Q" in w for w in warnings)
    feed = {"x": np.linspace(-2, 2, 4, dtype=np.float32).reshape(1, 4), "s_in": np.array(0.02, np.float32)}
    if pass_name != "strip-qdq":  # strip changes what x's pair did to every output
        assert_bit_identical(run_ort(model, feed), run_ort(out, feed))


def test_fold_leaves_a_q_shared_with_a_not_understood_dq():
    model = _weight_pair_model(0.1)
    other = numpy_helper.from_array(np.array(0.2, np.float32), "s2")
    model.graph.initializer.append(other)
    model.graph.node.insert(2, helper.make_node("DequantizeLinear", ["wq", "s2", "z"], ["wd2"], name="dq2"))
    model.graph.node.append(helper.make_node("MatMul", ["x", "wd2"], ["y2"]))
    model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 2]))
    out, stats = run(model, "fold-qdq")
    assert stats["fold-qdq"] == {"num-folded": 0, "num-skipped": 2}
    assert _text(out) == _text(model)


def test_fold_keeps_a_weight_that_is_also_a_graph_output():
    model = _weight_pair_model(0.1)
    model.graph.output.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2]))
    out, stats = run(model, "fold-qdq")
    assert stats["fold-qdq"]["num-folded"] == 1
    assert {"w", "w_quantized"} <= {t.name for t in out.graph.initializer}
    x = {"x": np.array([[1.0, -2.0]], np.float32)}
    assert_bit_identical(run_ort(model, x), run_ort(out, x))


def test_fold_skips_float16_division_it_does_not_emulate():
    w = numpy_helper.from_array(np.array([[0.5, -0.25], [0.125, 1.0]], np.float16), "w")
    s = numpy_helper.from_array(np.array(0.01, np.float16), "s")
    z = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"]),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["y"])]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 2])
    for opset, folded in ((21, 1), (23, 0)):
        model = _model(nodes, [], [y], [w, s, z], opset=opset)
        out, stats = run(model, "fold-qdq")
        assert stats["fold-qdq"]["num-folded"] == folded
        assert stats["fold-qdq"]["num-skipped"] == 1 - folded


def test_no_qdq_is_a_no_op():
    model = float_model("mlp")
    for pass_name in ("fold-qdq", "unfold-qdq", "strip-qdq"):
        out, report = qdq_passes.run_with_report(model, pass_name)
        assert report.modified is False
        assert _text(onnx_ir.to_proto(out)) == _text(model)


def test_denormal_weight_scale_is_accepted_and_round_trips_bit_for_bit(tmp_path):
    """A denormal weight scale (quantize_static writes one for a near-zero channel, 3.3e-39 on a
    real model) runs in onnxruntime, so fold, insert, lower and unfold accept it, bit for bit."""
    from tests.models import conv_relu_model, random_inputs

    float_model = conv_relu_model()
    qdq = ort_quantize(float_model, tmp_path, extra_options={"AddQDQPairToWeight": True})
    inits = {t.name: t for t in qdq.graph.initializer}
    reader = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "conv1_w")
    scale = numpy_helper.to_array(inits[reader.input[1]]).copy()
    weight = numpy_helper.to_array(inits["conv1_w"]).copy()
    scale[2] = np.float32(3.3e-39)
    weight[2] = np.linspace(-120, 125, weight[2].size).reshape(weight[2].shape).astype(np.float32) * scale[2]
    inits[reader.input[1]].CopyFrom(numpy_helper.from_array(scale, reader.input[1]))
    inits["conv1_w"].CopyFrom(numpy_helper.from_array(weight, "conv1_w"))
    assert 0 < scale[2] < np.finfo(np.float32).tiny
    feed = random_inputs(float_model, n=1, seed=3)[0]
    want = run_ort(qdq, feed)
    for pipeline in ("fold-qdq", "insert-quantizers,lower-qdq,fold-qdq", "fold-qdq,unfold-qdq"):
        assert_bit_identical(run_ort(run(qdq, pipeline)[0], feed), want)
