"""The converter registry: ONNX op (domain, op_type, opset range) -> torch callable.

A converter is a function ``(node, ctx) -> Converted`` registered with :func:`converter`. It reads
attributes and constant inputs at conversion time and returns a callable evaluated at every
forward on the run-time inputs it names. Converters never capture tensors in closures (they would
not follow ``module.to(device)``): constants needed at run time are passed as inputs, which the
block module holds as buffers; Python scalars and lists may be captured.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir
import torch
from torch import nn

from qdq_passes.ir.qdq import node_label

__all__ = [
    "ConvertContext",
    "Converted",
    "ConverterFn",
    "UnsupportedOp",
    "constant_node_array",
    "converter",
    "find_converter",
    "ints_of",
    "is_constant_node",
    "normalize_domain",
    "supported_ops",
    "torch_dtype",
    "value_array",
]

QuantizerCallback = Callable[[onnx_ir.Node], nn.Module]


class UnsupportedOp(NotImplementedError):
    """A node that no registered converter handles (op, opset or attribute); the message names it."""

    def __init__(self, node: onnx_ir.Node, reason: str) -> None:
        self.node_name = node.name
        self.op_type = node.op_type
        self.domain = node.domain
        self.reason = reason
        super().__init__(f"node {node_label(node)}: {reason}")


@dataclasses.dataclass(frozen=True)
class Converted:
    """What a converter produces for one node.

    ``fn(*run-time inputs)`` returns a tensor (one output) or a sequence of tensors (several);
    ``inputs`` are positions in ``node.inputs`` passed to ``fn`` in that order (a missing optional
    input is passed as ``None``); ``module``, if any, is registered as a submodule of the block so
    that its parameters train and it follows ``.to(device)``. ``multi``: ``fn`` returns one tensor
    per node output; otherwise it returns the first output and the others must be unused.
    """

    fn: Callable[..., Any]
    inputs: tuple[int, ...] = (0,)
    module: nn.Module | None = None
    multi: bool = False


ConverterFn = Callable[[onnx_ir.Node, "ConvertContext"], Converted]


def normalize_domain(domain: str) -> str:
    """``"ai.onnx"`` is the default domain ``""``."""
    return "" if domain == "ai.onnx" else domain


@dataclasses.dataclass(frozen=True)
class _Entry:
    since: int
    until: int | None
    fn: ConverterFn


_REGISTRY: dict[tuple[str, str], list[_Entry]] = {}


def converter(
    op_type: str, *, since: int = 1, until: int | None = None, domain: str = ""
) -> Callable[[ConverterFn], ConverterFn]:
    """Register the decorated function for ``op_type`` at opsets ``since..until`` (inclusive)."""

    def register(fn: ConverterFn) -> ConverterFn:
        entries = _REGISTRY.setdefault((normalize_domain(domain), op_type), [])
        hi = math.inf if until is None else until
        for e in entries:
            e_hi = math.inf if e.until is None else e.until
            if since <= e_hi and e.since <= hi:
                raise ValueError(f"converter for {op_type} opset {since}..{until} overlaps {e.since}..{e.until}")
        entries.append(_Entry(since, until, fn))
        return fn

    return register


def find_converter(domain: str, op_type: str, version: int) -> ConverterFn | None:
    """The converter registered for ``op_type`` of ``domain`` at opset ``version``, or None."""
    for e in _REGISTRY.get((normalize_domain(domain), op_type), ()):
        if e.since <= version and (e.until is None or version <= e.until):
            return e.fn
    return None


def supported_ops() -> dict[tuple[str, str], list[tuple[int, int | None]]]:
    """``{(domain, op_type): [(since, until), ...]}`` for every registered converter."""
    return {k: sorted((e.since, e.until) for e in v) for k, v in sorted(_REGISTRY.items())}


def is_constant_node(node: onnx_ir.Node | None) -> bool:
    """Whether ``node`` is a standard-domain ``Constant``."""
    return node is not None and node.op_type == "Constant" and normalize_domain(node.domain) == ""


def constant_node_array(node: onnx_ir.Node) -> np.ndarray:
    """The value of a ``Constant`` node (any of its ``value*`` attributes)."""
    for name, attr in node.attributes.items():
        if name == "value":
            return attr.as_tensor().numpy()
        if name == "value_float":
            return np.array(attr.as_float(), np.float32)
        if name == "value_floats":
            return np.array(attr.as_floats(), np.float32)
        if name == "value_int":
            return np.array(attr.as_int(), np.int64)
        if name == "value_ints":
            return np.array(attr.as_ints(), np.int64)
    raise UnsupportedOp(node, "Constant without a tensor, float(s) or int(s) value")


def value_array(value: onnx_ir.Value | None) -> np.ndarray | None:
    """A value's constant contents (initializer or ``Constant`` node output), else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if is_constant_node(producer):
        assert producer is not None
        return constant_node_array(producer)
    return None


class ConvertContext:
    """What a converter may ask about the node being converted."""

    def __init__(
        self,
        node: onnx_ir.Node,
        opset: int,
        quantizer_module: QuantizerCallback | None,
        flexible_batch: bool,
    ) -> None:
        self.node = node
        self.opset = opset
        self.quantizer_module = quantizer_module
        self.flexible_batch = flexible_batch

    def unsupported(self, reason: str) -> UnsupportedOp:
        """An :class:`UnsupportedOp` for this node (to raise)."""
        return UnsupportedOp(self.node, reason)

    def has_input(self, i: int) -> bool:
        """Whether optional input ``i`` is given."""
        return i < len(self.node.inputs) and self.node.inputs[i] is not None

    def constant(self, i: int) -> np.ndarray | None:
        """Input ``i`` as a numpy array when it is constant (None when missing or computed)."""
        if not self.has_input(i):
            return None
        return value_array(self.node.inputs[i])

    def require_constant(self, i: int, what: str) -> np.ndarray:
        """Input ``i`` as a numpy array; raises :class:`UnsupportedOp` when it is not constant."""
        arr = self.constant(i)
        if arr is None:
            raise self.unsupported(f"{what} (input {i}) must be a constant")
        return arr

    def static_shape(self, i: int) -> tuple[int | None, ...] | None:
        """Input ``i``'s shape from the graph (None per unknown dim), or None when unknown."""
        if not self.has_input(i):
            return None
        value = self.node.inputs[i]
        assert value is not None
        if value.shape is None:
            return None
        return tuple(d if isinstance(d, int) else None for d in value.shape.dims)

    def num_outputs_used(self) -> int:
        """1 + the index of the last output that is consumed or a graph output."""
        used = 0
        for i, out in enumerate(self.node.outputs):
            if out.name and (out.uses() or out.is_graph_output()):
                used = i + 1
        return used

    def attr_int(self, name: str, default: int) -> int:
        """An INT attribute."""
        return self.node.attributes.get_int(name, default)

    def attr_float(self, name: str, default: float) -> float:
        """A FLOAT attribute."""
        return self.node.attributes.get_float(name, default)

    def attr_ints(self, name: str, default: Sequence[int] | None = None) -> list[int] | None:
        """An INTS attribute as a list (``default`` when absent)."""
        value = self.node.attributes.get_ints(name, default)
        return None if value is None else list(value)

    def attr_string(self, name: str, default: str) -> str:
        """A STRING attribute."""
        return self.node.attributes.get_string(name, default)

    def reject_attrs(self, **unsupported: Any) -> None:
        """Raise when an attribute is set to a value other than the one given (the supported one)."""
        for name, ok in unsupported.items():
            attr = self.node.attributes.get(name)
            if attr is not None and attr.value != ok:
                raise self.unsupported(f"attribute {name}={attr.value!r} is not supported")


def ints_of(arr: np.ndarray | None) -> list[int] | None:
    """A constant integer array as a list of Python ints (None stays None)."""
    return None if arr is None else [int(v) for v in np.asarray(arr).reshape(-1)]


def torch_dtype(dtype: onnx_ir.DataType) -> torch.dtype:
    """The torch dtype holding ONNX ``dtype`` values (raises KeyError for the others)."""
    return _TORCH_DTYPES[dtype]


_TORCH_DTYPES: Mapping[onnx_ir.DataType, torch.dtype] = {
    onnx_ir.DataType.FLOAT: torch.float32,
    onnx_ir.DataType.DOUBLE: torch.float64,
    onnx_ir.DataType.FLOAT16: torch.float16,
    onnx_ir.DataType.BFLOAT16: torch.bfloat16,
    onnx_ir.DataType.INT8: torch.int8,
    onnx_ir.DataType.UINT8: torch.uint8,
    onnx_ir.DataType.INT16: torch.int16,
    onnx_ir.DataType.INT32: torch.int32,
    onnx_ir.DataType.INT64: torch.int64,
    onnx_ir.DataType.BOOL: torch.bool,
}
