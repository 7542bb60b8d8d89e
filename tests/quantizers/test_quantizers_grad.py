"""Gradients: the straight-through estimator, its clamp mask, gradcheck on the smooth parts."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from qdq_passes.quantizers import (
    AdaroundINTQuantizer,
    FPQuantizer,
    INTDeQuantFunction,
    INTQuantDequantFunction,
    INTQuantFunction,
    INTQuantizer,
    RoundHalfToEven,
)

NAN, INF = math.nan, math.inf


def _int8(
    scale: float | list[float], zero_point: float | list[float], **kwargs: object
) -> INTQuantizer:
    return INTQuantizer(
        torch.tensor(scale),
        torch.tensor(zero_point),
        torch.tensor(-128.0),
        torch.tensor(127.0),
        **kwargs,
    )


def test_round_half_to_even_forward_and_identity_backward() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49], requires_grad=True)
    y = RoundHalfToEven.apply(x)
    assert y.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 0.0]
    g = torch.arange(6.0)
    y.backward(g)
    assert torch.equal(x.grad, g)


def test_quant_dequant_straight_through_mask() -> None:
    # scale 0.5, zp 3: code = round(2x) + 3 must lie in [-128, 127].
    x = torch.tensor(
        [-65.5, -65.75, -66.0, 62.0, 62.25, 62.5, 0.1, NAN, INF, -INF], requires_grad=True
    )
    in_range = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 0, 0], dtype=torch.float32)
    y = _int8(0.5, 3.0)(x)
    assert y[1].item() == y[2].item() == (-128 - 3) * 0.5  # saturated
    assert y[4].item() == 62.0  # 124.5 rounds to 124 (even), + 3 = 127
    g = torch.linspace(1.0, 2.0, 10)
    y.backward(g)
    assert torch.equal(x.grad, g * in_range)


def test_quant_function_gradient_is_mask_over_scale() -> None:
    scale = torch.tensor([[0.5], [0.25]])
    x = torch.tensor([[1.0, 100.0, -0.3], [0.2, 40.0, NAN]], requires_grad=True)
    codes = INTQuantFunction.apply(
        x, scale, torch.zeros(()), torch.tensor(-128.0), torch.tensor(127.0), RoundHalfToEven
    )
    assert codes.tolist() == [[2.0, 127.0, -1.0], [1.0, 127.0, -128.0]]
    codes.backward(torch.ones_like(codes))
    assert torch.equal(x.grad, torch.tensor([[2.0, 0.0, 2.0], [4.0, 0.0, 0.0]]))


def test_dequantize_gradient_is_grad_times_scale() -> None:
    scale, zero_point = torch.tensor([[0.5], [0.25]]), torch.tensor([[3.0], [-2.0]])
    q = torch.tensor([[1.0, 7.0], [-4.0, 0.0]], requires_grad=True)
    y = INTDeQuantFunction.apply(q, scale, zero_point)
    assert y.tolist() == [[-1.0, 2.0], [-0.5, 0.5]]
    g = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    y.backward(g)
    assert torch.equal(q.grad, g * scale)  # not (g - zp) * scale


def test_quant_then_dequant_gradient_equals_fused_gradient() -> None:
    scale, zero_point = torch.tensor([0.5, 0.125]).view(2, 1), torch.tensor([1.0, -5.0]).view(2, 1)
    lo, hi = torch.tensor(-8.0), torch.tensor(7.0)
    x = torch.tensor([[0.3, -3.0, 4.0, 2.6], [0.3, -0.4, 1.6, NAN]])
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    codes = INTQuantFunction.apply(x1, scale, zero_point, lo, hi, RoundHalfToEven)
    y1 = INTDeQuantFunction.apply(codes, scale, zero_point)
    y2 = INTQuantDequantFunction.apply(x2, scale, zero_point, lo, hi, RoundHalfToEven)
    assert torch.equal(y1, y2)
    y1.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=0)


def test_no_gradient_for_scale_and_zero_point() -> None:
    scale = torch.tensor(0.5, requires_grad=True)
    zero_point = torch.tensor(1.0, requires_grad=True)
    x = torch.randn(5, requires_grad=True)
    INTQuantDequantFunction.apply(
        x, scale, zero_point, torch.tensor(-8.0), torch.tensor(7.0), RoundHalfToEven
    ).sum().backward()
    assert scale.grad is None and zero_point.grad is None and x.grad is not None


def test_blocked_mask_uses_each_blocks_scale() -> None:
    q = INTQuantizer(
        torch.tensor([[1.0, 0.01]]),
        torch.zeros(1, 2),
        torch.tensor(-8.0),
        torch.tensor(7.0),
        ch_axis=1,
        block_size=3,
    )
    x = torch.tensor([[5.0, 5.0, 5.0, 0.05, 0.05]], requires_grad=True)  # ragged last block
    q(x).sum().backward()
    assert x.grad.tolist() == [[1.0, 1.0, 1.0, 1.0, 1.0]]
    x.grad = None
    q(x * 10).sum().backward()
    assert x.grad.tolist() == [[0.0, 0.0, 0.0, 0.0, 0.0]]


def test_fp_quantizer_straight_through_inside_range() -> None:
    q = FPQuantizer(
        torch.tensor(2.0),
        torch.tensor(0.0),
        torch.tensor(-65504.0),
        torch.tensor(65504.0),
        quant_type=torch.float16,
    )
    x = torch.tensor([1.0, -3.3, 2e5, NAN], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_gradcheck_dequantize() -> None:
    scale = torch.tensor([0.5, 0.25, 2.0], dtype=torch.float64).view(3, 1)
    zero_point = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64).view(3, 1)
    q = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t: INTDeQuantFunction.apply(t, scale, zero_point), (q,))


def test_gradcheck_quantizer_dequantize_per_channel() -> None:
    quantizer = _int8([0.5, 0.25], [3.0, -1.0], ch_axis=-1)
    codes = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(quantizer.dequantize, (codes,))


def _adaround_double(layout: str) -> tuple[AdaroundINTQuantizer, torch.Tensor]:
    torch.manual_seed(0)
    weight = torch.randn(4, 6)
    if layout == "channel":
        scale, kwargs = torch.tensor([0.1, 0.2, 0.05, 0.3]), {}
    else:
        scale, kwargs = (
            torch.tensor([[0.1], [0.2], [0.05], [0.3]]).repeat(1, 2),
            {"ch_axis": 1, "block_size": 4},
        )
    quantizer = AdaroundINTQuantizer(
        scale,
        torch.zeros_like(scale),
        torch.tensor(-128.0),
        torch.tensor(127.0),
        weight=weight,
        **kwargs,
    )
    with torch.no_grad():  # keep h(alpha) away from its clipped ends, where it is not smooth
        quantizer.alpha.clamp_(-2.0, 2.0)
    return quantizer.double(), weight.double()


@pytest.mark.parametrize("layout", ["channel", "block"])
def test_gradcheck_adaround_soft_forward_in_alpha(layout: str) -> None:
    quantizer, weight = _adaround_double(layout)
    alpha = quantizer.alpha.detach().clone().requires_grad_()
    forward = lambda a: torch.func.functional_call(quantizer, {"alpha": a}, (weight,))  # noqa: E731
    assert gradcheck(forward, (alpha,))


class _Regularizer(torch.nn.Module):
    """Makes ``regularizer`` a forward, so ``functional_call`` can substitute ``alpha``."""

    def __init__(self, quantizer: AdaroundINTQuantizer, beta: float) -> None:
        super().__init__()
        self.quantizer, self.beta = quantizer, beta

    def forward(self) -> torch.Tensor:
        return self.quantizer.regularizer(self.beta)


@pytest.mark.parametrize("beta", [2.0, 3.5, 20.0])
def test_gradcheck_adaround_regularizer(beta: float) -> None:
    quantizer, _ = _adaround_double("channel")
    module = _Regularizer(quantizer, beta)
    alpha = quantizer.alpha.detach().clone().requires_grad_()
    assert gradcheck(
        lambda a: torch.func.functional_call(module, {"quantizer.alpha": a}, ()), (alpha,)
    )
