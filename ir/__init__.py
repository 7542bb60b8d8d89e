"""qdq_passes.ir: the quantization layer over onnx_ir (imports nothing else of qdq_passes)."""
