"""ONNX's own QuantizeLinear / DequantizeLinear node cases through our numpy reference and torch.

The cases are rebuilt from the test-case generators of the installed ``onnx`` package
(``onnx.backend.test.case.node.quantizelinear`` / ``dequantizelinear``): each ``export*`` method is
called with ``expect`` captured. Cases of types we do not implement (int2, uint2, float4e2m1) are
listed in ``UNSUPPORTED``; ``test_inventory`` pins the list of cases run (``RAN``: all integer and
float8 cases, through both the numpy reference and the torch quantizers; float8 in torch is
``FPQuantizer`` with a torch float8 ``quant_type``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from unittest import mock

import numpy as np
import onnx
import onnx.backend.test.case.node.dequantizelinear as dq_cases
import onnx.backend.test.case.node.quantizelinear as q_cases
import onnx_ir
import pytest
import torch
from onnx import numpy_helper

from qdq_passes.ir.quant import QuantSpec
from qdq_passes.quantizers import quantizer_from_spec
from tests.quantizers.ort_oracle import assert_bitwise_equal

UNSUPPORTED = {
    "test_quantizelinear_uint2",
    "test_quantizelinear_int2",
    "test_quantizelinear_float4e2m1",
    "test_dequantizelinear_uint2",
    "test_dequantizelinear_int2",
    "test_dequantizelinear_float4e2m1",
}
RAN = (
    "test_quantizelinear",
    "test_quantizelinear_axis",
    "test_quantizelinear_e4m3fn",
    "test_quantizelinear_e5m2",
    "test_quantizelinear_uint16",
    "test_quantizelinear_int16",
    "test_quantizelinear_uint4",
    "test_quantizelinear_int4",
    "test_quantizelinear_blocked_asymmetric",
    "test_quantizelinear_blocked_symmetric",
    "test_dequantizelinear",
    "test_dequantizelinear_axis",
    "test_dequantizelinear_e4m3fn",
    "test_dequantizelinear_e4m3fn_float16",
    "test_dequantizelinear_e4m3fn_zero_point",
    "test_dequantizelinear_e5m2",
    "test_dequantizelinear_uint16",
    "test_dequantizelinear_int16",
    "test_dequantizelinear_uint4",
    "test_dequantizelinear_int4",
    "test_dequantizelinear_blocked",
)


@dataclass(frozen=True)
class NodeCase:
    """One ONNX node case: the op, its spec, input and expected output."""

    name: str
    op: str
    spec: QuantSpec
    x: np.ndarray
    expected: np.ndarray


def _array(value: np.ndarray | onnx.TensorProto) -> np.ndarray:
    return (
        numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)
    )


@functools.cache
def _captured() -> tuple[tuple[onnx.NodeProto, list, list, str], ...]:
    """``(node, inputs, outputs, name)`` of every export of the two generators."""
    captured = []

    def capture(node: onnx.NodeProto, inputs: list, outputs: list, name: str, **_: object) -> None:
        captured.append((node, inputs, outputs, name))

    for module, cls in ((q_cases, q_cases.QuantizeLinear), (dq_cases, dq_cases.DequantizeLinear)):
        with mock.patch.object(module, "expect", capture):
            for attr, export in vars(cls).items():
                if attr.startswith("export"):
                    export.__func__()
    return tuple(captured)


def _to_case(node: onnx.NodeProto, inputs: list, outputs: list, name: str) -> NodeCase:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    x, scale, *rest = (_array(v) for v in inputs)
    zero_point = rest[0] if rest else None
    if node.op_type == "QuantizeLinear":
        qdtype = onnx_ir.DataType(attrs["output_dtype"]) if attrs.get("output_dtype") else None
    else:
        qdtype = onnx_ir.DataType.from_numpy(x.dtype)
    spec = QuantSpec.from_arrays(
        scale,
        zero_point,
        qdtype,
        axis=attrs.get("axis", 1),
        block_size=attrs.get("block_size", 0),
        saturate=bool(attrs.get("saturate", 1)),
    )
    op = "Q" if node.op_type == "QuantizeLinear" else "DQ"
    return NodeCase(name, op, spec, x, _array(outputs[0]))


def _cases() -> list[NodeCase]:
    return [_to_case(*c) for c in _captured() if c[3] in RAN]


def test_inventory() -> None:
    names = {c[3] for c in _captured()}
    assert names == set(RAN) | UNSUPPORTED, (
        f"onnx's case list changed: {sorted(names ^ (set(RAN) | UNSUPPORTED))}"
    )


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_numpy_reference(case: NodeCase) -> None:
    if case.op == "Q":
        actual = case.spec.quantize(case.x)
        assert actual.dtype == case.expected.dtype
    else:
        actual = case.spec.dequantize(case.x)
        assert actual.dtype == case.expected.dtype
    assert_bitwise_equal(actual, case.expected, case.name)


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_torch_quantizers(case: NodeCase) -> None:
    quantizer = quantizer_from_spec(case.spec)
    if case.op == "Q":
        actual = quantizer.quantize(torch.from_numpy(case.x)).float().numpy()
    else:
        codes = case.x.astype(np.float32 if case.spec.is_float8 else np.int32)
        actual = quantizer.dequantize(torch.from_numpy(codes)).numpy()
    assert_bitwise_equal(actual.astype(case.expected.dtype), case.expected, case.name)
