"""Clean-up passes: onnx_ir's common passes under short names, plus ``constants-to-initializers``.

Each wraps the onnx_ir pass that does the work (never re-written here) and adds what qdq-opt
needs: a registry name, typed options and statistics.
"""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir
from onnx_ir.passes import common as ir_common

from qdq_passes.infra.errors import OptionError
from qdq_passes.infra.verify import verify_model
from qdq_passes.infra.options import PassOptions, option
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.registry import register_pass

__all__ = [
    "DeadCodeEliminationPass",
    "CommonSubexpressionEliminationPass",
    "TopologicalSortPass",
    "CheckPass",
    "ShapeInferencePass",
    "ConstantsToInitializersPass",
    "FoldConstantsPass",
    "infer_shapes",
]

logger = logging.getLogger(__name__)


def _count_nodes(model: onnx_ir.Model) -> int:
    return sum(1 for _ in onnx_ir.traversal.RecursiveGraphIterator(model.graph))


def _count_initializers(model: onnx_ir.Model) -> int:
    return sum(len(graph.initializers) for graph in model.graphs())


@register_pass
class DeadCodeEliminationPass(QdqPass):
    """Remove nodes whose outputs nothing uses, then unused initializers, functions and opsets.

    1. A node none of whose outputs is used or is a graph output: removed (in subgraphs too).
    2. An initializer that no node uses and that is not a graph output: removed.
    3. A model-local function that no node calls: removed.
    4. An opset import that no node uses: removed (the default domain is always kept).
    """

    argument = "dce"
    summary = "Remove unused nodes, initializers, functions and opset imports"
    statistics = {"num-nodes-removed": "nodes removed", "num-initializers-removed": "initializers removed"}

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        nodes, inits = _count_nodes(model), _count_initializers(model)
        modified = ir_common.RemoveUnusedNodesPass()(model).modified
        modified |= ir_common.RemoveUnusedFunctionsPass()(model).modified
        modified |= ir_common.RemoveUnusedOpsetsPass()(model).modified
        self.bump("num-nodes-removed", nodes - _count_nodes(model))
        self.bump("num-initializers-removed", inits - _count_initializers(model))
        return onnx_ir.passes.PassResult(model, modified)


@register_pass
class CommonSubexpressionEliminationPass(QdqPass):
    """Merge nodes that compute the same thing from the same inputs with the same attributes.

    1. Two nodes with equal op, domain, attributes and inputs: the later one's uses go to the earlier.
    2. Nodes with subgraphs, and non-deterministic ops (e.g. RandomNormal), are left alone.
    3. A node whose outputs are graph outputs keeps them (the graph's signature does not change).
    """

    argument = "cse"
    summary = "Merge duplicate computations (common subexpression elimination)"
    statistics = {"num-nodes-removed": "duplicate nodes removed"}

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        before = _count_nodes(model)
        result = ir_common.CommonSubexpressionEliminationPass()(model)
        self.bump("num-nodes-removed", before - _count_nodes(model))
        return onnx_ir.passes.PassResult(model, result.modified)


@register_pass
class TopologicalSortPass(QdqPass):
    """Order nodes so each comes after the producers of its inputs (stable for already sorted graphs)."""

    argument = "topo-sort"
    summary = "Sort nodes topologically (stable: a sorted graph is left as it is)"

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        return onnx_ir.passes.PassResult(model, ir_common.TopologicalSortPass()(model).modified)


@dataclasses.dataclass(frozen=True)
class CheckOptions(PassOptions):
    """Options of ``check``."""

    full_check: bool = option(False, "also run ONNX shape inference in strict mode")


@register_pass
class CheckPass(QdqPass):
    """Run the ONNX checker (large initializers left out of the copy it checks); never modifies."""

    argument = "check"
    summary = "Validate the model with the ONNX checker"
    Options = CheckOptions

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        verify_model(model, full_check=self.options.full_check)
        return onnx_ir.passes.PassResult(model, False)


class _Captured(logging.Handler):
    """Holds the exception onnx_ir's shape inference logs (as a traceback) instead of raising."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.error = record.exc_info[1]


def infer_shapes(model: onnx_ir.Model, *, who: str, strict: bool = False, data_prop: bool = True) -> bool:
    """ONNX shape inference merged into ``model`` (onnx_ir's pass); whether anything changed.

    An exported model onnxruntime runs can still fail inference (``Inferred shape and existing
    shape differ in rank``): then shapes stay as they were and one warning line names the cause
    (onnx_ir would log a traceback), or, with ``strict``, a ``QdqError`` says it.
    """
    from qdq_passes.infra.errors import QdqError

    captured = _Captured()
    inner_logger = logging.getLogger(ir_common.ShapeInferencePass.__module__)
    inner_logger.addHandler(captured)
    propagate, inner_logger.propagate = inner_logger.propagate, False
    try:
        modified = ir_common.ShapeInferencePass(strict_mode=strict, data_prop=data_prop)(model).modified
    finally:
        inner_logger.removeHandler(captured)
        inner_logger.propagate = propagate
    if captured.error is not None:
        text = str(captured.error).strip()
        cause = text.splitlines()[0][:300] if text else type(captured.error).__name__
        if strict:
            raise QdqError(f"{who}: shape inference failed: {cause}")
        logger.warning("%s: shape inference failed, shapes left as they were: %s", who, cause)
    return modified


@dataclasses.dataclass(frozen=True)
class ShapeInferOptions(PassOptions):
    """Options of ``shape-infer``."""

    strict: bool = option(False, "fail on inference errors instead of leaving shapes unknown")
    data_prop: bool = option(True, "propagate constant shape values (Shape -> Reshape chains)")


@register_pass
class ShapeInferencePass(QdqPass):
    """Fill in value types and shapes with ONNX shape inference; existing information is merged."""

    argument = "shape-infer"
    summary = "Infer value types and shapes with ONNX shape inference"
    Options = ShapeInferOptions

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        modified = infer_shapes(model, who=self.argument, strict=self.options.strict, data_prop=self.options.data_prop)
        return onnx_ir.passes.PassResult(model, modified)


@dataclasses.dataclass(frozen=True)
class ConstantsToInitializersOptions(PassOptions):
    """Options of ``constants-to-initializers``."""

    min_elements: int = option(0, "lift only tensors with at least this many elements", at_least=0)
    all_constants: bool = option(False, "also lift value_float(s)/value_int(s)/value_string(s) Constants")


@register_pass
class ConstantsToInitializersPass(QdqPass):
    """Turn tensor-valued ``Constant`` nodes into initializers, so weight quantizers can see them.

    Paddle exports keep every weight in a Constant node; quantizers (onnxruntime's included) only
    treat initializers as weights.

    1. ``Constant(value=tensor)``: becomes an initializer named as the Constant's output.
    2. Scalar/list forms (``value_float``, ``value_ints``, ...): lifted only with ``all-constants``.
    3. A Constant whose output is a graph output: kept (an initializer cannot be one).
    4. Constants inside subgraphs become initializers of that subgraph.
    """

    argument = "constants-to-initializers"
    summary = "Turn tensor-valued Constant nodes into initializers"
    Options = ConstantsToInitializersOptions
    statistics = {"num-lifted": "Constant nodes turned into initializers"}

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        before = _count_initializers(model)
        inner = ir_common.LiftConstantsToInitializersPass(
            lift_all_constants=self.options.all_constants, size_limit=self.options.min_elements
        )
        modified = inner(model).modified
        self.bump("num-lifted", _count_initializers(model) - before)
        return onnx_ir.passes.PassResult(model, modified)


@dataclasses.dataclass(frozen=True)
class FoldConstantsOptions(PassOptions):
    """Options of ``fold-constants``."""

    inputs: tuple[str, ...] = option(
        (), "NAME=VALUE: graph inputs bound to a constant first (a sample rate: an If on it is then inlined)")

    def validate(self) -> None:
        for entry in self.inputs:
            name, sep, value = entry.partition("=")
            if not sep or not name or not value:
                raise OptionError(f"option 'inputs': entry {entry!r}: expected NAME=VALUE", key="inputs")


@register_pass
class FoldConstantsPass(QdqPass):
    """Fold what computes from constants alone (onnxscript's constant folder), Q/DQ left alone.

    1. ``inputs``: each named graph input becomes an initializer holding VALUE (one number,
       filling the input's shape, symbolic dims taken as 1, in its dtype).
    2. onnxscript's ``fold_constants`` then folds constant subexpressions (a ``Cast`` of a constant
       feeding a ``Reshape``) and inlines an ``If`` whose condition became constant.
    3. ``QuantizeLinear``, ``DequantizeLinear`` and the dialect's quantizers are never folded:
       weight quantization stays as it is.
    """

    argument = "fold-constants"
    summary = "Fold constant subexpressions (onnxscript's folder), optionally binding inputs to values first"
    Options = FoldConstantsOptions
    statistics = {"num-bound": "graph inputs bound to a constant", "num-folded": "nodes removed by folding"}

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        import numpy as np
        from onnxscript.optimizer import fold_constants

        from qdq_passes.ir import dialect
        from qdq_passes.ir.qdq import is_dequantize, is_quantize

        inputs = {v.name: v for v in model.graph.inputs}
        for entry in self.options.inputs:
            name, _, text = entry.partition("=")
            value = inputs.get(name)
            if value is None:
                raise OptionError(f"fold-constants: no graph input {name!r} (graph inputs: {', '.join(inputs)})")
            dtype = (value.dtype or onnx_ir.DataType.FLOAT).numpy()
            try:
                number = float(text) if np.issubdtype(dtype, np.floating) else int(text)
            except ValueError:
                raise OptionError(f"fold-constants: input {name!r}: {text!r} is not a {dtype} number") from None
            shape = [d if isinstance(d, int) else 1 for d in value.shape] if value.shape is not None else []
            model.graph.inputs.remove(value)
            value.const_value = onnx_ir.tensor(np.full(shape, number, dtype), name=name)
            model.graph.register_initializer(value)
            self.bump("num-bound")

        def should_fold(node: onnx_ir.Node) -> bool | None:
            if is_quantize(node) or is_dequantize(node) or dialect.is_quantizer(node):
                return False
            return None

        before = _count_nodes(model)
        fold_constants(model, should_fold=should_fold)
        ir_common.RemoveUnusedNodesPass()(model)
        # An inlined If's dropped branch still lists itself among its initializers' uses, so the
        # pass above keeps them: drop the initializers no node of the graph reads.
        read = {v for node in onnx_ir.traversal.RecursiveGraphIterator(model.graph) for v in node.inputs}
        for name, value in list(model.graph.initializers.items()):
            if value not in read and not value.is_graph_output() and not value.is_graph_input():
                del model.graph.initializers[name]
        self.bump("num-folded", before - _count_nodes(model))
        modified = bool(self.stats.get("num-bound") or before != _count_nodes(model))
        return onnx_ir.passes.PassResult(model, modified)
