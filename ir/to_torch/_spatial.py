"""Helpers shared by the convolution and pooling converters: padding and window attributes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from qdq_passes.ir.to_torch.registry import ConvertContext

__all__ = ["Window", "split_same", "torch_pad", "window_attrs"]


@dataclasses.dataclass(frozen=True)
class Window:
    """Kernel, strides, dilations and padding of a spatial op (``n`` spatial dims)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    auto_pad: str
    begin: tuple[int, ...]
    end: tuple[int, ...]

    @property
    def effective_kernel(self) -> tuple[int, ...]:
        """``(k - 1) * d + 1`` per dim."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations))

    @property
    def symmetric(self) -> bool:
        """Static pads equal at both ends."""
        return self.auto_pad in ("NOTSET", "VALID") and self.begin == self.end

    def pads(self, sizes: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(begin, end)`` pads for input spatial ``sizes`` (auto_pad SAME resolved on them)."""
        if self.auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
            return self.begin, self.end
        begin, end = [], []
        for size, s, dk in zip(sizes, self.strides, self.effective_kernel):
            total = max(0, (math.ceil(size / s) - 1) * s + dk - size)
            b, e = split_same(total, self.auto_pad)
            begin.append(b)
            end.append(e)
        return tuple(begin), tuple(end)


def split_same(total: int, auto_pad: str) -> tuple[int, int]:
    """Split SAME padding: the odd pad goes at the end (SAME_UPPER) or the beginning (SAME_LOWER)."""
    small, big = total // 2, total - total // 2
    return (small, big) if auto_pad == "SAME_UPPER" else (big, small)


def window_attrs(ctx: ConvertContext, n: int, kernel: Sequence[int] | None = None) -> Window:
    """Read ``kernel_shape``, ``strides``, ``dilations``, ``pads`` and ``auto_pad`` for ``n`` dims."""
    if kernel is None:
        kernel = ctx.attr_ints("kernel_shape")
        if kernel is None:
            raise ctx.unsupported("kernel_shape is required")
    if len(kernel) != n:
        raise ctx.unsupported(f"kernel_shape {list(kernel)} does not have {n} spatial dims")
    strides = ctx.attr_ints("strides", [1] * n)
    dilations = ctx.attr_ints("dilations", [1] * n)
    pads = ctx.attr_ints("pads", [0] * (2 * n))
    auto_pad = ctx.attr_string("auto_pad", "NOTSET")
    assert strides is not None and dilations is not None and pads is not None
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise ctx.unsupported(f"auto_pad {auto_pad!r} is not supported")
    if len(strides) != n or len(dilations) != n or len(pads) != 2 * n:
        raise ctx.unsupported(f"strides/dilations/pads do not match {n} spatial dims")
    if auto_pad == "VALID":
        pads = [0] * (2 * n)
    if any(p < 0 for p in pads):
        raise ctx.unsupported(f"negative pads {pads} are not supported")
    return Window(tuple(kernel), tuple(strides), tuple(dilations), auto_pad, tuple(pads[:n]), tuple(pads[n:]))


def torch_pad(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX-order pads as ``torch.nn.functional.pad``'s list (last dim first)."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [b, e]
    return out
