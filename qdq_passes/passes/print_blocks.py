"""``print-blocks``: show how AdaRound would cut the model into blocks (an analysis; never modifies)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import TextIO

import onnx_ir

from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.registry import register_pass
from qdq_passes.partition import PartitionOptions

__all__ = ["PrintBlocksPass", "PrintBlocksOptions"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PrintBlocksOptions(PartitionOptions):
    """Options of ``print-blocks``: how to cut the model."""


@register_pass
class PrintBlocksPass(QdqPass):
    """Print the blocks of :class:`qdq_passes.ir.blocks.BlockPartition`, one line each, to stderr.

    1. One line per block, in topological order:
       ``block 0: ops=[QuantizeLinear, DequantizeLinear, Conv] weighted=1 inputs=[x] outputs=[relu1]``
       (op types of the compute nodes in order; weight quantizers and other constant nodes are not
       listed; value names of the block's inputs and outputs).
    2. A model without weighted ops prints one block with ``weighted=0``; an empty graph prints nothing.
    3. Nodes after the last weighted op's output quantizer form a last block with ``weighted=0``.
    4. The model is never modified (``modified=False``); subgraphs are not partitioned.
    5. ``min-ops`` below 1 or above ``max-ops`` is an option error.

    The lines go to ``self.stream`` when set (tests), else to ``sys.stderr`` at the time of the call.
    """

    argument = "print-blocks"
    summary = "Print the blocks AdaRound reconstructs one at a time (never modifies)"
    Options = PrintBlocksOptions
    statistics = {
        "num-blocks": "blocks printed",
        "num-weighted-ops": "weighted ops (Conv, ConvTranspose, Gemm, MatMul with a constant weight)",
        "num-split-regions": "regions with more than max-ops weighted ops, split into layers",
    }

    def __init__(self, options: PrintBlocksOptions | None = None, **kwargs: object) -> None:
        super().__init__(options, **kwargs)
        self.stream: TextIO | None = None

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        partition = self.options.build(model)
        stream = self.stream or sys.stderr
        for block in partition:
            stream.write(block.describe() + "\n")
        stream.flush()
        self.bump("num-blocks", len(partition))
        self.bump("num-weighted-ops", sum(len(b.weighted) for b in partition))
        self.bump("num-split-regions", partition.num_split_regions)
        return onnx_ir.passes.PassResult(model, False)
