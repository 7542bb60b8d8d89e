"""``print-blocks``: show how AdaRound would cut the model into blocks (an analysis; never modifies)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Literal, TextIO

import onnx_ir

from qdq_passes.infra.errors import OptionError
from qdq_passes.infra.options import PassOptions, option
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.registry import register_pass
from qdq_passes.ir.blocks import BlockPartition

__all__ = ["PrintBlocksPass", "PrintBlocksOptions"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PrintBlocksOptions(PassOptions):
    """Options of ``print-blocks``."""

    granularity: Literal["block", "layer"] = option(
        "block", "block: single-entry single-exit regions merged to min-ops..max-ops weighted ops; layer: one weighted op each"
    )
    min_ops: int = option(1, "merge consecutive regions until a block holds at least this many weighted ops",
                          at_least=1)
    max_ops: int = option(4, "never merge past this many weighted ops; larger regions are split into layers",
                          at_least=1)

    def validate(self) -> None:
        if self.min_ops > self.max_ops:
            raise OptionError(f"option 'min-ops' must be at most max-ops ({self.max_ops}), got {self.min_ops}",
                              key="min-ops")


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
        o = self.options
        partition = BlockPartition.build(model, granularity=o.granularity, min_ops=o.min_ops, max_ops=o.max_ops)
        stream = self.stream or sys.stderr
        for block in partition:
            stream.write(block.describe() + "\n")
        stream.flush()
        self.bump("num-blocks", len(partition))
        self.bump("num-weighted-ops", sum(len(b.weighted) for b in partition))
        self.bump("num-split-regions", partition.num_split_regions)
        return onnx_ir.passes.PassResult(model, False)
