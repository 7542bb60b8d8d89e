"""Normalizations (inference): BatchNormalization, LayerNormalization, InstanceNormalization."""

from __future__ import annotations

import onnx_ir
import torch
import torch.nn.functional as F

from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter

__all__ = ["batch_normalization", "instance_normalization", "layer_normalization"]


@converter("BatchNormalization", since=7)
def batch_normalization(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """BatchNormalization (inference): ``epsilon``; ``momentum`` is ignored; ``training_mode=1``
    and (opset 7) ``spatial=0`` are not supported; only the first output."""
    ctx.reject_attrs(training_mode=0, spatial=1)
    eps = ctx.attr_float("epsilon", 1e-5)

    def run(x: torch.Tensor, scale: torch.Tensor, b: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, mean, var, scale, b, False, 0.0, eps)

    return Converted(run, (0, 1, 2, 3, 4))


@converter("LayerNormalization", since=17)
def layer_normalization(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """LayerNormalization: ``axis`` (default -1), ``epsilon`` (1e-5); ``stash_type`` is moot in
    float32; optional B; only the first output (Mean and InvStdDev are not supported)."""
    axis, eps = ctx.attr_int("axis", -1), ctx.attr_float("epsilon", 1e-5)

    def run(x: torch.Tensor, scale: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape[axis % x.dim():]
        if scale.shape == shape and (b is None or b.shape == shape):
            return F.layer_norm(x, shape, scale, b, eps)
        y = F.layer_norm(x, shape, None, None, eps) * scale
        return y if b is None else y + b

    return Converted(run, (0, 1, 2))


@converter("InstanceNormalization", since=6)
def instance_normalization(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """InstanceNormalization: ``epsilon`` (1e-5); per-channel scale and B."""
    eps = ctx.attr_float("epsilon", 1e-5)

    def run(x: torch.Tensor, scale: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, None, None, scale, b, True, 0.0, eps)

    return Converted(run, (0, 1, 2))
