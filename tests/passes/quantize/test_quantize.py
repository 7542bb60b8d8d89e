"""``quantize``: bit-identical with onnxruntime.quantization's ``quantize_static`` (QDQ) for the same settings."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnx_ir
import pytest

from qdq_passes.calib import CalibrationError
from qdq_passes.cli import main as qdq_opt
from qdq_passes.infra.errors import OptionError, PreconditionFailed, QuantizationError
from qdq_passes.ir.printer import print_model
from qdq_passes.passes.quantize import QuantizePass
from tests.models import (
    _FeedReader,
    assert_bit_identical,
    attention_model,
    constant_weights_model,
    conv_relu_model,
    mlp_model,
    random_inputs,
    run_ort,
)

OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul"]


@pytest.fixture(autouse=True)
def _quiet_ort_tool():
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static warns about pre-processing on root


def ort_static(model: onnx.ModelProto, feeds, tmp: Path, *, per_channel=True, wt="QInt8", at="QUInt8", extra=None,
               method="MinMax", ops=OPS, opset: int | None = 21) -> onnx.ModelProto:
    """onnxruntime's ``quantize_static`` (QDQ) on ``model`` (first converted to ``opset``) with these feeds."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if opset is not None:
        model = onnx.version_converter.convert_version(model, opset)
        model.ir_version = max(model.ir_version, 10)
    tmp.mkdir(parents=True, exist_ok=True)
    onnx.save(model, tmp / "ort_float.onnx")
    quantize_static(str(tmp / "ort_float.onnx"), str(tmp / "ort_qdq.onnx"), _FeedReader(feeds),
                    quant_format=QuantFormat.QDQ, per_channel=per_channel, weight_type=QuantType[wt],
                    activation_type=QuantType[at], op_types_to_quantize=ops, extra_options=extra or {},
                    calibrate_method=CalibrationMethod[method])
    return onnx.load(tmp / "ort_qdq.onnx")


def save_calib(feeds, path: Path) -> str:
    np.savez(path, **{name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]})
    return str(path)


def ours(model: onnx.ModelProto, feeds, tmp: Path, **options) -> onnx_ir.Model:
    ir_model = onnx_ir.from_proto(model)
    result = QuantizePass(calib=save_calib(feeds, tmp / "calib.npz"), **options)(ir_model)
    assert result.modified
    return ir_model


def assert_same_outputs(a, b, feeds) -> None:
    for feed in feeds:
        assert_bit_identical(run_ort(a, feed), run_ort(b, feed))


def sqnr(reference: list[np.ndarray], test: list[np.ndarray]) -> float:
    r = np.concatenate([x.ravel() for x in reference]).astype(np.float64)
    t = np.concatenate([x.ravel() for x in test]).astype(np.float64)
    return float(10 * np.log10(np.sum(r**2) / np.sum((r - t) ** 2)))


# (our options, quantize_static's settings)
CONFIGS = {
    "w8a8-channel": ({}, {}),
    "w8a8-channel-folded": ({"keep_float_weights": False}, {"extra": {"AddQDQPairToWeight": False}}),
    "w8a8-channel-pairs": ({"keep_float_weights": True}, {"extra": {"AddQDQPairToWeight": True}}),
    "w8a8-tensor": ({"weight_granularity": "tensor"}, {"per_channel": False}),
    "wu8a8-channel": ({"weights": "uint8"}, {"wt": "QUInt8"}),
    "wu8a8-tensor": ({"weights": "uint8", "weight_granularity": "tensor"}, {"wt": "QUInt8", "per_channel": False}),
    "w8a8-tensor-asym": ({"weight_granularity": "tensor", "symmetric": False},
                         {"per_channel": False, "extra": {"WeightSymmetric": False}}),
    "w4a8-channel": ({"weights": "int4"}, {"wt": "QInt4"}),
    "wu4a8-channel": ({"weights": "uint4"}, {"wt": "QUInt4"}),
    "w4a8-tensor": ({"weights": "int4", "weight_granularity": "tensor"}, {"wt": "QInt4", "per_channel": False}),
    "w16a16": ({"weights": "int16", "acts": "uint16"}, {"wt": "QInt16", "at": "QUInt16"}),
    "w8as8": ({"acts": "int8"}, {"at": "QInt8"}),
    "w8as16": ({"acts": "int16"}, {"at": "QInt16"}),
    "percentile": ({"calibration": "percentile"}, {"method": "Percentile"}),
    "entropy": ({"calibration": "entropy"}, {"method": "Entropy"}),
}
BUILDERS = {"conv_relu": conv_relu_model, "mlp": mlp_model, "attention": attention_model}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("builder", list(BUILDERS))
def test_bit_identical_with_quantize_static(builder, config, tmp_path):
    mine, theirs = CONFIGS[config]
    make = BUILDERS[builder]
    feeds = random_inputs(make(), n=8)
    reference = ort_static(make(), feeds, tmp_path / "ort", **theirs)
    model = ours(make(), feeds, tmp_path, **mine)
    assert_same_outputs(reference, model, random_inputs(make(), n=4, seed=7))
    assert all(node.domain == "" for node in model.graph)  # standard Q/DQ only
    assert model.opset_imports[""] == 21


@pytest.mark.parametrize("weights", ["int4", "uint4"])
@pytest.mark.parametrize("builder", ["mlp", "attention"])
def test_blocked_matmul_weights_bit_identical(builder, weights, tmp_path):
    make = BUILDERS[builder]
    feeds = random_inputs(make(), n=8)
    wt = {"int4": "QInt4", "uint4": "QUInt4"}[weights]
    reference = ort_static(make(), feeds, tmp_path / "ort", per_channel=False, wt=wt, extra={"BlockSize": 8}, ops=["MatMul"])
    model = ours(make(), feeds, tmp_path, weights=weights, weight_granularity="block", block_size=8, op_types=("MatMul",))
    assert_same_outputs(reference, model, random_inputs(make(), n=4, seed=7))


def test_below_opset_21_4bit_is_standard_unlike_onnxruntime(tmp_path):
    """onnxruntime's tool writes com.microsoft Q/DQ for int4 at opset 17; ours converts to 21, same numbers."""
    feeds = random_inputs(conv_relu_model(), n=8)
    reference = ort_static(conv_relu_model(), feeds, tmp_path / "ort", wt="QInt4", opset=None)
    assert any(n.domain == "com.microsoft" for n in reference.graph.node)
    model = ours(conv_relu_model(), feeds, tmp_path, weights="int4")
    assert {n.domain for n in model.graph} == {""} and model.opset_imports[""] == 21
    assert_same_outputs(reference, model, random_inputs(conv_relu_model(), n=4, seed=7))


def test_constant_weights_are_quantized_as_weights(tmp_path):
    """onnxruntime's tool quantizes Constant-node weights as activations; ours matches it on the initializer model."""
    feeds = random_inputs(conv_relu_model(), n=8)
    reference = ort_static(conv_relu_model(), feeds, tmp_path / "ort")
    model = ours(constant_weights_model(), feeds, tmp_path)
    assert not any(node.op_type == "Constant" for node in model.graph)
    assert_same_outputs(reference, model, random_inputs(conv_relu_model(), n=4, seed=7))


def test_bias_scale_adjustment_matches_onnxruntime(tmp_path):
    """A bias too large for x_scale * w_scale enlarges the weight scale, as onnxruntime does."""
    proto = mlp_model()
    for init in proto.graph.initializer:
        if init.name == "fc1_b":
            init.CopyFrom(onnx.numpy_helper.from_array(np.full(32, 3e5, np.float32), "fc1_b"))
    feeds = random_inputs(proto, n=8)
    reference = ort_static(proto, feeds, tmp_path / "ort")
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    model = ours(copy, feeds, tmp_path)
    assert_same_outputs(reference, model, random_inputs(proto, n=4, seed=7))


def test_gemm_beta_goes_into_the_bias_scale(tmp_path):
    proto = mlp_model()
    for node in proto.graph.node:
        if node.op_type == "Gemm" and node.input[2] == "fc1_b":
            node.attribute.append(onnx.helper.make_attribute("beta", 0.5))
    feeds = random_inputs(proto, n=8)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    reference = ort_static(copy, feeds, tmp_path / "ort")
    model = ours(proto, feeds, tmp_path)
    assert_same_outputs(reference, model, random_inputs(mlp_model(), n=4, seed=7))


def test_blocked_gemm_weights_run(tmp_path):
    """onnxruntime's tool crashes on Gemm with BlockSize; ours blocks along K and keeps the bias float."""
    feeds = random_inputs(mlp_model(), n=8)
    model = ours(mlp_model(), feeds, tmp_path, weights="int4", weight_granularity="block", block_size=8)
    blocked = [n for n in model.graph if n.op_type == "DequantizeLinear" and "block_size" in n.attributes]
    assert len(blocked) == 3
    test = random_inputs(mlp_model(), n=4, seed=7)
    float_out = [run_ort(mlp_model(), f)[0] for f in test]
    assert sqnr(float_out, [run_ort(model, f)[0] for f in test]) > 10


def test_exclude_by_name_and_op_type(tmp_path):
    feeds = random_inputs(mlp_model(), n=4)
    model = ours(mlp_model(), feeds, tmp_path, exclude=("MatMul",))
    matmul = next(n for n in model.graph if n.op_type == "MatMul")
    assert matmul.inputs[1].name == "proj_w"  # the float weight, untouched
    pass_ = QuantizePass(calib=str(tmp_path / "calib.npz"), exclude=("Gemm", "MatMul"), op_types=("Gemm", "MatMul"))
    with pytest.raises(QuantizationError, match="all excluded"):
        pass_(onnx_ir.from_proto(mlp_model()))


def test_weight_only_needs_no_calibration():
    model = onnx_ir.from_proto(conv_relu_model())
    QuantizePass(acts="none")(model)
    ops = [n.op_type for n in model.graph]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 2  # the two weights only
    feed = random_inputs(conv_relu_model())[0]
    assert sqnr(run_ort(conv_relu_model(), feed), run_ort(model, feed)) > 30


def test_mse_calibration_sqnr_gap_is_small(tmp_path):
    """onnxruntime has no MSE calibrator: compare output SQNR against its MinMax on held-out inputs."""
    feeds = random_inputs(conv_relu_model(), n=16)
    test = random_inputs(conv_relu_model(), n=8, seed=7)
    float_out = [run_ort(conv_relu_model(), f)[0] for f in test]
    reference = ort_static(conv_relu_model(), feeds, tmp_path / "ort")
    model = ours(conv_relu_model(), feeds, tmp_path, calibration="mse")
    ort_sqnr = sqnr(float_out, [run_ort(reference, f)[0] for f in test])
    mse_sqnr = sqnr(float_out, [run_ort(model, f)[0] for f in test])
    print(f"SQNR: onnxruntime MinMax {ort_sqnr:.2f} dB, quantize MSE {mse_sqnr:.2f} dB")
    assert mse_sqnr > ort_sqnr - 1.0


def _magika_model() -> str:
    magika = pytest.importorskip("magika")
    found = sorted(glob.glob(os.path.join(os.path.dirname(magika.__file__), "**", "*.onnx"), recursive=True))
    if not found:
        pytest.skip("magika ships no .onnx file")
    return found[0]


@pytest.mark.parametrize("keep_float_weights", [True, False])
def test_magika_wheel_model_bit_identical(keep_float_weights, tmp_path):
    """A real model from a PyPI wheel (magika, opset 15, Conv + MatMul), int8 weights / uint8 activations."""
    path = _magika_model()
    rng = np.random.default_rng(0)
    feeds = [{"bytes": rng.integers(0, 257, (1, 2048)).astype(np.int32)} for _ in range(8)]
    test = [{"bytes": rng.integers(0, 257, (1, 2048)).astype(np.int32)} for _ in range(4)]
    extra = {"AddQDQPairToWeight": keep_float_weights}
    model = ours(onnx.load(path), feeds, tmp_path, keep_float_weights=keep_float_weights)
    for opset in (None, 21):  # onnxruntime on the original opset-15 model, and on the converted one
        reference = ort_static(onnx.load(path), feeds, tmp_path / f"ort{opset}", extra=extra, opset=opset)
        assert_same_outputs(reference, model, test)


# --------------------------------------------------------------------------- no-ops and errors


def test_already_quantized_model_is_left_alone(tmp_path):
    feeds = random_inputs(conv_relu_model(), n=4)
    model = ours(conv_relu_model(), feeds, tmp_path)
    text = print_model(model)
    result = QuantizePass()(model)  # no calibration needed: nothing to do
    assert result.modified is False and print_model(model) == text


def test_missing_calibration_input_changes_nothing(tmp_path):
    model = onnx_ir.from_proto(conv_relu_model())
    text = print_model(model)
    np.savez(tmp_path / "bad.npz", y=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(CalibrationError, match="unknown input 'y'"):
        QuantizePass(calib=str(tmp_path / "bad.npz"))(model)
    assert print_model(model) == text


def test_no_calibration_is_a_precondition_failure():
    with pytest.raises(PreconditionFailed, match="calib"):
        QuantizePass()(onnx_ir.from_proto(conv_relu_model()))


def test_unsupported_op_type_option():
    with pytest.raises(OptionError, match="'Relu' is not supported"):
        QuantizePass(acts="none", op_types=("Relu",))(onnx_ir.from_proto(conv_relu_model()))


def test_blocked_conv_is_an_error_and_changes_nothing():
    model = onnx_ir.from_proto(conv_relu_model())
    text = print_model(model)
    with pytest.raises(QuantizationError, match="rank-2"):
        QuantizePass(acts="none", weights="int4", weight_granularity="block")(model)
    assert print_model(model) == text


def test_cli_errors_write_nothing(tmp_path, capsys):
    onnx.save(conv_relu_model(), tmp_path / "float.onnx")
    np.savez(tmp_path / "calib.npz", z=np.zeros((2, 3, 8, 8), np.float32))
    out = tmp_path / "out.onnx"
    code = qdq_opt([str(tmp_path / "float.onnx"), "-o", str(out), "-p", "quantize", "--calib", str(tmp_path / "calib.npz")])
    assert code != 0 and not out.exists()
    assert "unknown input 'z'" in capsys.readouterr().err


def test_cli_float_to_adaround_end_to_end(tmp_path):
    """Acceptance 2: float -> quantize (W4 per-channel, A8) -> AdaRound -> folded QDQ, through qdq-opt."""
    onnx.save(conv_relu_model(), tmp_path / "float.onnx")
    feeds = random_inputs(conv_relu_model(), n=16)
    calib = save_calib(feeds, tmp_path / "calib.npz")
    out = tmp_path / "out.onnx"
    pipeline = ("quantize{weights=int4 weight-granularity=channel acts=uint8},insert-quantizers{weights=adaround},"
                "adaround{iters=20},lower-qdq,fold-qdq")
    assert qdq_opt([str(tmp_path / "float.onnx"), "-o", str(out), "-p", pipeline, "--calib", calib]) == 0
    model = onnx.load(out)
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    weights = {i.name: i for i in model.graph.initializer}
    assert any(weights[n.input[0]].data_type == onnx.TensorProto.INT4 for n in dqs if n.input[0] in weights)
    feed = random_inputs(conv_relu_model(), seed=3)[0]
    assert sqnr(run_ort(conv_relu_model(), feed), run_ort(model, feed)) > 5
