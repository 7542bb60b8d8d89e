"""Element-wise arithmetic: Add, Sub, Mul, Div, Pow, Sqrt, Neg, Erf, Abs, Exp, Log, Reciprocal,
Min, Max; comparisons and logic: Equal, Less, LessOrEqual, Greater, GreaterOrEqual, Not, And, Or,
Where (numpy broadcasting, opset 7 on; the legacy ``broadcast``/``axis`` attributes of opsets 1 to
6 are not supported)."""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir
import torch

from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter

__all__: list[str] = []


def _binary(op_type: str, fn: Callable[..., torch.Tensor]) -> None:
    def convert(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
        return Converted(fn, (0, 1))

    convert.__doc__ = f"{op_type}: no attributes; numpy broadcasting."
    converter(op_type, since=7)(convert)


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point():
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    y = torch.pow(a, b)
    return y if y.dtype == a.dtype else y.to(a.dtype)


_binary("Equal", torch.eq)
_binary("Less", torch.lt)
_binary("Greater", torch.gt)
_binary("And", torch.logical_and)
_binary("Or", torch.logical_or)
_binary("Add", torch.add)
_binary("Sub", torch.sub)
_binary("Mul", torch.mul)
_binary("Div", _div)
_binary("Pow", _pow)


def _unary(op_type: str, fn: Callable[[torch.Tensor], torch.Tensor], since: int = 1) -> None:
    def convert(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
        return Converted(fn, (0,))

    convert.__doc__ = f"{op_type}: no attributes."
    converter(op_type, since=since)(convert)


_unary("Not", torch.logical_not)
_unary("Sqrt", torch.sqrt)
_unary("Neg", torch.neg)
_unary("Erf", torch.erf, since=9)
_unary("Abs", torch.abs)
_unary("Exp", torch.exp)
_unary("Log", torch.log)
_unary("Reciprocal", torch.reciprocal)


def _variadic(op_type: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    def convert(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
        n = len(node.inputs)

        def run(*xs: torch.Tensor) -> torch.Tensor:
            y = xs[0]
            for x in xs[1:]:
                y = fn(y, x)
            return y

        return Converted(run, tuple(range(n)))

    convert.__doc__ = f"{op_type}: variadic, numpy broadcasting."
    converter(op_type, since=8)(convert)


_variadic("Min", torch.minimum)
_variadic("Max", torch.maximum)


def _comparison(op_type: str, fn: Callable[..., torch.Tensor], since: int) -> None:
    def convert(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
        return Converted(fn, (0, 1))

    convert.__doc__ = f"{op_type}: no attributes; numpy broadcasting; a bool result."
    converter(op_type, since=since)(convert)


_comparison("LessOrEqual", torch.le, since=12)
_comparison("GreaterOrEqual", torch.ge, since=12)


@converter("Where", since=9)
def where(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Where: ``condition ? x : y`` with numpy broadcasting."""
    return Converted(torch.where, (0, 1, 2))
