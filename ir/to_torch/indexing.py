"""Index-based data movement: GatherElements, GatherND, ScatterND and TopK.

Negative indices count from the end of their axis. Everything is differentiable with respect to
the float data (and ScatterND's updates).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir
import torch

from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter

__all__ = ["gather_elements", "gather_nd", "scatter_nd", "topk_attr", "topk_inputs"]


def _wrap(idx: torch.Tensor, size: int | torch.Tensor) -> torch.Tensor:
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + size, idx)


@converter("GatherElements", since=11)
def gather_elements(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """GatherElements: ``axis`` (default 0, negative allowed)."""
    axis = ctx.attr_int("axis", 0)

    def run(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        a = axis % x.dim()
        return torch.gather(x, a, _wrap(idx, x.shape[a]))

    return Converted(run, (0, 1))


def _linear_index(idx: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Row-major offsets of the index tuples in ``idx[..., k]`` into a block of shape ``dims``."""
    sizes = torch.tensor(dims, dtype=torch.int64, device=idx.device)
    idx = _wrap(idx, sizes)
    strides = [math.prod(dims[j + 1 :]) for j in range(len(dims))]
    return (idx * torch.tensor(strides, dtype=torch.int64, device=idx.device)).sum(-1)


def _gather_nd(data: torch.Tensor, indices: torch.Tensor, batch_dims: int) -> torch.Tensor:
    k = indices.shape[-1]
    b = batch_dims
    inner, rest = tuple(data.shape[b : b + k]), tuple(data.shape[b + k :])
    n_batch = math.prod(data.shape[:b])
    flat = data.reshape(n_batch, math.prod(inner), *rest)
    lin = _linear_index(indices, inner).reshape(n_batch, -1)
    rows = torch.arange(n_batch, device=data.device).unsqueeze(1)
    return flat[rows, lin].reshape(*indices.shape[:-1], *rest)


@converter("GatherND", since=11)
def gather_nd(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """GatherND: ``batch_dims`` (12+, default 0)."""
    batch_dims = ctx.attr_int("batch_dims", 0) if ctx.opset >= 12 else 0
    return Converted(lambda x, i: _gather_nd(x, i, batch_dims), (0, 1))


_REDUCE = {"mul": "prod", "max": "amax", "min": "amin"}


def _scatter_nd(data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, reduction: str) -> torch.Tensor:
    k = indices.shape[-1]
    inner, rest = tuple(data.shape[:k]), tuple(data.shape[k:])
    flat = data.reshape(math.prod(inner), *rest)
    lin = _linear_index(indices, inner).reshape(-1)
    upd = updates.reshape(-1, *rest).to(data.dtype)
    if reduction == "none":
        out = flat.index_copy(0, lin, upd)
    elif reduction == "add":
        out = flat.index_add(0, lin, upd)
    else:
        index = lin.reshape(-1, *([1] * len(rest))).expand_as(upd)
        out = flat.scatter_reduce(0, index, upd, _REDUCE[reduction], include_self=True)
    return out.reshape(data.shape)


@converter("ScatterND", since=11)
def scatter_nd(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """ScatterND: ``reduction`` none (default), add, mul (16+), max, min (18+). With duplicate
    indices and reduction none the result is undefined (as in ONNX)."""
    reduction = ctx.attr_string("reduction", "none")
    allowed = ("none",) + (("add", "mul") if ctx.opset >= 16 else ()) + (("max", "min") if ctx.opset >= 18 else ())
    if reduction not in allowed:
        raise ctx.unsupported(f"reduction {reduction!r} is not supported at opset {ctx.opset}")
    return Converted(lambda x, i, u: _scatter_nd(x, i, u, reduction), (0, 1, 2))


def _topk(x: torch.Tensor, k: int, axis: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    a = axis % x.dim()
    values, indices = torch.sort(x, dim=a, descending=largest, stable=True)
    return values.narrow(a, 0, k), indices.narrow(a, 0, k)


@converter("TopK", since=1, until=9)
def topk_attr(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """TopK (1-9): ``k`` attribute, ``axis`` (default -1); the largest values, sorted; indices int64
    (ties: the lower index first, as onnxruntime)."""
    k, axis = ctx.attr_int("k", -1), ctx.attr_int("axis", -1)
    if k < 0:
        raise ctx.unsupported("attribute k is required")
    return Converted(lambda x: _topk(x, k, axis, True), multi=True)


@converter("TopK", since=10)
def topk_inputs(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """TopK (10+): ``k`` input (constant or computed), ``axis`` (default -1), ``largest`` and
    ``sorted`` (11+). Outputs are always sorted (``sorted=0`` leaves the order unspecified);
    ties: the lower index first, as onnxruntime."""
    axis = ctx.attr_int("axis", -1)
    largest = bool(ctx.attr_int("largest", 1)) if ctx.opset >= 11 else True
    k_arr = ctx.constant(1)
    if k_arr is not None:
        k = int(np.asarray(k_arr).reshape(-1)[0])
        return Converted(lambda x: _topk(x, k, axis, largest), multi=True)
    return Converted(lambda x, kk: _topk(x, int(kk.reshape(-1)[0].item()), axis, largest), (0, 1), multi=True)
