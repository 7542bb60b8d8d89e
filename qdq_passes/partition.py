"""The block-partition options ``adaround`` and ``print-blocks`` share: declared, checked and
turned into a :class:`~qdq_passes.ir.blocks.BlockPartition` in one place."""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx_ir

from qdq_passes.infra.errors import OptionError
from qdq_passes.infra.options import PassOptions, option
from qdq_passes.ir.blocks import BlockPartition, Granularity

__all__ = ["Granularity", "PartitionOptions", "granularity_option", "max_ops_option", "min_ops_option"]


def granularity_option() -> Any:
    """The ``granularity`` field of an options class."""
    return option("block", "block: single-entry single-exit regions merged to min-ops..max-ops weighted ops; "
                  "layer: one weighted op each")


def min_ops_option() -> Any:
    """The ``min-ops`` field of an options class."""
    return option(1, "merge consecutive regions until a block holds at least this many weighted ops", at_least=1)


def max_ops_option() -> Any:
    """The ``max-ops`` field of an options class."""
    return option(4, "never merge past this many weighted ops; larger regions are split into layers", at_least=1)


@dataclasses.dataclass(frozen=True)
class PartitionOptions(PassOptions):
    """How to cut a model into blocks. A pass's options hold the three fields (declared with the
    functions above, where its other options put them) and check them with :meth:`of`."""

    granularity: Granularity = granularity_option()
    min_ops: int = min_ops_option()
    max_ops: int = max_ops_option()

    def validate(self) -> None:
        if self.min_ops > self.max_ops:
            raise OptionError(f"option 'min-ops' must be at most max-ops ({self.max_ops}), got {self.min_ops}",
                              key="min-ops")

    @classmethod
    def of(cls, options: Any) -> PartitionOptions:
        """The partition options held by another options object (checked on construction)."""
        return cls(options.granularity, options.min_ops, options.max_ops)

    def build(self, model: onnx_ir.Model) -> BlockPartition:
        """The model's blocks."""
        return BlockPartition.build(model, granularity=self.granularity, min_ops=self.min_ops, max_ops=self.max_ops)
