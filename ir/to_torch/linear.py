"""Matrix products: Gemm and MatMul."""

from __future__ import annotations

import onnx_ir
import torch
import torch.nn.functional as F

from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter

__all__ = ["gemm", "matmul"]


@converter("Gemm", since=7)
def gemm(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Gemm: ``alpha``, ``beta``, ``transA``, ``transB``; optional C (unidirectional broadcast).

    ``transB=1, alpha=beta=1`` runs as ``F.linear``; the rest as ``addmm``/``mm``."""
    alpha, beta = ctx.attr_float("alpha", 1.0), ctx.attr_float("beta", 1.0)
    trans_a, trans_b = ctx.attr_int("transA", 0), ctx.attr_int("transB", 0)
    if not trans_a and trans_b and alpha == 1.0 and beta == 1.0:
        return Converted(F.linear, (0, 1, 2))

    def fn(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if trans_a:
            a = a.t()
        if trans_b:
            b = b.t()
        if c is None or beta == 0.0:
            y = torch.mm(a, b)
            return y if alpha == 1.0 else y * alpha
        return torch.addmm(c, a, b, beta=beta, alpha=alpha)

    return Converted(fn, (0, 1, 2))


@converter("MatMul", since=1)
def matmul(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """MatMul: numpy ``matmul`` semantics (batched, 1-D operands promoted), as ``torch.matmul``."""
    return Converted(torch.matmul, (0, 1))
