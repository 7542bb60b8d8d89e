"""ONNX blocks to torch modules: a converter registry keyed by (domain, op_type, opset range).

``block_to_module(nodes, inputs, outputs, opset_imports=..., quantizer_module=...)`` builds a
:class:`BlockModule`; an op without a converter raises :class:`UnsupportedOp` naming the node.
``supported_ops()`` lists what is registered. One module per op family registers its converters
on import.
"""

from qdq_passes.ir.to_torch import (  # noqa: F401  (registration on import)
    activations,
    contrib,
    conv,
    elementwise,
    generate,
    indexing,
    linear,
    normalization,
    pad,
    pooling,
    quant,
    recurrent,
    reduce,
    reduce_more,
    resize,
    shape,
)
from qdq_passes.ir.to_torch.module import BlockModule, block_to_module, graph_to_module, tensor_from_numpy
from qdq_passes.ir.to_torch.registry import (
    ConvertContext,
    Converted,
    UnsupportedOp,
    converter,
    find_converter,
    supported_ops,
)

__all__ = [
    "BlockModule",
    "ConvertContext",
    "Converted",
    "UnsupportedOp",
    "block_to_module",
    "converter",
    "find_converter",
    "graph_to_module",
    "supported_ops",
    "tensor_from_numpy",
]
