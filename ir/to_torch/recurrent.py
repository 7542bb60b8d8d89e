"""Recurrent layers: LSTM and GRU (opset 7+, ``layout`` from 14).

The recurrence runs explicitly: one matmul of the whole sequence with W, then a Python loop over
time steps with one batched matmul per step against R (both directions of a bidirectional layer
share the loop). Gate orders follow ONNX (LSTM ``i, o, f, c``; GRU ``z, r, h``). W, R, B and P are
run-time inputs, so quantized weights computed inside the block train through the recurrence.
``sequence_lens`` masks the steps past each sequence's length (as onnxruntime: those outputs are
zero, the state is kept, a reverse direction starts at the sequence's own last element, and a
zero-length sequence ends with zero states rather than the initial ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir
import torch
import torch.nn.functional as F

from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter

__all__ = ["gru", "lstm"]

Act = Callable[[torch.Tensor], torch.Tensor]

# name (lower case) -> (uses alpha, uses beta, default alpha, default beta), as onnxruntime's
# rnn_helpers: alphas and betas are consumed in order, only by the activations that use them.
_ACT_ARGS: dict[str, tuple[bool, bool, float, float]] = {
    "sigmoid": (False, False, 0.0, 0.0),
    "tanh": (False, False, 0.0, 0.0),
    "relu": (False, False, 0.0, 0.0),
    "softsign": (False, False, 0.0, 0.0),
    "softplus": (False, False, 0.0, 0.0),
    "affine": (True, True, 0.0, 0.0),
    "leakyrelu": (True, False, 0.01, 0.0),
    "thresholdedrelu": (True, False, 0.0, 0.0),
    "scaledtanh": (True, True, 0.0, 0.0),
    "hardsigmoid": (True, True, 0.2, 0.5),
    "elu": (True, False, 1.0, 0.0),
}


def _make_act(name: str, alpha: float, beta: float) -> Act:
    if name == "sigmoid":
        return torch.sigmoid
    if name == "tanh":
        return torch.tanh
    if name == "relu":
        return torch.relu
    if name == "softsign":
        return F.softsign
    if name == "softplus":
        return F.softplus
    if name == "affine":
        return lambda x: x * alpha + beta
    if name == "leakyrelu":
        return lambda x: torch.where(x >= 0, x, x * alpha)
    if name == "thresholdedrelu":
        return lambda x: torch.where(x > alpha, x, torch.zeros_like(x))
    if name == "scaledtanh":
        return lambda x: torch.tanh(x * beta) * alpha
    if name == "hardsigmoid":
        return lambda x: torch.clamp(x * alpha + beta, 0.0, 1.0)
    assert name == "elu"
    return lambda x: torch.where(x >= 0, x, (torch.exp(x) - 1) * alpha)


def _clipper(clip: float | None) -> Act:
    """``clip``'s clamp of the gates' inputs (identity when unset)."""
    if clip is None:
        return lambda g: g
    return lambda g: g.clamp(-clip, clip)


def _per_direction(acts: Sequence[Act], keys: Sequence[tuple[str, float, float]]) -> Act:
    """One activation over ``[num_directions, ...]``: the shared one, or each direction's own."""
    if all(k == keys[0] for k in keys):
        return acts[0]
    return lambda x: torch.stack([a(x[d]) for d, a in enumerate(acts)])


def _activations(ctx: ConvertContext, defaults: Sequence[str], num_dir: int) -> list[Act]:
    """The gate activations (one callable per role, applied to all directions at once)."""
    attr = ctx.node.attributes.get("activations")
    names = list(defaults) * num_dir if attr is None else [str(s) for s in attr.as_strings()]
    per = len(defaults)
    if len(names) == per and num_dir == 2:
        names = names * 2
    if len(names) != per * num_dir:
        raise ctx.unsupported(f"{len(names)} activations given, expected {per * num_dir}")
    a_attr = ctx.node.attributes.get("activation_alpha")
    b_attr = ctx.node.attributes.get("activation_beta")
    alphas = [] if a_attr is None else list(a_attr.as_floats())
    betas = [] if b_attr is None else list(b_attr.as_floats())
    keys: list[tuple[str, float, float]] = []
    for name in names:
        lname = name.lower()
        if lname not in _ACT_ARGS:
            raise ctx.unsupported(f"activation {name!r} is not supported")
        uses_a, uses_b, da, db = _ACT_ARGS[lname]
        alpha = (alphas.pop(0) if alphas else da) if uses_a else 0.0
        beta = (betas.pop(0) if betas else db) if uses_b else 0.0
        keys.append((lname, alpha, beta))
    roles: list[Act] = []
    for role in range(per):
        role_keys = [keys[d * per + role] for d in range(num_dir)]
        roles.append(_per_direction([_make_act(*k) for k in role_keys], role_keys))
    return roles


def _common(ctx: ConvertContext) -> tuple[list[bool], int, float | None, list[int] | None, tuple[bool, ...]]:
    """(reverse flag per direction, layout, clip, constant sequence lengths, outputs used)."""
    direction = ctx.attr_string("direction", "forward")
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
    if dirs is None:
        raise ctx.unsupported(f"direction={direction!r} is not supported")
    layout = ctx.attr_int("layout", 0) if ctx.opset >= 14 else 0
    if layout not in (0, 1):
        raise ctx.unsupported(f"layout={layout} is not supported")
    clip_attr = ctx.node.attributes.get("clip")
    clip = None if clip_attr is None else float(clip_attr.as_float())
    if clip is not None and clip <= 0:
        raise ctx.unsupported(f"clip={clip} (must be positive)")
    lens = ctx.constant(4)
    lens_list = None if lens is None else [int(v) for v in np.asarray(lens).reshape(-1)]
    used = tuple(
        bool(out.name and (out.uses() or out.is_graph_output())) for out in ctx.node.outputs
    )
    return dirs, layout, clip, lens_list, used


def _masks(
    lens: torch.Tensor | None, lens_list: list[int] | None, reverse: Sequence[bool], steps: int, device: torch.device
) -> torch.Tensor | None:
    """``[num_dir, T, B, 1]`` bool: whether step ``s`` of each direction is inside the sequence,
    or None when every sequence has the full length."""
    if lens is None or (lens_list is not None and all(v == steps for v in lens_list)):
        return None
    s = torch.arange(steps, device=device)
    t = torch.stack([steps - 1 - s if rev else s for rev in reverse])  # time index of each step
    return (t[:, :, None] < lens.to(device=device, dtype=torch.int64).reshape(1, 1, -1))[..., None]


def _zero_empty(states: Sequence[torch.Tensor], mask: torch.Tensor | None) -> list[torch.Tensor]:
    """Final states of zero-length sequences are zero (as onnxruntime), not the initial ones."""
    if mask is None:
        return list(states)
    nonempty = mask.any(1)  # [D, B, 1]
    return [torch.where(nonempty, s, torch.zeros_like(s)) for s in states]


def _flip_reverse(x: torch.Tensor, reverse: Sequence[bool]) -> torch.Tensor:
    """Flip the time axis (1) of the reverse directions of ``[num_dir, T, ...]``."""
    if not any(reverse):
        return x
    if all(reverse):
        return x.flip(1)
    return torch.stack([x[d].flip(0) if rev else x[d] for d, rev in enumerate(reverse)])


def _outputs(
    ys: list[torch.Tensor] | None,
    states: Sequence[torch.Tensor],
    reverse: Sequence[bool],
    layout: int,
    n_out: int,
) -> list[torch.Tensor | None]:
    """Y (``[T, D, B, H]`` or, layout 1, ``[B, T, D, H]``) and the final states (``[D, B, H]`` or
    ``[B, D, H]``), None for the outputs not used."""
    y = None
    if ys is not None:
        y = _flip_reverse(torch.stack(ys, 1), reverse)  # [D, T, B, H]
        y = y.permute(2, 1, 0, 3) if layout else y.transpose(0, 1)
    finals = [s.transpose(0, 1) if layout else s for s in states]
    return [y, *finals][:n_out]


def _input_projection(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, reverse: Sequence[bool]
) -> torch.Tensor:
    """``x @ W^T (+ bias)`` for every step and direction: ``[D, T, B, G*H]``, reverse directions
    in processing order."""
    xw = torch.matmul(x.unsqueeze(0), w.transpose(1, 2).unsqueeze(1))
    if bias is not None:
        xw = xw + bias[:, None, None, :]
    return _flip_reverse(xw, reverse)


def _to_time_first(layout: int, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [t.transpose(0, 1) if (layout and t is not None) else t for t in tensors]


@converter("LSTM", since=7)
def lstm(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """LSTM: ``direction`` (forward, reverse, bidirectional), ``hidden_size`` (read from R),
    ``activations`` (default Sigmoid, Tanh, Tanh; also Relu, Softsign, Softplus, Affine,
    LeakyRelu, ThresholdedRelu, ScaledTanh, HardSigmoid, Elu with ``activation_alpha/beta``
    consumed as onnxruntime does), ``clip``, ``layout`` (14+); optional B, sequence_lens
    (masked), initial_h, initial_c, P (peepholes). ``input_forget=1`` is not supported. Outputs
    Y, Y_h, Y_c, any subset."""
    if ctx.attr_int("input_forget", 0) != 0:
        raise ctx.unsupported("input_forget=1 (coupled input and forget gates) is not supported")
    reverse, layout, clip, lens_list, used = _common(ctx)
    act_f, act_g, act_h = _activations(ctx, ("Sigmoid", "Tanh", "Tanh"), len(reverse))
    n_out = len(node.outputs)
    want_y = bool(used) and used[0]

    clamp = _clipper(clip)

    def run(
        x: torch.Tensor,
        w: torch.Tensor,
        r: torch.Tensor,
        b: torch.Tensor | None,
        lens: torch.Tensor | None,
        h0: torch.Tensor | None,
        c0: torch.Tensor | None,
        p: torch.Tensor | None,
    ) -> list[torch.Tensor | None]:
        x, h0, c0 = _to_time_first(layout, x, h0, c0)
        assert x is not None
        steps, batch = x.shape[0], x.shape[1]
        hidden = r.shape[-1]
        bias = None if b is None else b[:, : 4 * hidden] + b[:, 4 * hidden :]
        xw = _input_projection(x, w, bias, reverse)
        rt = r.transpose(1, 2)  # [D, H, 4H]
        zeros = x.new_zeros(len(reverse), batch, hidden)
        h = zeros if h0 is None else h0
        c = zeros if c0 is None else c0
        pi, po, pf = (None, None, None) if p is None else p[:, None, :].chunk(3, -1)
        mask = _masks(lens, lens_list, reverse, steps, x.device)
        ys: list[torch.Tensor] = []
        for s in range(steps):
            gi, go, gf, gc = (xw[:, s] + torch.bmm(h, rt)).chunk(4, -1)
            if pi is not None:
                gi, gf = gi + pi * c, gf + pf * c
            i, f, g = act_f(clamp(gi)), act_f(clamp(gf)), act_g(clamp(gc))
            c_new = f * c + i * g
            if po is not None:
                go = go + po * c_new
            h_new = act_f(clamp(go)) * act_h(c_new)
            if mask is None:
                h, c = h_new, c_new
                if want_y:
                    ys.append(h_new)
            else:
                m = mask[:, s]
                h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)
                if want_y:
                    ys.append(torch.where(m, h_new, torch.zeros_like(h_new)))
        return _outputs(ys if want_y else None, _zero_empty((h, c), mask), reverse, layout, n_out)

    return Converted(run, (0, 1, 2, 3, 4, 5, 6, 7), multi=True)


@converter("GRU", since=7)
def gru(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """GRU: ``direction`` (forward, reverse, bidirectional), ``hidden_size`` (read from R),
    ``activations`` (default Sigmoid, Tanh; the same others as LSTM), ``clip``,
    ``linear_before_reset`` (0 or 1), ``layout`` (14+); optional B, sequence_lens (masked),
    initial_h. Outputs Y, Y_h, any subset."""
    reverse, layout, clip, lens_list, used = _common(ctx)
    act_f, act_g = _activations(ctx, ("Sigmoid", "Tanh"), len(reverse))
    lbr = ctx.attr_int("linear_before_reset", 0)
    if lbr not in (0, 1):
        raise ctx.unsupported(f"linear_before_reset={lbr} is not supported")
    n_out = len(node.outputs)
    want_y = bool(used) and used[0]

    clamp = _clipper(clip)

    def run(
        x: torch.Tensor,
        w: torch.Tensor,
        r: torch.Tensor,
        b: torch.Tensor | None,
        lens: torch.Tensor | None,
        h0: torch.Tensor | None,
    ) -> list[torch.Tensor | None]:
        x, h0 = _to_time_first(layout, x, h0)
        assert x is not None
        steps, batch = x.shape[0], x.shape[1]
        hidden = r.shape[-1]
        bias, rbh = None, None
        if b is not None:
            wb, rb = b[:, : 3 * hidden], b[:, 3 * hidden :]
            if lbr:  # Rbh is multiplied by r: kept apart
                bias = torch.cat([wb[:, : 2 * hidden] + rb[:, : 2 * hidden], wb[:, 2 * hidden :]], 1)
                rbh = rb[:, None, 2 * hidden :]
            else:
                bias = wb + rb
        xw = _input_projection(x, w, bias, reverse)
        rt = r.transpose(1, 2)  # [D, H, 3H]
        rt_zr, rt_h = rt[:, :, : 2 * hidden], rt[:, :, 2 * hidden :]
        h = x.new_zeros(len(reverse), batch, hidden) if h0 is None else h0
        mask = _masks(lens, lens_list, reverse, steps, x.device)
        ys: list[torch.Tensor] = []
        for s in range(steps):
            xs = xw[:, s]
            if lbr:
                hr = torch.bmm(h, rt)
                z, rg = act_f(clamp(xs[..., : 2 * hidden] + hr[..., : 2 * hidden])).chunk(2, -1)
                hh = hr[..., 2 * hidden :] if rbh is None else hr[..., 2 * hidden :] + rbh
                cand = xs[..., 2 * hidden :] + rg * hh
            else:
                z, rg = act_f(clamp(xs[..., : 2 * hidden] + torch.bmm(h, rt_zr))).chunk(2, -1)
                cand = xs[..., 2 * hidden :] + torch.bmm(rg * h, rt_h)
            h_new = (1 - z) * act_g(clamp(cand)) + z * h
            if mask is None:
                h = h_new
                if want_y:
                    ys.append(h_new)
            else:
                m = mask[:, s]
                h = torch.where(m, h_new, h)
                if want_y:
                    ys.append(torch.where(m, h_new, torch.zeros_like(h_new)))
        return _outputs(ys if want_y else None, _zero_empty((h,), mask), reverse, layout, n_out)

    return Converted(run, (0, 1, 2, 3, 4, 5), multi=True)
