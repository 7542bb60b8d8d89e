"""More reductions: ReduceL1, ReduceL2, ReduceSumSquare, ReduceLogSum, ReduceLogSumExp, ReduceProd
(``axes`` attribute before opset 18, input from 18, constant or computed), and Einsum."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx_ir
import torch

from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter, ints_of

__all__ = ["einsum"]

Dims = tuple[int, ...]


def _l2(x: torch.Tensor, dims: Dims, keepdim: bool) -> torch.Tensor:
    if x.is_floating_point():
        return torch.linalg.vector_norm(x, 2, dim=dims, keepdim=keepdim)
    return (x * x).sum(dim=dims, keepdim=keepdim).to(torch.float64).sqrt().to(x.dtype)


def _prod(x: torch.Tensor, dims: Dims, keepdim: bool) -> torch.Tensor:
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = x.prod(d, keepdim=keepdim)
    return x


_OPS: dict[str, Callable[[torch.Tensor, Dims, bool], torch.Tensor]] = {
    "ReduceL1": lambda x, d, k: x.abs().sum(dim=d, keepdim=k),
    "ReduceL2": _l2,
    "ReduceSumSquare": lambda x, d, k: (x * x).sum(dim=d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: torch.log(x.sum(dim=d, keepdim=k)),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
    "ReduceProd": _prod,
}


# With ``noop_with_empty_axes`` and no axes, onnxruntime reduces over no axis: every element alone
# (so ReduceL1/L2 give |x|, ReduceSumSquare x*x, ReduceLogSum log x, the others x).
_NOOP: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "ReduceL1": torch.abs,
    "ReduceL2": torch.abs,
    "ReduceSumSquare": lambda x: x * x,
    "ReduceLogSum": torch.log,
    "ReduceLogSumExp": lambda x: x,
    "ReduceProd": lambda x: x,
}


def _apply(op_type: str, x: torch.Tensor, axes: Sequence[int] | None, keepdims: bool, noop: bool) -> torch.Tensor:
    if not axes:
        return _NOOP[op_type](x) if noop else _OPS[op_type](x, tuple(range(x.dim())), keepdims)
    return _OPS[op_type](x, tuple(axes), keepdims)


def _reduce(op_type: str, axes_from_input: bool) -> Callable[[onnx_ir.Node, ConvertContext], Converted]:
    def convert(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
        keepdims = bool(ctx.attr_int("keepdims", 1))
        if not axes_from_input:
            axes = ctx.attr_ints("axes")
            return Converted(lambda x: _apply(op_type, x, axes, keepdims, False))
        noop = bool(ctx.attr_int("noop_with_empty_axes", 0))
        if ctx.has_input(1) and ctx.constant(1) is None:
            return Converted(
                lambda x, a: _apply(op_type, x, [int(v) for v in a.reshape(-1).tolist()], keepdims, noop), (0, 1)
            )
        axes = ints_of(ctx.constant(1)) if ctx.has_input(1) else None
        return Converted(lambda x: _apply(op_type, x, axes, keepdims, noop))

    kind = "input (constant or computed)" if axes_from_input else "attribute"
    extra = ", ``noop_with_empty_axes``" if axes_from_input else ""
    convert.__doc__ = f"{op_type}: ``axes`` ({kind}; absent or empty: all), ``keepdims``{extra}."
    return convert


for _op in _OPS:
    converter(_op, since=1, until=17)(_reduce(_op, False))
    converter(_op, since=18)(_reduce(_op, True))


@converter("Einsum", since=12)
def einsum(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Einsum: ``equation`` (explicit ``->`` or implicit output, ``...`` broadcasting), via
    ``torch.einsum``."""
    equation = ctx.attr_string("equation", "").replace(" ", "")
    if not equation:
        raise ctx.unsupported("equation is required")
    return Converted(lambda *xs: torch.einsum(equation, *xs), tuple(range(len(node.inputs))))
