"""``materialize`` (torch module of a dialect node, cached in node.meta) and ``write_back``."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir
import pytest
import torch

from qdq_passes.ir import dialect
from qdq_passes.ir.quant import QuantSpec
from qdq_passes.quantizers import AdaroundINTQuantizer, FPQuantizer, INTQuantizer, materialize, write_back
from qdq_passes.quantizers.materialize import META_KEY
from tests.models import assert_bit_identical, run_ort

DT = onnx_ir.DataType


def _init(graph: onnx_ir.Graph, name: str, array: np.ndarray) -> onnx_ir.Value:
    value = onnx_ir.Value(name=name, shape=onnx_ir.Shape(array.shape), type=onnx_ir.TensorType(DT.from_numpy(array.dtype)),
                          const_value=onnx_ir.Tensor(array, name=name))
    graph.register_initializer(value)
    return value


def weight_model(op: str, weight: np.ndarray, scale: np.ndarray, zp: np.ndarray, qdtype: DT, axis: int = 0,
                 block_size: int = 0) -> onnx_ir.Model:
    """x[1,K] @ quantizer(W[K,N]) -> y: a weight quantizer feeding a MatMul."""
    k, n = weight.shape
    graph = onnx_ir.Graph([], [], nodes=[], opset_imports={"": 21}, name="g")
    x = onnx_ir.Value(name="x", shape=onnx_ir.Shape([1, k]), type=onnx_ir.TensorType(DT.FLOAT))
    graph.inputs.append(x)
    w = _init(graph, "fc_w", weight)
    node = dialect.make_quantizer(w, _init(graph, "fc_w_scale", scale), _init(graph, "fc_w_zero_point", zp), op=op,
                                  axis=axis, block_size=block_size, qdtype=qdtype, q_folded=False)
    graph.append(node)
    node.outputs[0].name = "fc_w_dq"
    matmul = onnx_ir.Node("", "MatMul", [x, node.outputs[0]], num_outputs=1)
    matmul.outputs[0].name = "y"
    graph.append(matmul)
    graph.outputs.extend([matmul.outputs[0], node.outputs[0]])
    model = onnx_ir.Model(graph, ir_version=10)
    dialect.ensure_functions(model)
    return model


def _weights(seed: int = 0, shape=(8, 4)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


LAYOUTS = {
    "int8-channel": (DT.INT8, lambda w: (np.abs(w).max(axis=0) / 127).astype(np.float32), lambda s: np.zeros(s.shape, np.int8), 1, 0),
    "uint8-tensor": (DT.UINT8, lambda w: np.array(np.ptp(w) / 255, np.float32), lambda s: np.array(128, np.uint8), 1, 0),
    "int4-block": (DT.INT4, lambda w: (np.abs(w).reshape(2, 4, 4).max(axis=1) / 7.5).astype(np.float32),
                   lambda s: np.zeros(s.shape, ml_dtypes.int4), 0, 4),
}


def _model(layout: str, op: str = dialect.ADAROUND_QUANTIZER, seed: int = 0) -> onnx_ir.Model:
    qdtype, scale_of, zp_of, axis, block = LAYOUTS[layout]
    w = _weights(seed)
    scale = scale_of(w)
    return weight_model(op, w, scale, zp_of(scale), qdtype, axis, block)


def test_materialize_builds_and_caches_the_module():
    model = _model("int8-channel", op=dialect.INT_QUANTIZER)
    node = model.graph.node(0)
    module = materialize(node)
    assert isinstance(module, INTQuantizer) and not isinstance(module, AdaroundINTQuantizer)
    assert materialize(node) is module and node.meta[META_KEY] is module
    assert materialize(node, refresh=True) is not module
    spec = dialect.quantizer_spec(node)
    w = node.inputs[0].const_value.numpy()
    with torch.no_grad():
        got = module(torch.from_numpy(w)).numpy()
    assert_bit_identical([spec.dequantize(spec.quantize(w))], [got])
    # node.meta is never serialized
    proto = onnx_ir.to_proto(model)
    assert META_KEY not in proto.SerializeToString().decode("latin-1")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_adaround_module_starts_at_nearest_rounding(layout):
    model = _model(layout)
    node = model.graph.node(0)
    module = materialize(node)
    assert isinstance(module, AdaroundINTQuantizer) and module.alpha is not None
    assert module.use_soft_rounding is False
    spec = dialect.quantizer_spec(node)
    w = node.inputs[0].const_value.numpy()
    with torch.no_grad():
        got = module(torch.from_numpy(w)).numpy()
    assert_bit_identical([spec.dequantize(spec.quantize(w))], [got])
    assert np.array_equal(module.codes(torch.from_numpy(w)).numpy(), spec.quantize(w).astype(np.int64))


def _train(module: AdaroundINTQuantizer, seed: int) -> None:
    """Stand-in for AdaRound: flip the rounding direction of random elements."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        flip = torch.rand(module.alpha.shape, generator=gen) < 0.4
        module.alpha.copy_(torch.where(flip, -module.alpha - 0.5 * torch.sign(module.alpha), module.alpha))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_write_back_stores_the_hard_rounded_codes(layout):
    model = _model(layout, seed=2)
    node = model.graph.node(0)
    module = materialize(node)
    _train(module, seed=3)
    w = torch.from_numpy(node.inputs[0].const_value.numpy().copy())
    with torch.no_grad():
        hard = module(w).numpy()  # use_soft_rounding is False: the hard forward
    qdtype = dialect.quantizer_params(node).qdtype
    x = np.random.default_rng(4).standard_normal((1, 8)).astype(np.float32)
    assert write_back(node, model)

    codes_value = node.inputs[0]
    assert codes_value.name == "fc_w_adaround" and codes_value.dtype == qdtype
    assert "fc_w" not in model.graph.initializers  # nothing else used the float weight
    assert node.overload == dialect.FOLDED
    assert node.attributes["q_folded"].as_int() == 1 and node.attributes["rounding"].as_string() == dialect.ADAROUND
    spec: QuantSpec = dialect.quantizer_spec(node)
    codes = codes_value.const_value.numpy()
    assert_bit_identical([hard], [spec.dequantize(codes)])
    assert not np.array_equal(codes, spec.quantize(w.numpy())), "the stand-in training changed no rounding"
    assert set(model.functions) == {(dialect.DOMAIN, dialect.ADAROUND_QUANTIZER, dialect.FOLDED)}
    # onnxruntime runs the written-back model as the hard-rounded torch weight says.
    assert_bit_identical([hard], [run_ort(model, {"x": x})[1]])
    # The cache was rebuilt from the new IR; a reloaded model rebuilds an identical module.
    fresh = node.meta[META_KEY]
    assert isinstance(fresh, AdaroundINTQuantizer) and fresh.q_folded and fresh.alpha is None
    reloaded = onnx_ir.from_proto(onnx.load_model_from_string(onnx_ir.to_proto(model).SerializeToString()))
    again = materialize(reloaded.graph.node(0))
    assert type(again) is type(fresh) and again.q_folded and again.block_size == fresh.block_size
    for (k1, v1), (k2, v2) in zip(fresh.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    with torch.no_grad():
        assert_bit_identical([hard], [again(torch.from_numpy(codes.astype(np.int64))).numpy()])


def test_write_back_changes_nothing_without_trained_state():
    model = _model("int8-channel", op=dialect.INT_QUANTIZER)
    node = model.graph.node(0)
    assert not write_back(node)  # no module cached
    materialize(node)
    assert not write_back(node)  # an INTQuantizer has nothing to write
    model = _model("int8-channel")
    node = model.graph.node(0)
    materialize(node)
    assert write_back(node, model)
    assert not write_back(node, model)  # already folded


def test_write_back_keeps_a_shared_float_weight():
    model = _model("int8-channel")
    node = model.graph.node(0)
    extra = onnx_ir.Node("", "Identity", [node.inputs[0]], num_outputs=1)
    extra.outputs[0].name = "w_copy"
    model.graph.append(extra)
    model.graph.outputs.append(extra.outputs[0])  # the float weight stays in use
    materialize(node)
    assert write_back(node, model)
    assert "fc_w" in model.graph.initializers


@pytest.mark.parametrize("qdtype", [DT.FLOAT16, DT.BFLOAT16, DT.FLOAT8E4M3FN])
def test_fp_quantizer_module(qdtype):
    from tests.ir.test_dialect import quantizer_model

    zp = np.zeros(3, {DT.FLOAT16: np.float16, DT.BFLOAT16: ml_dtypes.bfloat16}.get(qdtype, ml_dtypes.float8_e4m3fn))
    model = quantizer_model(op=dialect.FP_QUANTIZER, scale=np.array([0.5, 1.0, 2.0], np.float32), zero_point=zp,
                            qdtype=qdtype, axis=1, x_shape=(2, 3))
    module = materialize(model.graph.node(0))
    assert isinstance(module, FPQuantizer)
    bound = float(module.max_q)
    assert bound == (448.0 if qdtype == DT.FLOAT8E4M3FN else float("inf"))
