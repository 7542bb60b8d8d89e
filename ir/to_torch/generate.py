"""Tensor generators and scans: ConstantOfShape, Range, Tile, OneHot, Trilu and CumSum.

Shape-like inputs (shape, repeats, depth, k, axis, start/limit/delta) may be constants or computed
at run time (read with ``.tolist()``). Outputs are created on the device of an input.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir
import torch

from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter, ints_of, torch_dtype

__all__ = ["constant_of_shape", "cumsum", "one_hot", "range_", "tile", "trilu"]


def _scalar_int(v: torch.Tensor) -> int:
    return int(v.reshape(-1)[0].item())


@converter("ConstantOfShape", since=9)
def constant_of_shape(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """ConstantOfShape: ``value`` (a one-element tensor; its dtype is the output's; default float32
    zero); the shape input constant or computed."""
    attr = node.attributes.get("value")
    dtype, fill = torch.float32, 0.0
    if attr is not None:
        tensor = attr.as_tensor()
        try:
            dtype = torch_dtype(tensor.dtype)
        except KeyError:
            raise ctx.unsupported(f"value of dtype {tensor.dtype.name} is not supported") from None
        values = tensor.numpy().reshape(-1)
        if values.size != 1:
            raise ctx.unsupported("value must have exactly one element")
        fill = values[0].item()
    shape = ints_of(ctx.constant(0))
    if shape is not None:
        return Converted(lambda s: torch.full(shape, fill, dtype=dtype, device=s.device))
    return Converted(lambda s: torch.full([int(v) for v in s.tolist()], fill, dtype=dtype, device=s.device))


def _range_array(start: np.ndarray, limit: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """onnxruntime's Range: ``ceil((limit - start) / delta)`` values accumulated by repeated
    addition in the input dtype (so float outputs match it bit for bit)."""
    dtype = start.dtype
    s, lim, d = start.reshape(()), limit.reshape(()).astype(dtype), delta.reshape(()).astype(dtype)
    if d == 0:
        raise ValueError("Range: delta is zero")
    if np.issubdtype(dtype, np.floating):
        n = max(math.ceil(float(lim - s) / float(d)), 0)
        steps = np.full(n, d, dtype)
        if n:
            steps[0] = s
        return np.add.accumulate(steps, dtype=dtype)
    n = max(math.ceil((int(lim) - int(s)) / int(d)), 0)
    return (int(s) + np.arange(n, dtype=np.int64) * int(d)).astype(dtype)


@converter("Range", since=11)
def range_(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Range: start, limit, delta scalars (constant or computed), float/double/int16/int32/int64;
    the output keeps the inputs' dtype."""
    consts = [ctx.constant(i) for i in range(3)]
    if all(c is not None for c in consts):
        values = _range_array(*consts)  # type: ignore[arg-type]
        return Converted(lambda s: torch.from_numpy(values).to(s.device))

    def run(start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        arrays = [t.detach().cpu().numpy() for t in (start, limit, delta)]
        return torch.from_numpy(_range_array(*arrays)).to(start.device)

    return Converted(run, (0, 1, 2))


@converter("Tile", since=6)
def tile(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Tile: ``repeats`` (constant or computed), one per input dim."""
    repeats = ints_of(ctx.constant(1))
    if repeats is not None:
        return Converted(lambda x: x.repeat(*repeats) if repeats else x)
    return Converted(lambda x, r: x.repeat(*[int(v) for v in r.tolist()]), (0, 1))


def _one_hot(axis: int, depth: int, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    idx = indices.to(torch.int64)  # float indices truncate, as onnxruntime casts them
    idx = torch.where(idx < 0, idx + depth, idx)
    rank = idx.dim() + 1
    a = axis % rank
    shape = [1] * rank
    shape[a] = depth
    hot = idx.unsqueeze(a) == torch.arange(depth, device=idx.device).reshape(shape)
    values = values.reshape(-1)
    return torch.where(hot, values[1], values[0])


@converter("OneHot", since=9)
def one_hot(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """OneHot: ``axis`` (default -1); depth (constant or computed, int or float); values
    ``[off, on]`` (their dtype is the output's); negative indices count from ``depth``, out-of-range
    ones give all ``off``."""
    axis = ctx.attr_int("axis", -1)
    depth_arr = ctx.constant(1)
    if depth_arr is not None:
        depth = int(np.asarray(depth_arr).reshape(-1)[0])
        return Converted(lambda i, v: _one_hot(axis, depth, i, v), (0, 2))
    return Converted(lambda i, d, v: _one_hot(axis, _scalar_int(d), i, v), (0, 1, 2))


@converter("Trilu", since=14)
def trilu(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Trilu: ``upper`` (default 1); ``k`` input (constant or computed, default 0)."""
    op = torch.triu if ctx.attr_int("upper", 1) else torch.tril
    if not ctx.has_input(1):
        return Converted(lambda x: op(x, 0))
    k = ctx.constant(1)
    if k is not None:
        diagonal = int(np.asarray(k).reshape(-1)[0])
        return Converted(lambda x: op(x, diagonal))
    return Converted(lambda x, kk: op(x, _scalar_int(kk)), (0, 1))


def _cumsum(x: torch.Tensor, axis: int, exclusive: bool, reverse: bool) -> torch.Tensor:
    a = axis % x.dim()
    if reverse:
        x = x.flip(a)
    if exclusive:
        n = x.shape[a]
        head = torch.zeros_like(x.narrow(a, 0, min(n, 1)))
        y = torch.cat([head, torch.cumsum(x.narrow(a, 0, max(n - 1, 0)), a, dtype=x.dtype)], a)
    else:
        y = torch.cumsum(x, a, dtype=x.dtype)
    return y.flip(a) if reverse else y


@converter("CumSum", since=11)
def cumsum(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """CumSum: ``exclusive``, ``reverse``; the axis input constant or computed (negative allowed)."""
    exclusive, reverse = bool(ctx.attr_int("exclusive", 0)), bool(ctx.attr_int("reverse", 0))
    axis = ctx.constant(1)
    if axis is not None:
        a = int(np.asarray(axis).reshape(-1)[0])
        return Converted(lambda x: _cumsum(x, a, exclusive, reverse))
    return Converted(lambda x, ax: _cumsum(x, _scalar_int(ax), exclusive, reverse), (0, 1))
