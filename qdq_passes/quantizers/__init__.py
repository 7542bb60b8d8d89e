"""Torch quantizers of the seed API (``base_qdq_quantizers``), bit-exact with ONNX Q/DQ."""

from qdq_passes.quantizers.base_qdq_quantizers import (
    AdaroundConstants,
    AdaroundINTQuantizer,
    FPQuantizer,
    INTDeQuantFunction,
    INTQuantDequantFunction,
    INTQuantFunction,
    INTQuantizer,
    RoundHalfToEven,
)
from qdq_passes.quantizers.from_spec import quantizer_from_spec

__all__ = [
    "AdaroundConstants",
    "AdaroundINTQuantizer",
    "FPQuantizer",
    "INTDeQuantFunction",
    "INTQuantDequantFunction",
    "INTQuantFunction",
    "INTQuantizer",
    "RoundHalfToEven",
    "quantizer_from_spec",
]
