"""Tests of qdq_passes.ir.to_torch converters: LSTM, GRU (recurrent) and the com.microsoft contrib
ops (Gelu, FastGelu, BiasGelu, QuickGelu, FusedMatMul, SkipLayerNormalization), against
onnxruntime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qdq_passes.ir.to_torch import UnsupportedOp, graph_to_module
from tests.ir.test_to_torch import SUM, ULP, _compare, _make_model, _rand, _torch_run, node, parity
from tests.models import run_ort

# Recurrences compound rounding: each step's state feeds the next, and onnxruntime evaluates
# sigmoid/tanh with MLAS approximations (GRU with its own rational polynomial) and sums the
# matmuls in its own order. Measured here (x86) they stay below 1e-6, also over 100 steps;
# 3e-5 leaves headroom for other CPUs (ARM kernels) and summation orders.
RNN = {"atol": 3e-5, "rtol": 3e-5}

T, B, I, H = 5, 3, 4, 6


def _dirs(direction: str) -> int:
    return 2 if direction == "bidirectional" else 1


def _as_layout0(n: onnx.NodeProto) -> list[onnx.NodeProto]:
    """A ``layout=1`` LSTM/GRU node as Transposes around its ``layout=0`` twin: onnxruntime's CPU
    kernels refuse ``layout=1`` ("Batchwise recurrent operations are not supported")."""
    ins, outs = list(n.input), list(n.output)
    pre, post = [], []
    for i in (0, 5, 6):  # X [B, T, I], initial_h / initial_c [B, D, H]
        if i < len(ins) and ins[i]:
            pre.append(node("Transpose", [ins[i]], [ins[i] + "_l0"], perm=[1, 0, 2]))
            ins[i] += "_l0"
    for i, perm in ((0, [2, 0, 1, 3]), (1, [1, 0, 2]), (2, [1, 0, 2])):  # Y [T, D, B, H], Y_h/Y_c [D, B, H]
        if i < len(outs) and outs[i]:
            post.append(node("Transpose", [outs[i] + "_l0"], [outs[i]], perm=perm))
            outs[i] += "_l0"
    twin = onnx.NodeProto()
    twin.CopyFrom(n)
    keep = [a for a in n.attribute if a.name != "layout"]
    del twin.attribute[:]
    twin.attribute.extend(keep)
    twin.input[:] = ins
    twin.output[:] = outs
    return [*pre, twin, *post]


def rnn_parity(
    n: onnx.NodeProto,
    feeds: Mapping[str, np.ndarray],
    inits: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    opset: int = 14,
    pre: Sequence[onnx.NodeProto] = (),
) -> None:
    """``parity`` for a recurrent node; ``layout=1`` is checked against onnxruntime running the
    ``layout=0`` node between Transposes."""
    layout = next((a.i for a in n.attribute if a.name == "layout"), 0)
    if not layout:
        parity([*pre, n], feeds, inits=inits, opset=opset, outputs=outputs, tol=RNN)
        return
    want = run_ort(_make_model([*pre, *_as_layout0(n)], feeds, outputs, inits, opset), feeds)
    got = _torch_run(_make_model([*pre, n], feeds, outputs, inits, opset), feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        _compare(g, w, RNN)


# --------------------------------------------------------------------------- LSTM


def _lstm_inputs(
    direction: str,
    layout: int,
    *,
    bias: bool = True,
    init_h: bool = False,
    init_c: bool = False,
    peepholes: bool = False,
    steps: int = T,
) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(node inputs, feeds, initializers) of an LSTM test case."""
    d = _dirs(direction)
    x = _rand(B, steps, I) if layout else _rand(steps, B, I)
    inits = {"w": _rand(d, 4 * H, I, seed=1, scale=0.5), "r": _rand(d, 4 * H, H, seed=2, scale=0.5)}
    names = ["x", "w", "r", "", "", "", "", ""]
    if bias:
        inits["b"] = _rand(d, 8 * H, seed=3, scale=0.5)
        names[3] = "b"
    state_shape = (B, d, H) if layout else (d, B, H)
    if init_h:
        inits["h0"] = _rand(*state_shape, seed=4)
        names[5] = "h0"
    if init_c:
        inits["c0"] = _rand(*state_shape, seed=5)
        names[6] = "c0"
    if peepholes:
        inits["p"] = _rand(d, 3 * H, seed=6, scale=0.5)
        names[7] = "p"
    while names[-1] == "":
        names.pop()
    return names, {"x": x}, inits


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("bias,init", [(True, True), (False, False), (True, False), (False, True)])
def test_lstm(direction: str, layout: int, bias: bool, init: bool) -> None:
    names, feeds, inits = _lstm_inputs(direction, layout, bias=bias, init_h=init, init_c=init)
    n = node("LSTM", names, ["y", "yh", "yc"], hidden_size=H, direction=direction, layout=layout)
    rnn_parity(n, feeds, inits, ["y", "yh", "yc"], opset=14)


@pytest.mark.parametrize(
    "outs",
    [["y"], ["", "yh"], ["", "", "yc"], ["", "yh", "yc"], ["y", "", "yc"], ["y", "yh"]],
    ids=lambda o: "+".join(n for n in o if n),
)
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_lstm_outputs_used(direction: str, outs: list[str]) -> None:
    names, feeds, inits = _lstm_inputs(direction, 0, init_h=True)
    n = node("LSTM", names, outs, hidden_size=H, direction=direction)
    rnn_parity(n, feeds, inits, [o for o in outs if o], opset=14)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_opset7_initial_h_only(direction: str) -> None:
    names, feeds, inits = _lstm_inputs(direction, 0, init_h=True)
    n = node("LSTM", names, ["y", "yh", "yc"], hidden_size=H, direction=direction)
    rnn_parity(n, feeds, inits, ["y", "yh", "yc"], opset=7)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_lstm_peepholes_clip(direction: str) -> None:
    names, feeds, inits = _lstm_inputs(direction, 0, init_h=True, init_c=True, peepholes=True)
    feeds["x"] = feeds["x"] * 3.0  # push pre-activations past the clip
    for extra in ({}, {"clip": 0.7}):
        n = node("LSTM", names, ["y", "yh", "yc"], hidden_size=H, direction=direction, **extra)
        rnn_parity(n, feeds, inits, ["y", "yh", "yc"], opset=14)


@pytest.mark.parametrize(
    "acts,alpha,beta",
    [
        (["Sigmoid", "Tanh", "Relu"], None, None),
        (["HardSigmoid", "Softsign", "LeakyRelu"], [0.3, 0.05], [0.4]),
        (["Sigmoid", "ScaledTanh", "Elu", "HardSigmoid", "Tanh", "Affine"], [1.5, 0.8, 0.25, 0.9], [0.7, 0.45, 0.1]),
        (["Sigmoid", "Softplus", "ThresholdedRelu"], [0.1], None),
    ],
    ids=["relu", "hardsigmoid", "mixed-bidir", "softplus"],
)
def test_lstm_activations(acts: list[str], alpha: list[float] | None, beta: list[float] | None) -> None:
    direction = "bidirectional" if len(acts) == 6 else "forward"
    names, feeds, inits = _lstm_inputs(direction, 0, init_h=True, init_c=True)
    attrs: dict = {"activations": acts}
    if alpha is not None:
        attrs["activation_alpha"] = alpha
    if beta is not None:
        attrs["activation_beta"] = beta
    n = node("LSTM", names, ["y", "yh", "yc"], hidden_size=H, direction=direction, **attrs)
    rnn_parity(n, feeds, inits, ["y", "yh", "yc"], opset=14)


@pytest.mark.parametrize("lens", [[T, T, T], [T, 2, 4], [3, 3, 3], [1, T, 2], [T, 0, 2]], ids=str)
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_sequence_lens(direction: str, layout: int, lens: list[int]) -> None:
    names, feeds, inits = _lstm_inputs(direction, layout, init_h=True, init_c=True)
    names += [""] * (8 - len(names))
    names[4] = "lens"
    inits["lens"] = np.array(lens, np.int32)
    n = node("LSTM", names, ["y", "yh", "yc"], hidden_size=H, direction=direction, layout=layout)
    rnn_parity(n, feeds, inits, ["y", "yh", "yc"], opset=14)


def test_lstm_sequence_lens_computed() -> None:
    """sequence_lens as a graph input (not a constant): masked at run time."""
    names, feeds, inits = _lstm_inputs("bidirectional", 0, init_h=True)
    names += [""] * (8 - len(names))
    names[4] = "lens"
    feeds["lens"] = np.array([2, T, 4], np.int32)
    n = node("LSTM", names, ["y", "yh", "yc"], hidden_size=H, direction="bidirectional")
    rnn_parity(n, feeds, inits, ["y", "yh", "yc"], opset=14)


def test_lstm_dequantized_weights() -> None:
    """W and R computed in the graph (DequantizeLinear of int8 codes): run-time weights."""
    names, feeds, inits = _lstm_inputs("bidirectional", 0)
    rng = np.random.default_rng(7)
    for k in ("w", "r"):
        inits[k + "_q"] = rng.integers(-100, 100, inits.pop(k).shape).astype(np.int8)
        inits[k + "_s"] = np.array(0.005, np.float32)
    dq = [node("DequantizeLinear", [k + "_q", k + "_s"], [k]) for k in ("w", "r")]
    n = node("LSTM", names, ["y", "yh"], hidden_size=H, direction="bidirectional")
    rnn_parity(n, feeds, inits, ["y", "yh"], pre=dq)


def test_lstm_gradient_to_w() -> None:
    """Gradients flow from Y and Y_h to W given as a graph input; they match finite differences."""
    d, hid, inp = 2, 3, 2
    w = _rand(d, 4 * hid, inp, seed=1, scale=0.5)
    feeds = {"x": _rand(4, 2, inp), "w": w}
    inits = {"r": _rand(d, 4 * hid, hid, seed=2, scale=0.5), "b": _rand(d, 8 * hid, seed=3, scale=0.5)}
    n = node("LSTM", ["x", "w", "r", "b"], ["y", "yh"], hidden_size=hid, direction="bidirectional")
    model = _make_model([n], feeds, ["y", "yh"], inits, 14)
    module = graph_to_module(onnx_ir.from_proto(model))
    x = torch.from_numpy(feeds["x"])
    w_t = torch.from_numpy(w).requires_grad_(True)
    y, yh = module(x, w_t)
    (y.square().sum() + yh.sum()).backward()
    assert w_t.grad is not None and w_t.grad.shape == w_t.shape
    assert torch.isfinite(w_t.grad).all() and (w_t.grad.abs() > 0).any(dim=(1, 2)).all()
    module64 = graph_to_module(onnx_ir.from_proto(model)).double()  # float64 for finite differences
    x64 = x.double()
    w64 = torch.from_numpy(w).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda ww: module64(x64, ww), (w64,), eps=1e-6, atol=1e-5)


def test_lstm_refusals() -> None:
    names, feeds, inits = _lstm_inputs("forward", 0)
    for attrs, reason in (
        ({"input_forget": 1}, "input_forget"),
        ({"activations": ["Sigmoid", "Gelu", "Tanh"]}, "Gelu"),
        ({"activations": ["Sigmoid", "Tanh"]}, "activations given"),
    ):
        n = node("LSTM", names, ["y"], hidden_size=H, **attrs)
        model = _make_model([n], feeds, ["y"], inits, 14)
        with pytest.raises(UnsupportedOp, match=reason):
            graph_to_module(onnx_ir.from_proto(model))


# --------------------------------------------------------------------------- GRU


def _gru_inputs(
    direction: str, layout: int, *, bias: bool = True, init_h: bool = False, steps: int = T
) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    d = _dirs(direction)
    x = _rand(B, steps, I) if layout else _rand(steps, B, I)
    inits = {"w": _rand(d, 3 * H, I, seed=11, scale=0.5), "r": _rand(d, 3 * H, H, seed=12, scale=0.5)}
    names = ["x", "w", "r", "", "", ""]
    if bias:
        inits["b"] = _rand(d, 6 * H, seed=13, scale=0.5)
        names[3] = "b"
    if init_h:
        inits["h0"] = _rand(*((B, d, H) if layout else (d, B, H)), seed=14)
        names[5] = "h0"
    while names[-1] == "":
        names.pop()
    return names, {"x": x}, inits


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("bias,init", [(True, True), (False, False)])
def test_gru(direction: str, layout: int, lbr: int, bias: bool, init: bool) -> None:
    names, feeds, inits = _gru_inputs(direction, layout, bias=bias, init_h=init)
    n = node("GRU", names, ["y", "yh"], hidden_size=H, direction=direction, layout=layout, linear_before_reset=lbr)
    rnn_parity(n, feeds, inits, ["y", "yh"], opset=14)


@pytest.mark.parametrize("outs", [["y"], ["", "yh"]], ids=lambda o: "+".join(n for n in o if n))
@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_outputs_used_opset7(lbr: int, outs: list[str]) -> None:
    names, feeds, inits = _gru_inputs("bidirectional", 0, bias=True, init_h=True)
    n = node("GRU", names, outs, hidden_size=H, direction="bidirectional", linear_before_reset=lbr)
    rnn_parity(n, feeds, inits, [o for o in outs if o], opset=7)


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_clip_activations(lbr: int) -> None:
    names, feeds, inits = _gru_inputs("bidirectional", 0, init_h=True)
    feeds["x"] = feeds["x"] * 3.0
    for extra in (
        {"clip": 0.6},
        {
            "activations": ["HardSigmoid", "Relu", "Sigmoid", "Softsign"],
            "activation_alpha": [0.3],
            "activation_beta": [0.4],
        },
    ):
        n = node("GRU", names, ["y", "yh"], hidden_size=H, direction="bidirectional", linear_before_reset=lbr, **extra)
        rnn_parity(n, feeds, inits, ["y", "yh"], opset=14)


@pytest.mark.parametrize("lens", [[T, 2, 4], [3, 3, 3], [0, T, 1]], ids=str)
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_gru_sequence_lens(direction: str, layout: int, lens: list[int]) -> None:
    names, feeds, inits = _gru_inputs(direction, layout, init_h=True)
    names[4] = "lens"
    inits["lens"] = np.array(lens, np.int32)
    n = node("GRU", names, ["y", "yh"], hidden_size=H, direction=direction, layout=layout, linear_before_reset=1)
    rnn_parity(n, feeds, inits, ["y", "yh"], opset=14)


def test_gru_refusals() -> None:
    names, feeds, inits = _gru_inputs("forward", 0)
    for attrs, reason in (
        ({"linear_before_reset": 2}, "linear_before_reset"),
        ({"direction": "sideways"}, "direction"),
        ({"activations": ["Sigmoid", "Swish"]}, "Swish"),
    ):
        n = node("GRU", names, ["y"], hidden_size=H, **attrs)
        model = _make_model([n], feeds, ["y"], inits, 14)
        with pytest.raises(UnsupportedOp, match=reason):
            graph_to_module(onnx_ir.from_proto(model))


# --------------------------------------------------------------------------- com.microsoft


def ms_parity(
    nodes: onnx.NodeProto | Sequence[onnx.NodeProto],
    feeds: Mapping[str, np.ndarray],
    *,
    inits: Mapping[str, np.ndarray] | None = None,
    outputs: Sequence[str] = ("y",),
    tol: Mapping[str, float] = ULP,
) -> list[np.ndarray]:
    """As ``parity``, for a model importing ``com.microsoft`` (version 1) beside opset 17."""
    nodes = [nodes] if isinstance(nodes, onnx.NodeProto) else list(nodes)
    inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in feeds.items()]
    outs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in outputs]
    graph = helper.make_graph(
        nodes, "t", inputs, outs, initializer=[numpy_helper.from_array(v, k) for k, v in (inits or {}).items()]
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    want = run_ort(model, feeds)
    module = graph_to_module(onnx_ir.from_proto(model))
    out = module(*[torch.from_numpy(v) for v in feeds.values()])
    got = [o.detach().numpy() for o in (out if isinstance(out, tuple) else (out,))]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        _compare(g, w, tol)
    return got


def ms(op: str, inputs: Sequence[str], outputs: Sequence[str] = ("y",), **attrs) -> onnx.NodeProto:
    return helper.make_node(op, list(inputs), list(outputs), domain="com.microsoft", **attrs)


# Transcendentals: onnxruntime uses MLAS erf/tanh/logistic approximations (a few ulps off libm).
TRANSC = {"atol": 2e-6, "rtol": 2e-6}


def test_ms_gelu() -> None:
    ms_parity(ms("Gelu", ["x"]), {"x": _rand(2, 5, 8, scale=3.0)}, tol=TRANSC)


@pytest.mark.parametrize("with_bias", [False, True])
def test_ms_fast_gelu(with_bias: bool) -> None:
    inits = {"b": _rand(8, seed=1)} if with_bias else {}
    n = ms("FastGelu", ["x", "b"] if with_bias else ["x"])
    ms_parity(n, {"x": _rand(2, 5, 8, scale=3.0)}, inits=inits, tol=TRANSC)


def test_ms_bias_gelu() -> None:
    ms_parity(ms("BiasGelu", ["x", "b"]), {"x": _rand(2, 5, 8, scale=3.0)}, inits={"b": _rand(8, seed=1)}, tol=TRANSC)


@pytest.mark.parametrize("alpha", [None, 1.0, 2.5])
def test_ms_quick_gelu(alpha: float | None) -> None:
    attrs = {} if alpha is None else {"alpha": alpha}
    ms_parity(ms("QuickGelu", ["x"], **attrs), {"x": _rand(2, 5, 8, scale=3.0)}, tol=TRANSC)


@pytest.mark.parametrize(
    "a_shape,b_shape,trans_a,trans_b,alpha",
    [
        ((3, 4), (4, 5), 0, 0, 1.0),
        ((4, 3), (4, 5), 1, 0, 0.5),
        ((3, 4), (5, 4), 0, 1, 2.0),
        ((4, 3), (5, 4), 1, 1, 1.0),
        ((2, 3, 4), (2, 5, 4), 0, 1, 0.125),
        ((2, 4, 3), (4, 5), 1, 0, 1.0),
        ((2, 1, 3, 4), (3, 5, 4), 0, 1, 1.0),
    ],
)
def test_ms_fused_matmul(a_shape, b_shape, trans_a: int, trans_b: int, alpha: float) -> None:
    n = ms("FusedMatMul", ["a", "b"], transA=trans_a, transB=trans_b, alpha=alpha)
    ms_parity(n, {"a": _rand(*a_shape)}, inits={"b": _rand(*b_shape, seed=1)}, tol=SUM)


def test_ms_fused_matmul_trans_batch_refused() -> None:
    n = ms("FusedMatMul", ["a", "b"], transBatchA=1)
    graph = helper.make_graph(
        [n], "t", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(_rand(3, 2, 5), "b")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    with pytest.raises(UnsupportedOp, match="transBatchA"):
        graph_to_module(onnx_ir.from_proto(model))


@pytest.mark.parametrize(
    "beta,bias,outs,eps",
    [
        (True, True, ["y"], None),
        (True, True, ["y", "", "", "s"], 1e-5),
        (False, False, ["y", "", "", "s"], None),
        (True, False, ["y", "", "inv", "s"], None),
        (False, True, ["y", "mean", "inv", "s"], 1e-3),
    ],
)
def test_ms_skip_layer_norm(beta: bool, bias: bool, outs: list[str], eps: float | None) -> None:
    hid = 16
    feeds = {"x": _rand(2, 5, hid, scale=2.0), "skip": _rand(2, 5, hid, seed=1)}
    inits = {"gamma": _rand(hid, seed=2)}
    names = ["x", "skip", "gamma", "", ""]
    if beta:
        inits["beta"] = _rand(hid, seed=3)
        names[3] = "beta"
    if bias:
        inits["bias"] = _rand(hid, seed=4)
        names[4] = "bias"
    while names[-1] == "":
        names.pop()
    attrs = {} if eps is None else {"epsilon": eps}
    n = ms("SkipLayerNormalization", names, outs, **attrs)
    ms_parity(n, feeds, inits=inits, outputs=[o for o in outs if o], tol=SUM)


def test_ms_skip_layer_norm_default_epsilon() -> None:
    """Rows of tiny variance reveal the default epsilon (1e-12 in onnxruntime)."""
    hid = 8
    feeds = {"x": (_rand(2, 3, hid) * 1e-4).astype(np.float32), "skip": np.zeros((2, 3, hid), np.float32)}
    inits = {"gamma": np.ones(hid, np.float32), "beta": np.zeros(hid, np.float32)}
    n = ms("SkipLayerNormalization", ["x", "skip", "gamma", "beta"])
    ms_parity(n, feeds, inits=inits, tol={"atol": 1e-4, "rtol": 1e-4})
