"""onnxruntime as the oracle: QuantizeLinear / DequantizeLinear / Q->DQ models at opset 21.

Sessions have dynamic shapes and take scale and zero point as inputs, so one session serves every
example of a (op, type, layout) combination. onnxruntime's Python binding rejects int4 and float8
arrays (qdq_semantics.md 3.4), so those travel as int8/uint8/float32 and are Cast inside the graph.
Optimisations are off and one thread is used.
"""

from __future__ import annotations

import functools

import ml_dtypes
import numpy as np
import onnx_ir
import onnxruntime as ort
from onnx import TensorProto, helper

from qdq_passes.ir.quant import QuantSpec

__all__ = ["OPSET", "assert_bitwise_equal", "ort_dequantize", "ort_qdq", "ort_quantize"]

OPSET = 21
_CARRIER = {  # quantized type -> (type fed to / read from onnxruntime, its numpy dtype)
    onnx_ir.DataType.INT4: (TensorProto.INT8, np.int8),
    onnx_ir.DataType.UINT4: (TensorProto.UINT8, np.uint8),
    onnx_ir.DataType.FLOAT8E4M3FN: (TensorProto.FLOAT, np.float32),
    onnx_ir.DataType.FLOAT8E4M3FNUZ: (TensorProto.FLOAT, np.float32),
    onnx_ir.DataType.FLOAT8E5M2: (TensorProto.FLOAT, np.float32),
    onnx_ir.DataType.FLOAT8E5M2FNUZ: (TensorProto.FLOAT, np.float32),
}


def _carrier(qdtype: onnx_ir.DataType) -> tuple[int, type]:
    """The ONNX and numpy types that carry ``qdtype`` in and out of onnxruntime."""
    return _CARRIER.get(qdtype, (int(qdtype), np.dtype(qdtype.numpy()).type))


@functools.cache
def _session(
    op: str,
    qdtype: onnx_ir.DataType,
    float_type: int,
    axis: int | None,
    block_size: int,
    saturate: bool,
) -> ort.InferenceSession:
    """A cached session for ``op`` in {"Q", "DQ", "QDQ"}; inputs x, s, z; output y."""
    carrier, _ = _carrier(qdtype)
    attrs: dict[str, int] = {}
    if axis is not None:
        attrs["axis"] = axis
    if block_size:
        attrs["block_size"] = block_size
    q_attrs = dict(attrs, saturate=int(saturate)) if qdtype.is_floating_point() else attrs
    nodes, zp = [], "z"
    # saturate=0 keeps +-Inf codes (Cast to float8 saturates by default); ignored for int4.
    cast_attrs = {"saturate": 0} if qdtype.is_floating_point() else {}
    if carrier != int(qdtype):
        nodes.append(helper.make_node("Cast", ["z"], ["zq"], to=int(qdtype), **cast_attrs))
        zp = "zq"
    x_type = carrier if op == "DQ" else float_type
    if op == "DQ":
        codes = "x"
        if carrier != int(qdtype):
            nodes.append(helper.make_node("Cast", ["x"], ["xq"], to=int(qdtype), **cast_attrs))
            codes = "xq"
        nodes.append(helper.make_node("DequantizeLinear", [codes, "s", zp], ["y"], **attrs))
        y_type = float_type
    else:
        q_out = "y" if op == "Q" and carrier == int(qdtype) else "q"
        nodes.append(helper.make_node("QuantizeLinear", ["x", "s", zp], [q_out], **q_attrs))
        if op == "QDQ":
            nodes.append(helper.make_node("DequantizeLinear", ["q", "s", zp], ["y"], **attrs))
            y_type = float_type
        else:
            if q_out == "q":
                nodes.append(helper.make_node("Cast", ["q"], ["y"], to=carrier))
            y_type = carrier
    graph = helper.make_graph(
        nodes,
        f"oracle_{op}",
        [
            helper.make_tensor_value_info("x", x_type, None),
            helper.make_tensor_value_info("s", float_type, None),
            helper.make_tensor_value_info("z", carrier, None),
        ],
        [helper.make_tensor_value_info("y", y_type, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _run(op: str, x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Run ``op`` on ``x`` with ``spec``'s parameters as inputs."""
    axis = None if spec.granularity == "tensor" else spec.axis
    float_type = TensorProto.FLOAT16 if spec.scale.dtype == np.float16 else TensorProto.FLOAT
    session = _session(op, spec.qdtype, float_type, axis, spec.block_size, spec.saturate)
    _, carrier = _carrier(spec.qdtype)
    feeds = {"x": x, "s": np.ascontiguousarray(spec.scale), "z": spec.zero_point.astype(carrier)}
    return session.run(None, feeds)[0]


def ort_quantize(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """onnxruntime QuantizeLinear of ``x`` (in the scale's float type): codes in storage dtype."""
    codes = _run("Q", np.asarray(x, dtype=spec.scale.dtype), spec)
    return codes.astype(spec.zero_point.dtype)


def ort_dequantize(q: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """onnxruntime DequantizeLinear of codes ``q`` (storage dtype)."""
    return _run("DQ", np.asarray(q).astype(_carrier(spec.qdtype)[1]), spec)


def ort_qdq(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """onnxruntime QuantizeLinear then DequantizeLinear."""
    return _run("QDQ", np.asarray(x, dtype=spec.scale.dtype), spec)


def assert_bitwise_equal(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """Same values whatever the dtypes: integers equal; floats bit for bit (NaN = NaN, -0 != 0)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if np.issubdtype(expected.dtype, np.integer) or expected.dtype in (
        ml_dtypes.int4,
        ml_dtypes.uint4,
    ):
        a, e = actual.astype(np.int64), expected.astype(np.int64)
        same = a == e
    else:
        a, e = actual.astype(np.float32), expected.astype(np.float32)
        same = (a == e) & (np.signbit(a) == np.signbit(e)) | (np.isnan(a) & np.isnan(e))
    if not same.all():
        idx = np.argwhere(~same)[:8]
        rows = ", ".join(f"{tuple(i)}: {a[tuple(i)]!r} != {e[tuple(i)]!r}" for i in idx)
        raise AssertionError(f"{what}: {int((~same).sum())} of {same.size} differ: {rows}")
