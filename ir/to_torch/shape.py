"""Data movement: Reshape, Flatten, Transpose, Concat, Split, Slice, Squeeze, Unsqueeze, Gather,
Expand, Shape, Identity, Dropout (inference) and Cast."""

from __future__ import annotations

import math
from collections.abc import Sequence

import onnx_ir
import torch

from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter, ints_of, torch_dtype

__all__ = [
    "cast",
    "concat",
    "dropout",
    "expand",
    "flatten",
    "gather",
    "identity",
    "reshape",
    "shape",
    "slice_attrs",
    "slice_inputs",
    "split_attrs",
    "split_inputs",
    "squeeze_attrs",
    "squeeze_inputs",
    "transpose",
    "unsqueeze_attrs",
    "unsqueeze_inputs",
]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@converter("Identity", since=1)
def identity(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Identity: the input itself (tensors only)."""
    return Converted(_identity)


@converter("Dropout", since=1)
def dropout(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Dropout at inference: the input; ``training_mode`` (12+) must be absent or constant false;
    the mask output is not supported."""
    ctx.reject_attrs(is_test=1)
    if ctx.has_input(2):
        mode = ctx.constant(2)
        if mode is None or bool(mode):
            raise ctx.unsupported("training_mode must be a constant false")
    return Converted(_identity)


def _shape_list(x: torch.Tensor, shape: Sequence[int], copy: Sequence[int]) -> list[int]:
    out = list(shape)
    for i in copy:
        out[i] = x.shape[i]
    return out


@converter("Reshape", since=5)
def reshape(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Reshape: ``allowzero`` (14+); 0 copies the input dim (unless ``allowzero``), -1 is inferred.

    With ``flexible_batch``, a literal leading dim equal to the data's leading dim recorded in the
    graph follows the actual leading dim (a batch-1 export runs on any batch)."""
    allowzero = bool(ctx.attr_int("allowzero", 0))
    shape = ints_of(ctx.constant(1))
    if shape is None:

        def dynamic(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            target = [int(v) for v in s.tolist()]
            if not allowzero:
                target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
            return x.reshape(target)

        return Converted(dynamic, (0, 1))
    copy = [i for i, v in enumerate(shape) if v == 0 and not allowzero]
    data_shape = ctx.static_shape(0)
    if (
        ctx.flexible_batch
        and shape
        and shape[0] > 0
        and data_shape
        and data_shape[0] == shape[0]
    ):
        copy.append(0)
    if not copy:
        return Converted(lambda x: x.reshape(shape))
    return Converted(lambda x: x.reshape(_shape_list(x, shape, copy)))


@converter("Flatten", since=1)
def flatten(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Flatten: ``axis`` (default 1, negative allowed): 2-D ``[prod(d[:axis]), prod(d[axis:])]``."""
    axis = ctx.attr_int("axis", 1)

    def run(x: torch.Tensor) -> torch.Tensor:
        a = axis % x.dim() if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))

    return Converted(run)


@converter("Transpose", since=1)
def transpose(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Transpose: ``perm`` (default: reversed dims)."""
    perm = ctx.attr_ints("perm")
    if perm is None:
        return Converted(lambda x: x.permute(tuple(reversed(range(x.dim())))))
    dims = tuple(perm)
    return Converted(lambda x: x.permute(dims))


@converter("Concat", since=4)
def concat(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Concat: ``axis`` (required, negative allowed from 11)."""
    axis = ctx.attr_int("axis", 0)
    return Converted(lambda *xs: torch.cat(xs, dim=axis), tuple(range(len(node.inputs))))


def _split_run(axis: int, split: list[int] | None, n_out: int, ceil_chunks: bool):
    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if split is not None:
            return torch.split(x, split, dim=axis)
        dim = x.shape[axis]
        size = math.ceil(dim / n_out) if ceil_chunks else dim // n_out
        sizes = [min(size, max(0, dim - i * size)) for i in range(n_out)]
        return torch.split(x, sizes, dim=axis)

    return run


@converter("Split", since=2, until=12)
def split_attrs(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Split (2 to 12): ``axis``, ``split`` attribute (default: equal parts)."""
    return Converted(
        _split_run(ctx.attr_int("axis", 0), ctx.attr_ints("split"), len(node.outputs), False), multi=True
    )


@converter("Split", since=13)
def split_inputs(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Split (13+): ``axis``, constant ``split`` input, ``num_outputs`` (18+; the last part may be
    smaller); default: equal parts."""
    split = ints_of(ctx.require_constant(1, "split")) if ctx.has_input(1) else None
    n_out = ctx.attr_int("num_outputs", len(node.outputs))
    return Converted(_split_run(ctx.attr_int("axis", 0), split, n_out, True), multi=True)


def _slicer(starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int] | None):
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if any(s == 0 for s in steps):
        raise ValueError("Slice step 0")
    spec = list(zip(axes, starts, ends, steps))

    def run(x: torch.Tensor) -> torch.Tensor:
        rank = x.dim()
        index: list[slice] = [slice(None)] * rank
        reverse: list[tuple[int, torch.Tensor]] = []
        for axis, start, end, step in spec:
            a = axis % rank
            lo, hi, st = slice(start, end, step).indices(x.shape[a])
            if st > 0:
                index[a] = slice(lo, hi, st)
            else:
                reverse.append((a, torch.arange(lo, hi, st, device=x.device)))
        y = x[tuple(index)]
        for a, idx in reverse:
            y = y.index_select(a, idx)
        return y

    return run


@converter("Slice", since=1, until=9)
def slice_attrs(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Slice (1 to 9): ``starts``, ``ends``, ``axes`` attributes."""
    starts, ends = ctx.attr_ints("starts"), ctx.attr_ints("ends")
    if starts is None or ends is None:
        raise ctx.unsupported("starts and ends are required")
    return Converted(_slicer(starts, ends, ctx.attr_ints("axes"), None))


@converter("Slice", since=10)
def slice_inputs(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Slice (10+): constant ``starts``, ``ends``, ``axes``, ``steps`` inputs (negative steps,
    clamping and INT_MAX/INT_MIN ends as ONNX defines them)."""
    starts = ints_of(ctx.require_constant(1, "starts"))
    ends = ints_of(ctx.require_constant(2, "ends"))
    axes = ints_of(ctx.require_constant(3, "axes")) if ctx.has_input(3) else None
    steps = ints_of(ctx.require_constant(4, "steps")) if ctx.has_input(4) else None
    assert starts is not None and ends is not None
    if steps is not None and 0 in steps:
        raise ctx.unsupported("a step of 0")
    return Converted(_slicer(starts, ends, axes, steps))


def _squeeze(axes: list[int] | None):
    if axes is None:
        return lambda x: x.squeeze()
    dims = tuple(axes)
    return lambda x: x.squeeze(dims)


@converter("Squeeze", since=1, until=12)
def squeeze_attrs(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Squeeze (1 to 12): ``axes`` attribute (default: every dim of size 1)."""
    return Converted(_squeeze(ctx.attr_ints("axes")))


@converter("Squeeze", since=13)
def squeeze_inputs(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Squeeze (13+): constant ``axes`` input (default: every dim of size 1)."""
    axes = ints_of(ctx.require_constant(1, "axes")) if ctx.has_input(1) else None
    return Converted(_squeeze(axes))


def _unsqueeze(axes: list[int]):
    n = len(axes)

    def run(x: torch.Tensor) -> torch.Tensor:
        rank = x.dim() + n
        for a in sorted(a % rank for a in axes):
            x = x.unsqueeze(a)
        return x

    return run


@converter("Unsqueeze", since=1, until=12)
def unsqueeze_attrs(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Unsqueeze (1 to 12): ``axes`` attribute (negative allowed from 11)."""
    axes = ctx.attr_ints("axes")
    if axes is None:
        raise ctx.unsupported("axes is required")
    return Converted(_unsqueeze(axes))


@converter("Unsqueeze", since=13)
def unsqueeze_inputs(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Unsqueeze (13+): constant ``axes`` input."""
    axes = ints_of(ctx.require_constant(1, "axes"))
    assert axes is not None
    return Converted(_unsqueeze(axes))


@converter("Gather", since=1)
def gather(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Gather: ``axis`` (default 0); indices of any rank, negative ones counted from the end."""
    axis = ctx.attr_int("axis", 0)
    const = ctx.constant(1)
    if const is not None and const.ndim == 0:
        i = int(const)
        return Converted(lambda x: x.select(axis, i))
    check_negative = const is None or bool((const < 0).any())

    def run(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        a = axis % x.dim()
        if check_negative:
            idx = torch.where(idx < 0, idx + x.shape[a], idx)
        if idx.dim() == 0:
            return x.select(a, int(idx))
        y = x.index_select(a, idx.reshape(-1).long())
        return y.reshape(x.shape[:a] + idx.shape + x.shape[a + 1 :])

    return Converted(run, (0, 1))


@converter("Expand", since=8)
def expand(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Expand: bidirectional broadcast of the input with ``shape`` (constant or computed)."""
    shape = ints_of(ctx.constant(1))
    if shape is None:
        return Converted(lambda x, s: x.expand(torch.broadcast_shapes(x.shape, tuple(s.tolist()))), (0, 1))
    return Converted(lambda x: x.expand(torch.broadcast_shapes(x.shape, tuple(shape))))


@converter("Shape", since=1)
def shape(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Shape: ``start``, ``end`` (15+); an int64 tensor on the input's device."""
    start, end = ctx.attr_int("start", 0), node.attributes.get("end")
    stop = None if end is None else end.as_int()
    return Converted(lambda x: torch.tensor(x.shape[start:stop], dtype=torch.int64, device=x.device))


_CASTABLE = (
    onnx_ir.DataType.FLOAT,
    onnx_ir.DataType.DOUBLE,
    onnx_ir.DataType.FLOAT16,
    onnx_ir.DataType.BFLOAT16,
    onnx_ir.DataType.INT8,
    onnx_ir.DataType.UINT8,
    onnx_ir.DataType.INT16,
    onnx_ir.DataType.INT32,
    onnx_ir.DataType.INT64,
    onnx_ir.DataType.BOOL,
)


@converter("Cast", since=6)
def cast(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Cast: ``to`` float32/float64/float16/bfloat16 (round to nearest even) or int8/uint8/int16/
    int32/int64/bool (float to int truncates); ``saturate`` only matters for float8 (unsupported)."""
    to = onnx_ir.DataType(ctx.attr_int("to", 0))
    if to not in _CASTABLE:
        raise ctx.unsupported(f"Cast to {to.name} is not supported")
    dtype = torch_dtype(to)
    return Converted(lambda x: x.to(dtype))
