"""INTQuantizer / FPQuantizer / quantizer_from_spec: layouts, dtypes, buffers, errors."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx_ir
import pytest
import torch

from qdq_passes.ir.quant import QuantSpec
from qdq_passes.quantizers import (
    AdaroundINTQuantizer,
    FPQuantizer,
    INTQuantizer,
    quantizer_from_spec,
)


def _int8(scale: list[float], **kwargs: object) -> INTQuantizer:
    s = torch.tensor(scale)
    return INTQuantizer(s, torch.zeros_like(s), torch.tensor(-128.0), torch.tensor(127.0), **kwargs)


def test_parameters_are_buffers_in_state_dict() -> None:
    quantizer = _int8([0.5, 0.25])
    assert list(quantizer.parameters()) == []
    assert set(quantizer.state_dict()) == {"scale", "zero_point", "min_q", "max_q"}
    clone = _int8([1.0, 1.0])
    clone.load_state_dict(quantizer.state_dict())
    x = torch.randn(2, 3)
    assert torch.equal(clone(x), quantizer(x))


def test_tensor_sync_never_mutates_the_quantizer() -> None:
    quantizer = _int8([0.5, 0.25, 0.125], ch_axis=0)
    before = {k: v.clone() for k, v in quantizer.state_dict().items()}
    for shape in [(3,), (3, 4), (3, 2, 2)]:
        x = torch.randn(shape)
        scale, _ = quantizer.tensor_sync(x)
        assert scale.shape == (3,) + (1,) * (len(shape) - 1)
        expected = torch.round(x / torch.tensor([0.5, 0.25, 0.125]).view(scale.shape)) * scale
        assert torch.equal(quantizer(x), expected.clamp(-128 * scale, 127 * scale))
    for key, value in quantizer.state_dict().items():
        assert value.shape == before[key].shape and torch.equal(value, before[key])


def test_negative_ch_axis() -> None:
    x = torch.randn(2, 3, 4)
    a, b = _int8([0.1, 0.2, 0.3, 0.4], ch_axis=-1), _int8([0.1, 0.2, 0.3, 0.4], ch_axis=2)
    assert torch.equal(a(x), b(x))


def test_blocked_ragged_layout() -> None:
    scale = torch.tensor([[1.0, 0.5, 0.25]])
    quantizer = INTQuantizer(
        scale,
        torch.tensor([[0.0, 1.0, -1.0]]),
        torch.tensor(-8.0),
        torch.tensor(7.0),
        ch_axis=1,
        block_size=3,
    )
    x = torch.tensor([[1.4, 1.6, 2.5, 1.4, 1.6, 2.5, 0.3]])  # blocks of 3, 3 and 1
    assert quantizer.quantize(x).tolist() == [[1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 0.0]]


@pytest.mark.parametrize(
    ("shape", "kwargs", "message"),
    [
        ((5, 4), {"ch_axis": 1, "block_size": 2}, "blocked scale has shape"),
        ((2, 7), {"ch_axis": 1, "block_size": 2}, "needs"),
        ((2, 4), {"ch_axis": 2, "block_size": 2}, "ch_axis 2 is out of range"),
    ],
)
def test_blocked_layout_errors(shape: tuple[int, ...], kwargs: dict, message: str) -> None:
    quantizer = INTQuantizer(
        torch.ones(2, 2), torch.zeros(2, 2), torch.tensor(-8.0), torch.tensor(7.0), **kwargs
    )
    with pytest.raises(ValueError, match=message):
        quantizer(torch.zeros(shape))


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="zero_point shape"):
        INTQuantizer(torch.ones(3), torch.zeros(2), torch.tensor(0.0), torch.tensor(255.0))
    with pytest.raises(ValueError, match="min_q"):
        INTQuantizer(torch.ones(()), torch.zeros(()), torch.tensor(5.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="block_size"):
        INTQuantizer(
            torch.ones(()), torch.zeros(()), torch.tensor(0.0), torch.tensor(1.0), block_size=-1
        )
    with pytest.raises(ValueError, match="per-channel scale"):
        _int8([1.0, 2.0])(torch.zeros(3, 3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32_and_round_once(dtype: torch.dtype) -> None:
    quantizer = _int8([0.013, 0.7], ch_axis=1)
    x = (torch.randn(64, 2) * 20).to(dtype)
    y = quantizer(x)
    assert y.dtype == dtype
    assert torch.equal(y, quantizer(x.float()).to(dtype))
    assert torch.equal(quantizer.quantize(x), quantizer.quantize(x.float()))


def test_float64_inputs_stay_float64() -> None:
    quantizer = _int8([0.1])
    x = torch.tensor([0.15, 0.25, -3.0], dtype=torch.float64)
    y = quantizer(x)
    assert y.dtype == torch.float64
    assert torch.equal(
        y, torch.round(x / torch.tensor(0.1, dtype=torch.float32).double()) * 0.10000000149011612
    )


def test_q_folded_forward_dequantizes_stored_integers() -> None:
    s = torch.tensor([0.5, 0.25])
    quantizer = INTQuantizer(
        s, torch.tensor([1.0, -2.0]), torch.tensor(-8.0), torch.tensor(7.0), q_folded=True
    )
    codes = torch.tensor([[7, -8], [0, 3]], dtype=torch.int8)
    assert quantizer(codes).tolist() == [[3.0, -4.5], [0.5, 1.25]]
    assert quantizer(codes.float()).tolist() == [[3.0, -4.5], [0.5, 1.25]]


def test_int32_dequantize_is_exact_above_2_24() -> None:
    spec = QuantSpec.from_arrays(np.float32(1e-3), np.int32(0))
    codes = np.array([2**24 + 1, -(2**31), 2**31 - 1, 123456789], np.int32)
    quantizer = quantizer_from_spec(spec, q_folded=True)
    assert np.array_equal(quantizer(torch.from_numpy(codes)).numpy(), spec.dequantize(codes))


@pytest.mark.parametrize(
    ("qdtype", "qmin", "qmax"),
    [
        (onnx_ir.DataType.INT4, -8, 7),
        (onnx_ir.DataType.UINT4, 0, 15),
        (onnx_ir.DataType.INT8, -128, 127),
        (onnx_ir.DataType.UINT8, 0, 255),
        (onnx_ir.DataType.INT16, -32768, 32767),
        (onnx_ir.DataType.UINT16, 0, 65535),
    ],
)
def test_from_spec_ranges_come_from_the_dtype(
    qdtype: onnx_ir.DataType, qmin: int, qmax: int
) -> None:
    spec = QuantSpec.from_arrays(np.float32(1.0), None, qdtype)
    quantizer = quantizer_from_spec(spec)
    assert (float(quantizer.min_q), float(quantizer.max_q)) == (qmin, qmax)
    assert quantizer.quantize(torch.tensor([-1e9, 1e9])).tolist() == [qmin, qmax]


def test_from_spec_layouts_and_kinds() -> None:
    blocked = QuantSpec.from_arrays(
        np.ones((2, 2), np.float32), np.zeros((2, 2), ml_dtypes.int4), axis=-1, block_size=3
    )
    quantizer = quantizer_from_spec(blocked)
    assert (quantizer.granularity, quantizer.ch_axis, quantizer.block_size) == ("block", -1, 3)
    weight = torch.randn(2, 5)
    ada = quantizer_from_spec(blocked, adaround=True, weight=weight)
    assert isinstance(ada, AdaroundINTQuantizer) and ada.alpha.shape == (2, 5)
    assert quantizer_from_spec(blocked, q_folded=True).q_folded


def test_from_spec_float8() -> None:
    spec = QuantSpec.from_arrays(np.float32(2.0), np.zeros((), ml_dtypes.float8_e4m3fnuz))
    quantizer = quantizer_from_spec(spec)
    assert isinstance(quantizer, FPQuantizer) and quantizer.quant_type == torch.float8_e4m3fnuz
    with pytest.raises(ValueError, match="AdaRound"):
        quantizer_from_spec(spec, adaround=True)
    unsaturated = QuantSpec.from_arrays(
        np.float32(2.0), np.zeros((), ml_dtypes.float8_e5m2), saturate=False
    )
    with pytest.raises(ValueError, match="saturate"):
        quantizer_from_spec(unsaturated)


def _fp_reference(x: np.ndarray, s: float, z: float, dtype: type, bound: float) -> np.ndarray:
    """``(float32(clamp(cast_T(x / s + z), -bound, bound)) - z) * s`` with ml_dtypes casts."""
    with np.errstate(over="ignore"):
        v = (x / np.float32(s) + np.float32(z)).astype(np.float32)
        cast = v.astype(dtype).astype(np.float32)
    return ((np.clip(cast, -bound, bound) - np.float32(z)) * np.float32(s)).astype(np.float32)


@pytest.mark.parametrize(
    ("quant_type", "np_type"),
    [(torch.bfloat16, ml_dtypes.bfloat16), (torch.float16, np.float16)],
)
def test_fp_quantizer_matches_the_formula(quant_type: torch.dtype, np_type: type) -> None:
    bound = float(torch.finfo(quant_type).max)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4096) * rng.choice([1e-3, 1.0, 1e3, 1e5, 1e38], 4096)).astype(
        np.float32
    )
    ulp_ties = np.float32(1.0) + np.float32(2.0**-8) * np.arange(1, 9, 2)  # bf16 halfway points
    x = np.concatenate([x, ulp_ties, [np.nan, np.inf, -np.inf, -0.0, 65519.0, 65520.0]]).astype(
        np.float32
    )
    bounds = torch.tensor(-bound), torch.tensor(bound)
    quantizer = FPQuantizer(torch.tensor(0.5), torch.tensor(1.0), *bounds, quant_type=quant_type)
    y = quantizer(torch.from_numpy(x)).numpy()
    expected = _fp_reference(x, 0.5, 1.0, np_type, bound)
    assert np.array_equal(y, expected, equal_nan=True)
    codes = quantizer.quantize(torch.from_numpy(x))
    assert codes.dtype == quant_type
    assert np.array_equal(quantizer.dequantize(codes).numpy(), expected, equal_nan=True)


def test_fp_quantizer_q_folded_and_bounds() -> None:
    s, z = torch.tensor(2.0), torch.tensor(0.0)
    folded = FPQuantizer(
        s, z, torch.tensor(-1.0), torch.tensor(1.0), q_folded=True, quant_type=torch.float16
    )
    assert folded(torch.tensor([0.5, -1.0], dtype=torch.float16)).tolist() == [1.0, -2.0]
    with pytest.raises(ValueError, match="not representable"):
        FPQuantizer(s, z, torch.tensor(-1.0), torch.tensor(1000.3), quant_type=torch.float16)
    assert math.isnan(
        FPQuantizer(s, z, torch.tensor(-1.0), torch.tensor(1.0))(torch.tensor([math.nan])).item()
    )
