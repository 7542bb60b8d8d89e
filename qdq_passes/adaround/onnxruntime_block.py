"""Blocks evaluated by onnxruntime: the fallback of ``adaround`` for blocks torch cannot run.

:func:`block_model` cuts one block out of the model as a model of its own: the block's nodes, its
inputs as graph inputs (whatever produced them: a graph input, an earlier block's quantizer, ...),
the initializers it reads, and every function its nodes call (each dialect quantizer overload
included) with the opsets they need. With ``float_path`` every quantizer takes its float meaning
(:mod:`.float_path`) inside the sub-model only. :func:`prefix_model` is the same over the whole
graph with chosen values as outputs (the last resort: the model's prefix up to a block, from the
graph inputs). :class:`BlockSession` runs such a model sample by sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir

from qdq_passes.adaround.batch_axes import batch_axis, model_layout, num_samples
from qdq_passes.adaround.float_path import float_nodes
from qdq_passes.ir import dialect
from qdq_passes.ir.blocks import outer_values
from qdq_passes.ir.qdq import node_label
from qdq_passes.runtime import ort_session_options

__all__ = ["BlockSession", "block_model", "prefix_model"]


def _value_info(value: onnx_ir.Value, dtype: onnx_ir.DataType | None = None) -> onnx.ValueInfoProto:
    """A value's type with unknown shape (the fallback feeds one sample of whatever batch layout)."""
    dtype = dtype or value.dtype or onnx_ir.DataType.FLOAT
    return onnx.helper.make_tensor_value_info(value.name, int(dtype), None)


def _check_named(values: Iterable[onnx_ir.Value]) -> None:
    for value in values:
        if not value.name:
            raise ValueError(f"a value read by {node_label(value.producer()) if value.producer() else 'a node'} "
                             "has no name; run the 'name-values' cleanup first")


def _submodel(model: onnx_ir.Model, nodes: Sequence[onnx_ir.Node], inputs: Sequence[onnx_ir.Value],
              outputs: Sequence[onnx_ir.Value], float_path: bool,
              input_dtypes: Mapping[onnx_ir.Value, onnx_ir.DataType] | None) -> onnx.ModelProto:
    _check_named([*inputs, *outputs])
    initializers: dict[str, onnx.TensorProto] = {}
    protos: list[onnx.NodeProto] = []
    made: set[str] = {v.name for v in inputs}
    for node in nodes:
        if float_path and dialect.is_quantizer(node) and not dialect.quantizer_params(node).q_folded:
            protos.extend(float_nodes(node, initializers))
        else:
            protos.append(onnx_ir.serde.serialize_node(node))
        made.update(v.name for v in node.outputs if v.name)
    for node in nodes:  # the initializers the nodes (and their subgraphs) read
        for value in [*node.inputs, *outer_values(node, model.graph)]:
            if value is None:
                continue
            if value.name in made or value.name in initializers:
                continue
            if value.const_value is not None and value.producer() is None:
                tensor = onnx_ir.serde.serialize_tensor(value.const_value)
                tensor.name = value.name
                initializers[value.name] = tensor
    dtypes = input_dtypes or {}
    graph = onnx.helper.make_graph(
        protos, "block", [_value_info(v, dtypes.get(v)) for v in inputs], [_value_info(v) for v in outputs],
        initializer=list(initializers.values()))
    opsets = dict(model.opset_imports)
    functions = {key: onnx_ir.serde.serialize_function(f) for key, f in model.functions.items()}
    used = {(n.domain, n.op_type, n.overload) for n in nodes if n.domain == dialect.DOMAIN}
    if used:
        domain = dialect.body_domain(model)
        for _, op, overload in used:
            if (dialect.DOMAIN, op, overload) not in functions:
                functions[(dialect.DOMAIN, op, overload)] = dialect.function_proto(
                    op, overload == dialect.FOLDED, opsets.get("", 1), domain)
        opsets[dialect.DOMAIN] = dialect.VERSION
        if domain == dialect.CONTRIB_DOMAIN:
            opsets.setdefault(dialect.CONTRIB_DOMAIN, 1)
    proto = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()],
        functions=list(functions.values()))
    proto.ir_version = max(model.ir_version or 0, 10)
    return proto


def block_model(model: onnx_ir.Model, nodes: Sequence[onnx_ir.Node], inputs: Sequence[onnx_ir.Value],
                outputs: Sequence[onnx_ir.Value], *, float_path: bool,
                input_dtypes: Mapping[onnx_ir.Value, onnx_ir.DataType] | None = None) -> onnx.ModelProto:
    """A block (its nodes in graph order) as a model computing ``outputs`` from ``inputs``."""
    return _submodel(model, nodes, inputs, outputs, float_path, input_dtypes)


def prefix_model(model: onnx_ir.Model, outputs: Sequence[onnx_ir.Value], *, float_path: bool) -> onnx.ModelProto:
    """The whole graph with ``outputs`` as its outputs, from the graph inputs."""
    return _submodel(model, list(model.graph), list(model.graph.inputs), outputs, float_path, None)


class BlockSession:
    """An onnxruntime session of a block (or prefix) model, run one sample at a time (the cut may
    have fixed a batch of 1 into its reshapes); values are given and returned with their samples on
    axis 0, ``input_axes`` saying where the model holds each input's batch (None: shared)."""

    def __init__(self, proto: onnx.ModelProto, inputs: Sequence[onnx_ir.Value], outputs: Sequence[onnx_ir.Value]) -> None:
        import onnxruntime

        self.input_names = [v.name for v in inputs]
        self.output_names = [v.name for v in outputs]
        self.session = onnxruntime.InferenceSession(proto.SerializeToString(), ort_session_options(),
                                                    providers=["CPUExecutionProvider"])

    def _run(self, feeds: Sequence[np.ndarray], axes: Sequence[int | None], start: int, stop: int) -> list[np.ndarray]:
        return self.session.run(self.output_names, {
            name: model_layout(f, start, stop, a) for name, f, a in zip(self.input_names, feeds, axes)})

    def output_axes(self, feeds: Sequence[np.ndarray], axes: Sequence[int | None]) -> list[int | None]:
        """Each output's batch axis, from a run on one sample and one on two (axis 0 where every
        input has its batch there and the model takes one sample only)."""
        n = num_samples(feeds, axes)
        if n < 2:
            return [0] * len(self.output_names)
        one = self._run(feeds, axes, 0, 1)
        try:
            two = self._run(feeds, axes, 0, 2)
        except Exception:  # noqa: BLE001 - a model fixed to one sample
            if all(a == 0 for a in axes):
                return [0] * len(self.output_names)
            raise
        return [batch_axis(a.shape, b.shape, name) for a, b, name in zip(one, two, self.output_names)]

    def run(self, feeds: Sequence[np.ndarray], axes: Sequence[int | None] | None = None
            ) -> tuple[list[np.ndarray], list[int | None]]:
        """Every output over all samples (samples on axis 0), and its batch axis in the model."""
        axes = list(axes) if axes is not None else [0] * len(feeds)
        out_axes = self.output_axes(feeds, axes)
        n = num_samples(feeds, axes)
        results: list[list[np.ndarray]] = [[] for _ in self.output_names]
        for i in range(n):
            for r, out, axis in zip(results, self._run(feeds, axes, i, i + 1), out_axes):
                if axis is None:
                    if not r:
                        r.append(out)
                else:
                    r.append(np.moveaxis(out, axis, 0) if axis else out)
        outputs = [np.broadcast_to(r[0][None], (n, *r[0].shape)) if axis is None else np.concatenate(r)
                   for r, axis in zip(results, out_axes)]
        return outputs, out_axes
