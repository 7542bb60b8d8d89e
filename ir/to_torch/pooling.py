"""Pooling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool (1-D, 2-D, 3-D)."""

from __future__ import annotations

import math

import onnx_ir
import torch
import torch.nn.functional as F

from qdq_passes.ir.to_torch._spatial import Window, torch_pad, window_attrs
from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter

__all__ = ["average_pool", "global_average_pool", "global_max_pool", "max_pool"]

_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _layout(win: Window, sizes: tuple[int, ...], ceil_mode: bool) -> tuple[tuple[int, ...], tuple[int, ...], list[int]]:
    """``(begin, end, extra)``: the pads and the further end padding that makes a floor-mode
    pooling produce ONNX's output size (``ceil_mode``: a last window must start inside the input
    or its begin pad, as onnxruntime does)."""
    begin, end = win.pads(sizes)
    extra = []
    for size, b, e, s, dk in zip(sizes, begin, end, win.strides, win.effective_kernel):
        span = size + b + e - dk
        out = (math.ceil(span / s) if ceil_mode else span // s) + 1
        if ceil_mode and (out - 1) * s >= size + b:
            out -= 1
        extra.append(max(0, (out - 1) * s + dk - (size + b + e)))
    return begin, end, extra


def _fast(win: Window, ceil_mode: bool) -> bool:
    """Whether torch's own padding gives ONNX's result."""
    return win.symmetric and not ceil_mode and all(2 * p <= k for p, k in zip(win.begin, win.kernel))


@converter("MaxPool", since=1)
def max_pool(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """MaxPool: ``auto_pad``, ``ceil_mode``, ``dilations``, ``kernel_shape``, ``pads``
    (asymmetric: explicit -inf pad), ``strides``; ``storage_order`` is moot; the Indices output is
    not supported."""
    kernel = ctx.attr_ints("kernel_shape")
    if kernel is None or len(kernel) not in _MAX:
        raise ctx.unsupported(f"kernel_shape {kernel} is not supported")
    n = len(kernel)
    win = window_attrs(ctx, n)
    ceil_mode = bool(ctx.attr_int("ceil_mode", 0))
    op = _MAX[n]
    k, s, d = win.kernel, win.strides, win.dilations
    if _fast(win, ceil_mode):
        p = win.begin
        return Converted(lambda x: op(x, k, s, p, d))
    zeros = (0,) * n

    def run(x: torch.Tensor) -> torch.Tensor:
        begin, end, extra = _layout(win, tuple(x.shape[2:]), ceil_mode)
        pads = torch_pad(begin, [e + x_ for e, x_ in zip(end, extra)])
        return op(F.pad(x, pads, value=-math.inf), k, s, zeros, d)

    return Converted(run)


def _sum_pool(x: torch.Tensor, k: tuple[int, ...], s: tuple[int, ...]) -> torch.Tensor:
    """Window sums (no padding)."""
    if x.dim() == 3:
        return F.avg_pool2d(x.unsqueeze(2), (1,) + k, (1,) + s, 0, False, True, 1).squeeze(2)
    return _AVG[x.dim() - 2](x, k, s, 0, False, True, 1)


@converter("AveragePool", since=1)
def average_pool(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """AveragePool: ``auto_pad``, ``ceil_mode``, ``count_include_pad``, ``kernel_shape``, ``pads``,
    ``strides``; ``dilations`` other than 1 are not supported. The divisor counts the input and,
    with ``count_include_pad``, the declared pads (never the ceil-mode overhang)."""
    kernel = ctx.attr_ints("kernel_shape")
    if kernel is None or len(kernel) not in _AVG:
        raise ctx.unsupported(f"kernel_shape {kernel} is not supported")
    n = len(kernel)
    win = window_attrs(ctx, n)
    if any(d != 1 for d in win.dilations):
        raise ctx.unsupported(f"dilations {list(win.dilations)} are not supported")
    ceil_mode = bool(ctx.attr_int("ceil_mode", 0))
    include = bool(ctx.attr_int("count_include_pad", 0))
    k, s = win.kernel, win.strides
    if _fast(win, ceil_mode):
        p, op = win.begin, _AVG[n]
        return Converted(lambda x: op(x, k, s, p, False, include))
    counts: dict[tuple, torch.Tensor] = {}

    def run(x: torch.Tensor) -> torch.Tensor:
        sizes = tuple(x.shape[2:])
        begin, end, extra = _layout(win, sizes, ceil_mode)
        full_end = [e + x_ for e, x_ in zip(end, extra)]
        total = _sum_pool(F.pad(x, torch_pad(begin, full_end)), k, s)
        key = (sizes, x.device, x.dtype)
        count = counts.get(key)
        if count is None:
            if include:
                ones = torch.ones((1, 1) + tuple(sz + b + e for sz, b, e in zip(sizes, begin, end)), dtype=x.dtype, device=x.device)
                mask = F.pad(ones, torch_pad([0] * n, extra))
            else:
                ones = torch.ones((1, 1) + sizes, dtype=x.dtype, device=x.device)
                mask = F.pad(ones, torch_pad(begin, full_end))
            count = counts[key] = _sum_pool(mask, k, s)
        return total / count

    return Converted(run)


@converter("GlobalAveragePool", since=1)
def global_average_pool(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """GlobalAveragePool: mean over the spatial dims, kept."""
    return Converted(lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True))


@converter("GlobalMaxPool", since=1)
def global_max_pool(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """GlobalMaxPool: max over the spatial dims, kept."""
    return Converted(lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True))
