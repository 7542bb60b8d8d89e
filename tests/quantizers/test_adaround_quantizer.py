"""AdaroundINTQuantizer: initialisation, soft/hard rounding, exported codes, range, regulariser."""

from __future__ import annotations

import math

import pytest
import torch

from qdq_passes.quantizers import AdaroundConstants, AdaroundINTQuantizer, INTQuantizer

# (scale shape, zero point, qmin, qmax, kwargs) per layout, for a (6, 10) weight.
LAYOUTS = {
    "tensor-int8": ((), 0.0, -128, 127, {}),
    "tensor-uint8-zp": ((), 131.0, 0, 255, {}),
    "channel-int4": ((6,), 0.0, -8, 7, {}),
    "channel-uint4-zp": ((10,), 3.0, 0, 15, {"ch_axis": -1}),
    "block-int4": ((6, 3), 0.0, -8, 7, {"ch_axis": 1, "block_size": 4}),  # ragged: 10 = 4 + 4 + 2
    "block-int16-zp": ((2, 10), -7.0, -32768, 32767, {"ch_axis": 0, "block_size": 5}),
}


def _make(layout: str, seed: int = 0) -> tuple[AdaroundINTQuantizer, torch.Tensor, torch.Tensor]:
    """A quantizer with alpha initialised, an in-range weight and the element-wise scale."""
    shape, zp, qmin, qmax, kwargs = LAYOUTS[layout]
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(shape, generator=g) * 0.1 + 0.01
    quantizer = AdaroundINTQuantizer(
        scale, torch.full(shape, zp), torch.tensor(float(qmin)), torch.tensor(float(qmax)), **kwargs
    )
    s, _ = quantizer.tensor_sync(torch.empty(6, 10))
    s = s.expand(6, 10)
    t = torch.rand(6, 10, generator=g) * (qmax - qmin) + (qmin - zp)  # W / s inside the range
    weight = t * s
    quantizer.initialize_alpha(weight)
    return quantizer, weight, s


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_soft_weight_equals_float_weight_at_init(layout: str) -> None:
    quantizer, weight, s = _make(layout)
    qmax = max(abs(float(quantizer.min_q)), abs(float(quantizer.max_q)))
    soft = quantizer(weight)
    tolerance = 4 * torch.finfo(torch.float32).eps * qmax * s
    assert ((soft - weight).abs() <= tolerance).all()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_hard_rounding_picks_floor_or_floor_plus_one(layout: str) -> None:
    quantizer, weight, s = _make(layout, seed=1)
    with torch.no_grad():
        quantizer.alpha.copy_(torch.randn(quantizer.alpha.shape) * 4)
    _, zp = quantizer.tensor_sync(weight)
    offset = quantizer.codes(weight) - zp - torch.floor(weight / s)
    assert set(offset.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(offset == 1, quantizer.alpha >= 0)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_codes_dequantize_to_hard_forward(layout: str) -> None:
    quantizer, weight, _ = _make(layout, seed=2)
    with torch.no_grad():
        quantizer.alpha.copy_(torch.randn(quantizer.alpha.shape) * 4)
    codes = quantizer.codes(weight)
    assert codes.dtype == torch.int64
    assert int(codes.min()) >= quantizer.min_q and int(codes.max()) <= quantizer.max_q
    quantizer.use_soft_rounding = False
    assert torch.equal(quantizer.dequantize(codes), quantizer(weight))
    assert torch.equal(quantizer.quantize(weight), codes.float())


def test_codes_stay_in_the_int4_range() -> None:
    # W / s = 7.6: floor 7, rounding up would give 8, outside int4 (Quark wrote such codes).
    quantizer = AdaroundINTQuantizer(
        torch.tensor(1.0),
        torch.tensor(0.0),
        torch.tensor(-8.0),
        torch.tensor(7.0),
        weight=torch.tensor([7.6, -8.4, 3.2]),
    )
    with torch.no_grad():
        quantizer.alpha.fill_(5.0)
    assert quantizer.codes(torch.tensor([7.6, -8.4, 3.2])).tolist() == [7, -8, 4]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_initial_hard_rounding_is_nearest_even(layout: str) -> None:
    quantizer, weight, s = _make(layout, seed=3)
    weight[0] = (torch.floor(weight[0] / s[0]) + 0.5) * s[
        0
    ]  # ties, most exact after the float32 round trip
    ties = weight[0] / s[0] - torch.floor(weight[0] / s[0]) == 0.5
    quantizer.initialize_alpha(weight)
    nearest = INTQuantizer.quantize(quantizer, weight).long()
    assert torch.equal(quantizer.codes(weight), nearest)
    assert ties.any()


def test_initial_ties_go_to_even_not_up() -> None:
    weight = torch.tensor([2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 2.49])
    quantizer = AdaroundINTQuantizer(
        torch.tensor(1.0),
        torch.tensor(0.0),
        torch.tensor(-128.0),
        torch.tensor(127.0),
        weight=weight,
    )
    assert quantizer.codes(weight).tolist() == [
        2,
        4,
        -2,
        -4,
        0,
        0,
        2,
    ]  # Quark's init rounds ties up
    assert torch.equal(quantizer(weight), weight)  # h = 0.5 exactly on ties


def test_h_matches_the_rectified_sigmoid() -> None:
    quantizer = AdaroundINTQuantizer(
        torch.tensor(1.0),
        torch.tensor(0.0),
        torch.tensor(-8.0),
        torch.tensor(7.0),
        weight=torch.zeros(5),
    )
    with torch.no_grad():
        quantizer.alpha.copy_(torch.tensor([-10.0, -1.0, 0.0, 1.0, 10.0]))
    gamma, zeta = AdaroundConstants.GAMMA, AdaroundConstants.ZETA
    assert (gamma, zeta) == (-0.1, 1.1)
    expected = [
        min(max(1 / (1 + math.exp(-a)) * (zeta - gamma) + gamma, 0.0), 1.0)
        for a in (-10, -1, 0, 1, 10)
    ]
    torch.testing.assert_close(quantizer.h(), torch.tensor(expected))
    reg = quantizer.regularizer(2.0)
    torch.testing.assert_close(reg, sum(1 - abs(2 * h - 1) ** 2 for h in expected) * torch.ones(()))


def test_no_alpha_rounds_to_nearest_like_int_quantizer() -> None:
    args = (
        torch.tensor([0.1, 0.2]),
        torch.tensor([0.0, 3.0]),
        torch.tensor(-8.0),
        torch.tensor(7.0),
    )
    ada, plain = AdaroundINTQuantizer(*args), INTQuantizer(*args)
    weight = torch.tensor([[0.25, -0.05, 0.9], [0.3, -0.5, 1.7]])
    assert ada.alpha is None
    assert torch.equal(ada(weight), plain(weight))
    assert torch.equal(ada.codes(weight), plain.quantize(weight).long())
    with pytest.raises(RuntimeError, match="initialize_alpha"):
        ada.regularizer(2.0)


def test_initialize_alpha_again_keeps_the_parameter() -> None:
    quantizer, weight, _ = _make("channel-int4")
    alpha = quantizer.alpha
    optimizer = torch.optim.Adam(quantizer.parameters())
    quantizer.initialize_alpha(weight * 0.5)
    assert quantizer.alpha is alpha and optimizer.param_groups[0]["params"][0] is alpha


def test_state_dict_round_trip() -> None:
    quantizer, weight, _ = _make("block-int4")
    assert set(quantizer.state_dict()) == {"alpha", "scale", "zero_point", "min_q", "max_q"}
    assert [name for name, _ in quantizer.named_parameters()] == ["alpha"]
    shape, *_, kwargs = LAYOUTS["block-int4"]
    fresh = AdaroundINTQuantizer(
        torch.ones(shape),
        torch.zeros(shape),
        torch.tensor(-8.0),
        torch.tensor(7.0),
        weight=torch.zeros(6, 10),
        **kwargs,
    )
    fresh.load_state_dict(quantizer.state_dict())
    assert torch.equal(fresh(weight), quantizer(weight))


def test_alpha_learns_a_rounding() -> None:
    """Adam on a linear layer's output MSE (+ regulariser after a warm start) beats nearest."""
    torch.manual_seed(0)
    weight = torch.randn(16, 8) * 0.3
    scale = weight.abs().amax(dim=1) / 7
    args = (scale, torch.zeros(16), torch.tensor(-8.0), torch.tensor(7.0))
    quantizer = AdaroundINTQuantizer(*args, weight=weight)
    x = torch.randn(128, 8) @ torch.randn(8, 8)  # correlated inputs: nearest is not optimal
    target = x @ weight.T
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=0.05)
    for step in range(150):
        optimizer.zero_grad()
        loss = (x @ quantizer(weight).T - target).pow(2).mean()
        if step >= 30:
            loss = loss + 0.01 * quantizer.regularizer(4.0)
        loss.backward()
        optimizer.step()
    h = quantizer.h()
    assert ((h < 0.05) | (h > 0.95)).float().mean() > 0.9
    quantizer.use_soft_rounding = False
    adaround = (x @ quantizer(weight).T - target).pow(2).mean()
    nearest = (x @ INTQuantizer(*args)(weight).T - target).pow(2).mean()
    assert adaround < 0.9 * nearest


def test_q_folded_forward_dequantizes() -> None:
    quantizer = AdaroundINTQuantizer(
        torch.tensor(0.5), torch.tensor(1.0), torch.tensor(-8.0), torch.tensor(7.0), q_folded=True
    )
    assert quantizer(torch.tensor([3, -8], dtype=torch.int8)).tolist() == [1.0, -4.5]
