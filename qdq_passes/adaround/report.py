"""What ``adaround`` did to one block: its status, the path its steps took and its figures."""

from __future__ import annotations

import collections
import dataclasses
import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import onnx_ir

__all__ = ["BlockReport", "BlockResult", "BlockStatus", "RoundingPath"]


class BlockStatus(enum.StrEnum):
    """How a block ended."""

    TRAINED = "trained"  # AdaRound's rounding kept
    REVERTED = "reverted"  # AdaRound was worse than nearest on the held-out samples: nearest kept
    NO_WEIGHTS = "no-weights"  # nothing to train in the block
    SKIPPED = "skipped"  # not trained: no torch converter, torch could not run it, or an input missing
    MODEL_REVERTED = "model-reverted"  # trained, then back to nearest by the model-level check


class RoundingPath(enum.StrEnum):
    """How a block's steps were computed (a skipped block: what computed its outputs)."""

    DIRECT = "direct"  # random batches through the block module
    CONV = "conv"  # random batches, the conv+Relu fast path
    GRAM = "gram"  # every step on the Gram form of the loss
    GRAM_DIRECT = "gram+direct"  # the Gram form before the Relu, then the exact loss on batches
    GRAM_CONV = "gram+conv"  # the same, the exact steps by the conv fast path
    ONNXRUNTIME = "onnxruntime"  # skipped: outputs computed by onnxruntime
    NONE = "none"  # skipped: outputs could not be computed


@dataclasses.dataclass
class BlockReport:
    """What happened to one block."""

    index: int
    ops: str
    weights: int
    mse_nearest: float
    mse_adaround: float
    seconds: float
    status: BlockStatus
    path: RoundingPath = RoundingPath.DIRECT
    shrink: float = 0.0  # the Gram loss's shrinkage kept (``shrink``; 0: none)
    polished: int = 0  # codes flipped by the polish (``polish``) and kept
    cause: str = ""  # why a block was skipped

    def line(self) -> str:
        """One line for the statistics report."""
        if self.status == BlockStatus.NO_WEIGHTS:
            return f"block {self.index} [{self.ops}]: {self.status}"
        if self.status == BlockStatus.SKIPPED:
            return f"block {self.index} [{self.ops}]: skipped, outputs by {self.path} ({self.cause})"
        extra = (f", shrink {self.shrink:g}" if self.shrink else "") + (
            f", {self.polished} polished" if self.polished else "")
        return (f"block {self.index} [{self.ops}]: {self.weights} weights, mse nearest {self.mse_nearest:.4g} "
                f"-> adaround {self.mse_adaround:.4g} ({self.status}, {self.path}{extra}, {self.seconds:.1f} s)")


@dataclasses.dataclass
class BlockResult:
    """A block's report and what it adds to the pass's statistics."""

    report: BlockReport
    stats: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    #: the quantizers whose codes the block wrote, each with its nearest-rounding codes
    written: list[tuple[onnx_ir.Node, np.ndarray]] = dataclasses.field(default_factory=list)
