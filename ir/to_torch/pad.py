"""Pad (opsets 2-10 with attributes, 11+ with inputs): modes constant, reflect, edge and wrap (19).

ONNX pads are ``[x1_begin, x2_begin, ..., x1_end, x2_end]``; negative pads crop. As in
onnxruntime, negative pads crop first and the positive ones then pad the cropped tensor (so reflect
and edge read the cropped borders). Constant padding is ``torch.nn.functional.pad``; reflect, edge
and wrap use ``F.pad`` where torch supports the rank and sizes and an index gather otherwise (any
rank, any axes, pads longer than the axis repeat the reflection / wrap). Differentiable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir
import torch
import torch.nn.functional as F

from qdq_passes.ir.to_torch._spatial import torch_pad
from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter, ints_of

__all__ = ["pad_attrs", "pad_inputs"]

_TORCH_MODES = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _full_pads(pads: Sequence[int], axes: Sequence[int] | None, rank: int) -> tuple[list[int], list[int]]:
    """``(begin, end)`` per dim of a rank-``rank`` tensor."""
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    if len(pads) != 2 * len(axes):
        raise ValueError(f"Pad: {len(pads)} pads for {len(axes)} axes")
    begin, end = [0] * rank, [0] * rank
    n = len(axes)
    for i, a in enumerate(axes):
        begin[a], end[a] = int(pads[i]), int(pads[n + i])
    return begin, end


def _index_map(n: int, b: int, e: int, mode: str) -> np.ndarray:
    i = np.arange(-b, n + e, dtype=np.int64)
    if mode == "edge" or n == 1:
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return np.mod(i, n)
    period = 2 * (n - 1)
    m = np.mod(i, period)
    return np.where(m < n, m, period - m)


def _torch_padded(x: torch.Tensor, begin: list[int], end: list[int], mode: str) -> torch.Tensor | None:
    """``F.pad`` in reflect/replicate/circular mode when torch supports the layout, else None."""
    rank = x.dim()
    padded = [a for a in range(rank) if begin[a] or end[a]]
    k = rank - padded[0]
    if not x.is_floating_point() or k > 3 or rank - k not in (1, 2):
        return None
    for a in range(padded[0], rank):
        limit = x.shape[a] - 1 if mode == "reflect" else x.shape[a]
        if begin[a] > limit or end[a] > limit or x.shape[a] == 0:
            return None
    return F.pad(x, torch_pad(begin[-k:], end[-k:]), mode=_TORCH_MODES[mode])


def _pad(x: torch.Tensor, begin: list[int], end: list[int], mode: str, value: float) -> torch.Tensor:
    for a, (b, e) in enumerate(zip(begin, end)):
        if b < 0 or e < 0:
            start, stop = max(-b, 0), x.shape[a] - max(-e, 0)
            x = x.narrow(a, start, max(stop - start, 0))
    begin, end = [max(b, 0) for b in begin], [max(e, 0) for e in end]
    if not any(begin) and not any(end):
        return x
    if mode == "constant":
        return F.pad(x, torch_pad(begin, end), value=value if x.is_floating_point() else int(value))
    fast = _torch_padded(x, begin, end, mode)
    if fast is not None:
        return fast
    for a, (b, e) in enumerate(zip(begin, end)):
        if b or e:
            if x.shape[a] == 0:
                raise ValueError(f"Pad: cannot {mode}-pad an empty axis {a}")
            idx = torch.from_numpy(_index_map(x.shape[a], b, e, mode)).to(x.device)
            x = x.index_select(a, idx)
    return x


def _check_mode(ctx: ConvertContext) -> str:
    mode = ctx.attr_string("mode", "constant")
    allowed = ("constant", "reflect", "edge") + (("wrap",) if ctx.opset >= 19 else ())
    if mode not in allowed:
        raise ctx.unsupported(f"mode {mode!r} is not supported at opset {ctx.opset}")
    return mode


@converter("Pad", since=2, until=10)
def pad_attrs(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Pad (2-10): ``pads`` (negative crops), ``mode`` constant/reflect/edge, ``value``."""
    mode = _check_mode(ctx)
    pads = ctx.attr_ints("pads")
    if pads is None:
        raise ctx.unsupported("pads is required")
    value = ctx.attr_float("value", 0.0)

    def run(x: torch.Tensor) -> torch.Tensor:
        begin, end = _full_pads(pads, None, x.dim())
        return _pad(x, begin, end, mode, value)

    return Converted(run)


@converter("Pad", since=11)
def pad_inputs(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Pad (11+): ``pads``, ``constant_value`` and ``axes`` (18+) inputs, each constant or computed;
    ``mode`` constant/reflect/edge, wrap (19+)."""
    mode = _check_mode(ctx)
    consts: dict[int, list[float] | list[int] | None] = {}
    runtime: list[int] = []
    for pos in (1, 2, 3):
        if (pos == 3 and ctx.opset < 18) or not ctx.has_input(pos):
            consts[pos] = None
            continue
        arr = ctx.constant(pos)
        if arr is None:
            runtime.append(pos)
        else:
            consts[pos] = [float(v) for v in arr.reshape(-1)] if pos == 2 else ints_of(arr)
    if 2 in runtime and mode != "constant":
        runtime.remove(2)  # the value only matters in constant mode

    def run(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        got = dict(consts)
        for pos, v in zip(runtime, values):
            got[pos] = v.reshape(-1).tolist()
        value = got[2]
        begin, end = _full_pads(got[1] or [], got[3], x.dim())  # type: ignore[arg-type]
        return _pad(x, begin, end, mode, float(value[0]) if value else 0.0)

    return Converted(run, (0, *runtime))
