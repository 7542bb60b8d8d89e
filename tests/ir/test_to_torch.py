"""Tests of qdq_passes.ir.to_torch: each converter against onnxruntime, blocks, errors, autograd."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ml_dtypes
import numpy as np
import onnx
import onnx_ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qdq_passes.ir.to_torch import (
    BlockModule,
    UnsupportedOp,
    block_to_module,
    graph_to_module,
    supported_ops,
    tensor_from_numpy,
)
from tests.models import run_ort

F32 = TensorProto.FLOAT
RNG_SEED = 0
# Tolerances: data movement is exact; element-wise arithmetic is exact or within a few ulps
# (different libm); reductions and dot products differ in summation order.
EXACT = {"atol": 0.0, "rtol": 0.0}
ULP = {"atol": 1e-6, "rtol": 1e-6}
SUM = {"atol": 1e-5, "rtol": 1e-5}


def _rand(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _make_model(
    nodes: Sequence[onnx.NodeProto],
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    inits: Mapping[str, np.ndarray],
    opset: int,
    out_types: Mapping[str, int] | None = None,
    domains: Mapping[str, int] | None = None,
) -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in feeds.items()
    ]
    outs = [helper.make_tensor_value_info(n, (out_types or {}).get(n, F32), None) for n in outputs]
    graph = helper.make_graph(
        list(nodes), "t", inputs, outs, initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    return model


def _torch_run(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray], **kwargs) -> list[np.ndarray]:
    model = onnx_ir.from_proto(proto)
    module = graph_to_module(model, **kwargs)
    out = module(*[torch.from_numpy(v) for v in feeds.values()])
    outs = out if isinstance(out, tuple) else (out,)
    return [o.detach().numpy() for o in outs]


def _compare(got: np.ndarray, want: np.ndarray, tol: Mapping[str, float]) -> None:
    assert got.shape == want.shape, f"shape {got.shape} vs {want.shape}"
    if tol == EXACT:
        assert got.dtype == want.dtype, f"dtype {got.dtype} vs {want.dtype}"
    torch.testing.assert_close(
        torch.from_numpy(np.ascontiguousarray(got)).to(torch.float64),
        torch.from_numpy(np.ascontiguousarray(want)).to(torch.float64),
        equal_nan=True,
        **tol,
    )


def parity(
    nodes: onnx.NodeProto | Sequence[onnx.NodeProto],
    feeds: Mapping[str, np.ndarray],
    *,
    inits: Mapping[str, np.ndarray] | None = None,
    opset: int = 17,
    outputs: Sequence[str] = ("y",),
    out_types: Mapping[str, int] | None = None,
    tol: Mapping[str, float] = ULP,
) -> list[np.ndarray]:
    """Run the nodes in onnxruntime and through to_torch; compare every output."""
    nodes = [nodes] if isinstance(nodes, onnx.NodeProto) else list(nodes)
    model = _make_model(nodes, feeds, outputs, inits or {}, opset, out_types)
    want = run_ort(model, feeds)
    got = _torch_run(model, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        _compare(g, w, tol)
    return got


def node(op: str, inputs: Sequence[str], outputs: Sequence[str] = ("y",), **attrs) -> onnx.NodeProto:
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


# --------------------------------------------------------------------------- convolutions

CONV_CASES = {
    "1d": dict(x=(2, 3, 11), w=(4, 3, 3), attrs=dict(pads=[1, 1])),
    "1d-stride-dil": dict(x=(1, 2, 17), w=(4, 2, 3), attrs=dict(strides=[2], dilations=[2], pads=[2, 0])),
    "2d": dict(x=(2, 3, 9, 9), w=(5, 3, 3, 3), attrs=dict(pads=[1, 1, 1, 1])),
    "2d-nobias": dict(x=(1, 3, 8, 8), w=(4, 3, 3, 3), attrs={}, bias=False),
    "2d-groups": dict(x=(1, 4, 9, 9), w=(6, 2, 3, 3), attrs=dict(group=2, strides=[2, 1], dilations=[1, 2])),
    "2d-depthwise": dict(x=(1, 4, 8, 8), w=(4, 1, 3, 3), attrs=dict(group=4, pads=[1, 1, 1, 1])),
    "2d-asym-pads": dict(x=(1, 3, 8, 7), w=(4, 3, 3, 2), attrs=dict(pads=[0, 1, 2, 0], strides=[2, 2])),
    "2d-same-upper": dict(x=(1, 3, 8, 7), w=(4, 3, 3, 3), attrs=dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "2d-same-lower": dict(x=(1, 3, 8, 7), w=(4, 3, 4, 4), attrs=dict(auto_pad="SAME_LOWER", strides=[2, 3])),
    "2d-valid": dict(x=(1, 3, 8, 7), w=(4, 3, 3, 3), attrs=dict(auto_pad="VALID", strides=[2, 2])),
    "3d": dict(x=(1, 2, 5, 6, 7), w=(3, 2, 3, 3, 3), attrs=dict(pads=[1, 0, 1, 1, 0, 1])),
    # (k x 1) kernels: run as 1-D convolutions on width-1 inputs (magika's Conv), 2-D otherwise
    "2d-kx1-width1": dict(x=(2, 6, 13, 1), w=(4, 6, 5, 1), attrs=dict(pads=[2, 0, 2, 0], strides=[2, 1])),
    "2d-kx1-width1-groups": dict(x=(1, 4, 9, 1), w=(6, 2, 3, 1), attrs=dict(group=2, dilations=[2, 1])),
    "2d-kx1-wide": dict(x=(1, 3, 9, 4), w=(4, 3, 3, 1), attrs=dict(pads=[1, 0, 1, 0])),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv(case: str) -> None:
    c = CONV_CASES[case]
    bias = c.get("bias", True)
    inits = {"w": _rand(*c["w"], seed=1)}
    if bias:
        inits["b"] = _rand(c["w"][0], seed=2)
    kernel = list(c["w"][2:])
    n = node("Conv", ["x", "w", "b"] if bias else ["x", "w"], kernel_shape=kernel, **c["attrs"])
    parity(n, {"x": _rand(*c["x"])}, inits=inits, tol=SUM)


CONV_T_CASES = {
    "1d": dict(x=(1, 3, 7), w=(3, 2, 3), attrs=dict(strides=[2])),
    "2d-pads-outpad": dict(x=(2, 4, 5, 5), w=(4, 3, 3, 3), attrs=dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    "2d-groups": dict(x=(1, 4, 5, 6), w=(4, 2, 3, 3), attrs=dict(group=2, strides=[2, 1], dilations=[1, 2])),
    "2d-asym-pads": dict(x=(1, 2, 5, 5), w=(2, 3, 4, 4), attrs=dict(strides=[2, 2], pads=[0, 1, 2, 1])),
    "2d-big-outpad": dict(x=(1, 2, 4, 4), w=(2, 2, 3, 3), attrs=dict(strides=[3, 3], output_padding=[2, 1], pads=[1, 0, 0, 1])),
    "2d-output-shape": dict(x=(1, 2, 5, 5), w=(2, 3, 3, 3), attrs=dict(strides=[2, 2], output_shape=[10, 9])),
    "2d-same-upper": dict(x=(1, 2, 5, 4), w=(2, 3, 4, 3), attrs=dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "2d-same-lower": dict(x=(1, 2, 5, 4), w=(2, 3, 4, 3), attrs=dict(strides=[2, 2], auto_pad="SAME_LOWER")),
}


@pytest.mark.parametrize("case", list(CONV_T_CASES))
def test_conv_transpose(case: str) -> None:
    c = CONV_T_CASES[case]
    group = c["attrs"].get("group", 1)
    inits = {"w": _rand(*c["w"], seed=1), "b": _rand(c["w"][1] * group, seed=2)}
    n = node("ConvTranspose", ["x", "w", "b"], kernel_shape=list(c["w"][2:]), **c["attrs"])
    parity(n, {"x": _rand(*c["x"])}, inits=inits, tol=SUM)


# --------------------------------------------------------------------------- linear


@pytest.mark.parametrize(
    "trans_a,trans_b,alpha,beta,c_shape",
    [
        (0, 1, 1.0, 1.0, (5,)),
        (0, 0, 1.0, 1.0, (3, 5)),
        (1, 0, 0.5, 2.0, (1, 5)),
        (1, 1, 1.5, 1.0, None),
        (0, 1, 1.0, 0.0, (5,)),
        (0, 1, 1.0, 1.0, None),
    ],
)
def test_gemm(trans_a: int, trans_b: int, alpha: float, beta: float, c_shape: tuple[int, ...] | None) -> None:
    a = _rand(*((4, 3) if trans_a else (3, 4)))
    inits = {"b": _rand(*((5, 4) if trans_b else (4, 5)), seed=1)}
    inputs = ["a", "b"]
    if c_shape is not None:
        inits["c"] = _rand(*c_shape, seed=2)
        inputs.append("c")
    n = node("Gemm", inputs, transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    parity(n, {"a": a}, inits=inits, opset=13, tol=SUM)


@pytest.mark.parametrize("a_shape,b_shape", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((4,), (4, 5)), ((3, 4), (4,))])
def test_matmul(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> None:
    parity(node("MatMul", ["a", "b"]), {"a": _rand(*a_shape)}, inits={"b": _rand(*b_shape, seed=1)}, tol=SUM)


# --------------------------------------------------------------------------- element-wise


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Min", "Max"])
def test_binary(op: str) -> None:
    feeds = {"a": _rand(2, 3, 4), "b": _rand(3, 1, seed=1) + 3.0}
    parity(node(op, ["a", "b"]), feeds, tol=EXACT)


@pytest.mark.parametrize("op", ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"])
def test_comparison(op: str) -> None:
    a = np.round(_rand(2, 3, 4) * 2)
    b = np.round(_rand(3, 1, seed=1) * 2)
    parity(node(op, ["a", "b"]), {"a": a, "b": b}, out_types={"y": onnx.TensorProto.BOOL}, tol=EXACT)


@pytest.mark.parametrize("op", ["And", "Or"])
def test_logic(op: str) -> None:
    feeds = {"a": _rand(2, 3) > 0, "b": _rand(1, 3, seed=1) > 0}
    parity(node(op, ["a", "b"]), feeds, out_types={"y": onnx.TensorProto.BOOL}, tol=EXACT)


def test_not_and_where() -> None:
    feeds = {"c": _rand(2, 3) > 0, "x": _rand(2, 3, seed=1), "z": _rand(1, 3, seed=2)}
    parity([node("Not", ["c"], ["n"]), node("Where", ["n", "x", "z"])], feeds, tol=EXACT)


def test_one_hot_by_equal() -> None:
    """The one-hot pattern of exported models (magika's): Equal(Unsqueeze(ids), range) -> Cast."""
    ids = np.array([[3, 0, 7, 7]], np.int64)
    parity([node("Unsqueeze", ["ids", "ax"], ["u"]), node("Equal", ["u", "r"], ["e"]),
            node("Cast", ["e"], to=onnx.TensorProto.FLOAT)], {"ids": ids},
           inits={"ax": np.array([-1], np.int64), "r": np.arange(8, dtype=np.int64)}, tol=EXACT)


@pytest.mark.parametrize("exponent", [2.0, 0.5, 3.0, -1.5])
def test_pow(exponent: float) -> None:
    x = np.abs(_rand(3, 4)) + 0.1
    parity(node("Pow", ["x", "e"]), {"x": x}, inits={"e": np.array(exponent, np.float32)})


def test_pow_tensor_exponent() -> None:
    feeds = {"x": np.abs(_rand(3, 4)) + 0.1, "e": _rand(3, 4, seed=1)}
    parity(node("Pow", ["x", "e"]), feeds)


@pytest.mark.parametrize("op", ["Sqrt", "Neg", "Erf", "Abs", "Exp", "Log", "Reciprocal"])
def test_unary(op: str) -> None:
    x = _rand(4, 5) * 2
    if op in ("Sqrt", "Log"):
        x = np.abs(x) + 0.01
    parity(node(op, ["x"]), {"x": x}, tol=EXACT if op in ("Neg", "Abs", "Reciprocal") else ULP)


def test_gelu_erf_pattern() -> None:
    nodes = [
        node("Div", ["x", "sqrt2"], ["d"]),
        node("Erf", ["d"], ["e"]),
        node("Add", ["e", "one"], ["a"]),
        node("Mul", ["x", "a"], ["m"]),
        node("Mul", ["m", "half"], ["y"]),
    ]
    inits = {"sqrt2": np.array(np.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32)}
    parity(nodes, {"x": _rand(4, 16) * 3}, inits=inits)


# --------------------------------------------------------------------------- activations

ACTIVATIONS = {
    "Relu": ({}, 17, EXACT),
    "LeakyRelu": ({"alpha": 0.2}, 17, EXACT),
    "Sigmoid": ({}, 17, ULP),
    "Tanh": ({}, 17, ULP),
    "HardSigmoid": ({"alpha": 0.3, "beta": 0.4}, 17, ULP),
    "HardSwish": ({}, 17, ULP),
    "Elu": ({"alpha": 0.7}, 17, ULP),
    "Softplus": ({}, 17, ULP),
    "Gelu": ({}, 20, ULP),
    "Gelu-tanh": ({"approximate": "tanh"}, 20, ULP),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation(name: str) -> None:
    attrs, opset, tol = ACTIVATIONS[name]
    x = _rand(3, 4, 5) * 4
    parity(node(name.split("-")[0], ["x"], **attrs), {"x": x}, opset=opset, tol=tol)


def test_prelu() -> None:
    parity(node("PRelu", ["x", "slope"]), {"x": _rand(2, 3, 4, 4)}, inits={"slope": _rand(3, 1, 1, seed=1)}, tol=EXACT)


@pytest.mark.parametrize("attrs", [{"min": -0.5, "max": 0.7}, {"min": 0.1}, {"max": -0.2}, {}])
def test_clip_opset6(attrs: dict) -> None:
    parity(node("Clip", ["x"], **attrs), {"x": _rand(3, 4)}, opset=6, tol=EXACT)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("lo,hi", [(-0.5, 0.7), (0.1, None), (None, -0.2), (None, None)])
def test_clip_inputs(opset: int, lo: float | None, hi: float | None) -> None:
    inits, inputs = {}, ["x", "", ""]
    if lo is not None:
        inits["lo"], inputs[1] = np.array(lo, np.float32), "lo"
    if hi is not None:
        inits["hi"], inputs[2] = np.array(hi, np.float32), "hi"
    while inputs[-1] == "":
        inputs.pop()
    parity(node("Clip", inputs), {"x": _rand(3, 4)}, inits=inits, opset=opset, tol=EXACT)


def test_clip_runtime_bounds() -> None:
    feeds = {"x": _rand(3, 4), "lo": np.array(-0.3, np.float32), "hi": np.array(0.4, np.float32)}
    parity(node("Clip", ["x", "lo", "hi"]), feeds, opset=13, tol=EXACT)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis", [(11, 1), (11, None), (11, -1), (13, 1), (13, None), (13, 0)])
def test_softmax(op: str, opset: int, axis: int | None) -> None:
    attrs = {} if axis is None else {"axis": axis}
    parity(node(op, ["x"], **attrs), {"x": _rand(2, 3, 4) * 3}, opset=opset)


# --------------------------------------------------------------------------- normalization


def test_batch_normalization() -> None:
    inits = {
        "s": _rand(3, seed=1),
        "b": _rand(3, seed=2),
        "m": _rand(3, seed=3),
        "v": np.abs(_rand(3, seed=4)) + 0.5,
    }
    parity(node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3), {"x": _rand(2, 3, 4, 5)}, inits=inits, opset=15, tol=SUM)


@pytest.mark.parametrize("axis,bias", [(-1, True), (1, True), (-1, False)])
def test_layer_normalization(axis: int, bias: bool) -> None:
    x = _rand(2, 3, 8) * 2 + 1
    shape = x.shape[axis:]
    inits = {"s": _rand(*shape, seed=1)}
    inputs = ["x", "s"]
    if bias:
        inits["b"] = _rand(*shape, seed=2)
        inputs.append("b")
    parity(node("LayerNormalization", inputs, axis=axis, epsilon=1e-4), {"x": x}, inits=inits, tol=SUM)


def test_instance_normalization() -> None:
    inits = {"s": _rand(3, seed=1), "b": _rand(3, seed=2)}
    parity(node("InstanceNormalization", ["x", "s", "b"], epsilon=1e-4), {"x": _rand(2, 3, 5, 6)}, inits=inits, tol=SUM)


# --------------------------------------------------------------------------- pooling

POOL_CASES = {
    "k2s2": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "k3s2p1": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "asym-pads": dict(kernel_shape=[3, 2], strides=[2, 1], pads=[0, 1, 2, 0]),
    "ceil": dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "ceil-pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    "ceil-last-window-dropped": dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    "same-upper": dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
    "same-lower": dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_LOWER"),
    "valid": dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID"),
}


@pytest.mark.parametrize("case", [*POOL_CASES, "dilations", "1d"])
def test_max_pool(case: str) -> None:
    if case == "dilations":
        attrs, x = dict(kernel_shape=[2, 3], strides=[1, 2], dilations=[2, 2], pads=[1, 1, 0, 2]), _rand(1, 2, 9, 10)
    elif case == "1d":
        attrs, x = dict(kernel_shape=[3], strides=[2], pads=[1, 0], ceil_mode=1), _rand(2, 3, 10)
    else:
        attrs, x = POOL_CASES[case], _rand(2, 3, 9, 8)
    parity(node("MaxPool", ["x"], **attrs), {"x": x}, tol=EXACT)


@pytest.mark.parametrize("include", [0, 1])
@pytest.mark.parametrize("case", [*POOL_CASES, "1d"])
def test_average_pool(case: str, include: int) -> None:
    if case == "1d":
        attrs, x = dict(kernel_shape=[3], strides=[2], pads=[1, 2], ceil_mode=1), _rand(2, 3, 10)
    else:
        attrs, x = POOL_CASES[case], _rand(2, 3, 9, 8)
    parity(node("AveragePool", ["x"], count_include_pad=include, **attrs), {"x": x}, tol=ULP)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(op: str) -> None:
    parity(node(op, ["x"]), {"x": _rand(2, 3, 7, 5)}, tol=ULP)


# --------------------------------------------------------------------------- reductions


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax"])
@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([-1, 0], 0), (None, 1), (None, 0)])
def test_reduce(op: str, opset: int, axes: list[int] | None, keepdims: int) -> None:
    inits, inputs, attrs = {}, ["x"], {"keepdims": keepdims}
    if axes is not None:
        if opset >= 18 or (op == "ReduceSum" and opset >= 13):
            inits["axes"], inputs = np.array(axes, np.int64), ["x", "axes"]
        else:
            attrs["axes"] = axes
    parity(node(op, inputs, **attrs), {"x": _rand(3, 4, 5)}, inits=inits, opset=opset, tol=ULP)


def test_reduce_noop_with_empty_axes() -> None:
    parity(node("ReduceMean", ["x"], noop_with_empty_axes=1), {"x": _rand(3, 4)}, opset=18, tol=EXACT)


# --------------------------------------------------------------------------- data movement


@pytest.mark.parametrize(
    "shape,allowzero,x_shape",
    [([2, -1], 0, (2, 3, 4)), ([0, 0, 2, 2], 0, (2, 3, 4)), ([-1], 0, (2, 3, 4)), ([4, 0, 3], 1, (0, 4, 3)), ([3, 0], 0, (3, 4, 1))],
)
def test_reshape(shape: list[int], allowzero: int, x_shape: tuple[int, ...]) -> None:
    inits = {"shape": np.array(shape, np.int64)}
    parity(node("Reshape", ["x", "shape"], allowzero=allowzero), {"x": _rand(*x_shape)}, inits=inits, opset=14, tol=EXACT)


def test_reshape_computed_shape() -> None:
    feeds = {"x": _rand(2, 3, 4), "shape": np.array([0, -1], np.int64)}
    parity(node("Reshape", ["x", "shape"]), feeds, tol=EXACT)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_flatten(axis: int) -> None:
    parity(node("Flatten", ["x"], axis=axis), {"x": _rand(2, 3, 4)}, tol=EXACT)


@pytest.mark.parametrize("perm", [None, [0, 2, 1, 3], [3, 1, 0, 2]])
def test_transpose(perm: list[int] | None) -> None:
    attrs = {} if perm is None else {"perm": perm}
    parity(node("Transpose", ["x"], **attrs), {"x": _rand(2, 3, 4, 5)}, tol=EXACT)


@pytest.mark.parametrize("axis", [1, -1])
def test_concat(axis: int) -> None:
    feeds = {"a": _rand(2, 3, 3), "b": _rand(2, 3, 3, seed=1)}
    parity(node("Concat", ["a", "c", "b"], axis=axis), feeds, inits={"c": _rand(2, 3, 3, seed=2)}, tol=EXACT)


@pytest.mark.parametrize(
    "opset,split,n_out,num_outputs",
    [(11, [2, 4], 2, None), (11, None, 3, None), (13, [1, 2, 3], 3, None), (13, None, 2, None), (18, None, 4, 4), (18, [5, 1], 2, None)],
)
def test_split(opset: int, split: list[int] | None, n_out: int, num_outputs: int | None) -> None:
    outs = [f"y{i}" for i in range(n_out)]
    attrs: dict = {"axis": 1}
    inits, inputs = {}, ["x"]
    if split is not None:
        if opset >= 13:
            inits["split"], inputs = np.array(split, np.int64), ["x", "split"]
        else:
            attrs["split"] = split
    if num_outputs is not None:
        attrs["num_outputs"] = num_outputs
    parity(node("Split", inputs, outs, **attrs), {"x": _rand(2, 6, 3)}, inits=inits, opset=opset, outputs=outs, tol=EXACT)


SLICE_CASES = [
    ([1, 0], [3, 10], [0, 2], None),
    ([-3], [-1], [1], None),
    ([4, 2], [0, -100], [1, 2], [-1, -2]),
    ([2**63 - 1], [-(2**63)], [-1], [-1]),
    ([0, 1], [2**63 - 1, 2**63 - 1], [0, 1], [2, 3]),
    ([1], [1000], None, None),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICE_CASES)
def test_slice(starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int] | None) -> None:
    inits = {"starts": np.array(starts, np.int64), "ends": np.array(ends, np.int64)}
    inputs = ["x", "starts", "ends"]
    if axes is not None:
        inits["axes"] = np.array(axes, np.int64)
        inputs.append("axes")
    if steps is not None:
        inits["steps"] = np.array(steps, np.int64)
        inputs.append("steps")
    parity(node("Slice", inputs), {"x": _rand(4, 5, 6)}, inits=inits, opset=13, tol=EXACT)


def test_slice_opset9() -> None:
    parity(node("Slice", ["x"], starts=[1, -2], ends=[3, 100], axes=[0, 2]), {"x": _rand(4, 5, 6)}, opset=9, tol=EXACT)


@pytest.mark.parametrize("opset,axes", [(11, [1, 3]), (11, None), (13, [-1]), (13, None)])
def test_squeeze(opset: int, axes: list[int] | None) -> None:
    inits, inputs, attrs = {}, ["x"], {}
    if axes is not None:
        if opset >= 13:
            inits["axes"], inputs = np.array(axes, np.int64), ["x", "axes"]
        else:
            attrs["axes"] = axes
    parity(node("Squeeze", inputs, **attrs), {"x": _rand(2, 1, 3, 1)}, inits=inits, opset=opset, tol=EXACT)


@pytest.mark.parametrize("opset,axes", [(11, [0, 3]), (11, [-1]), (13, [1, -1]), (13, [0])])
def test_unsqueeze(opset: int, axes: list[int]) -> None:
    inits, inputs, attrs = {}, ["x"], {}
    if opset >= 13:
        inits["axes"], inputs = np.array(axes, np.int64), ["x", "axes"]
    else:
        attrs["axes"] = axes
    parity(node("Unsqueeze", inputs, **attrs), {"x": _rand(2, 3)}, inits=inits, opset=opset, tol=EXACT)


@pytest.mark.parametrize("indices,axis", [(np.array([[0, 2], [1, -1]]), 1), (np.array(1), 0), (np.array(-2), 2), (np.array([3, 0, 0]), -1)])
def test_gather(indices: np.ndarray, axis: int) -> None:
    inits = {"i": indices.astype(np.int64)}
    parity(node("Gather", ["x", "i"], axis=axis), {"x": _rand(3, 4, 5)}, inits=inits, tol=EXACT)


def test_gather_runtime_indices() -> None:
    feeds = {"x": _rand(3, 4, 5), "i": np.array([[2, -1]], np.int64)}
    parity(node("Gather", ["x", "i"], axis=1), feeds, tol=EXACT)


def test_identity_dropout_expand() -> None:
    nodes = [
        node("Identity", ["x"], ["a"]),
        node("Dropout", ["a"], ["b"]),
        node("Expand", ["b", "shape"], ["y"]),
    ]
    parity(nodes, {"x": _rand(3, 1)}, inits={"shape": np.array([2, 3, 4], np.int64)}, tol=EXACT)


def test_shape_ops() -> None:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape (a dynamic flatten as torch exports it)."""
    nodes = [
        node("Shape", ["x"], ["s"]),
        node("Gather", ["s", "zero"], ["n"], axis=0),
        node("Unsqueeze", ["n", "axes"], ["n1"]),
        node("Concat", ["n1", "minus1"], ["target"], axis=0),
        node("Reshape", ["x", "target"], ["y"]),
        node("Shape", ["x"], ["tail"], start=-2),
    ]
    inits = {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64), "minus1": np.array([-1], np.int64)}
    parity(nodes, {"x": _rand(2, 3, 4)}, inits=inits, opset=15, outputs=["y", "tail"], out_types={"tail": TensorProto.INT64}, tol=EXACT)


@pytest.mark.parametrize(
    "x_dtype,to",
    [
        (np.float32, TensorProto.FLOAT16),
        (np.float16, TensorProto.FLOAT),
        (np.float32, TensorProto.DOUBLE),
        (np.float32, TensorProto.FLOAT),
        (np.float32, TensorProto.INT32),
    ],
)
def test_cast(x_dtype: type, to: int) -> None:
    x = (_rand(4, 5) * 1000).astype(x_dtype)
    parity(node("Cast", ["x"], to=to), {"x": x}, out_types={"y": to}, tol=EXACT)


def test_constant_node_in_block() -> None:
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(_rand(3, seed=5))),
        helper.make_node("Constant", [], ["k"], value_float=2.5),
        node("Add", ["x", "c"], ["a"]),
        node("Mul", ["a", "k"], ["y"]),
    ]
    parity(nodes, {"x": _rand(2, 3)}, tol=EXACT)


# --------------------------------------------------------------------------- QuantizeLinear / DequantizeLinear


def _qdq_nodes(axis: int | None = None, block_size: int | None = None, zp: bool = True) -> list[onnx.NodeProto]:
    attrs: dict = {}
    if axis is not None:
        attrs["axis"] = axis
    if block_size is not None:
        attrs["block_size"] = block_size
    ins = ["x", "s", "zp"] if zp else ["x", "s"]
    return [node("QuantizeLinear", ins, ["q"], **attrs), node("DequantizeLinear", ["q", *ins[1:]], ["y"], **attrs)]


def _hard_inputs(shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Random values with exact ties, near ties, saturation, NaN, +-Inf and -0."""
    x = _rand(*shape, scale=40 * scale)
    flat = x.reshape(-1)
    flat[::7] = (np.round(flat[::7] / scale) + 0.5) * scale
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 1e30, -1e30, 3e9], np.float32)
    flat[: special.size] = special
    flat[special.size :: 11] = np.nextafter(flat[special.size :: 11], np.float32(np.inf))
    return x


@pytest.mark.parametrize(
    "opset,qtype,zp_value",
    [(10, np.uint8, 128), (13, np.int8, -3), (13, np.uint8, 0), (19, np.int8, 5), (21, np.int16, -100), (21, np.uint16, 3000)],
)
def test_qdq_per_tensor(opset: int, qtype: type, zp_value: int) -> None:
    inits = {"s": np.array(0.0371, np.float32), "zp": np.array(zp_value, qtype)}
    parity(_qdq_nodes(), {"x": _hard_inputs((6, 40), 0.0371)}, inits=inits, opset=opset, tol=EXACT)


def test_quantize_codes() -> None:
    """Q alone: the codes (float32 here, uint8 in onnxruntime) have the same values."""
    inits = {"s": np.array(0.05, np.float32), "zp": np.array(100, np.uint8)}
    feeds = {"x": _hard_inputs((5, 30), 0.05)}
    model = _make_model([node("QuantizeLinear", ["x", "s", "zp"])], feeds, ["y"], inits, 13, {"y": TensorProto.UINT8})
    (want,) = run_ort(model, feeds)
    (got,) = _torch_run(model, feeds)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_qdq_per_axis() -> None:
    scale = (np.abs(_rand(4, seed=1)) * 0.05 + 0.01).astype(np.float32)
    inits = {"s": scale, "zp": np.array([0, 3, -5, 10], np.int8)}
    parity(_qdq_nodes(axis=1), {"x": _hard_inputs((2, 4, 5), 0.03)}, inits=inits, opset=13, tol=EXACT)


@pytest.mark.parametrize("qtype", [ml_dtypes.int4, ml_dtypes.uint4])
def test_qdq_blocked_int4(qtype: type) -> None:
    scale = (np.abs(_rand(3, 6, seed=1)) * 0.1 + 0.05).astype(np.float32)  # 16 rows, blocks of 6: ragged
    zp = np.zeros((3, 6), qtype) if qtype is ml_dtypes.int4 else np.full((3, 6), 8, qtype)
    inits = {"s": scale, "zp": zp}
    parity(_qdq_nodes(axis=0, block_size=6), {"x": _hard_inputs((16, 6), 0.1)}, inits=inits, opset=21, tol=EXACT)


def test_qdq_float8() -> None:
    inits = {"s": np.array(0.5, np.float32), "zp": np.array(0, ml_dtypes.float8_e4m3fn)}
    x = _rand(8, 16, scale=50)
    x.reshape(-1)[:4] = [1000.0, -1000.0, 0.0, 3.0]
    parity(_qdq_nodes(), {"x": x}, inits=inits, opset=19, tol=EXACT)


def test_dequantize_folded_weight_and_bias() -> None:
    """DQ of constant int8 per-channel weights and int32 bias codes (above 2^24) feeding a Conv."""
    rng = np.random.default_rng(3)
    inits = {
        "wq": rng.integers(-128, 128, (4, 3, 3, 3)).astype(np.int8),
        "ws": (rng.random(4) * 0.01 + 0.001).astype(np.float32),
        "wz": np.zeros(4, np.int8),
        "bq": np.array([2**24 + 1, -(2**25) - 3, 17, 2**30 + 5], np.int32),
        "bs": np.array(1e-7, np.float32),
    }
    nodes = [
        node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
        node("DequantizeLinear", ["bq", "bs"], ["b"]),
        node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3]),
    ]
    parity(nodes, {"x": _rand(1, 3, 6, 6)}, inits=inits, opset=13, tol=SUM)
    model = _make_model(nodes[1:2], {}, ["b"], inits, 13)
    (want,) = run_ort(model, {})
    module = graph_to_module(onnx_ir.from_proto(model))
    _compare(module().numpy(), want, EXACT)


def test_qdq_com_microsoft() -> None:
    nodes = _qdq_nodes()
    for n in nodes:
        n.domain = "com.microsoft"
    inits = {"s": np.array(0.02, np.float32), "zp": np.array(7, np.uint8)}
    feeds = {"x": _hard_inputs((4, 30), 0.02)}
    model = _make_model(nodes, feeds, ["y"], inits, 17, domains={"com.microsoft": 1})
    _compare(_torch_run(model, feeds)[0], run_ort(model, feeds)[0], EXACT)


@pytest.mark.parametrize("opset", [21, 23])
def test_qdq_float16(opset: int) -> None:
    """float16 x and scale: Q divides in float32 up to opset 21 and in float16 from 23."""
    inits = {"s": np.array(0.0123, np.float16), "zp": np.array(-7, np.int16)}
    x = (_rand(64, 64, scale=100)).astype(np.float16)
    feeds = {"x": x}
    model = _make_model(_qdq_nodes(), feeds, ["y"], inits, opset, {"y": TensorProto.FLOAT16})
    _compare(_torch_run(model, feeds)[0], run_ort(model, feeds)[0], EXACT)


# --------------------------------------------------------------------------- blocks with quantizer nodes


def _residual_block(quantizer_op: str | None, seed: int = 0, fold_w2: bool = False) -> onnx.ModelProto:
    """x -> Conv(Wq1) -> Relu -> Conv(Wq2) -> + x -> y; weights through quantizer nodes (or Q/DQ).

    ``fold_w2``: the second weight is stored as int8 codes under a folded ``INTQuantizer``."""
    inits = {
        "w1": _rand(4, 4, 3, 3, seed=seed + 1, scale=0.3),
        "b1": _rand(4, seed=seed + 2, scale=0.1),
        "w2": _rand(4, 4, 3, 3, seed=seed + 3, scale=0.3),
        "b2": _rand(4, seed=seed + 4, scale=0.1),
    }
    nodes = []
    for w in ("w1", "w2"):
        inits[f"{w}_s"] = (np.abs(inits[w]).reshape(4, -1).max(1) / 127).astype(np.float32)
        inits[f"{w}_z"] = np.zeros(4, np.int8)
        ins = [w, f"{w}_s", f"{w}_z"]
        if quantizer_op is None:
            nodes += [node("QuantizeLinear", ins, [f"{w}_q"], axis=0), node("DequantizeLinear", [f"{w}_q", *ins[1:]], [f"{w}_dq"], axis=0)]
        else:
            folded = fold_w2 and w == "w2"
            op = "INTQuantizer" if folded else quantizer_op
            attrs = {"rounding": "nearest"} if op == "AdaroundINTQuantizer" else {}
            if folded:
                scale = inits[f"{w}_s"].reshape(4, 1, 1, 1)
                inits[w] = np.clip(np.round(inits[w] / scale), -128, 127).astype(np.int8)
            n = helper.make_node(
                op, ins, [f"{w}_dq"], domain="qdq_passes", axis=0, block_size=0,
                qdtype=TensorProto.INT8, q_folded=int(folded), name=f"quant_{w}", **attrs,
            )
            if folded:
                n.overload = "folded"
            nodes.append(n)
    nodes += [
        node("Conv", ["x", "w1_dq", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
        node("Relu", ["c1"], ["r1"]),
        node("Conv", ["r1", "w2_dq", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv2"),
        node("Add", ["c2", "x"], ["y"]),
    ]
    domains = {} if quantizer_op is None else {"qdq_passes": 1}
    return _make_model(nodes, {"x": _rand(2, 4, 6, 6)}, ["y"], inits, 17, domains=domains)


def _stub_materialize(node: onnx_ir.Node) -> torch.nn.Module:  # for the unfolded blocks above
    """A stand-in for quantizers.materialize: build from the node's constants, cache in meta."""
    from qdq_passes.ir.quant import QuantSpec
    from qdq_passes.quantizers import quantizer_from_spec

    cached = node.meta.get("qdq_passes.quantizer")
    if cached is not None:
        return cached
    w, s, z = (v.const_value.numpy() for v in node.inputs)  # type: ignore[union-attr]
    s, z = s.copy(), z.copy()
    spec = QuantSpec.from_arrays(s, z, onnx_ir.DataType.INT8, axis=node.attributes["axis"].as_int())
    adaround = node.op_type == "AdaroundINTQuantizer"
    module = quantizer_from_spec(spec, adaround=adaround, weight=torch.from_numpy(w.copy()) if adaround else None)
    node.meta["qdq_passes.quantizer"] = module
    return module


def _block_of(model: onnx_ir.Model) -> BlockModule:
    graph = model.graph
    nodes = list(graph)
    return block_to_module(
        nodes,
        [graph.inputs[0]],
        [graph.outputs[0]],
        opset_imports=model.opset_imports,
        quantizer_module=_stub_materialize,
    )


def test_residual_block_with_quantizer_nodes() -> None:
    feeds = {"x": _rand(2, 4, 6, 6)}
    (want,) = run_ort(_residual_block(None), feeds)
    model = onnx_ir.from_proto(_residual_block("INTQuantizer"))
    block = _block_of(model)
    quant_nodes = [n for n in model.graph if n.domain == "qdq_passes"]
    assert [id(m) for m in block.quantizers] == [id(n.meta["qdq_passes.quantizer"]) for n in quant_nodes]
    with torch.no_grad():
        got = block(torch.from_numpy(feeds["x"]))
    _compare(got.numpy(), want, SUM)
    assert block.op_types == ["INTQuantizer", "INTQuantizer", "Conv", "Relu", "Conv", "Add"]
    assert set(block.constant_names) == {"w1", "w2", "b1", "b2"}  # scales live in the quantizers


def test_block_with_materialize() -> None:
    """The real callback: an AdaRound weight quantizer and a folded (int8 codes) one."""
    materialize = pytest.importorskip("qdq_passes.quantizers.materialize").materialize
    feeds = {"x": _rand(2, 4, 6, 6)}
    (want,) = run_ort(_residual_block(None), feeds)
    model = onnx_ir.from_proto(_residual_block("AdaroundINTQuantizer", fold_w2=True))
    graph = model.graph
    block = block_to_module(
        list(graph), [graph.inputs[0]], [graph.outputs[0]], opset_imports=model.opset_imports, quantizer_module=materialize
    )
    assert block._buffers[block.constant_names["w2"]].dtype == torch.int8
    with torch.no_grad():
        got = block(torch.from_numpy(feeds["x"]))
    _compare(got.numpy(), want, SUM)
    adaround = block.quantizers[0]
    adaround.use_soft_rounding = True
    block(torch.from_numpy(feeds["x"])).square().mean().backward()
    assert adaround.alpha.grad is not None and adaround.alpha.grad.abs().sum() > 0


def test_block_gradients_reach_quantizer_parameters() -> None:
    model = onnx_ir.from_proto(_residual_block("AdaroundINTQuantizer"))
    block = _block_of(model)
    alphas = [m.alpha for m in block.quantizers]
    assert all(isinstance(a, torch.nn.Parameter) for a in alphas)
    assert {id(p) for p in block.parameters()} == {id(a) for a in alphas}
    x = torch.from_numpy(_rand(2, 4, 6, 6))
    loss = block(x).square().mean()
    loss.backward()
    for a in alphas:
        assert a.grad is not None and a.grad.abs().sum() > 0
    # a second module over the same graph shares the cached quantizers
    again = _block_of(model)
    assert all(a is b for a, b in zip(again.quantizers, block.quantizers))


def test_block_runs_under_no_grad_and_autograd_alike() -> None:
    model = onnx_ir.from_proto(_residual_block("INTQuantizer"))
    block = _block_of(model)
    x = torch.from_numpy(_rand(2, 4, 6, 6))
    with torch.no_grad():
        a = block(x)
    b = block(x.clone().requires_grad_(True))
    assert b.requires_grad
    torch.testing.assert_close(a, b.detach(), **EXACT)


def test_sub_block_of_a_graph() -> None:
    """A block cut from the middle: inputs are intermediate values, constants come from the graph."""
    proto = _residual_block(None)
    proto.graph.output.extend([helper.make_tensor_value_info(n, F32, None) for n in ("c1", "c2")])
    _, c1_want, c2_want = run_ort(proto, {"x": _rand(2, 4, 6, 6)})
    model = onnx_ir.from_proto(proto)
    nodes = list(model.graph)
    sub = [n for n in nodes if n.outputs[0].name in ("w2_q", "w2_dq", "r1", "c2")]  # Q, DQ, Relu, Conv
    c1, c2 = sub[2].inputs[0], sub[3].outputs[0]
    block = block_to_module(sub, [c1], [c2], opset_imports=model.opset_imports)
    assert block.input_names == ["c1"] and block.output_names == ["c2"]
    _compare(block(torch.from_numpy(c1_want)).numpy(), c2_want, SUM)


def test_intermediates_are_freed_after_their_last_read() -> None:
    """A chain of elementwise ops holds at most two intermediates at once (the one read and the one
    made), and ``peak_bytes`` reports that; a value read again later stays alive until then."""
    feeds = {"x": _rand(3, 5, 7)}
    nodes = [node("Relu", ["x"], ["a"]), node("Neg", ["a"], ["b"]), node("Abs", ["b"], ["c"]),
             node("Neg", ["c"], ["d"]), node("Add", ["d", "a"], ["y"])]
    model = _make_model(nodes, feeds, ["y"], {}, 17)
    module = graph_to_module(onnx_ir.from_proto(model))
    x = torch.from_numpy(feeds["x"])
    _compare(module(x).numpy(), run_ort(model, feeds)[0], EXACT)
    size = x.numel() * x.element_size()
    assert module.peak_bytes(x) == 3 * size  # a (read by the Add), then two of b, c, d, y
    chain = _make_model(nodes[:4], feeds, ["d"], {}, 17)
    assert graph_to_module(onnx_ir.from_proto(chain)).peak_bytes(x) == 2 * size


def test_module_moves_with_to() -> None:
    feeds = {"x": _rand(2, 3, 8, 8)}
    nodes = [node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3]), node("Relu", ["c"], ["y"])]
    model = _make_model(nodes, feeds, ["y"], {"w": _rand(4, 3, 3, 3, seed=1), "b": _rand(4, seed=2)}, 17)
    module = graph_to_module(onnx_ir.from_proto(model))
    y32 = module(torch.from_numpy(feeds["x"]))
    module.double()
    y64 = module(torch.from_numpy(feeds["x"]).double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32, **SUM)
    assert len(module.state_dict()) == 2
    # assigning a constant's buffer is seen by the next call
    name = module.constant_names["b"]
    setattr(module, name, torch.zeros(4, dtype=torch.float64))
    y0 = module(torch.from_numpy(feeds["x"]).double())
    assert not torch.equal(y0, y64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_block_on_cuda() -> None:
    model = onnx_ir.from_proto(_residual_block("AdaroundINTQuantizer"))
    block = _block_of(model).cuda()
    x = torch.from_numpy(_rand(2, 4, 6, 6))
    cpu = _block_of(onnx_ir.from_proto(_residual_block("AdaroundINTQuantizer")))
    y = block(x.cuda())
    y.square().mean().backward()
    assert all(m.alpha.grad is not None and m.alpha.grad.is_cuda for m in block.quantizers)
    torch.testing.assert_close(y.detach().cpu(), cpu(x).detach(), **SUM)


def test_flexible_batch_reshape() -> None:
    """Exported at batch 1 with Reshape [1, -1]: runs on batch 3 (needs shapes in the graph)."""
    feeds = {"x": _rand(1, 3, 6, 6)}
    nodes = [
        node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3]),
        node("Reshape", ["c", "shape"], ["r"]),
        node("Gemm", ["r", "fc", "fb"], ["y"], transB=1),
    ]
    inits = {"w": _rand(2, 3, 3, 3, seed=1), "shape": np.array([1, -1], np.int64), "fc": _rand(5, 32, seed=2), "fb": _rand(5, seed=3)}
    proto = onnx.shape_inference.infer_shapes(_make_model(nodes, feeds, ["y"], inits, 17))
    batch = _rand(3, 3, 6, 6, seed=9)
    want = np.concatenate([run_ort(proto, {"x": batch[i : i + 1]})[0] for i in range(3)])
    module = graph_to_module(onnx_ir.from_proto(proto))
    got = module(torch.from_numpy(batch))
    _compare(got.detach().numpy(), want, SUM)
    strict = graph_to_module(onnx_ir.from_proto(proto), flexible_batch=False)
    with pytest.raises(RuntimeError):
        strict(torch.from_numpy(batch))


# --------------------------------------------------------------------------- errors and registry


def test_unsupported_op_names_the_node() -> None:
    feeds = {"x": _rand(2, 3)}
    model = _make_model([node("Relu", ["x"], ["r"]), node("Hardmax", ["r"], ["y"], name="the_hardmax")], feeds, ["y"], {}, 13)
    with pytest.raises(UnsupportedOp, match="the_hardmax.*Hardmax") as info:
        graph_to_module(onnx_ir.from_proto(model))
    assert info.value.node_name == "the_hardmax" and info.value.op_type == "Hardmax"


def test_unsupported_opset() -> None:
    """Gelu exists from opset 20; at 17 it is a custom-domain-free unknown op."""
    model = _make_model([node("Gelu", ["x"], name="g")], {"x": _rand(2)}, ["y"], {}, 17)
    with pytest.raises(UnsupportedOp, match="'g'.*opset 17"):
        graph_to_module(onnx_ir.from_proto(model))


def test_unsupported_attribute_and_extra_output() -> None:
    model = _make_model(
        [node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], name="mp")], {"x": _rand(1, 1, 4, 4)}, ["y", "idx"], {}, 17,
        out_types={"idx": TensorProto.INT64},
    )
    with pytest.raises(UnsupportedOp, match="'mp'.*first output"):
        graph_to_module(onnx_ir.from_proto(model))


def test_quantizer_without_callback() -> None:
    model = onnx_ir.from_proto(_residual_block("INTQuantizer"))
    with pytest.raises(UnsupportedOp, match="quant_w1.*callback"):
        graph_to_module(model)


def test_value_without_source() -> None:
    model = onnx_ir.from_proto(_residual_block(None))
    nodes = [n for n in model.graph if n.op_type == "Relu"]
    with pytest.raises(ValueError, match="c1"):
        block_to_module(nodes, [], [nodes[0].outputs[0]], opset_imports=model.opset_imports)


def test_registry_lists_required_ops() -> None:
    ops = supported_ops()
    required = (
        "Conv ConvTranspose Gemm MatMul Add Sub Mul Div Pow Sqrt Neg Relu LeakyRelu PRelu Clip Sigmoid Tanh "
        "HardSigmoid HardSwish Gelu Erf Softmax BatchNormalization LayerNormalization InstanceNormalization "
        "MaxPool AveragePool GlobalAveragePool ReduceMean Reshape Flatten Transpose Concat Split Slice Squeeze "
        "Unsqueeze Gather Identity Cast QuantizeLinear DequantizeLinear"
    ).split()
    for op in required:
        assert ("", op) in ops, op
    for op in ("INTQuantizer", "AdaroundINTQuantizer", "FPQuantizer"):
        assert ("qdq_passes", op) in ops


@pytest.mark.parametrize(
    "arr,dtype",
    [
        (np.arange(-8, 8).astype(ml_dtypes.int4), torch.int8),
        (np.array([1.5, -2.25], ml_dtypes.bfloat16), torch.bfloat16),
        (np.array([1.5, -448.0], ml_dtypes.float8_e4m3fn), torch.float8_e4m3fn),
        (np.array([60000], np.uint16), torch.int32),
        (np.array([1.0], np.float16), torch.float16),
    ],
)
def test_tensor_from_numpy(arr: np.ndarray, dtype: torch.dtype) -> None:
    t = tensor_from_numpy(arr.astype(arr.dtype))
    assert t.dtype == dtype
    np.testing.assert_array_equal(t.to(torch.float64).numpy(), arr.astype(np.float64))
