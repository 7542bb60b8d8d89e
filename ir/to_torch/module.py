"""Turn a list of ONNX nodes (a block) into a ``torch.nn.Module``.

The module is a flat program: a list of ``(callable, input slots, output slots)`` steps run in
order over a Python list of tensors (the slots), prefilled with the block's constants. No name
lookups, no conversions and no allocations beyond the ops' own happen per call.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import onnx_ir
import torch
from torch import nn

from qdq_passes.ir.to_torch.registry import (
    ConvertContext,
    QuantizerCallback,
    UnsupportedOp,
    is_constant_node,
    constant_node_array,
    find_converter,
    normalize_domain,
)

__all__ = ["BlockModule", "block_to_module", "graph_to_module", "tensor_from_numpy"]

logger = logging.getLogger(__name__)

_VIEWS = {
    np.dtype(ml_dtypes.bfloat16): (np.uint16, torch.bfloat16),
    np.dtype(ml_dtypes.float8_e4m3fn): (np.uint8, torch.float8_e4m3fn),
    np.dtype(ml_dtypes.float8_e4m3fnuz): (np.uint8, torch.float8_e4m3fnuz),
    np.dtype(ml_dtypes.float8_e5m2): (np.uint8, torch.float8_e5m2),
    np.dtype(ml_dtypes.float8_e5m2fnuz): (np.uint8, torch.float8_e5m2fnuz),
}
_WIDEN = {
    np.dtype(ml_dtypes.int4): np.int8,
    np.dtype(ml_dtypes.uint4): np.uint8,
    np.dtype(np.uint16): np.int32,
    np.dtype(np.uint32): np.int64,
    np.dtype(np.uint64): np.int64,
}


def tensor_from_numpy(arr: np.ndarray) -> torch.Tensor:
    """A fresh torch tensor with ``arr``'s values and the closest dtype.

    Float, integer and bool dtypes are kept; bfloat16 and float8 (ml_dtypes) map to torch's own;
    int4/uint4 widen to int8/uint8 and uint16/uint32/uint64 to int32/int64/int64.
    """
    arr = np.asarray(arr)
    if arr.dtype in _VIEWS:
        raw, dtype = _VIEWS[arr.dtype]
        return torch.from_numpy(np.array(arr.view(raw), copy=True)).view(dtype)
    if arr.dtype in _WIDEN:
        arr = arr.astype(_WIDEN[arr.dtype])
    return torch.from_numpy(np.array(arr, copy=True))


def _buffer_name(index: int, value_name: str) -> str:
    return f"c{index}_" + re.sub(r"\W", "_", value_name)[:48]


class BlockModule(nn.Module):
    """A converted block: ``forward(*inputs)`` returns the block outputs (a tensor when one).

    Attributes: ``input_names``, ``output_names`` (ONNX value names), ``constant_names``
    (``{ONNX value name: buffer name}``), ``quantizers`` (the callback's modules, in node order)
    with ``quantizer_names`` (their nodes' names), and ``op_types`` (the steps' ops).
    Rebuild it (cheap) after the graph changes; it keeps no reference to the IR.
    """

    def __init__(self) -> None:
        super().__init__()
        self.quantizers = nn.ModuleList()
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self.constant_names: dict[str, str] = {}
        self.quantizer_names: list[str] = []
        self.op_types: list[str] = []
        self._steps: list[tuple[Callable[..., Any], tuple[int, ...], tuple[int, ...], bool]] = []
        self._dead_after: list[tuple[int, ...]] = []  # per step: slots no later step nor output reads
        self._input_slots: tuple[int, ...] = ()
        self._output_slots: tuple[int, ...] = ()
        self._const_slots: list[tuple[int, str]] = []
        self._n_slots = 1
        self._template: list[Any] = [None]
        self._input_axes: tuple[int | None, ...] | None = None
        self._output_axes: tuple[int | None, ...] = ()

    def set_batch_layout(self, input_axes: Sequence[int | None], output_axes: Sequence[int | None]) -> BlockModule:
        """Take inputs and give outputs with their samples on axis 0 where the block's values hold
        the batch elsewhere (a recurrent state ``[2, B, H]``, a sequence-first ``[T, B, C]``).

        Input ``i`` is moved from axis 0 to ``input_axes[i]`` (None: one value shared by all samples,
        the first is taken; inputs past the list pass unchanged); output ``j`` from
        ``output_axes[j]`` to axis 0 (None: shared, repeated for each sample as a stride-0 view).
        """
        self._input_axes = tuple(input_axes)
        self._output_axes = tuple(output_axes)
        return self

    def _to_block_layout(self, inputs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
        assert self._input_axes is not None
        moved, n = list(inputs), 1
        for i, axis in enumerate(self._input_axes):
            if axis is None:
                moved[i] = inputs[i][0]
            else:
                n = inputs[i].shape[0]
                moved[i] = inputs[i].movedim(0, axis) if axis else inputs[i]
        return moved, n

    def _from_block_layout(self, outputs: Sequence[torch.Tensor], n: int) -> list[torch.Tensor]:
        return [y.unsqueeze(0).expand(n, *y.shape) if axis is None else y.movedim(axis, 0) if axis else y
                for y, axis in zip(outputs, self._output_axes)]

    def _refresh(self) -> None:
        """Rebuild the slot template from the current buffers (after ``to()``, ``float()``, ...)."""
        template: list[Any] = [None] * self._n_slots
        for slot, name in self._const_slots:
            template[slot] = self._buffers[name]
        self._template = template

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any) -> BlockModule:
        super()._apply(fn, *args, **kwargs)
        self._refresh()
        return self

    def register_buffer(self, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        """As ``nn.Module.register_buffer``; keeps the slot template in sync."""
        super().register_buffer(name, tensor, persistent)
        if self.__dict__.get("_const_slots"):
            self._refresh()

    def __setattr__(self, name: str, value: Any) -> None:
        """As ``nn.Module.__setattr__``; assigning a constant's buffer updates the template."""
        super().__setattr__(name, value)
        if self.__dict__.get("_const_slots") and name in self._buffers:
            self._refresh()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Evaluate the block on its inputs (in ``input_names`` order)."""
        if len(inputs) != len(self._input_slots):
            raise TypeError(f"block takes {len(self._input_slots)} inputs {self.input_names}, got {len(inputs)}")
        if self._input_axes is None:
            return self._evaluate(inputs)
        moved, n = self._to_block_layout(inputs)
        out = self._evaluate(moved)
        outs = self._from_block_layout(out if isinstance(out, tuple) else (out,), n)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _evaluate(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        env = self._template.copy()
        for slot, x in zip(self._input_slots, inputs):
            env[slot] = x
        for (fn, ins, outs, single), dead in zip(self._steps, self._dead_after):
            result = fn(*[env[i] for i in ins])
            if single:
                env[outs[0]] = result
            else:
                for slot, r in zip(outs, result):
                    env[slot] = r
            for slot in dead:  # free intermediates once read for the last time
                env[slot] = None
        if len(self._output_slots) == 1:
            return env[self._output_slots[0]]
        return tuple(env[i] for i in self._output_slots)

    def peak_bytes(self, *inputs: torch.Tensor) -> int:
        """The most bytes of intermediate tensors alive at once while evaluating ``inputs``
        (no autograd; constants and the inputs themselves not counted): to size evaluation chunks."""
        if self._input_axes is not None:
            inputs = tuple(self._to_block_layout(inputs)[0])
        env = self._template.copy()
        for slot, x in zip(self._input_slots, inputs):
            env[slot] = x
        owned: dict[int, int] = {}
        peak = 0
        with torch.no_grad():
            for (fn, ins, outs, single), dead in zip(self._steps, self._dead_after):
                result = fn(*[env[i] for i in ins])
                results = (result,) if single else tuple(result)
                for slot, r in zip(outs, results):
                    env[slot] = r
                    owned[slot] = r.numel() * r.element_size() if isinstance(r, torch.Tensor) else 0
                peak = max(peak, sum(owned.values()))
                for slot in dead:
                    env[slot] = None
                    owned.pop(slot, None)
        return peak

    def extra_repr(self) -> str:
        """Inputs, outputs and the op sequence."""
        return f"inputs={self.input_names}, outputs={self.output_names}, ops={self.op_types}"


def _opset_for(node: onnx_ir.Node, opset_imports: Mapping[str, int]) -> int:
    domain = normalize_domain(node.domain)
    if domain in opset_imports:
        return opset_imports[domain]
    if domain == "" and "ai.onnx" in opset_imports:
        return opset_imports["ai.onnx"]
    if domain == "":
        raise UnsupportedOp(node, "the model imports no opset of the default domain")
    return 1  # custom domains (qdq_passes, com.microsoft) at version 1 unless imported


def block_to_module(
    nodes: Iterable[onnx_ir.Node],
    inputs: Sequence[onnx_ir.Value],
    outputs: Sequence[onnx_ir.Value],
    *,
    opset_imports: Mapping[str, int],
    quantizer_module: QuantizerCallback | None = None,
    flexible_batch: bool = True,
) -> BlockModule:
    """Build a module evaluating ``nodes`` (topologically ordered) from ``inputs`` to ``outputs``.

    * Values read by the nodes that are neither ``inputs`` nor produced by ``nodes`` must be
      constants (initializers or ``Constant`` outputs; an initializer that is also a graph input is
      taken as a constant too); they become buffers, converted once, keeping their dtype (int4 as
      int8, bfloat16/float8 as torch's own). ``Constant`` nodes in ``nodes`` become buffers too.
    * Nodes of domain ``qdq_passes`` (the quantizer ops) call ``quantizer_module(node)`` once and
      apply the returned module to the node's first input; the module is registered in
      ``quantizers`` (its parameters appear in ``parameters()``, it follows ``.to()``). It is the
      callback's very object, so training it trains what the IR caches.
    * Standard ``QuantizeLinear`` outputs integer codes carried as float32 (exact), so that
      gradients flow straight-through; ``DequantizeLinear`` takes float or integer codes.
    * ``flexible_batch``: a ``Reshape`` whose literal target keeps the data's leading dimension
      as recorded in the graph (e.g. ``[1, -1]`` on an input of shape ``[1, C, H, W]``) follows the
      actual leading dimension at run time, so a block exported at batch 1 runs on a batch. This
      needs shapes in the graph (run shape inference first); without them Reshape is literal.
      Other literal shapes (Expand, ConstantOfShape) are not adapted.

    Raises :class:`UnsupportedOp` naming the first node no converter handles (nothing is
    half-built), and ``ValueError`` when a value read by the block has no source.
    """
    nodes = list(nodes)
    module = BlockModule()
    slots: dict[onnx_ir.Value, int] = {}
    n_slots = 1  # slot 0 is always None (missing optional inputs)

    def new_slot(value: onnx_ir.Value) -> int:
        nonlocal n_slots
        slots[value] = n_slots
        n_slots += 1
        return n_slots - 1

    for value in inputs:
        if value in slots:
            raise ValueError(f"block input {value.name!r} is listed twice")
        new_slot(value)
    module.input_names = [v.name or "" for v in inputs]
    module._input_slots = tuple(slots[v] for v in inputs)

    constants: dict[onnx_ir.Value, np.ndarray] = {}
    const_slots: list[tuple[int, str]] = []
    produced = {out for node in nodes for out in node.outputs}

    def slot_of(value: onnx_ir.Value, reader: str) -> int:
        if value in slots:
            return slots[value]
        arr = constants.get(value)
        if arr is None and value in produced:
            raise ValueError(f"{reader} reads {value.name!r} before it is produced (nodes out of order?)")
        if arr is None and value.const_value is not None:
            arr = value.const_value.numpy()
        if arr is None and is_constant_node(value.producer()):
            producer = value.producer()
            assert producer is not None
            arr = constant_node_array(producer)
        if arr is None:
            raise ValueError(f"{reader} reads {value.name!r}, which is no block input, output of the block or constant")
        slot = new_slot(value)
        name = _buffer_name(len(const_slots), value.name or "")
        module.register_buffer(name, tensor_from_numpy(arr))
        const_slots.append((slot, name))
        module.constant_names[value.name or name] = name
        return slot

    steps = []
    for node in nodes:
        if is_constant_node(node):
            constants[node.outputs[0]] = constant_node_array(node)
            continue
        version = _opset_for(node, opset_imports)
        convert = find_converter(node.domain, node.op_type, version)
        if convert is None:
            domain = normalize_domain(node.domain) or "ai.onnx"
            raise UnsupportedOp(node, f"no converter for {domain}.{node.op_type} at opset {version}")
        ctx = ConvertContext(node, version, quantizer_module, flexible_batch)
        converted = convert(node, ctx)
        label = node.name or node.op_type
        ins = []
        for i in converted.inputs:
            value = node.inputs[i] if i < len(node.inputs) else None
            ins.append(0 if value is None else slot_of(value, f"node {label!r}"))
        if converted.module is not None:
            module.quantizers.append(converted.module)
            module.quantizer_names.append(node.name or "")
        if converted.multi:
            outs = tuple(new_slot(out) for out in node.outputs)
        elif ctx.num_outputs_used() > 1:
            raise UnsupportedOp(node, "only the first output is supported")
        else:
            outs = (new_slot(node.outputs[0]),)
        steps.append((converted.fn, tuple(ins), outs, not converted.multi))
        module.op_types.append(node.op_type)

    out_slots = []
    for value in outputs:
        out_slots.append(slot_of(value, "block output"))
    module.output_names = [v.name or "" for v in outputs]
    module._output_slots = tuple(out_slots)
    module._steps = steps
    last_read: dict[int, int] = {}
    for index, (_, ins, outs, _) in enumerate(steps):
        for slot in (*ins, *outs):
            last_read[slot] = index
    keep = {0, *out_slots, *module._input_slots, *(slot for slot, _ in const_slots)}
    dead: list[list[int]] = [[] for _ in steps]
    for slot, index in last_read.items():
        if slot not in keep:
            dead[index].append(slot)
    module._dead_after = [tuple(d) for d in dead]
    module._n_slots = n_slots
    module._const_slots = const_slots
    module._refresh()
    return module


def graph_to_module(
    model: onnx_ir.Model,
    *,
    quantizer_module: QuantizerCallback | None = None,
    flexible_batch: bool = True,
) -> BlockModule:
    """The whole main graph as a module: graph inputs (initializers excluded) to graph outputs."""
    graph = model.graph
    inputs = [v for v in graph.inputs if not v.is_initializer()]
    return block_to_module(
        list(graph),
        inputs,
        list(graph.outputs),
        opset_imports=model.opset_imports,
        quantizer_module=quantizer_module,
        flexible_batch=flexible_batch,
    )
