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
from qdq_passes.quantizers.materialize import materialize, write_back  # noqa: E402

__all__ += ["materialize", "write_back"]
