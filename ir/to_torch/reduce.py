"""Reductions: ReduceMean, ReduceSum, ReduceMax, ReduceMin (``axes`` as attribute or input)."""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir
import torch

from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter, ints_of

__all__: list[str] = []

_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "ReduceMean": torch.mean,
    "ReduceSum": torch.sum,
    "ReduceMax": torch.amax,
    "ReduceMin": torch.amin,
}


def _reduce(op_type: str, axes_from_input: bool) -> Callable:
    op = _OPS[op_type]

    def convert(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
        keepdims = bool(ctx.attr_int("keepdims", 1))
        if axes_from_input:
            axes = ints_of(ctx.constant(1)) if ctx.has_input(1) else None
            if ctx.has_input(1) and axes is None:
                raise ctx.unsupported("axes (input 1) must be a constant")
            noop = bool(ctx.attr_int("noop_with_empty_axes", 0))
        else:
            axes, noop = ctx.attr_ints("axes"), False
        if not axes:
            if noop:
                return Converted(lambda x: x)
            return Converted(lambda x: op(x, dim=tuple(range(x.dim())), keepdim=keepdims))
        dims = tuple(axes)
        return Converted(lambda x: op(x, dim=dims, keepdim=keepdims))

    kind = "input" if axes_from_input else "attribute"
    convert.__doc__ = f"{op_type}: ``axes`` ({kind}), ``keepdims``" + (", ``noop_with_empty_axes``." if axes_from_input else ".")
    return convert


for _op, _switch in (("ReduceMean", 18), ("ReduceSum", 13), ("ReduceMax", 18), ("ReduceMin", 18)):
    converter(_op, since=1, until=_switch - 1)(_reduce(_op, False))
    converter(_op, since=_switch)(_reduce(_op, True))
