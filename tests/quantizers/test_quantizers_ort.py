"""Property tests: the numpy reference and the torch quantizers against onnxruntime, bit for bit.

Random types, shapes and per-tensor / per-channel / blocked layouts; inputs with exact ties,
near-ties, saturation, NaN, +-Inf, -0.0 and tiny normal scales (see ``strategies``).
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings

from qdq_passes.quantizers import (
    AdaroundINTQuantizer,
    FPQuantizer,
    INTQuantizer,
    quantizer_from_spec,
)
from tests.quantizers.ort_oracle import assert_bitwise_equal, ort_dequantize, ort_qdq, ort_quantize
from tests.quantizers.strategies import FLOAT8_TYPES, INT_TYPES, Case, quant_cases

ALL_TYPES = INT_TYPES + FLOAT8_TYPES
_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(quant_cases(ALL_TYPES))
def test_reference_quantize_matches_ort(case: Case) -> None:
    assert_bitwise_equal(case.spec.quantize(case.x), ort_quantize(case.x, case.spec), "Q")


@_SETTINGS
@given(quant_cases(ALL_TYPES))
def test_reference_dequantize_matches_ort(case: Case) -> None:
    actual = case.spec.dequantize(case.q)
    expected = ort_dequantize(case.q, case.spec)
    assert actual.dtype == expected.dtype
    assert_bitwise_equal(actual, expected, "DQ")


@_SETTINGS
@given(quant_cases(ALL_TYPES))
def test_reference_qdq_matches_ort(case: Case) -> None:
    actual = case.spec.dequantize(case.spec.quantize(case.x))
    assert_bitwise_equal(actual, ort_qdq(case.x, case.spec), "Q->DQ")


@_SETTINGS
@given(quant_cases(INT_TYPES))
def test_int_quantizer_matches_ort(case: Case) -> None:
    quantizer = quantizer_from_spec(case.spec)
    assert type(quantizer) is INTQuantizer
    x = torch.from_numpy(case.x)
    codes = quantizer.quantize(x)
    assert codes.dtype == torch.float32
    assert_bitwise_equal(codes.numpy(), ort_quantize(case.x, case.spec), "quantize")
    qdq = quantizer(x)
    assert qdq.dtype == x.dtype
    assert_bitwise_equal(qdq.numpy(), ort_qdq(case.x, case.spec), "quantize_dequantize")
    stored = torch.from_numpy(case.q.astype(np.int32))
    expected = ort_dequantize(case.q, case.spec)
    folded = quantizer_from_spec(case.spec, q_folded=True)
    with np.errstate(over="ignore"):  # float16 scales: onnxruntime returns float16
        assert_bitwise_equal(
            quantizer.dequantize(stored).numpy().astype(expected.dtype), expected, "DQ"
        )
        assert_bitwise_equal(
            folded(stored.float()).numpy().astype(expected.dtype), expected, "q_folded"
        )


@_SETTINGS
@given(quant_cases(FLOAT8_TYPES))
def test_fp_quantizer_float8_matches_ort(case: Case) -> None:
    quantizer = quantizer_from_spec(case.spec)
    assert type(quantizer) is FPQuantizer
    x = torch.from_numpy(case.x)
    codes = quantizer.quantize(x).float().numpy()
    assert_bitwise_equal(codes, ort_quantize(case.x, case.spec).astype(np.float32), "quantize")
    assert_bitwise_equal(quantizer(x).numpy(), ort_qdq(case.x, case.spec), "quantize_dequantize")


@_SETTINGS
@given(quant_cases(INT_TYPES))
def test_adaround_hard_rounding_at_init_matches_ort(case: Case) -> None:
    """Initialised and hardened without training, AdaRound is ONNX's Q->DQ (NaN weights aside)."""
    weight = np.nan_to_num(case.x, nan=0.0, posinf=np.inf, neginf=-np.inf)
    quantizer = quantizer_from_spec(case.spec, adaround=True, weight=torch.from_numpy(weight))
    assert isinstance(quantizer, AdaroundINTQuantizer)
    quantizer.use_soft_rounding = False
    with torch.no_grad():
        actual = quantizer(torch.from_numpy(weight)).numpy()
    assert_bitwise_equal(actual, ort_qdq(weight, case.spec), "AdaRound hard")
