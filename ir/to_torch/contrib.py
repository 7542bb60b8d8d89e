"""onnxruntime contrib ops (domain ``com.microsoft``) that its graph optimizers write: Gelu,
FastGelu, BiasGelu, QuickGelu, FusedMatMul, SkipLayerNormalization."""

from __future__ import annotations

import math

import onnx_ir
import torch
import torch.nn.functional as F

from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter

__all__ = ["bias_gelu", "fast_gelu", "fused_matmul", "gelu", "quick_gelu", "skip_layer_normalization"]

MS = "com.microsoft"
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@converter("Gelu", since=1, domain=MS)
def gelu(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Gelu (com.microsoft): the erf form ``0.5 x (1 + erf(x / sqrt(2)))``, no attributes."""
    return Converted(F.gelu)


def _fast_gelu(x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if bias is not None:
        x = x + bias
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


@converter("FastGelu", since=1, domain=MS)
def fast_gelu(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """FastGelu: the tanh approximation ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` of
    ``x + bias`` (optional bias input), no attributes."""
    return Converted(_fast_gelu, (0, 1))


@converter("BiasGelu", since=1, domain=MS)
def bias_gelu(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """BiasGelu: erf Gelu of ``A + B`` (B broadcast), no attributes."""
    return Converted(lambda a, b: F.gelu(a + b), (0, 1))


@converter("QuickGelu", since=1, domain=MS)
def quick_gelu(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """QuickGelu: ``x * sigmoid(alpha * x)``, ``alpha`` (default 1.702)."""
    alpha = ctx.attr_float("alpha", 1.702)
    return Converted(lambda x: x * torch.sigmoid(x * alpha))


@converter("FusedMatMul", since=1, domain=MS)
def fused_matmul(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """FusedMatMul: ``alpha * op(A) @ op(B)`` (matmul broadcasting), ``alpha``, ``transA``,
    ``transB`` (transpose the last two axes); ``transBatchA``/``transBatchB`` must be 0."""
    ctx.reject_attrs(transBatchA=0, transBatchB=0)
    alpha = ctx.attr_float("alpha", 1.0)
    trans_a, trans_b = bool(ctx.attr_int("transA", 0)), bool(ctx.attr_int("transB", 0))

    def run(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if trans_a:
            if a.dim() < 2:
                raise ValueError("FusedMatMul transA needs A of rank >= 2")
            a = a.transpose(-1, -2)
        if trans_b:
            if b.dim() < 2:
                raise ValueError("FusedMatMul transB needs B of rank >= 2")
            b = b.transpose(-1, -2)
        y = torch.matmul(a, b)
        return y if alpha == 1.0 else y * alpha

    return Converted(run, (0, 1))


@converter("SkipLayerNormalization", since=1, domain=MS)
def skip_layer_normalization(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """SkipLayerNormalization: ``s = input + skip (+ bias)``; ``output = LayerNorm(s) * gamma
    (+ beta)`` over the last axis; ``epsilon`` (default 1e-12, as onnxruntime). Outputs: output,
    mean, inv_std_var (both ``[..., 1]``) and input_skip_bias_sum ``s``, any subset."""
    eps = ctx.attr_float("epsilon", 1e-12)
    n_out = len(node.outputs)
    stats = n_out > 1 and any(
        out.name and (out.uses() or out.is_graph_output()) for out in node.outputs[1:3]
    )

    def run(
        x: torch.Tensor,
        skip: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor | None,
        bias: torch.Tensor | None,
    ) -> list[torch.Tensor | None]:
        s = x + skip
        if bias is not None:
            s = s + bias
        y = F.layer_norm(s, s.shape[-1:], gamma, beta, eps)
        mean = inv_std = None
        if stats:
            var, mean = torch.var_mean(s, dim=-1, keepdim=True, correction=0)
            inv_std = torch.rsqrt(var + eps)
        return [y, mean, inv_std, s][:n_out]

    return Converted(run, (0, 1, 2, 3, 4), multi=True)
