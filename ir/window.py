"""The window attributes of spatial ops (Conv, ConvTranspose, pooling), read once for every user.

:func:`read_window` reads ``kernel_shape``, ``strides``, ``dilations``, ``pads`` and ``auto_pad``
of a node with ``n`` spatial dims; :func:`static_conv2d_window` is the 2-D Conv with static pads
that AdaRound's fast paths handle.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import onnx_ir

__all__ = ["Window", "read_window", "split_same", "static_conv2d_window", "torch_pad"]


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


def read_window(node: onnx_ir.Node, n: int, kernel: Sequence[int] | None = None) -> Window:
    """The window of ``node`` for ``n`` spatial dims (``kernel``: when ``kernel_shape`` may be
    absent, the kernel the weight gives); ``ValueError`` saying what is not supported."""
    attrs = node.attributes
    if kernel is None:
        kernel = attrs.get_ints("kernel_shape")
        if kernel is None:
            raise ValueError("kernel_shape is required")
    if len(kernel) != n:
        raise ValueError(f"kernel_shape {list(kernel)} does not have {n} spatial dims")
    strides = list(attrs.get_ints("strides", [1] * n))
    dilations = list(attrs.get_ints("dilations", [1] * n))
    pads = list(attrs.get_ints("pads", [0] * (2 * n)))
    auto_pad = attrs.get_string("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise ValueError(f"auto_pad {auto_pad!r} is not supported")
    if len(strides) != n or len(dilations) != n or len(pads) != 2 * n:
        raise ValueError(f"strides/dilations/pads do not match {n} spatial dims")
    if auto_pad == "VALID":
        pads = [0] * (2 * n)
    if any(p < 0 for p in pads):
        raise ValueError(f"negative pads {pads} are not supported")
    return Window(tuple(kernel), tuple(strides), tuple(dilations), auto_pad, tuple(pads[:n]), tuple(pads[n:]))


def static_conv2d_window(node: onnx_ir.Node, weight_shape: Sequence[int]) -> Window | None:
    """The window of a standard 2-D Conv of weight ``weight_shape`` whose pads are static (auto_pad
    NOTSET or VALID) and whose ``kernel_shape``, if given, is the weight's; else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type != "Conv" or len(weight_shape) != 4:
        return None
    kernel = node.attributes.get_ints("kernel_shape")
    if kernel is not None and tuple(kernel) != tuple(weight_shape[2:]):
        return None
    try:
        window = read_window(node, 2, weight_shape[2:])
    except ValueError:
        return None
    return window if window.auto_pad in ("NOTSET", "VALID") else None


def split_same(total: int, auto_pad: str) -> tuple[int, int]:
    """Split SAME padding: the odd pad goes at the end (SAME_UPPER) or the beginning (SAME_LOWER)."""
    small, big = total // 2, total - total // 2
    return (small, big) if auto_pad == "SAME_UPPER" else (big, small)


def torch_pad(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX-order pads as ``torch.nn.functional.pad``'s list (last dim first)."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [b, e]
    return out
