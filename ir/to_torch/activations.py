"""Activations: Relu, LeakyRelu, PRelu, Clip, Sigmoid, Tanh, HardSigmoid, HardSwish, Gelu, Elu,
Softplus, Softmax, LogSoftmax."""

from __future__ import annotations

import functools
import math

import onnx_ir
import torch
import torch.nn.functional as F

from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter

__all__ = [
    "clip_attrs",
    "clip_inputs",
    "elu",
    "gelu",
    "hard_sigmoid",
    "hard_swish",
    "leaky_relu",
    "log_softmax",
    "log_softmax_legacy",
    "prelu",
    "relu",
    "sigmoid",
    "softmax_legacy",
    "softmax",
    "softplus",
    "tanh",
]


@converter("Relu", since=1)
def relu(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Relu: no attributes."""
    return Converted(torch.relu)


@converter("Sigmoid", since=1)
def sigmoid(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Sigmoid: no attributes."""
    return Converted(torch.sigmoid)


@converter("Tanh", since=1)
def tanh(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Tanh: no attributes."""
    return Converted(torch.tanh)


@converter("LeakyRelu", since=6)
def leaky_relu(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """LeakyRelu: ``alpha`` (default 0.01)."""
    return Converted(functools.partial(F.leaky_relu, negative_slope=ctx.attr_float("alpha", 0.01)))


def _prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, x * slope, x)


@converter("PRelu", since=7)
def prelu(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """PRelu: slope broadcast against X (unidirectional); ``x < 0 ? slope * x : x``."""
    return Converted(_prelu, (0, 1))


@converter("Elu", since=6)
def elu(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Elu: ``alpha`` (default 1)."""
    return Converted(functools.partial(F.elu, alpha=ctx.attr_float("alpha", 1.0)))


@converter("Softplus", since=1)
def softplus(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Softplus: ``log(exp(x) + 1)``, no attributes."""
    return Converted(lambda x: torch.log(torch.exp(x) + 1))


@converter("Clip", since=6, until=10)
def clip_attrs(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Clip (6 to 10): ``min``, ``max`` attributes (defaults: no bound)."""
    lo = ctx.attr_float("min", -math.inf)
    hi = ctx.attr_float("max", math.inf)
    return Converted(_clamp(lo if lo != -math.inf else None, hi if hi != math.inf else None))


def _clamp(lo: float | None, hi: float | None):
    if lo is None and hi is None:
        return lambda x: x
    return lambda x: torch.clamp(x, lo, hi)


@converter("Clip", since=11)
def clip_inputs(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Clip (11+): optional ``min``/``max`` inputs (constant ones are folded into scalars)."""
    lo, hi = ctx.constant(1), ctx.constant(2)
    if (ctx.has_input(1) and lo is None) or (ctx.has_input(2) and hi is None):

        def run(x: torch.Tensor, lo_t: torch.Tensor | None, hi_t: torch.Tensor | None) -> torch.Tensor:
            return torch.clamp(x, lo_t, hi_t)

        return Converted(run, (0, 1, 2))
    return Converted(_clamp(None if lo is None else lo.item(), None if hi is None else hi.item()))


@converter("HardSigmoid", since=6)
def hard_sigmoid(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """HardSigmoid: ``alpha`` (0.2), ``beta`` (0.5); ``clamp(alpha * x + beta, 0, 1)``."""
    alpha, beta = ctx.attr_float("alpha", 0.2), ctx.attr_float("beta", 0.5)
    return Converted(lambda x: torch.clamp(x * alpha + beta, 0.0, 1.0))


_SIXTH = float(torch.tensor(1 / 6, dtype=torch.float32))


@converter("HardSwish", since=14)
def hard_swish(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """HardSwish: ``x * clamp(x / 6 + 0.5, 0, 1)`` (as ONNX defines it, with alpha = 1/6 in fp32)."""
    return Converted(lambda x: x * torch.clamp(x * _SIXTH + 0.5, 0.0, 1.0))


@converter("Gelu", since=20)
def gelu(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Gelu: ``approximate`` ("none" or "tanh")."""
    approximate = ctx.attr_string("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.unsupported(f"approximate={approximate!r} is not supported")
    return Converted(functools.partial(F.gelu, approximate=approximate))


def _flat_softmax(fn, axis: int):
    def run(x: torch.Tensor) -> torch.Tensor:
        a = axis % x.dim() if x.dim() else 0
        shape = x.shape
        return fn(x.reshape(math.prod(shape[:a]), -1), dim=1).reshape(shape)

    return run


@converter("Softmax", since=1, until=12)
def softmax_legacy(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Softmax (1 to 12): ``axis`` (default 1), over the input flattened to 2-D at ``axis``."""
    return Converted(_flat_softmax(torch.softmax, ctx.attr_int("axis", 1)))


@converter("Softmax", since=13)
def softmax(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Softmax (13+): ``axis`` (default -1)."""
    return Converted(functools.partial(torch.softmax, dim=ctx.attr_int("axis", -1)))


@converter("LogSoftmax", since=1, until=12)
def log_softmax_legacy(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """LogSoftmax (1 to 12): ``axis`` (default 1), flattened to 2-D at ``axis``."""
    return Converted(_flat_softmax(torch.log_softmax, ctx.attr_int("axis", 1)))


@converter("LogSoftmax", since=13)
def log_softmax(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """LogSoftmax (13+): ``axis`` (default -1)."""
    return Converted(functools.partial(torch.log_softmax, dim=ctx.attr_int("axis", -1)))
