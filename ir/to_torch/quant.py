"""Quantization ops: standard QuantizeLinear / DequantizeLinear and the ``qdq_passes`` quantizers.

Q follows the bit-exact recipe (``reference/qdq_semantics.md`` §6.2): true float32 division
``x / s``, ``torch.round`` (half to even), the zero point added after rounding, NaN to ``qmin``,
clamp. Q's codes are carried as float32 holding exact integers, with a straight-through rounding
gradient, so that gradients flow through Q -> DQ. DQ is ``(q - zp) * s`` with one rounding.
"""

from __future__ import annotations

from typing import Any

import onnx_ir
import torch

from qdq_passes.ir import dialect

from qdq_passes.ir.quant import qrange
from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter

__all__ = [
    "QUANTIZER_DOMAIN",
    "RoundHalfToEven",
    "QUANTIZER_OPS",
    "dequantize_linear",
    "ms_dequantize_linear",
    "ms_quantize_linear",
    "quantize_linear",
    "quantizer",
]

QUANTIZER_DOMAIN = dialect.DOMAIN
QUANTIZER_OPS = dialect.OPS

_FLOAT8 = {
    onnx_ir.DataType.FLOAT8E4M3FN: torch.float8_e4m3fn,
    onnx_ir.DataType.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
    onnx_ir.DataType.FLOAT8E5M2: torch.float8_e5m2,
    onnx_ir.DataType.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
}


class RoundHalfToEven(torch.autograd.Function):
    """Round half to even forward; straight-through (identity) backward."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        """``torch.round`` (ties to even)."""
        return torch.round(t)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        """The incoming gradient, unchanged."""
        return grad_output


def _broadcaster(axis: int, block_size: int):
    """A function shaping a scale or zero point to broadcast against ``x``."""

    def shape(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if block_size > 0:
            a = axis % x.dim()
            return p.repeat_interleave(block_size, dim=a).narrow(a, 0, x.shape[a])
        if p.numel() == 1:
            return p.reshape(())
        a = axis % x.dim()
        return p.reshape([-1 if i == a else 1 for i in range(x.dim())])

    return shape


def _qdtype(ctx: ConvertContext) -> onnx_ir.DataType:
    """QuantizeLinear's code type: the zero point's, ``output_dtype``, the output's, or UINT8."""
    node = ctx.node
    zp = node.inputs[2] if ctx.has_input(2) else None
    if zp is not None and zp.dtype is not None:
        return zp.dtype
    zp_arr = ctx.constant(2)
    if zp_arr is not None:
        return onnx_ir.DataType.from_numpy(zp_arr.dtype)
    output_dtype = ctx.attr_int("output_dtype", 0)
    if output_dtype:
        return onnx_ir.DataType(output_dtype)
    if node.outputs[0].dtype is not None:
        return node.outputs[0].dtype
    return onnx_ir.DataType.UINT8


def _divide(ctx: ConvertContext):
    """``x / s``: in float32 for float32 inputs; float16 inputs divide in float32 up to opset 21
    (or with ``precision=FLOAT``) and in float16 from 23 (the rule onnxruntime follows)."""
    fp16_native = ctx.opset >= 23 and ctx.attr_int("precision", 0) not in (onnx_ir.DataType.FLOAT,)

    def divide(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16 and fp16_native:
            return torch.div(x, s.to(torch.float16)).float()
        return torch.div(x.float(), s.float())

    return divide


def _quantize(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    qdtype = _qdtype(ctx)
    if qdtype == onnx_ir.DataType.INT32:
        raise ctx.unsupported("QuantizeLinear to int32")
    try:
        qmin, qmax = qrange(qdtype)
    except ValueError:
        raise ctx.unsupported(f"quantized type {qdtype.name}") from None
    bshape = _broadcaster(ctx.attr_int("axis", 1), ctx.attr_int("block_size", 0))
    divide = _divide(ctx)
    if qdtype in _FLOAT8:
        f8 = _FLOAT8[qdtype]
        saturate = bool(ctx.attr_int("saturate", 1))

        def run_f8(x: torch.Tensor, s: torch.Tensor, zp: torch.Tensor | None = None) -> torch.Tensor:
            v = divide(x, bshape(s, x))
            if saturate:
                v = torch.clamp(v, qmin, qmax)
            return v.to(f8).float()

        return Converted(run_f8, (0, 1, 2))
    lo, hi = float(qmin), float(qmax)

    def run(x: torch.Tensor, s: torch.Tensor, zp: torch.Tensor | None = None) -> torch.Tensor:
        v = RoundHalfToEven.apply(divide(x, bshape(s, x)))
        if zp is not None:
            v = v + bshape(zp, x).float()
        return torch.clamp(torch.nan_to_num(v, nan=lo), lo, hi)

    return Converted(run, (0, 1, 2))


def _dequantize(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    bshape = _broadcaster(ctx.attr_int("axis", 1), ctx.attr_int("block_size", 0))
    output_dtype = ctx.attr_int("output_dtype", 0)
    out = None if not output_dtype else onnx_ir.DataType(output_dtype)

    def run(q: torch.Tensor, s: torch.Tensor, zp: torch.Tensor | None = None) -> torch.Tensor:
        s_ = bshape(s, q)
        if q.is_floating_point():
            v = q.float() if zp is None else q.float() - bshape(zp, q).float()
        else:
            v = q.long() if zp is None else q.long() - bshape(zp, q).long()
            v = v.float()
        y = v * s_.float()
        target = s.dtype if out is None else (torch.float16 if out == onnx_ir.DataType.FLOAT16 else torch.float32)
        return y if target == torch.float32 else y.to(target)

    return Converted(run, (0, 1, 2))


@converter("QuantizeLinear", since=10)
def quantize_linear(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """QuantizeLinear (10+): ``axis`` (13+), ``block_size`` and ``output_dtype`` (21+), ``saturate``
    (float8, 19+), ``precision`` (float16 inputs, 23+); integer types up to 16 bits (int4 too) and
    float8. The codes come out as float32 (exact integers)."""
    return _quantize(node, ctx)


@converter("DequantizeLinear", since=10)
def dequantize_linear(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """DequantizeLinear (10+): ``axis`` (13+), ``block_size`` (21+), ``output_dtype`` (23+);
    integer (int32 included, subtracted in int64) or float codes, float8 codes; float16 scales give
    float16 output (one rounding)."""
    return _dequantize(node, ctx)


@converter("QuantizeLinear", since=1, domain="com.microsoft")
def ms_quantize_linear(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """com.microsoft QuantizeLinear: ``axis``; as the standard op at opset 13."""
    return _quantize(node, ctx)


@converter("DequantizeLinear", since=1, domain="com.microsoft")
def ms_dequantize_linear(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """com.microsoft DequantizeLinear: ``axis``; as the standard op at opset 13."""
    return _dequantize(node, ctx)


def quantizer(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """``qdq_passes`` quantizer ops: ``quantizer_module(node)`` applied to the first input (its
    attributes and scale / zero point are the callback's business)."""
    if ctx.quantizer_module is None:
        raise ctx.unsupported("quantizer nodes need a quantizer_module callback")
    module = ctx.quantizer_module(node)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"quantizer_module returned {type(module).__name__}, not a torch.nn.Module")
    return Converted(module, (0,), module=module)


for _op in QUANTIZER_OPS:
    converter(_op, since=1, domain=QUANTIZER_DOMAIN)(quantizer)

