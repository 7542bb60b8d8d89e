"""The Gram form of AdaRound's loss for a block that is one linear op (the Gram objective of ``adaround``).

When the only node of a block that depends on the trained rounding is one Conv (2-D, ``group=1``),
Gemm (``transA=0``, ``alpha=1``) or MatMul (2-D weight) with the AdaRound weight as its second
input, and its output is compared with the float target by the plain squared error, the output is
linear in the weight: ``Y(Wq) = Y(W) + dW X`` with ``dW = Wq - W`` (weight as an ``[O, K]`` matrix,
``X`` the ``[K, M]`` im2col'd / flattened quantized input, M = samples x positions). With
``R = Y(W) - T`` (T the float target) the summed squared error is

    sum ||dW X + R||^2 = sum(dW * (dW H + 2 G)) + ||R||^2,   H = X X^T,  G = R^T X^T

so each step costs O(O K^2), whatever the number of samples. ``H``, ``G`` and ``||R||^2`` are
accumulated once per block in float64 over all calibration samples; the loss is divided by the
direct path's normaliser (``sum(1).mean()``: the element count over the size of axis 1), so it
*is* the direct loss evaluated on the whole calibration set, not on a random batch.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir
import torch
import torch.nn.functional as F

from qdq_passes.ir.window import static_conv2d_window, torch_pad

__all__ = ["GramLoss", "gram_layout", "polish"]


class _Layout:
    """How one linear op maps (input, weight, output) to (X rows, [O, K] weight, output rows)."""

    def __init__(self, weight_to_matrix: Callable[[torch.Tensor], torch.Tensor],
                 features: Callable[[torch.Tensor], torch.Tensor], rows: Callable[[torch.Tensor], torch.Tensor],
                 matrix_to_weight: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.weight_to_matrix = weight_to_matrix  # weight tensor -> [O, K] (a view)
        self.matrix_to_weight = matrix_to_weight  # its inverse: [O, K] -> the weight's shape (a view)
        self.features = features  # op input chunk -> [M, K]
        self.rows = rows  # op output chunk -> [M, O]


def gram_layout(node: onnx_ir.Node, weight_shape: tuple[int, ...]) -> _Layout | None:
    """The Gram layout of ``node`` (weight = input 1, of ``weight_shape``), or None if not supported."""
    if node.domain not in ("", "ai.onnx"):
        return None
    attrs = node.attributes
    if node.op_type == "MatMul" and len(weight_shape) == 2:
        return _Layout(lambda w: w.t(), lambda x: x.reshape(-1, x.shape[-1]), lambda y: y.reshape(-1, y.shape[-1]),
                       lambda m: m.t())
    if node.op_type == "Gemm" and len(weight_shape) == 2:
        if attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0:
            return None
        same = (lambda w: w) if attrs.get_int("transB", 0) else (lambda w: w.t())
        return _Layout(same, lambda x: x, lambda y: y, same)
    window = static_conv2d_window(node, weight_shape)
    if window is None or attrs.get_int("group", 1) != 1:
        return None
    pad = torch_pad(window.begin, window.end)
    out_ch = weight_shape[0]

    def features(x: torch.Tensor) -> torch.Tensor:
        if any(pad):
            x = F.pad(x, pad)
        cols = F.unfold(x, window.kernel, dilation=window.dilations, stride=window.strides)  # [N, K, L]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    return _Layout(lambda w: w.reshape(out_ch, -1), features,
                   lambda y: y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1]), lambda m: m.reshape(weight_shape))


class _GramFunction(torch.autograd.Function):
    """``sum(dW * (dW H + 2 G))`` with one matrix product per step (H symmetric)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, dw: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        q = torch.addmm(g, dw, h)  # dW H + G
        ctx.save_for_backward(q)
        return torch.sum(dw * (q + g))

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (q,) = ctx.saved_tensors
        return q * (2 * grad), None, None


class GramLoss:
    """The block's loss as a function of ``dW`` (``[O, K]``), built from the whole data once.

    ``accumulate(x_chunk, r_chunk)`` adds one chunk (op input, and ``Y(W) - T`` in the op's output
    layout); ``finish(denominator, constant)`` fixes the normaliser and the loss of the block's
    other outputs; ``loss(dW)`` is then differentiable in ``dW``.
    """

    def __init__(self, layout: _Layout, dtype: torch.dtype = torch.float32) -> None:
        self.layout = layout
        self.dtype = dtype
        self._h: torch.Tensor | None = None
        self._g: torch.Tensor | None = None
        self._rr = 0.0
        self._rows = 0
        self.h = self.g = None
        self.scale = 1.0
        self.constant = 0.0

    def accumulate(self, x: torch.Tensor, r: torch.Tensor) -> None:
        xf = self.layout.features(x).to(torch.float64)
        rf = self.layout.rows(r).to(torch.float64)
        h, g = xf.t() @ xf, rf.t() @ xf
        self._h = h if self._h is None else self._h + h
        self._g = g if self._g is None else self._g + g
        self._rr += float(rf.pow(2).sum())
        self._rows += xf.shape[0]

    def finish(self, denominator: float, constant: float = 0.0) -> None:
        assert self._h is not None and self._g is not None
        h = 0.5 * (self._h + self._h.t())
        self.h = h.to(self.dtype).contiguous()
        self.g = self._g.to(self.dtype).contiguous()
        self.scale = 1.0 / denominator
        self.constant = constant + self._rr / denominator
        self._h = self._g = None

    @property
    def fan_in(self) -> int:
        """``K``: the inputs of one output (columns of the ``[O, K]`` weight matrix)."""
        assert self.g is not None
        return self.g.shape[1]

    @property
    def rows(self) -> int:
        """Feature rows accumulated (samples x positions): fewer than ``K`` leaves ``H`` singular."""
        return self._rows

    def shrunk(self, kappa: float) -> GramLoss:
        """The loss with its data terms shrunk toward the independent-weights model:
        ``H -> (1 - kappa) H + kappa diag(H)``, ``G -> (1 - kappa) G``.

        ``kappa = 0`` is this loss; ``kappa = 1`` couples no two weights and has nearest rounding as
        its minimiser. In between it trusts the calibration set's correlations less: with fewer
        samples than inputs (rows < K), ``H`` is singular and unshrunk AdaRound fits its null space.
        """
        assert self.h is not None and self.g is not None
        out = GramLoss(self.layout, self.dtype)
        out.h = torch.lerp(self.h, torch.diag_embed(torch.diagonal(self.h)), kappa).contiguous()
        out.g = (self.g * (1.0 - kappa)).contiguous()
        out.scale, out.constant, out._rows = self.scale, self.constant, self._rows
        return out

    def loss(self, dw: torch.Tensor) -> torch.Tensor:
        """``(sum(dW * (dW H + 2 G)) + ||R||^2) / denominator + constant``."""
        return _GramFunction.apply(dw, self.h, self.g) * self.scale + self.constant

    def grad(self, dw: torch.Tensor, with_loss: bool = False) -> tuple[torch.Tensor, float | None]:
        """The gradient of :meth:`loss` in ``dW``, ``2 (dW H + G) / denominator``, without autograd;
        and the loss itself when ``with_loss``."""
        q = torch.addmm(self.g, dw, self.h)
        loss = float(torch.sum(dw * (q + self.g))) * self.scale + self.constant if with_loss else None
        return q.mul_(2.0 * self.scale), loss


def polish(gram: GramLoss, dw: torch.Tensor, flip: torch.Tensor, sweeps: int) -> tuple[torch.Tensor, int]:
    """Greedy exact descent on the hard rounding: flip single weights while the Gram loss drops.

    ``dw``: the hard-rounded weight minus the float one, ``[O, K]``; ``flip``: the change of each
    weight if its rounding flipped (``[O, K]``, 0 where the clamp leaves no choice). Flipping
    ``(o, k)`` changes the loss by ``d^2 H_kk + 2 d (dW H + G)_ok``; column by column (every row at
    once: rows do not interact), a flip is taken when it lowers the loss, and ``dW H + G`` updated.
    Repeats until a sweep flips nothing, at most ``sweeps`` times. Each sweep costs one step's
    product (O K^2). Returns the flip mask (``[O, K]`` bool) and the number of flips.
    """
    assert gram.h is not None and gram.g is not None
    h = gram.h
    q = torch.addmm(gram.g, dw.to(h.dtype), h)
    d = flip.to(h.dtype).clone()
    diag = torch.diagonal(h)
    flipped = torch.zeros(d.shape, dtype=torch.bool, device=d.device)
    total = 0
    for _ in range(sweeps):
        changes = 0
        for k in range(d.shape[1]):
            dk = d[:, k]
            take = dk * (dk * diag[k] + 2 * q[:, k]) < 0
            n = int(take.sum())
            if not n:
                continue
            step = torch.where(take, dk, torch.zeros_like(dk))
            q.addr_(step, h[k])
            d[:, k] = torch.where(take, -dk, dk)
            flipped[:, k] ^= take
            changes += n
        total += changes
        if not changes:
            break
    return flipped, total
