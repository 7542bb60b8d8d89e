"""Blocks: the units AdaRound reconstructs, found on the dominator chain of the main graph.

A **block** is a contiguous piece of the graph that can be evaluated on its own from its input
tensors (plus constants), holding between ``min_ops`` and ``max_ops`` *weighted ops*.

Definitions:

* A **constant node** computes only from constants: a ``Constant``, or a node (without subgraphs,
  deterministic) all of whose inputs are initializers or outputs of constant nodes. Weight
  quantizers are constant nodes: ``DequantizeLinear(W)``, ``QuantizeLinear(W) -> DequantizeLinear``,
  and the dialect's ``qdq_passes.INTQuantizer/AdaroundINTQuantizer/FPQuantizer(W, scale, zp)``.
  Every other node is a **compute node**; constants are never edges of the graph view.
* A **weighted op** is a compute ``Conv``, ``ConvTranspose``, ``Gemm`` (input 1) or ``MatMul``
  (either input) whose weight input is constant (so a weight reached through a weight quantizer,
  a Transpose of a constant, ... counts too).
* An **activation quantizer** is a ``QuantizeLinear`` or a dialect quantizer whose input is not
  constant.

The analysis (O(V+E), plus ``networkx.immediate_dominators``):

1. The view: one vertex per live compute node (one that reaches a graph output), a virtual
   source feeding every node that reads a graph input (or reads nothing non-constant), and a
   virtual sink fed by every node that no live node reads. Outer values read inside subgraphs
   (If/Loop/Scan) are edges too. Dead nodes stay out of the view and follow their producers.
2. The dominator chain: the dominators of the sink. Every source-to-sink path passes each chain
   node, so cutting right after a chain node splits the graph with only that node's outputs
   crossing the cut. (A graph output in the middle, read further on, does not break the chain;
   separate heads do: past the point where they fork, nothing is on the chain, and step 4 applies.)
3. Cuts: where the graph has activation quantizers, only after chain nodes whose crossing values
   each feed an activation quantizer (the cut sits on the float tensor *before* the quantizer);
   in a graph without any, after every chain node. The pieces between cuts are **regions**.
4. A region holding more than ``max_ops`` weighted ops has no useful cut inside: it is split
   into layers, one weighted op each (see 6).
5. Regions (or layers) without weighted ops join a neighbour: the previous one when they hold
   only trailing ops (activations, BatchNormalization, arithmetic with a constant) and no
   quantizer, else the next one. Those after the last weighted op form a final **tail block**
   without weighted ops (typically the graph outputs' quantizers).
6. Layers: a weighted op takes the trailing ops that follow it alone (``Conv -> Relu``); other
   nodes go to the first weighted op downstream of them in the region, or, with none downstream,
   to the latest block among their producers.
7. Consecutive regions are merged while a block holds fewer than ``min_ops`` weighted ops and the
   merge stays within ``max_ops`` (``max_ops`` wins when both cannot hold). ``granularity="layer"``
   is ``min_ops = max_ops = 1``: one weighted op (plus its trailing ops) per block.
8. Constant nodes join the earliest block that reads them; every later block reading one gets a
   copy of it (a quantized constant, a ``Cast`` of one, shared by several blocks), except where
   AdaRound learns its value (an AdaRound weight quantizer and what is computed from it): then the
   blocks from the first to the last that read it are merged, so that a shared or tied weight is
   rounded once, with all its readers in the loss.
9. Shape computations are recomputed, not passed: a **shape node** is a ``Shape`` or ``Size``, or
   integer arithmetic (``SHAPE_OPS``) on shape nodes' outputs and constants, or a tensor made from
   them alone (``ConstantOfShape``, ``Expand``, a mask from ``Range`` and ``Less``). A block reading a
   shape node of another block gets a copy of that node (and of the shape nodes it depends on),
   reading what its ``Shape`` reads instead. A shape value has no batch axis and holds the batch
   size, so it cannot be evaluated on one set of samples and reused on another. For the same
   reason shape values are no edges of the view in steps 1-3: a ``Shape`` of the graph input read
   deep inside the graph (magika's LayerNorm reshapes) would otherwise dominate nothing and leave
   no cut between its weighted ops.

Conventions that follow (documented for AdaRound and ``to_torch``):

* Block inputs are the float tensors before activation quantizers; the quantizers of a block's
  inputs belong to the block, so the block sees its input's quantization. A block ends at the
  tensor that feeds the next activation quantizer, so its output is compared *before* output
  quantization (the output quantizer belongs to the next block, or to the tail block).
* Residual blocks come out whole (the skip ``Add`` dominates nothing before it, so it closes the
  region of its branch); so does attention (``MatMul-Softmax-MatMul`` with its Q/K/V projections).
* A block may have several inputs (e.g. a layer-split residual branch reading the skip tensor).
* Blocks are in topological order; every node is in exactly one block, except constant nodes
  copied by 8 and shape nodes copied by 9 (``BlockPartition.block_of`` answers the block that first
  holds them); a block's ``inputs``
  are produced by earlier blocks or are graph inputs. Nothing is keyed on node names.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import networkx as nx
import onnx_ir

from qdq_passes.ir import dialect
from qdq_passes.ir.qdq import is_dequantize, is_quantize

__all__ = [
    "Block",
    "BlockPartition",
    "Granularity",
    "DIALECT_DOMAIN",
    "DIALECT_QUANTIZERS",
    "WEIGHTED_OPS",
    "TRAILING_OPS",
    "SHAPE_OPS",
    "is_shape_node",
    "merge_blocks",
    "op_name",
    "outer_values",
]

logger = logging.getLogger(__name__)

Granularity = Literal["block", "layer"]

#: The quantizer dialect's ops; they take ``(x, scale, zero_point)``.
DIALECT_DOMAIN = dialect.DOMAIN
DIALECT_QUANTIZERS = frozenset(dialect.OPS)
#: Dialect quantizers whose value AdaRound learns (step 8 keeps all their readers in one block).
TRAINABLE_QUANTIZERS = frozenset({dialect.ADAROUND_QUANTIZER})

#: Weighted op type -> the input positions that may hold its constant weight.
WEIGHTED_OPS: dict[str, tuple[int, ...]] = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1,), "MatMul": (1, 0)}

#: Elementwise ops that stay with the weighted op they follow.
TRAILING_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Gelu", "Mish", "ThresholdedRelu", "BatchNormalization",
})
#: Ops that, on shape values and constants, compute shape values (small integer tensors).
SHAPE_OPS = frozenset({
    "Slice", "Concat", "Cast", "Gather", "Unsqueeze", "Squeeze", "Reshape", "Identity", "Add", "Sub", "Mul",
    "Div", "Neg", "Abs", "Max", "Min", "ReduceProd", "ReduceSum", "Equal", "Where", "Range",
    # tensors made from shapes alone: an LSTM's zero initial state ConstantOfShape([2, B, 128]),
    # attention masks from Range and comparisons
    "ConstantOfShape", "Expand", "Tile", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And",
    "Or", "Mod", "Floor", "Ceil", "Sqrt", "Trilu",
})
_CONSTANT_OPERAND_OPS = frozenset({"Add", "Sub", "Mul", "Div"})
_STANDARD = ("", "ai.onnx")
_NONDETERMINISTIC = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
})
_SOURCE = -1
_SINK = -2


def op_name(node: onnx_ir.Node) -> str:
    """The op type, prefixed by its domain outside the standard one (``qdq_passes.INTQuantizer``)."""
    return node.op_type if node.domain in _STANDARD else f"{node.domain}.{node.op_type}"


@dataclasses.dataclass(eq=False)
class Block:
    """A piece of the main graph evaluated on its own (see the module docstring).

    ``nodes``: every node of the block in topological (graph) order, constant nodes included;
    ``inputs``: non-constant values it reads that are produced outside it (graph inputs or earlier
    blocks' outputs), in order of first use; ``outputs``: values it produces that later blocks read
    or that are graph outputs; ``weighted``: its weighted ops; ``constants``: constant values it
    reads that are produced outside it (initializers, or constant nodes of an earlier block);
    ``constant_nodes``: the members of ``nodes`` that compute constants (weight quantizers, ...).
    """

    index: int
    nodes: list[onnx_ir.Node]
    inputs: list[onnx_ir.Value]
    outputs: list[onnx_ir.Value]
    weighted: list[onnx_ir.Node]
    constants: list[onnx_ir.Value] = dataclasses.field(default_factory=list)
    constant_nodes: list[onnx_ir.Node] = dataclasses.field(default_factory=list)

    @property
    def compute_nodes(self) -> list[onnx_ir.Node]:
        """The nodes that compute on the block's inputs (``nodes`` less ``constant_nodes``)."""
        constant = set(self.constant_nodes)
        return [n for n in self.nodes if n not in constant]

    def describe(self) -> str:
        """One line: ``block 0: ops=[Conv, Relu] weighted=1 inputs=[x] outputs=[relu1]`` (compute ops only)."""
        ops = ", ".join(op_name(n) for n in self.compute_nodes)
        ins = ", ".join(_value_name(v) for v in self.inputs)
        outs = ", ".join(_value_name(v) for v in self.outputs)
        return f"block {self.index}: ops=[{ops}] weighted={len(self.weighted)} inputs=[{ins}] outputs=[{outs}]"


def merge_blocks(first: Block, second: Block, read_after: Callable[[onnx_ir.Value], bool]) -> Block:
    """``first`` and the block right after it as one block (numbered as ``first``): what crosses
    between them becomes internal, an output of ``first`` stays an output where ``read_after`` says
    a later block (or the graph) reads it."""
    order = {node: i for i, node in enumerate(first.nodes[0].graph)} if first.nodes and first.nodes[0].graph else {}
    nodes = list(dict.fromkeys([*first.nodes, *second.nodes]))
    if order:
        nodes.sort(key=lambda n: order.get(n, len(order)))
    made = {v for n in nodes for v in n.outputs}
    inputs = list(dict.fromkeys(v for v in [*first.inputs, *second.inputs] if v not in made))
    outputs = [v for v in first.outputs if v.is_graph_output() or read_after(v)]
    outputs += [v for v in second.outputs if v not in outputs]
    constant = {*first.constant_nodes, *second.constant_nodes}
    return Block(
        index=first.index,
        nodes=nodes,
        inputs=inputs,
        outputs=outputs,
        weighted=[*first.weighted, *second.weighted],
        constants=list(dict.fromkeys([*first.constants, *second.constants])),
        constant_nodes=[n for n in nodes if n in constant],
    )


class BlockPartition:
    """The blocks of a model's main graph, in topological order; build with :meth:`build`."""

    def __init__(
        self, blocks: list[Block], *, granularity: Granularity, min_ops: int, max_ops: int,
        num_regions: int, num_split_regions: int,
    ) -> None:
        self.blocks = blocks
        self.granularity = granularity
        self.min_ops = min_ops
        self.max_ops = max_ops
        #: regions between cuts (step 3), and those split into layers (step 4)
        self.num_regions = num_regions
        self.num_split_regions = num_split_regions
        self._block_of: dict[onnx_ir.Node, Block] = {}
        for block in blocks:  # a copied shape node answers the block that first holds it
            for node in block.nodes:
                self._block_of.setdefault(node, block)

    @classmethod
    def build(
        cls,
        model: onnx_ir.Model | onnx_ir.Graph,
        *,
        granularity: Granularity = "block",
        min_ops: int = 1,
        max_ops: int = 4,
    ) -> BlockPartition:
        """Partition the main graph into blocks; raises ``ValueError`` on invalid settings."""
        if granularity not in ("block", "layer"):
            raise ValueError(f"granularity must be 'block' or 'layer', got {granularity!r}")
        if min_ops < 1 or max_ops < min_ops:
            raise ValueError(f"need 1 <= min_ops <= max_ops, got min_ops={min_ops} max_ops={max_ops}")
        graph = model.graph if isinstance(model, onnx_ir.Model) else model
        if granularity == "layer":
            min_ops = max_ops = 1
        view = _View(graph)
        units = view.regions()
        atoms: list[_Atom] = []
        split = 0
        for unit in units:
            weight = sum(view.weighted[i] for i in unit)
            if weight > max_ops:
                split += 1
                atoms.extend(view.layers(unit))
            else:
                atoms.append(_Atom(unit, weight, view.trailing_only(unit)))
        groups = _merge(atoms, min_ops, max_ops)
        blocks = view.make_blocks(groups)
        logger.debug("%d blocks from %d regions (%d split into layers)", len(blocks), len(units), split)
        return cls(blocks, granularity=granularity, min_ops=min_ops, max_ops=max_ops,
                   num_regions=len(units), num_split_regions=split)

    def block_of(self, node: onnx_ir.Node) -> Block:
        """The block holding ``node`` (a node of the main graph)."""
        return self._block_of[node]

    def __iter__(self) -> Iterator[Block]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> Block:
        return self.blocks[index]

    def describe(self) -> str:
        """One line per block (see :meth:`Block.describe`)."""
        return "\n".join(block.describe() for block in self.blocks)


def is_shape_node(node: onnx_ir.Node | None, is_const=None, _seen: dict | None = None) -> bool:  # noqa: ANN001
    """Whether ``node`` computes a shape value: ``Shape``/``Size``, or ``SHAPE_OPS`` arithmetic whose
    non-constant inputs all come from shape nodes (``is_const(value)`` decides constness; default:
    an initializer or a ``Constant`` node's output)."""
    if node is None or node.domain not in _STANDARD:
        return False
    seen = {} if _seen is None else _seen
    if node in seen:
        return seen[node]
    seen[node] = False  # cycles cannot happen in a graph; guard anyway
    if node.op_type in ("Shape", "Size"):
        seen[node] = True
        return True
    if node.op_type not in SHAPE_OPS:
        return False
    const = is_const or _plain_const
    dynamic = [v for v in node.inputs if v is not None and not const(v)]
    result = bool(dynamic) and all(is_shape_node(v.producer(), is_const, seen) for v in dynamic)
    seen[node] = result
    return result


def _plain_const(value: onnx_ir.Value) -> bool:
    producer = value.producer()
    return value.const_value is not None or (producer is not None and producer.op_type == "Constant"
                                             and producer.domain in _STANDARD)


def _has_subgraphs(node: onnx_ir.Node) -> bool:
    return any(a.type in (onnx_ir.AttributeType.GRAPH, onnx_ir.AttributeType.GRAPHS) for a in node.attributes.values())


def _value_name(value: onnx_ir.Value) -> str:
    return value.name or "<unnamed>"


@dataclasses.dataclass
class _Atom:
    """A region or a layer: compute-node positions (sorted), its weighted-op count, and whether it
    holds only trailing ops (step 5)."""

    nodes: list[int]
    weight: int
    trailing_only: bool


def _merge(atoms: Sequence[_Atom], min_ops: int, max_ops: int) -> list[list[_Atom]]:
    """Steps 5 and 7: attach weightless atoms, then merge up to ``min_ops`` within ``max_ops``."""
    groups: list[list[_Atom]] = []
    pending: list[_Atom] = []
    for atom in atoms:
        if atom.weight:
            groups.append(pending + [atom])
            pending = []
        elif atom.trailing_only and groups and not pending:
            groups[-1].append(atom)
        else:
            pending.append(atom)

    def weight(group: list[_Atom]) -> int:
        return sum(a.weight for a in group)

    merged: list[list[_Atom]] = []
    current: list[_Atom] | None = None
    for group in groups:
        if current is not None and weight(current) < min_ops and weight(current) + weight(group) <= max_ops:
            current = current + group
            continue
        if current is not None:
            merged.append(current)
        current = group
    if current is not None:
        if merged and weight(current) < min_ops and weight(merged[-1]) + weight(current) <= max_ops:
            merged[-1] = merged[-1] + current
        else:
            merged.append(current)
    if pending:
        merged.append(pending)  # the tail block: no weighted ops
    return merged


class _View:
    """Integer-indexed view of a graph: nodes in topological order, constant/compute split, edges."""

    def __init__(self, graph: onnx_ir.Graph) -> None:
        self.graph = graph
        nodes = list(graph)
        has_sub = [bool(len(node.attributes)) and _has_subgraphs(node) for node in nodes]
        implicit = [outer_values(node, graph) if sub else () for node, sub in zip(nodes, has_sub)]
        order = _topological_order(nodes, implicit)
        if order is not None:
            nodes, has_sub, implicit = [nodes[i] for i in order], [has_sub[i] for i in order], [implicit[i] for i in order]
        self.nodes = nodes
        self.implicit = implicit
        self.pos = pos = {node: i for i, node in enumerate(nodes)}
        n = len(nodes)
        const = {v for v in graph.initializers.values() if v.const_value is not None and not v.is_graph_input()}
        self.const_values = const
        # One forward pass: constness, edges between compute nodes, readers of every value
        # (top-level nodes; reads inside subgraphs count for the node that holds them).
        self.readers: dict[onnx_ir.Value, list[int]] = {}
        self.preds: list[list[int]] = [[] for _ in range(n)]
        self.succs: list[list[int]] = [[] for _ in range(n)]
        self.constant = [False] * n
        self.shape = [False] * n  # shape nodes (step 9)
        self.shape_preds: list[list[int]] = [[] for _ in range(n)]  # shape nodes read, not edges
        shape_memo: dict = {}
        self.from_source = [False] * n
        self.weighted = [False] * n
        self.entry = [False] * n  # activation quantizers
        self.quantizer = [False] * n  # activation quantizers and DequantizeLinear of non-constants
        readers, preds, succs = self.readers, self.preds, self.succs
        for i, node in enumerate(nodes):
            values = [v for v in node.inputs if v is not None]
            if implicit[i]:
                values.extend(implicit[i])
            dynamic = []
            for v in values:
                users = readers.get(v)
                if users is None:
                    readers[v] = [i]
                else:
                    users.append(i)
                if not self.is_const(v):
                    dynamic.append(v)
            op, standard = node.op_type, node.domain in _STANDARD
            if (op == "Constant" and standard) or (values and not dynamic and not has_sub[i] and op not in _NONDETERMINISTIC):
                self.constant[i] = True
                const.update(node.outputs)
                continue
            if not dynamic:
                self.from_source[i] = True
            shape_here = is_shape_node(node, self.is_const, shape_memo)
            for v in dynamic:
                producer = v.producer()
                j = pos.get(producer) if producer is not None else None
                if j is None:
                    self.from_source[i] = True
                elif self.shape[j] and not shape_here:
                    self.shape_preds[i].append(j)  # recomputed where read (step 9): it constrains no cut
                elif j not in preds[i]:
                    preds[i].append(j)
                    succs[j].append(i)
            self.shape[i] = shape_here
            if not preds[i] and not self.from_source[i]:
                self.from_source[i] = True  # reads only shape values
            if standard and op in WEIGHTED_OPS:
                self.weighted[i] = any(
                    k < len(node.inputs) and node.inputs[k] is not None and self.is_const(node.inputs[k])
                    for k in WEIGHTED_OPS[op]
                )
            if is_quantize(node) or (node.domain == DIALECT_DOMAIN and op in DIALECT_QUANTIZERS):
                x = node.inputs[0] if node.inputs else None
                self.entry[i] = self.quantizer[i] = x is not None and not self.is_const(x)
            elif is_dequantize(node):
                self.quantizer[i] = True
        self.compute = [i for i in range(n) if not self.constant[i]]

    def is_const(self, value: onnx_ir.Value) -> bool:
        """An initializer (registered or not; not a graph input) or an output of a constant node."""
        if value in self.const_values:
            return True
        return value.producer() is None and value.const_value is not None and not value.is_graph_input()

    # ------------------------------------------------------------------ regions (steps 1-3)

    def regions(self) -> list[list[int]]:
        """The compute nodes grouped into regions between cuts, in order (empty regions dropped)."""
        if not self.compute:
            return []
        # Live nodes reach a graph output; dead ends would break the chain, so they stay out of the
        # view and follow their producers (below).
        live = [False] * len(self.nodes)
        stack = [i for i in self.compute if any(v.is_graph_output() for v in self.nodes[i].outputs)]
        while stack:
            i = stack.pop()
            if not live[i]:
                live[i] = True
                stack.extend(self.preds[i])
        g = nx.DiGraph()
        g.add_nodes_from([_SOURCE, _SINK])
        edges = []
        for i in self.compute:
            if not live[i]:
                continue
            g.add_node(i)
            if self.from_source[i]:
                edges.append((_SOURCE, i))
            edges.extend((j, i) for j in self.preds[i])
            if not any(live[s] for s in self.succs[i]):
                edges.append((i, _SINK))
        if not edges:
            edges.append((_SOURCE, _SINK))
        g.add_edges_from(edges)
        idom = nx.immediate_dominators(g, _SOURCE)
        idom.pop(_SOURCE, None)  # networkx < 3.5 maps the start to itself
        chain = []
        d = idom[_SINK]
        while d != _SOURCE:
            chain.append(d)
            d = idom[d]
        chain.reverse()
        quantized = any(self.entry)
        cut_id: dict[int, int] = {}
        for c in chain:
            if not quantized or self._feeds_quantizers(c):
                cut_id[c] = len(cut_id) + 1
        # Label every node by the deepest cut strictly dominating it (a walk down the dominator tree).
        children: dict[int, list[int]] = {}
        for v, d in idom.items():
            if v != _SINK:
                children.setdefault(d, []).append(v)
        label: dict[int, int] = {}
        stack = [(_SOURCE, 0)]
        while stack:
            d, inherited = stack.pop()
            below = cut_id.get(d, inherited)
            for child in children.get(d, ()):
                label[child] = below
                stack.append((child, below))
        units: dict[int, list[int]] = {}
        for i in self.compute:
            if not live[i]:
                label[i] = max((cut_id.get(p, label[p]) for p in self.preds[i]), default=0)
            units.setdefault(label[i], []).append(i)
        return [units[k] for k in sorted(units)]

    def _feeds_quantizers(self, c: int) -> bool:
        """Whether every output of ``c`` read by a compute node feeds an activation quantizer."""
        read = False
        for v in self.nodes[c].outputs:
            readers = [r for r in self.readers.get(v, ()) if not self.constant[r]]
            if not readers:
                continue
            read = True
            if not any(self.entry[r] and self.nodes[r].inputs[0] is v for r in readers):
                return False
        return read

    # ------------------------------------------------------------------ layers (step 6)

    def trailing(self, i: int) -> bool:
        """An elementwise op that stays with the op before it (activation, BN, constant arithmetic)."""
        node = self.nodes[i]
        if node.domain not in _STANDARD or self.quantizer[i]:
            return False
        if node.op_type in TRAILING_OPS:
            return True
        return node.op_type in _CONSTANT_OPERAND_OPS and len(self._dynamic_inputs(i)) == 1

    def trailing_only(self, unit: list[int]) -> bool:
        return all(self.trailing(i) for i in unit)

    def _dynamic_inputs(self, i: int) -> list[onnx_ir.Value]:
        return [v for v in self.nodes[i].inputs if v is not None and not self.is_const(v)]

    def layers(self, unit: list[int]) -> list[_Atom]:
        """Split a region into layers, one weighted op each (step 6)."""
        members = set(unit)
        label: dict[int, int] = {i: i for i in unit if self.weighted[i]}
        for i in unit:  # trailing ops that follow a labelled node alone
            if i in label or not self.trailing(i):
                continue
            dynamic = self._dynamic_inputs(i)
            if len(dynamic) != 1 or self.implicit[i]:
                continue
            v = dynamic[0]
            j = self.pos.get(v.producer()) if v.producer() is not None else None
            if j in label and j in members and not v.is_graph_output() and len(self.readers.get(v, ())) == 1:
                label[i] = label[j]
        infinity = len(self.nodes)
        down: dict[int, int] = {}
        for i in reversed(unit):  # the first weighted op downstream, within the region
            if i in label:
                down[i] = label[i]
            else:
                down[i] = min((down[s] for s in self.succs[i] if s in members), default=infinity)
        first = min(label.values())
        for i in unit:
            if i in label:
                continue
            if down[i] < infinity:
                label[i] = down[i]
            else:
                label[i] = max((label[p] for p in self.preds[i] if p in members), default=first)
        for i in reversed(unit):  # a quantizer left over goes to its readers' layer (monotone: raises only)
            if self.quantizer[i] and down[i] == infinity:
                label[i] = min((label[s] for s in self.succs[i] if s in members), default=label[i])
        atoms: dict[int, list[int]] = {}
        for i in unit:
            atoms.setdefault(label[i], []).append(i)
        return [_Atom(atoms[k], 1, False) for k in sorted(atoms)]

    # ------------------------------------------------------------------ blocks (step 8)

    def _constant_producers(self, i: int) -> Iterator[int]:
        """The constant nodes whose outputs node ``i`` reads (inside its subgraphs too)."""
        for v in [*self.nodes[i].inputs, *self.implicit[i]]:
            producer = v.producer() if v is not None else None
            j = self.pos.get(producer) if producer is not None else None
            if j is not None and self.constant[j]:
                yield j

    def _trainable(self) -> list[bool]:
        """Constant nodes whose value AdaRound learns: an AdaRound quantizer or a constant node
        computed from one (a ``Transpose`` of a tied embedding)."""
        trainable = [False] * len(self.nodes)
        for i, node in enumerate(self.nodes):
            if not self.constant[i]:
                continue
            if node.domain == DIALECT_DOMAIN and node.op_type in TRAINABLE_QUANTIZERS:
                trainable[i] = True
                continue
            for v in node.inputs:
                producer = v.producer() if v is not None else None
                j = self.pos.get(producer) if producer is not None else None
                if j is not None and trainable[j]:
                    trainable[i] = True
                    break
        return trainable

    def make_blocks(self, groups: list[list[_Atom]]) -> list[Block]:
        n = len(self.nodes)
        block_of = [-1] * n
        for b, group in enumerate(groups):
            for atom in group:
                for i in atom.nodes:
                    block_of[i] = b
        count = len(groups)
        # Step 8. The blocks that read each constant node, through other constant nodes.
        reading: list[set[int]] = [set() for _ in range(n)]
        for i in reversed(range(n)):
            if self.constant[i]:
                for v in self.nodes[i].outputs:
                    for r in self.readers.get(v, ()):
                        reading[i].update(reading[r] if self.constant[r] else (block_of[r],))
        trainable = self._trainable()
        merge_to = list(range(count))  # a trainable weight read by several blocks: merge them
        spans = sorted((min(r), max(r)) for r, t in zip(reading, trainable) if t and len(r) > 1)
        reach = -1
        for lo, hi in spans:
            start = merge_to[lo] if lo <= reach else lo
            for b in range(lo, hi + 1):
                merge_to[b] = start
            reach = max(reach, hi)
        if merge_to != list(range(count)):
            renumber = {b: k for k, b in enumerate(sorted(set(merge_to)))}
            block_of = [renumber[merge_to[b]] if b >= 0 else -1 for b in block_of]
            reading = [{renumber[merge_to[b]] for b in r} for r in reading]
            count = len(renumber)
        for i in range(n):
            if self.constant[i]:
                block_of[i] = min(reading[i], default=count - 1)
        if count == 0 and n:
            count = 1
            block_of = [0] * n
        members: list[list[int]] = [[] for _ in range(count)]
        for i in range(n):
            members[block_of[i]].append(i)
        shape = self.shape
        if any(shape):
            for b in range(count):  # step 9: copy the shape nodes a block reads from another block
                have = set(members[b])
                todo = [j for i in members[b] for j in (*self.preds[i], *self.shape_preds[i])
                        if shape[j] and j not in have]
                while todo:
                    j = todo.pop()
                    if j in have:
                        continue
                    have.add(j)
                    todo.extend(k for k in self.preds[j] if shape[k] and k not in have)
                members[b] = sorted(have)
        for b in range(count):  # step 8: copy the constant nodes (not learned) a block reads from another
            have = set(members[b])
            todo = [j for i in members[b] for j in self._constant_producers(i) if j not in have]
            while todo:
                j = todo.pop()
                if j in have or trainable[j]:
                    continue
                have.add(j)
                todo.extend(k for k in self._constant_producers(j) if k not in have)
            members[b] = sorted(have)
        holders: list[list[int]] = [[] for _ in range(n)]
        for b, positions in enumerate(members):
            for i in positions:
                holders[i].append(b)
        members_set = [set(m) for m in members]
        blocks = []
        for b, positions in enumerate(members):
            inside = set(positions)
            inputs: dict[onnx_ir.Value, None] = {}
            constants: dict[onnx_ir.Value, None] = {}
            outputs: dict[onnx_ir.Value, None] = {}
            for i in positions:
                node = self.nodes[i]
                for v in [v for v in node.inputs if v is not None] + list(self.implicit[i]):
                    producer = v.producer()
                    j = self.pos.get(producer) if producer is not None else None
                    if j is not None and j in inside:
                        continue
                    if self.is_const(v):
                        constants[v] = None
                    else:
                        inputs[v] = None
                if self.constant[i]:
                    continue
                for v in node.outputs:
                    # an output when read by a block that does not compute it itself
                    if v.is_graph_output() or any(
                            c != b and i not in members_set[c]
                            for r in self.readers.get(v, ()) for c in holders[r]):
                        outputs[v] = None
            blocks.append(Block(
                index=b,
                nodes=[self.nodes[i] for i in positions],
                inputs=list(inputs),
                outputs=list(outputs),
                weighted=[self.nodes[i] for i in positions if self.weighted[i]],
                constants=list(constants),
                constant_nodes=[self.nodes[i] for i in positions if self.constant[i]],
            ))
        return blocks


def outer_values(node: onnx_ir.Node, graph: onnx_ir.Graph) -> tuple[onnx_ir.Value, ...]:
    """Values of ``graph`` read inside ``node``'s subgraphs (implicit inputs), in first-use order."""
    found: dict[onnx_ir.Value, None] = {}
    for attr in node.attributes.values():
        if attr.type == onnx_ir.AttributeType.GRAPH:
            subgraphs = [attr.as_graph()]
        elif attr.type == onnx_ir.AttributeType.GRAPHS:
            subgraphs = list(attr.as_graphs())
        else:
            continue
        for sub in subgraphs:
            for inner in onnx_ir.traversal.RecursiveGraphIterator(sub):
                for v in inner.inputs:
                    if v is not None and v.graph is graph:
                        found[v] = None
    return tuple(found)


def _topological_order(nodes: list[onnx_ir.Node], implicit: list[tuple[onnx_ir.Value, ...]]) -> list[int] | None:
    """None when graph order is topological (the usual case), else a stable Kahn order."""
    index = {node: i for i, node in enumerate(nodes)}

    def producers(i: int) -> Iterator[int]:
        for v in nodes[i].inputs:
            if v is not None and (p := v.producer()) is not None and (j := index.get(p)) is not None:
                yield j
        for v in implicit[i]:
            if (p := v.producer()) is not None and (j := index.get(p)) is not None:
                yield j

    if all(j < i for i in range(len(nodes)) for j in producers(i)):
        return None
    users: list[list[int]] = [[] for _ in nodes]
    missing = [0] * len(nodes)
    for i in range(len(nodes)):
        for j in set(producers(i)):
            users[j].append(i)
            missing[i] += 1
    ready = [i for i, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            missing[u] -= 1
            if missing[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle; blocks need an acyclic graph")
    return order
