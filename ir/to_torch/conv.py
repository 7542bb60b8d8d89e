"""Convolutions: Conv and ConvTranspose (1-D, 2-D, 3-D)."""

from __future__ import annotations

import onnx_ir
import torch
import torch.nn.functional as F

from qdq_passes.ir.to_torch._spatial import Window, split_same, torch_pad, window_attrs
from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter

__all__ = ["conv", "conv_transpose"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _spatial_rank(ctx: ConvertContext) -> int:
    kernel = ctx.attr_ints("kernel_shape")
    if kernel is not None:
        return len(kernel)
    for i in (1, 0):
        shape = ctx.static_shape(i)
        if shape is not None:
            return len(shape) - 2
    raise ctx.unsupported("the spatial rank is unknown (no kernel_shape and no weight or input shape)")


def _kernel(ctx: ConvertContext, n: int) -> list[int]:
    kernel = ctx.attr_ints("kernel_shape")
    if kernel is None:
        shape = ctx.static_shape(1)
        if shape is None or any(d is None for d in shape[2:]):
            raise ctx.unsupported("the kernel shape is unknown")
        kernel = [int(d) for d in shape[2:]]  # type: ignore[arg-type]
    return kernel


@converter("Conv", since=1)
def conv(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Conv: ``auto_pad`` (NOTSET, SAME_UPPER, SAME_LOWER, VALID), ``dilations``, ``group``,
    ``kernel_shape``, ``pads`` (asymmetric ones by an explicit zero pad), ``strides``; optional B."""
    n = _spatial_rank(ctx)
    if n not in _CONV:
        raise ctx.unsupported(f"{n}-D convolution is not supported")
    win = window_attrs(ctx, n, _kernel(ctx, n))
    op, group = _CONV[n], ctx.attr_int("group", 1)
    strides, dilations = win.strides, win.dilations
    if win.symmetric and n == 2 and win.kernel[1] == 1 and strides[1] == dilations[1] == 1 and win.begin[1] == 0:
        # A (k x 1) kernel: on an input of width 1 this is a 1-D convolution, which oneDNN runs
        # 2-4x faster than the 2-D one (measured on magika's 512x256x5x1 Conv, 1 thread).
        padding = win.begin

        def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
            if x.dim() == 4 and x.shape[3] == 1:
                y = F.conv1d(x.squeeze(3), w.squeeze(3), b, strides[:1], padding[:1], dilations[:1], group)
                return y.unsqueeze(3)
            return op(x, w, b, strides, padding, dilations, group)

    elif win.symmetric:
        padding = win.begin

        def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
            return op(x, w, b, strides, padding, dilations, group)

    else:
        zeros = (0,) * n

        def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
            begin, end = win.pads(x.shape[2:])
            return op(F.pad(x, torch_pad(begin, end)), w, b, strides, zeros, dilations, group)

    return Converted(fn, (0, 1, 2))


def _transpose_pads(
    win: Window, sizes: tuple[int, ...], output_padding: tuple[int, ...], output_shape: list[int] | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """ConvTranspose ``(begin, end)`` pads: given, or derived from ``output_shape`` / auto_pad."""
    if output_shape is None and win.auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return win.begin, win.end
    begin, end = [], []
    for i, (size, s, dk) in enumerate(zip(sizes, win.strides, win.effective_kernel)):
        out = output_shape[i] if output_shape is not None else size * s
        total = max(0, s * (size - 1) + output_padding[i] + dk - out)
        b, e = split_same(total, win.auto_pad)
        begin.append(b)
        end.append(e)
    return tuple(begin), tuple(end)


@converter("ConvTranspose", since=1)
def conv_transpose(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """ConvTranspose: ``auto_pad``, ``dilations``, ``group``, ``kernel_shape``, ``output_padding``,
    ``output_shape`` (pads derived as the spec says), ``pads`` (asymmetric ones by cropping),
    ``strides``; optional B."""
    n = _spatial_rank(ctx)
    if n not in _CONV_T:
        raise ctx.unsupported(f"{n}-D transposed convolution is not supported")
    win = window_attrs(ctx, n, _kernel(ctx, n))
    op, group = _CONV_T[n], ctx.attr_int("group", 1)
    strides, dilations = win.strides, win.dilations
    output_padding = tuple(ctx.attr_ints("output_padding", [0] * n) or ())
    output_shape = ctx.attr_ints("output_shape")
    if output_shape is not None and len(output_shape) != n:
        output_shape = output_shape[-n:]
    torch_ok = all(p < max(s, d) for p, s, d in zip(output_padding, strides, dilations))
    if win.symmetric and output_shape is None and torch_ok:
        padding = win.begin

        def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
            return op(x, w, b, strides, padding, output_padding, group, dilations)

        return Converted(fn, (0, 1, 2))

    zeros = (0,) * n

    def general(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        sizes = tuple(x.shape[2:])
        begin, end = _transpose_pads(win, sizes, output_padding, output_shape)
        y = op(x, w, None, strides, zeros, zeros, group, dilations)
        index: list[slice] = [slice(None), slice(None)]
        grow = []
        for i in range(n):
            full = y.shape[2 + i]
            stop = full + output_padding[i] - end[i]
            grow.append(max(0, stop - full))
            index.append(slice(begin[i], stop))
        if any(grow):
            y = F.pad(y, torch_pad([0] * n, grow))
        y = y[tuple(index)]
        if b is not None:
            y = y + b.reshape((1, -1) + (1,) * n)
        return y

    return Converted(general, (0, 1, 2))
