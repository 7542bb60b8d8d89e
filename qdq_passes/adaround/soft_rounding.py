"""Soft rounding of one AdaRound weight as a function of ``alpha``, and the optimiser on ``alpha``.

:class:`SoftWeight` takes ``floor(W / s)`` once; the soft weight and AdaRound's regulariser then
come from ``alpha`` in one autograd node (:class:`SoftChain`) or, on the single-weight fast paths,
through :func:`soft_forward` / :func:`soft_backward` without autograd. Both replay the quantizer's
own operations in its order, so values and gradients are the quantizer's to the bit.
"""

from __future__ import annotations

import numpy as np
import onnx_ir
import torch

from qdq_passes.ir.qdq import constant_array
from qdq_passes.quantizers.base_qdq_quantizers import AdaroundConstants, AdaroundINTQuantizer

__all__ = ["SoftWeight", "SoftChain", "soft_forward", "soft_backward", "reg_value", "FusedAdam", "adam"]

#: What :func:`soft_forward` saves for :func:`soft_backward`: sigmoid(alpha), h before its clamp,
#: the mask of codes inside the range, and ``2h - 1`` (None without the regulariser).
Saved = tuple[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"]


class SoftWeight:
    """An AdaRound quantizer's output as a function of ``h(alpha)``, with ``floor(W / s)`` taken once."""

    def __init__(self, node: onnx_ir.Node, quantizer: AdaroundINTQuantizer, device: torch.device) -> None:
        self.node = node
        self.quantizer = quantizer
        self.weight = torch.from_numpy(np.array(constant_array(node.inputs[0]), dtype=np.float32)).to(device)
        with torch.no_grad():
            self.scale, self.zero_point = quantizer.tensor_sync(self.weight)
            self.floor = torch.floor(self.weight.to(self.scale.dtype) / self.scale)
            self.lo, self.hi = quantizer.min_q.to(self.scale), quantizer.max_q.to(self.scale)

    def dequantize(self, offset: torch.Tensor) -> torch.Tensor:
        """The weight with ``floor(W / s) + offset`` as its codes (offset: ``h``, or 0/1 for hard rounding)."""
        codes = torch.clamp(self.floor + offset.to(self.floor.dtype) + self.zero_point, self.lo, self.hi)
        return ((codes - self.zero_point) * self.scale).to(self.weight.dtype)

    def hard(self) -> torch.Tensor:
        """The hard-rounded weight (``alpha >= 0`` rounds up)."""
        return self.dequantize(self.quantizer.alpha.detach() >= 0)

    def soft_and_regularizer(self, beta: float | None, reg: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(soft weight, reg * sum(1 - |2h - 1| ** beta))`` (None for the second when ``beta`` is None)."""
        weight, regularizer = SoftChain.apply(self.quantizer.alpha, self, beta, reg)
        return weight, None if beta is None else regularizer


class SoftChain(torch.autograd.Function):
    """``alpha -> (soft weight, reg * regulariser)`` of a :class:`SoftWeight`, analytic backward.

    Forward: ``h = clamp(sigmoid(a) (ZETA - GAMMA) + GAMMA, 0, 1)``, ``codes = clamp(floor + h + zp,
    lo, hi)``, ``W = (codes - zp) s``, ``R = reg sum(1 - |2h - 1| ** beta)``. Backward (clamps pass
    the gradient on their closed range, as torch's do): ``dh = dW s [lo <= floor + h + zp <= hi]
    - dR reg beta |2h - 1| ** (beta - 1) sign(2h - 1) 2``, ``da = dh [0 <= pre <= 1] (ZETA - GAMMA)
    sigmoid(a) (1 - sigmoid(a))``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, alpha: torch.Tensor, sw: SoftWeight,
                beta: float | None, reg: float) -> tuple[torch.Tensor, torch.Tensor]:
        weight, saved = soft_forward(alpha, sw, beta)
        ctx.sw, ctx.beta, ctx.reg = sw, beta, reg
        ctx.save_for_backward(*saved)
        if beta is None:
            return weight, weight.new_zeros(())
        return weight, reg_value(saved, beta, reg)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_w: torch.Tensor,
                 grad_r: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return soft_backward(ctx.saved_tensors, ctx.sw, grad_w, ctx.beta, ctx.reg, grad_r), None, None, None


def soft_forward(alpha: torch.Tensor, sw: SoftWeight, beta: float | None) -> tuple[torch.Tensor, Saved]:
    """The soft weight of ``alpha`` and what its backward needs."""
    c = AdaroundConstants
    with torch.no_grad():
        sig = torch.sigmoid(alpha)
        pre = sig * (c.ZETA - c.GAMMA) + c.GAMMA
        h = torch.clamp(pre, 0.0, 1.0)
        codes = sw.floor + h.to(sw.floor.dtype) + sw.zero_point
        weight = ((torch.clamp(codes, sw.lo, sw.hi) - sw.zero_point) * sw.scale).to(sw.weight.dtype)
        keep = (codes >= sw.lo) & (codes <= sw.hi)
        t = None if beta is None else 2 * h - 1
    return weight, (sig, pre, keep, t)


def reg_value(saved: Saved, beta: float, reg: float) -> torch.Tensor:
    """``reg * sum(1 - |2h - 1| ** beta)`` from :func:`soft_forward`'s saved tensors."""
    t = saved[3]
    assert t is not None
    return reg * (1 - t.abs().pow(beta)).sum()


def soft_backward(saved: Saved, sw: SoftWeight, grad_w: torch.Tensor, beta: float | None, reg: float,
                  grad_r: torch.Tensor | float = 1.0) -> torch.Tensor:
    """alpha's gradient from the soft weight's (``grad_w``) and the regulariser's (``grad_r``), by the
    operations (in their order) of autograd's backward through the quantizer's ``h()`` and rounding."""
    c = AdaroundConstants
    sig, pre, keep, t = saved
    dh = ((grad_w.to(sw.scale.dtype) * sw.scale) * keep).to(sig.dtype)
    if t is not None and beta is not None:
        g = -(grad_r * reg)  # mul by reg, then 1 - x
        g = g * (beta * t.abs().pow(beta - 1))  # pow backward
        g = g * t.sgn()  # abs backward
        dh = dh + g * 2  # 2 h - 1
    dpre = dh * ((pre >= 0) & (pre <= 1))
    return (dpre * (c.ZETA - c.GAMMA)) * (1 - sig) * sig


class FusedAdam:
    """``torch.optim.Adam(params, lr, fused=True)`` (default betas, eps, no weight decay) as one call
    of the same fused kernel per step, without the optimizer's per-step Python bookkeeping. Same
    state, same updates, bit for bit (``test_fused_adam_matches_torch_adam``)."""

    def __init__(self, params: list[torch.Tensor], lr: float) -> None:
        self.params = list(params)
        self.lr = lr
        with torch.no_grad():
            self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
            self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
            self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: ARG002 - always to None
        """Drop the gradients."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        steps = [self.steps[i] for i in live]
        with torch.no_grad():
            torch._foreach_add_(steps, 1)
            torch._fused_adam_([self.params[i] for i in live], [self.params[i].grad for i in live],
                               [self.exp_avgs[i] for i in live], [self.exp_avg_sqs[i] for i in live], [], steps,
                               amsgrad=False, lr=self.lr, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
                               maximize=False, grad_scale=None, found_inf=None)


def adam(params: list[torch.Tensor], lr: float, device: torch.device) -> FusedAdam | torch.optim.Adam:
    """Adam on ``params``: :class:`FusedAdam` where the fused kernel applies, else torch's Adam."""
    fused = device.type in ("cpu", "cuda")
    if (hasattr(torch, "_fused_adam_") and fused and params
            and all(p.dtype == torch.float32 and p.device == params[0].device for p in params)):
        return FusedAdam(params, lr)
    return torch.optim.Adam(params, lr=lr, **({"fused": True} if fused else {}))
