"""The ``com.microsoft`` ops onnxruntime's graph optimizers write into saved models: Gelu, FastGelu,
BiasGelu, QuickGelu, FusedMatMul, SkipLayerNormalization."""

from __future__ import annotations

import math

import onnx_ir
import torch

from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter

__all__ = ["bias_gelu", "fast_gelu", "fused_matmul", "gelu", "quick_gelu", "skip_layer_normalization"]

MS = "com.microsoft"


def _erf_gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))


@converter("Gelu", domain=MS)
def gelu(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Gelu: ``0.5 x (1 + erf(x / sqrt 2))``."""
    return Converted(_erf_gelu)


@converter("BiasGelu", domain=MS)
def bias_gelu(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """BiasGelu: the erf Gelu of ``A + B``."""
    return Converted(lambda a, b: _erf_gelu(a + b), (0, 1))


@converter("FastGelu", domain=MS)
def fast_gelu(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """FastGelu: the tanh approximation of Gelu of ``X (+ bias)``."""
    k = math.sqrt(2.0 / math.pi)

    def run(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if bias is not None:
            x = x + bias
        return 0.5 * x * (1.0 + torch.tanh(k * (x + 0.044715 * x * x * x)))

    return Converted(run, (0, 1))


@converter("QuickGelu", domain=MS)
def quick_gelu(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """QuickGelu: ``x sigmoid(alpha x)``, ``alpha`` default 1.702."""
    alpha = ctx.attr_float("alpha", 1.702)
    return Converted(lambda x: x * torch.sigmoid(alpha * x))


@converter("FusedMatMul", domain=MS)
def fused_matmul(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """FusedMatMul: ``alpha op(A) @ op(B)``, ``transA``/``transB`` transposing the last two dims;
    ``transBatchA``/``transBatchB`` refused."""
    ctx.reject_attrs(transBatchA=0, transBatchB=0)
    alpha = ctx.attr_float("alpha", 1.0)
    trans_a, trans_b = bool(ctx.attr_int("transA", 0)), bool(ctx.attr_int("transB", 0))

    def run(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if trans_a:
            a = a.transpose(-1, -2)
        if trans_b:
            b = b.transpose(-1, -2)
        y = torch.matmul(a, b)
        return y if alpha == 1.0 else y * alpha

    return Converted(run, (0, 1))


@converter("SkipLayerNormalization", domain=MS)
def skip_layer_normalization(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """SkipLayerNormalization: ``s = input + skip (+ bias)`` normalised over the last axis, times
    ``gamma`` (+ ``beta``); outputs 0 and 3 (``s``) are supported, the mean and inverse standard
    deviation (1, 2) are not."""
    if any(i < len(node.outputs) and node.outputs[i].name and (node.outputs[i].uses() or node.outputs[i].is_graph_output())
           for i in (1, 2)):
        raise ctx.unsupported("the mean and inv_std_var outputs")
    eps = ctx.attr_float("epsilon", 1e-12)

    def run(x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None,
            bias: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        s = x + skip
        if bias is not None:
            s = s + bias
        y = torch.nn.functional.layer_norm(s, (s.shape[-1],), gamma, beta, eps)
        return (y, None, None, s)[: len(node.outputs)]

    return Converted(run, (0, 1, 2, 3, 4), multi=True)
