"""Unit tests of QuantSpec and the numpy Q/DQ reference (qdq_passes.ir.quant).

Bit-exactness against onnxruntime over random cases and ONNX's own node cases lives in
tests/quantizers (test_quantizers_ort.py, test_quantizers_onnx_cases.py); here: ranges, validation
messages and hand-computed cases of the rules in qdq_semantics.md sections 2 and 3.2.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx_ir
import pytest

from qdq_passes.ir.quant import QuantSpec, expand_param, qrange, storage_dtype

DT = onnx_ir.DataType
NAN, INF = np.nan, np.inf


@pytest.mark.parametrize(
    ("qdtype", "storage", "bounds"),
    [
        (DT.INT4, ml_dtypes.int4, (-8, 7)),
        (DT.UINT4, ml_dtypes.uint4, (0, 15)),
        (DT.INT8, np.int8, (-128, 127)),
        (DT.UINT8, np.uint8, (0, 255)),
        (DT.INT16, np.int16, (-32768, 32767)),
        (DT.UINT16, np.uint16, (0, 65535)),
        (DT.INT32, np.int32, (-(2**31), 2**31 - 1)),
        (DT.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn, (-448.0, 448.0)),
        (DT.FLOAT8E4M3FNUZ, ml_dtypes.float8_e4m3fnuz, (-240.0, 240.0)),
        (DT.FLOAT8E5M2, ml_dtypes.float8_e5m2, (-57344.0, 57344.0)),
        (DT.FLOAT8E5M2FNUZ, ml_dtypes.float8_e5m2fnuz, (-57344.0, 57344.0)),
    ],
)
def test_storage_and_range(qdtype: onnx_ir.DataType, storage: type, bounds: tuple) -> None:
    assert storage_dtype(qdtype) == np.dtype(storage)
    assert qrange(qdtype) == bounds
    spec = QuantSpec.from_arrays(np.float32(1.0), np.zeros((), storage))
    assert spec.qdtype == qdtype and (spec.qmin, spec.qmax) == bounds
    assert spec.is_float8 == qdtype.is_floating_point()
    assert all(isinstance(b, float if spec.is_float8 else int) for b in bounds)


def test_unsupported_type() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        storage_dtype(DT.FLOAT4E2M1)


def test_from_arrays_defaults_and_conversions() -> None:
    spec = QuantSpec.from_arrays(0.5)
    assert (
        spec.qdtype == DT.UINT8
        and spec.zero_point.dtype == np.uint8
        and spec.scale.dtype == np.float32
    )
    assert spec.granularity == "tensor" and spec.axis is None
    spec = QuantSpec.from_arrays(np.float64(0.5), 3, DT.INT4)
    assert spec.zero_point.dtype == ml_dtypes.int4 and int(spec.zero_point) == 3
    with pytest.raises(ValueError, match="does not fit in INT4"):
        QuantSpec.from_arrays(0.5, 9, DT.INT4)
    # ONNX's tests pair a () scale with a (1,) zero point; axis is ignored when per-tensor.
    spec = QuantSpec.from_arrays(np.float32(2), np.zeros(1, ml_dtypes.float8_e4m3fn), axis=1)
    assert spec.zero_point.shape == () and spec.granularity == "tensor"
    spec = QuantSpec.from_arrays(np.ones(4, np.float32), np.zeros(4, np.int8), axis=1)
    assert spec.granularity == "channel"
    spec = QuantSpec.from_arrays(np.ones((2, 3), np.float32), None, DT.INT4, axis=1, block_size=4)
    assert spec.granularity == "block"


@pytest.mark.parametrize(
    ("kwargs", "x_shape", "message"),
    [
        ({"scale": [1.0, 2.0, 3.0, 0.0], "axis": 0}, None, r"scale\[3\] is 0.0$"),
        ({"scale": [1.0, -2.0], "axis": 0}, None, r"scale\[1\] is -2.0, scales must be positive"),
        ({"scale": [[1.0, NAN]], "axis": 1, "block_size": 2}, None, r"scale\[0, 1\] is nan"),
        ({"scale": INF}, None, r"scale is inf"),
        ({"scale": np.float16(1e-5)}, None, r"a float16 denormal \(smallest normal is 6.1"),
        ({"scale": [1.0, 2.0], "axis": 0}, (3, 2), r"scale has 2 entries, x has 3 along axis 0"),
        ({"scale": [1.0, 2.0], "axis": 2}, (2, 2), r"axis 2 is out of range for rank 2"),
        (
            {"scale": [[1.0, 2.0]], "axis": 1, "block_size": 2},
            (1, 5),
            r"block_size 2 is out of \[3, 4\]",
        ),
        (
            {"scale": [[1.0, 2.0]], "axis": 1, "block_size": 4},
            (1, 3),
            r"block_size 4 is out of \[2, 2\]",
        ),
        (
            {"scale": [[1.0, 2.0]], "axis": 1, "block_size": 2},
            (2, 4),
            r"differs from x shape \(2, 4\) at dim 0",
        ),
        (
            {"scale": [[1.0, 2.0]], "axis": 0, "block_size": 2},
            (4,),
            r"blocked scale has rank 2, x has rank 1",
        ),
        (
            {"scale": [[1.0, 2.0]], "axis": 3, "block_size": 2},
            None,
            r"axis 3 is out of range for rank 2",
        ),
        ({"scale": [[1.0, 2.0]], "axis": 0}, None, r"per-axis scale has shape \(1, 2\)"),
        ({"scale": [1.0, 2.0]}, None, r"per-tensor scale has shape \(2,\)"),
        ({"scale": [1.0, 2.0], "block_size": 2}, None, r"blocked quantization needs an axis"),
        ({"scale": [1.0, 2.0], "axis": 0, "block_size": -1}, None, r"block_size is -1"),
    ],
)
def test_validate_messages(kwargs: dict, x_shape: tuple | None, message: str) -> None:
    scale = np.asarray(kwargs.pop("scale"))
    scale = scale if scale.dtype == np.float16 else scale.astype(np.float32)
    spec = QuantSpec(scale, np.zeros(scale.shape, np.uint8), DT.UINT8, **kwargs)
    with pytest.raises(ValueError, match=message):
        spec.validate(x_shape)


def test_validate_zero_point_errors() -> None:
    scale = np.ones(2, np.float32)
    with pytest.raises(ValueError, match=r"zero_point dtype is int8, UINT8 needs uint8"):
        QuantSpec(scale, np.zeros(2, np.int8), DT.UINT8, axis=0).validate()
    with pytest.raises(
        ValueError, match=r"zero_point shape \(3,\) differs from scale shape \(2,\)"
    ):
        QuantSpec(scale, np.zeros(3, np.uint8), DT.UINT8, axis=0).validate()
    with pytest.raises(ValueError, match=r"zero_point\[1\] is 2.0, float8 needs 0"):
        QuantSpec(
            scale, np.array([0, 2], ml_dtypes.float8_e4m3fn), DT.FLOAT8E4M3FN, axis=0
        ).validate()
    with pytest.raises(ValueError, match="scale dtype is bfloat16"):
        QuantSpec.from_arrays(np.ones(2, ml_dtypes.bfloat16), np.zeros(2, np.uint8), axis=0)
    with pytest.raises(ValueError, match="scale dtype is float64"):
        QuantSpec(np.ones(2), np.zeros(2, np.uint8), DT.UINT8, axis=0).validate()


def test_block_size_bounds_follow_onnx() -> None:
    spec = QuantSpec.from_arrays(np.ones((1, 3), np.float32), None, DT.INT4, axis=1, block_size=4)
    for d in (9, 10, 11, 12):  # ceil(d / 4) == 3
        spec.validate((1, d))
    single = QuantSpec.from_arrays(
        np.ones((2, 1), np.float32), None, DT.INT4, axis=1, block_size=64
    )
    single.validate((2, 5))  # one block: any block_size >= D


def test_quantize_rounding_rules() -> None:
    spec = QuantSpec.from_arrays(np.float32(0.5), np.int8(1))
    x = np.array(
        [0.25, 0.75, -0.25, -0.75, 1.25, 0.2501], np.float32
    )  # x / s = 0.5, 1.5, -0.5, ...
    # Ties go to even before the zero point is added: an odd zero point does not shift them.
    assert spec.quantize(x).tolist() == [1, 3, 1, -1, 3, 2]


def test_quantize_special_values() -> None:
    spec = QuantSpec.from_arrays(np.float32(0.1), np.uint8(3))
    x = np.array([NAN, INF, -INF, -0.0, 1e30, 3e9, -3e9], np.float32)
    assert spec.quantize(x).tolist() == [0, 255, 0, 3, 255, 255, 0]
    int4 = QuantSpec.from_arrays(np.float32(1.0), np.zeros((), ml_dtypes.int4))
    assert int4.quantize(np.array([100.0, -100.0, 7.5, -8.5], np.float32)).tolist() == [
        7,
        -8,
        7,
        -8,
    ]


def test_quantize_scalar() -> None:
    # A 0-d weight (a Mul by a quantized scalar constant, as in PP-OCR's hard-sigmoid) gives 0-d
    # codes; numpy 2 refuses an in-place nan_to_num on the numpy scalar that 0-d arithmetic makes.
    spec = QuantSpec.from_arrays(np.float32(0.1), np.int8(0))
    codes = spec.quantize(np.array(0.44, np.float32))
    assert codes.shape == () and int(codes) == 4
    assert int(spec.quantize(np.array(np.nan, np.float32))) == -128


def test_quantize_uses_true_float32_division() -> None:
    rng = np.random.default_rng(0)
    s = np.float32(0.1)
    x = ((rng.integers(-100, 100, 200_000) + 0.5) * s + rng.normal(0, 1e-7, 200_000)).astype(
        np.float32
    )
    division = np.rint(x / s)
    reciprocal = np.rint(x * (np.float32(1) / s))
    float64 = np.rint(x.astype(np.float64) / np.float64(s))
    differ = (division != reciprocal) | (division != float64)
    assert differ.sum() > 10
    spec = QuantSpec.from_arrays(s, np.int16(0))
    assert np.array_equal(spec.quantize(x[differ]), division[differ].astype(np.int16))


def test_float8_saturation_and_rounding() -> None:
    e4m3 = QuantSpec.from_arrays(np.float32(1.0), np.zeros((), ml_dtypes.float8_e4m3fn))
    x = np.array([1.0625, 1.1875, 500.0, INF, -INF, NAN, -0.0], np.float32)  # two ties (to even)
    got = e4m3.quantize(x).astype(np.float32)
    assert got[:5].tolist() == [1.0, 1.25, 448.0, 448.0, -448.0]
    assert math.isnan(got[5]) and np.signbit(got[6])
    raw = QuantSpec.from_arrays(
        np.float32(1.0), np.zeros((), ml_dtypes.float8_e4m3fn), saturate=False
    )
    assert np.isnan(raw.quantize(np.array([500.0, INF], np.float32)).astype(np.float32)).all()
    e5m2 = QuantSpec.from_arrays(
        np.float32(1.0), np.zeros((), ml_dtypes.float8_e5m2), saturate=False
    )
    assert e5m2.quantize(np.array([1e6, -INF], np.float32)).astype(np.float32).tolist() == [
        INF,
        -INF,
    ]


def test_int32_quantize_is_refused() -> None:
    spec = QuantSpec.from_arrays(np.float32(1.0), np.int32(0))
    with pytest.raises(ValueError, match="INT32"):
        spec.quantize(np.zeros(2, np.float32))


def test_dequantize() -> None:
    spec = QuantSpec.from_arrays(
        np.array([0.5, 2.0], np.float32), np.array([1, -3], np.int8), axis=1
    )
    q = np.array([[-128, 127], [1, -3]], np.int8)
    out = spec.dequantize(q)
    assert out.dtype == np.float32 and out.tolist() == [[-64.5, 260.0], [0.0, 0.0]]
    big = QuantSpec.from_arrays(np.float32(1.0), np.int32(0))
    assert big.dequantize(np.array([2**24 + 1], np.int32)).tolist() == [16777216.0]
    half = QuantSpec.from_arrays(np.float16(3.0), np.uint8(0))
    out = half.dequantize(np.array([255, 1], np.uint8))
    assert out.dtype == np.float16 and out.tolist() == [765.0, 3.0]


def test_expand_param_layouts() -> None:
    p = np.array([[1, 2, 3]])
    assert expand_param(p, (1, 7), axis=1, block_size=3).tolist() == [[1, 1, 1, 2, 2, 2, 3]]
    assert expand_param(p, (1, 8), axis=-1, block_size=3).tolist() == [[1, 1, 1, 2, 2, 2, 3, 3]]
    assert expand_param(np.array([1, 2]), (2, 2), axis=0).tolist() == [[1, 1], [2, 2]]
    assert expand_param(np.array([5]), (2, 1)).tolist() == [[5], [5]]
    blocked = QuantSpec.from_arrays(
        np.array([[1.0], [4.0]], np.float32), np.array([[0], [1]], np.uint8), axis=0, block_size=2
    )
    assert blocked.quantize(np.array([[2.0], [2.0], [8.0]], np.float32)).tolist() == [[2], [2], [3]]
