"""The window attributes of the convolution and pooling converters, as converter errors."""

from __future__ import annotations

from collections.abc import Sequence

from qdq_passes.ir.to_torch.registry import ConvertContext
from qdq_passes.ir.window import Window, read_window, split_same, torch_pad

__all__ = ["Window", "split_same", "torch_pad", "window_attrs"]


def window_attrs(ctx: ConvertContext, n: int, kernel: Sequence[int] | None = None) -> Window:
    """The node's window for ``n`` spatial dims (:func:`qdq_passes.ir.window.read_window`); what is
    not supported raises ``ctx.unsupported``."""
    try:
        return read_window(ctx.node, n, kernel)
    except ValueError as exc:
        raise ctx.unsupported(str(exc)) from None
