"""A block cut in two: what the trained rounding does not change, and what it does.

The first part (the block's activation quantizers on its inputs, folded biases, nearest-rounded
weights, ...) is evaluated once over all samples (:meth:`Split.frontier`); ``module`` computes the
block outputs that depend on the rounding from those values (``per_sample``, then ``constants``)
and the AdaRound weights (one input per quantizer, in order), so a step runs only that part.
Outputs that do not depend on the rounding are constant in the loss and left out of training.
Should a value crossing the cut not be a float tensor with the batch as its first axis (say a
``Shape``), nothing is cut: the first part is then empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir
import torch

from qdq_passes.ir.blocks import Block, is_shape_node
from qdq_passes.ir.to_torch import BlockModule, block_to_module
from qdq_passes.quantizers import materialize

__all__ = ["Split"]


class Split:
    """One block's trained part and the frontier values it reads (see the module doc)."""

    def __init__(self, block: Block, ada_nodes: Sequence[onnx_ir.Node], opset_imports: dict[str, int],
                 device: torch.device, cut: bool = True) -> None:
        ada = set(ada_nodes)
        weights = [node.outputs[0] for node in ada_nodes]
        trained, dependent = _dependent_nodes(block, ada, weights)
        prefix = [n for n in block.nodes if n not in ada and n not in trained]
        trained = _with_shape_producers(block, trained, ada)
        per_sample, constants = _frontier(block, prefix, trained, dependent)
        self.cut = cut and bool(per_sample) and all(v.dtype is not None and v.dtype.is_floating_point()
                                                    for v in per_sample)
        if self.cut:
            self.trained_outputs = [i for i, v in enumerate(block.outputs) if v in dependent]
        else:
            trained, per_sample, constants = [n for n in block.nodes if n not in ada], list(block.inputs), []
            self.trained_outputs = list(range(len(block.outputs)))
        self.outputs = [block.outputs[i] for i in self.trained_outputs]
        self.trained_nodes = trained
        self.per_sample = per_sample
        self.constants = constants

        def build(nodes: list[onnx_ir.Node], inputs: Sequence[onnx_ir.Value],
                  outputs: Sequence[onnx_ir.Value]) -> BlockModule:
            return block_to_module(nodes, inputs, outputs, opset_imports=opset_imports,
                                   quantizer_module=materialize).to(device)

        self.sample_module = build(_needed(prefix, per_sample), block.inputs, per_sample) if self.cut else None
        self.constant_module = build(_needed(prefix, constants), [], constants) if constants else None
        self.module = build(trained, [*per_sample, *constants, *weights], self.outputs)

    def frontier(self, inputs: list[torch.Tensor], chunk: int) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """The values crossing the cut: per-sample ones over all samples, and the constant ones.

        None when a per-sample value turns out to have no batch axis (cut again with ``cut=False``)."""
        with torch.no_grad():
            constants = []
            if self.constant_module is not None:
                out = self.constant_module()
                constants = list(out) if isinstance(out, tuple) else [out]
            if self.sample_module is None:
                return list(inputs), constants
            n = inputs[0].shape[0]
            parts: list[list[torch.Tensor]] = [[] for _ in self.per_sample]
            for start in range(0, n, chunk):
                out = self.sample_module(*[t[start:start + chunk] for t in inputs])
                outs = out if isinstance(out, tuple) else (out,)
                for p, t in zip(parts, outs):
                    if t.dim() == 0 or t.shape[0] != min(chunk, n - start):
                        return None
                    p.append(t)
            return [torch.cat(p) for p in parts], constants


def _dependent_nodes(block: Block, ada: set[onnx_ir.Node],
                     weights: list[onnx_ir.Value]) -> tuple[set[onnx_ir.Node], set[onnx_ir.Value]]:
    """The nodes that read an AdaRound weight, directly or not, and every value they make."""
    dependent: set[onnx_ir.Value] = set(weights)
    trained: set[onnx_ir.Node] = set()
    for node in block.nodes:
        if node not in ada and any(v is not None and v in dependent for v in node.inputs):
            trained.add(node)
            dependent.update(node.outputs)
    return trained, dependent


def _with_shape_producers(block: Block, trained: set[onnx_ir.Node], ada: set[onnx_ir.Node]) -> list[onnx_ir.Node]:
    """``trained`` (in block order) with the shape computations it reads: a shape value has no
    batch axis, so it cannot be evaluated once over all samples and sliced per batch."""
    block_nodes = set(block.nodes)
    trained = set(trained)
    memo: dict = {}
    wanted = [v for n in block.nodes if n in trained for v in n.inputs if v is not None]
    while wanted:
        producer = wanted.pop().producer()
        if (producer is not None and producer not in trained and producer not in ada
                and is_shape_node(producer, None, memo) and producer in block_nodes):
            trained.add(producer)
            wanted.extend(v for v in producer.inputs if v is not None)
    return [n for n in block.nodes if n in trained]


def _frontier(block: Block, prefix: list[onnx_ir.Node], trained: list[onnx_ir.Node],
              dependent: set[onnx_ir.Value]) -> tuple[list[onnx_ir.Value], list[onnx_ir.Value]]:
    """The values the trained part reads from the prefix or the block inputs: per sample, and constant."""
    sample_values = set(block.inputs)
    for node in prefix:
        if any(v is not None and v in sample_values for v in node.inputs):
            sample_values.update(node.outputs)
    made = {v for n in prefix for v in n.outputs} | set(block.inputs)
    frontier: list[onnx_ir.Value] = []
    for node in trained:
        for v in node.inputs:
            if v is not None and v not in dependent and v in made and v not in frontier:
                frontier.append(v)
    return [v for v in frontier if v in sample_values], [v for v in frontier if v not in sample_values]


def _needed(nodes: list[onnx_ir.Node], outputs: list[onnx_ir.Value]) -> list[onnx_ir.Node]:
    """The nodes of ``nodes`` (in order) that ``outputs`` depend on."""
    want = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(v in want for v in node.outputs):
            keep.append(node)
            want.update(v for v in node.inputs if v is not None)
    return keep[::-1]
