"""Tests of the LSTM/GRU and com.microsoft converters of qdq_passes.ir.to_torch against onnxruntime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir
import pytest
import torch
from onnx import helper

from qdq_passes.ir.to_torch import UnsupportedOp, graph_to_module
from tests.ir.test_to_torch import SUM, ULP, _compare, _make_model, _rand, node
from tests.models import run_ort

# Recurrences add one rounding per step and onnxruntime multiplies all steps' inputs in one GEMM:
# the sums differ in order, so compare within a few float32 ulps of the accumulated values.
RNN = {"atol": 2e-5, "rtol": 2e-5}


def _parity(nodes: Sequence[onnx.NodeProto], feeds: Mapping[str, np.ndarray], outputs: Sequence[str],
            inits: Mapping[str, np.ndarray] | None = None, opset: int = 17, tol: Mapping[str, float] = RNN,
            domains: Mapping[str, int] | None = None) -> None:
    model = _make_model(list(nodes), feeds, outputs, inits or {}, opset, domains=domains)
    want = run_ort(model, feeds)
    module = graph_to_module(onnx_ir.from_proto(model))
    got = module(*[torch.from_numpy(v) for v in feeds.values()])
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        _compare(g.detach().numpy(), w, tol)


def _layout1_parity(op: str, names: list[str], outputs: list[str], feeds: dict, inits: dict, attrs: dict) -> None:
    """onnxruntime has no batch-first (``layout=1``) kernel: the reference is its ``layout=0`` run
    on the inputs transposed to sequence-first, outputs transposed back."""
    seq_first = {k: np.ascontiguousarray(v.swapaxes(0, 1)) for k, v in feeds.items()}
    want = run_ort(_make_model([node(op, names, outputs, **{**attrs, "layout": 0})], seq_first, outputs, inits, 14),
                   seq_first)
    want = [w.transpose(2, 0, 1, 3) if w.ndim == 4 else w.swapaxes(0, 1) for w in want]
    model = _make_model([node(op, names, outputs, **attrs)], feeds, outputs, inits, 14)
    got = graph_to_module(onnx_ir.from_proto(model))(*[torch.from_numpy(v) for v in feeds.values()])
    for g, w in zip(got if isinstance(got, tuple) else (got,), want):
        _compare(g.detach().numpy(), np.ascontiguousarray(w), RNN)


def _rnn_inputs(op: str, dirs: int, hidden: int = 5, inp: int = 3, steps: int = 4, batch: int = 2,
                layout: int = 0, with_bias: bool = True, with_initial: bool = True, peepholes: bool = False):
    gates = 4 if op == "LSTM" else 3
    inits = {"W": _rand(dirs, gates * hidden, inp, seed=1, scale=0.5), "R": _rand(dirs, gates * hidden, hidden, seed=2, scale=0.5)}
    names = ["X", "W", "R"]
    if with_bias:
        inits["B"] = _rand(dirs, 2 * gates * hidden, seed=3, scale=0.3)
    names.append("B" if with_bias else "")
    names.append("")  # sequence_lens
    x_shape = (batch, steps, inp) if layout else (steps, batch, inp)
    state_shape = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    feeds = {"X": _rand(*x_shape, seed=4)}
    if with_initial:
        feeds["h0"] = _rand(*state_shape, seed=5, scale=0.5)
        names.append("h0")
        if op == "LSTM":
            feeds["c0"] = _rand(*state_shape, seed=6, scale=0.5)
            names.append("c0")
    if peepholes:
        if not with_initial:
            names += ["", ""]
        inits["P"] = _rand(dirs, 3 * hidden, seed=7, scale=0.3)
        names.append("P")
    while names and names[-1] == "":
        names.pop()
    return feeds, inits, names


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("variant", ["full", "no-bias-no-initial", "peepholes", "clip"])
def test_lstm(direction: str, layout: int, variant: str) -> None:
    dirs = 2 if direction == "bidirectional" else 1
    feeds, inits, names = _rnn_inputs("LSTM", dirs, layout=layout, with_bias=variant != "no-bias-no-initial",
                                      with_initial=variant != "no-bias-no-initial", peepholes=variant == "peepholes")
    attrs = {"hidden_size": 5, "direction": direction, "layout": layout}
    if variant == "clip":
        attrs["clip"] = 0.7
    feeds = {k: feeds[k] for k in names if k in feeds}
    if layout:
        _layout1_parity("LSTM", names, ["Y", "Y_h", "Y_c"], feeds, inits, attrs)
    else:
        _parity([node("LSTM", names, ["Y", "Y_h", "Y_c"], **attrs)], feeds, ["Y", "Y_h", "Y_c"], inits, opset=14)


def test_lstm_only_last_state_used_opset_7() -> None:
    feeds, inits, names = _rnn_inputs("LSTM", 1)
    lstm = node("LSTM", names, ["", "Y_h"], hidden_size=5)
    _parity([lstm], {k: feeds[k] for k in names if k in feeds}, ["Y_h"], inits, opset=11)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("layout", [0, 1])
def test_gru(direction: str, linear_before_reset: int, layout: int) -> None:
    dirs = 2 if direction == "bidirectional" else 1
    feeds, inits, names = _rnn_inputs("GRU", dirs, layout=layout)
    attrs = {"hidden_size": 5, "direction": direction, "linear_before_reset": linear_before_reset, "layout": layout}
    feeds = {k: feeds[k] for k in names if k in feeds}
    if layout:
        _layout1_parity("GRU", names, ["Y", "Y_h"], feeds, inits, attrs)
    else:
        _parity([node("GRU", names, ["Y", "Y_h"], **attrs)], feeds, ["Y", "Y_h"], inits, opset=14)


def test_lstm_gradient_reaches_the_weights() -> None:
    feeds, inits, names = _rnn_inputs("LSTM", 1, with_initial=False)
    w = inits.pop("W")
    model = _make_model([node("LSTM", names, ["Y"], hidden_size=5)], {"X": feeds["X"], "W": w}, ["Y"],
                        {k: v for k, v in inits.items()}, 14)
    module = graph_to_module(onnx_ir.from_proto(model))
    weight = torch.from_numpy(w).requires_grad_()
    module(torch.from_numpy(feeds["X"]), weight).square().sum().backward()
    assert weight.grad is not None and float(weight.grad.abs().sum()) > 0


def test_unsupported_recurrent_attributes_are_refused() -> None:
    feeds, inits, names = _rnn_inputs("LSTM", 1)
    model = _make_model([node("LSTM", names, ["Y"], hidden_size=5, input_forget=1)],
                        {k: feeds[k] for k in names if k in feeds}, ["Y"], inits, 14)
    with pytest.raises(UnsupportedOp, match="input_forget"):
        graph_to_module(onnx_ir.from_proto(model))
    model = _make_model([node("GRU", names[:4], ["Y"], hidden_size=5, activations=["Relu", "Tanh"])],
                        {"X": feeds["X"]}, ["Y"], {k: inits[k] for k in ("W", "R", "B")} | {"W": inits["W"][:, :15],
                                                                                              "R": inits["R"][:, :15]}, 14)
    with pytest.raises(UnsupportedOp, match="activations"):
        graph_to_module(onnx_ir.from_proto(model))


# --------------------------------------------------------------------------- com.microsoft

MS = {"com.microsoft": 1}


def _ms(op: str, inputs: Sequence[str], outputs: Sequence[str] = ("y",), **attrs) -> onnx.NodeProto:
    return helper.make_node(op, list(inputs), list(outputs), domain="com.microsoft", **attrs)


@pytest.mark.parametrize("op", ["Gelu", "QuickGelu"])
def test_ms_gelus(op: str) -> None:
    _parity([_ms(op, ["x"])], {"x": _rand(3, 8, scale=3.0)}, ["y"], tol=ULP, domains=MS)


def test_ms_quick_gelu_alpha() -> None:
    _parity([_ms("QuickGelu", ["x"], alpha=1.3)], {"x": _rand(3, 8, scale=3.0)}, ["y"], tol=ULP, domains=MS)


@pytest.mark.parametrize("bias", [True, False])
def test_ms_fast_and_bias_gelu(bias: bool) -> None:
    inits = {"b": _rand(8, seed=2)}
    _parity([_ms("FastGelu", ["x", "b"] if bias else ["x"])], {"x": _rand(3, 8, scale=3.0)}, ["y"],
            inits if bias else None, tol=ULP, domains=MS)
    _parity([_ms("BiasGelu", ["x", "b"])], {"x": _rand(3, 8, scale=3.0)}, ["y"], inits, tol=ULP, domains=MS)


@pytest.mark.parametrize("trans_a,trans_b,alpha", [(0, 0, 1.0), (1, 0, 0.5), (0, 1, 2.0), (1, 1, 1.0)])
def test_ms_fused_matmul(trans_a: int, trans_b: int, alpha: float) -> None:
    a = _rand(2, 5, 4) if trans_a else _rand(2, 4, 5)
    b = _rand(6, 5, seed=1) if trans_b else _rand(5, 6, seed=1)
    _parity([_ms("FusedMatMul", ["a", "b"], transA=trans_a, transB=trans_b, alpha=alpha)], {"a": a}, ["y"],
            {"b": b}, tol=SUM, domains=MS)


@pytest.mark.parametrize("with_bias", [True, False])
def test_ms_skip_layer_normalization(with_bias: bool) -> None:
    inits = {"gamma": _rand(8, seed=2), "beta": _rand(8, seed=3), "bias": _rand(8, seed=4)}
    inputs = ["x", "skip", "gamma", "beta"] + (["bias"] if with_bias else [])
    if not with_bias:
        inits.pop("bias")
    skip_ln = _ms("SkipLayerNormalization", inputs, ["y", "", "", "sum"], epsilon=1e-5)
    _parity([skip_ln], {"x": _rand(2, 3, 8), "skip": _rand(2, 3, 8, seed=1)}, ["y", "sum"], inits, tol=SUM, domains=MS)
