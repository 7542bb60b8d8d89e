"""The bit-exactness matrix: small float models quantized by onnxruntime in every configuration
the Q/DQ passes must handle (issue: "Q/DQ passes ... with bit-exact round trips").

``quantized(model, config)`` is cached per process (quantize_static is the slow part), returned as
serialized bytes so no caller can alias another's tensors.
"""

from __future__ import annotations

import functools
import logging
import tempfile

import numpy as np
import onnx

from tests.models import attention_model, conv_relu_model, mlp_model, ort_quantize, random_inputs

__all__ = ["MODELS", "CONFIGS", "CASES", "quantized", "float_model", "feeds"]

MODELS = {"conv": conv_relu_model, "mlp": mlp_model, "attention": attention_model}

#: name -> ort_quantize keyword arguments
CONFIGS: dict[str, dict] = {
    "u8s8-channel": dict(per_channel=True, weight_type="QInt8", activation_type="QUInt8"),
    "s8s8-tensor": dict(per_channel=False, weight_type="QInt8", activation_type="QInt8"),
    "int4-channel": dict(per_channel=True, weight_type="QInt4", activation_type="QUInt8", opset=21),
    "int4-contrib": dict(per_channel=True, weight_type="QInt4", activation_type="QUInt8"),
    "int4-block32": dict(per_channel=False, weight_type="QInt4", activation_type="QUInt8", opset=21,
                         extra_options={"BlockSize": 32}),
    "int16-weights": dict(per_channel=True, weight_type="QInt16", activation_type="QUInt16"),
    "u8s8-pair": dict(per_channel=True, weight_type="QInt8", activation_type="QUInt8",
                      extra_options={"AddQDQPairToWeight": True}),
    "u8s8-dedicated": dict(per_channel=True, weight_type="QInt8", activation_type="QUInt8",
                           extra_options={"DedicatedQDQPair": True}),
    "int4-pair": dict(per_channel=True, weight_type="QInt4", activation_type="QUInt8", opset=21,
                      extra_options={"AddQDQPairToWeight": True}),
}

#: onnxruntime writes blocked int4 only for MatMul (it crashes on Gemm), so only the attention model.
CASES = [(m, c) for m in MODELS for c in CONFIGS if c != "int4-block32" or m == "attention"]


@functools.cache
def _quantized_bytes(model: str, config: str) -> bytes:
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's "consider pre-processing" warnings
    with tempfile.TemporaryDirectory() as tmp:
        return ort_quantize(MODELS[model](), tmp, **CONFIGS[config]).SerializeToString()


def quantized(model: str, config: str) -> onnx.ModelProto:
    """The onnxruntime-quantized model for one matrix case (a fresh proto each call)."""
    return onnx.load_model_from_string(_quantized_bytes(model, config))


def float_model(model: str) -> onnx.ModelProto:
    """The float model of a matrix case."""
    return MODELS[model]()


def feeds(model: str, n: int = 3) -> list[dict[str, np.ndarray]]:
    """Random inputs (seeded) for the model, with some large values to exercise saturation."""
    out = random_inputs(MODELS[model](), n=n, seed=7)
    for i, feed in enumerate(out):
        for value in feed.values():
            value *= 1.0 + 2.0 * i  # the later inputs saturate activation quantizers
    return out
