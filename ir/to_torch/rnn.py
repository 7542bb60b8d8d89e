"""Recurrent layers: LSTM (7+, ``layout`` from 14) and GRU (7+, ``layout`` from 14).

The recurrence runs step by step in torch, in ONNX's gate order (LSTM ``i, o, f, c``; GRU ``z, r,
h``), differentiably in the weights: ``W``, ``R`` and ``B`` are run-time inputs, so AdaRound can
learn the rounding of their quantizers. Supported: directions forward, reverse and bidirectional;
the default activations (Sigmoid, Tanh, Tanh); ``clip``; peepholes (LSTM ``P``); initial states;
``linear_before_reset`` (GRU); ``sequence_lens`` absent or equal to the sequence length everywhere
(other lengths raise at run time, so the block falls back to onnxruntime). ``input_forget=1`` and
other activations are refused.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir
import torch

from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter

__all__ = ["gru", "lstm"]

_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


def _read(ctx: ConvertContext, op: str) -> tuple[int, int, float | None, int]:
    """Directions, hidden size, clip and layout; refuses what is not supported."""
    direction = ctx.attr_string("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ctx.unsupported(f"direction {direction!r}")
    dirs = 2 if direction == "bidirectional" else 1
    activations = ctx.node.attributes.get("activations")
    if activations is not None:
        names = [a.lower() for a in activations.as_strings()]
        if names != [a.lower() for a in _DEFAULT_ACTIVATIONS[op]] * dirs:
            raise ctx.unsupported(f"activations {list(activations.as_strings())} (only the defaults)")
    for name in ("activation_alpha", "activation_beta"):
        if name in ctx.node.attributes:
            raise ctx.unsupported(f"attribute {name}")
    clip_attr = ctx.node.attributes.get("clip")
    clip = None if clip_attr is None else clip_attr.as_float()
    hidden = ctx.attr_int("hidden_size", 0)
    if hidden <= 0:
        raise ctx.unsupported("hidden_size is required")
    return (dirs if direction == "bidirectional" else (1 if direction == "forward" else -1)), hidden, clip, \
        ctx.attr_int("layout", 0)


def _check_lengths(lengths: torch.Tensor | None, steps: int) -> None:
    if lengths is not None and bool((lengths != steps).any()):
        raise RuntimeError(f"sequence_lens {lengths.tolist()} differ from the sequence length {steps}")


def _clamp(x: torch.Tensor, clip: float | None) -> torch.Tensor:
    return x if clip is None else x.clamp(-clip, clip)


def _run(step: Callable, x: torch.Tensor, states: list[torch.Tensor], reverse: bool) -> tuple[torch.Tensor, list]:
    """``step(x_t, states) -> states`` over time ``x [T, B, I]``; returns ``Y [T, B, H]`` and the last states."""
    outputs: list[torch.Tensor] = [None] * x.shape[0]  # type: ignore[list-item]
    for t in (range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])):
        states = step(x[t], states)
        outputs[t] = states[0]
    return torch.stack(outputs), states


def _recurrent(op: str, ctx: ConvertContext, cell: Callable) -> Converted:
    direction, hidden, clip, layout = _read(ctx, op)
    dirs = 2 if direction == 2 else 1
    n_states = 2 if op == "LSTM" else 1
    n_out = len(ctx.node.outputs)

    def run(x, w, r, b, lengths, *rest):  # noqa: ANN001, ANN202
        initial, peep = rest[:n_states], rest[n_states] if op == "LSTM" else None
        if layout:
            x = x.transpose(0, 1)
            initial = tuple(None if s is None else s.transpose(0, 1) for s in initial)
        _check_lengths(lengths, x.shape[0])
        ys, last = [], [[] for _ in range(n_states)]
        for d in range(dirs):
            zeros = x.new_zeros(x.shape[1], hidden)
            states = [zeros if s is None else s[d] for s in initial]
            bias = None if b is None else b[d]
            p = None if peep is None else peep[d]
            y, states = _run(lambda xt, st: cell(xt, st, w[d], r[d], bias, p, hidden, clip), x, states,
                             reverse=(direction == -1) or d == 1)
            ys.append(y)
            for k, s in enumerate(states):
                last[k].append(s)
        y = torch.stack(ys, dim=1)  # [T, D, B, H]
        finals = [torch.stack(s) for s in last]  # [D, B, H]
        if layout:
            y = y.permute(2, 0, 1, 3)  # [B, T, D, H]
            finals = [s.transpose(0, 1) for s in finals]
        return (y, *finals)[:n_out]

    inputs = (0, 1, 2, 3, 4, 5, 6, 7) if op == "LSTM" else (0, 1, 2, 3, 4, 5)
    return Converted(run, inputs, multi=True)


def _lstm_cell(x, states, w, r, b, p, hidden: int, clip: float | None):  # noqa: ANN001, ANN202
    h, c = states
    gates = x @ w.T + h @ r.T
    if b is not None:
        gates = gates + b[: 4 * hidden] + b[4 * hidden:]
    gi, go, gf, gc = gates.split(hidden, dim=-1)
    if p is not None:
        pi, po, pf = p.split(hidden)
        gi, gf = gi + pi * c, gf + pf * c
    i = torch.sigmoid(_clamp(gi, clip))
    f = torch.sigmoid(_clamp(gf, clip))
    c = f * c + i * torch.tanh(_clamp(gc, clip))
    if p is not None:
        go = go + po * c
    o = torch.sigmoid(_clamp(go, clip))
    return [o * torch.tanh(c), c]


@converter("LSTM", since=7)
def lstm(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """LSTM: X, W, R, B, sequence_lens, initial_h, initial_c, P; outputs Y, Y_h, Y_c; attributes
    direction, hidden_size, clip, layout (14); ``input_forget=1`` refused."""
    if ctx.attr_int("input_forget", 0):
        raise ctx.unsupported("input_forget=1")
    return _recurrent("LSTM", ctx, _lstm_cell)


def _gru_cell(linear_before_reset: bool):  # noqa: ANN202
    def cell(x, states, w, r, b, p, hidden: int, clip: float | None):  # noqa: ANN001, ANN202
        (h,) = states
        xw = x @ w.T
        wb, rb = (b[: 3 * hidden], b[3 * hidden:]) if b is not None else (None, None)
        if wb is not None:
            xw = xw + wb
        xz, xr, xh = xw.split(hidden, dim=-1)
        rz, rr, rh = r.split(hidden, dim=0)
        bz, br, bh = rb.split(hidden) if rb is not None else (0.0, 0.0, 0.0)
        z = torch.sigmoid(_clamp(xz + h @ rz.T + bz, clip))
        reset = torch.sigmoid(_clamp(xr + h @ rr.T + br, clip))
        if linear_before_reset:
            candidate = xh + reset * (h @ rh.T + bh)
        else:
            candidate = xh + (reset * h) @ rh.T + bh
        hh = torch.tanh(_clamp(candidate, clip))
        return [(1 - z) * hh + z * h]

    return cell


@converter("GRU", since=7)
def gru(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """GRU: X, W, R, B, sequence_lens, initial_h; outputs Y, Y_h; attributes direction,
    hidden_size, clip, linear_before_reset, layout (14)."""
    return _recurrent("GRU", ctx, _gru_cell(bool(ctx.attr_int("linear_before_reset", 0))))
