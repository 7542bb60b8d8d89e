"""BlockPartition (qdq_passes.ir.blocks) and the print-blocks pass."""

from __future__ import annotations

import io
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq_passes.ir.blocks import Block, BlockPartition, is_shape_node
from qdq_passes.passes.print_blocks import PrintBlocksPass
from tests.models import conv_relu_model, ort_quantize
from tests.qdq_matrix import MODELS, quantized

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIGS = ["u8s8-channel", "s8s8-tensor", "u8s8-pair", "u8s8-dedicated", "int4-channel"]
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
WEIGHT_PRODUCERS = {"DequantizeLinear", "QuantizeLinear", "Constant", "Transpose", "INTQuantizer", "AdaroundINTQuantizer", "FPQuantizer"}


# --------------------------------------------------------------------------- helpers


def _is_weight(value: onnx_ir.Value | None) -> bool:
    """Independent of the module under test: an initializer, or a quantizer/Constant chain of one."""
    if value is None:
        return False
    producer = value.producer()
    if producer is None:
        return value.const_value is not None and not value.is_graph_input()
    return producer.op_type in WEIGHT_PRODUCERS and all(
        _is_weight(v) for v in producer.inputs if v is not None
    )


def _computes_from_constants(value: onnx_ir.Value) -> bool:
    """Independent of the module under test: an initializer, or computed from initializers alone."""
    producer = value.producer()
    if producer is None:
        return value.const_value is not None and not value.is_graph_input()
    return producer.op_type == "Constant" or (
        bool(producer.inputs) and all(_computes_from_constants(v) for v in producer.inputs if v is not None))


def _weighted_ops(model: onnx_ir.Model) -> list[onnx_ir.Node]:
    out = []
    for node in model.graph:
        if node.op_type not in WEIGHTED or node.domain:
            continue
        positions = (0, 1) if node.op_type == "MatMul" else (1,)
        if any(_is_weight(node.inputs[p]) for p in positions) and not all(_is_weight(v) for v in node.inputs if v):
            out.append(node)
    return out


def check_partition(model: onnx_ir.Model, partition: BlockPartition) -> None:
    """The invariants every partition keeps."""
    graph_order = {node: i for i, node in enumerate(model.graph)}
    seen: dict[onnx_ir.Node, int] = {}
    for k, block in enumerate(partition):
        assert block.index == k
        positions = [graph_order[n] for n in block.nodes]
        assert positions == sorted(positions), f"block {k}: nodes not in graph order"
        for node in block.nodes:
            # only shape computations and constants AdaRound does not learn are copied
            copied = is_shape_node(node, _computes_from_constants) or (
                node in block.constant_nodes and node.op_type != "AdaroundINTQuantizer")
            assert node not in seen or copied, f"{node} in blocks {seen[node]} and {k}"
            seen.setdefault(node, k)
        assert set(block.weighted) <= set(block.nodes)
    assert set(seen) == set(model.graph), "some node is in no block"
    weighted = _weighted_ops(model)
    assert sorted(graph_order[n] for b in partition for n in b.weighted) == sorted(graph_order[n] for n in weighted)
    for k, block in enumerate(partition):
        mine = set(block.nodes)
        for value in block.inputs:
            assert not is_shape_node(value.producer()), f"block {k}: shape value {value.name} passed, not recomputed"
            producer = value.producer()
            assert producer not in mine, f"block {k}: input {value.name} is produced inside it"
            assert producer is None or seen[producer] < k, f"block {k}: input {value.name} comes from a later block"
            assert producer is not None or value.is_graph_input()
            assert producer is None or value in partition[seen[producer]].outputs
        for value in block.outputs:
            assert value.producer() in mine
        for node in block.nodes:  # every non-constant value read is an input or made inside
            for value in node.inputs:
                if value is None or value.producer() in mine:
                    continue
                assert value in block.inputs or value in block.constants, f"block {k}: {value.name} unaccounted"
        for value in block.constants:  # constant nodes are inside: a block runs from initializers
            assert value.producer() is None, f"block {k}: constant {value.name} computed in another block"


def _partition(proto: onnx.ModelProto, **kwargs) -> tuple[onnx_ir.Model, BlockPartition]:
    model = onnx_ir.from_proto(proto)
    partition = BlockPartition.build(model, **kwargs)
    check_partition(model, partition)
    return model, partition


def _ops(block: Block) -> list[str]:
    return [n.op_type for n in block.compute_nodes]


def _block_with(partition: BlockPartition, model: onnx_ir.Model, output_name: str) -> Block:
    [node] = [n for n in model.graph if any(v.name == output_name for v in n.outputs)]
    return partition.block_of(node)


def residual_model(seed: int = 0) -> onnx.ModelProto:
    """stem Conv -> Relu -> [Conv-Relu-Conv + skip Add] -> Relu -> head Conv."""
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    weights = {"stem_w": w(4, 3, 3, 3), "a_w": w(4, 4, 3, 3), "b_w": w(4, 4, 3, 3), "head_w": w(2, 4, 1, 1)}
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "stem_w"], ["stem"], **conv),
        helper.make_node("Relu", ["stem"], ["r0"]),
        helper.make_node("Conv", ["r0", "a_w"], ["a"], **conv),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "b_w"], ["b"], **conv),
        helper.make_node("Add", ["r0", "b"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["r1"]),
        helper.make_node("Conv", ["r1", "head_w"], ["y"], kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def residual_qdq(tmp_path_factory) -> bytes:
    return ort_quantize(residual_model(), tmp_path_factory.mktemp("residual")).SerializeToString()


# --------------------------------------------------------------------------- onnxruntime-quantized models


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("granularity", ["block", "layer"])
def test_invariants_on_the_quantized_matrix(name, config, granularity):
    model, partition = _partition(quantized(name, config), granularity=granularity)
    assert sum(len(b.weighted) for b in partition) == len(_weighted_ops(model)) > 0
    if granularity == "layer":
        assert all(len(b.weighted) == 1 for b in partition.blocks[:-1])
        assert len(partition.blocks[-1].weighted) <= 1


@pytest.mark.parametrize("config", CONFIGS)
def test_attention_block_comes_out_whole(config):
    model, partition = _partition(quantized("attention", config))
    core = _block_with(partition, model, "probs")
    for name in ("q", "k", "v", "scores", "ctx"):
        assert _block_with(partition, model, name) is core
    assert len(core.weighted) == 3  # the Q, K and V projections
    assert [v.name for v in core.outputs] == ["ctx"]  # before ctx's quantizer
    assert _block_with(partition, model, "y_QuantizeLinear_Input") is not core  # the output projection


@pytest.mark.parametrize("config", CONFIGS)
def test_mlp_residual_to_the_input_comes_out_whole(config):
    model, partition = _partition(quantized("mlp", config))
    first = partition.blocks[0]
    assert len(first.weighted) == 3 and "Add" in _ops(first)
    assert [v.name for v in first.inputs] == ["x"]


def test_conv_blocks_cut_at_activation_quantizers():
    model, partition = _partition(quantized("conv", "u8s8-channel"))
    lines = [b.describe() for b in partition]
    assert lines == [
        "block 0: ops=[QuantizeLinear, DequantizeLinear, Conv] weighted=1 inputs=[x] outputs=[relu1]",
        "block 1: ops=[QuantizeLinear, DequantizeLinear, Conv] weighted=1 inputs=[relu1] outputs=[y_QuantizeLinear_Input]",
        "block 2: ops=[QuantizeLinear, DequantizeLinear] weighted=0 inputs=[y_QuantizeLinear_Input] outputs=[y]",
    ]
    # The weight and bias quantizers travel with their Conv.
    assert [n.op_type for n in partition.blocks[0].constant_nodes] == ["DequantizeLinear", "DequantizeLinear"]


# --------------------------------------------------------------------------- residual


def _conv(model: onnx_ir.Model, weight: str) -> onnx_ir.Node:
    """The Conv whose weight is (a quantizer of) initializer ``weight`` (onnxruntime renames outputs)."""
    [node] = [n for n in model.graph if n.op_type == "Conv" and n.inputs[1].name.startswith(weight)]
    return node


@pytest.mark.parametrize("quantize", [False, True], ids=["float", "qdq"])
def test_residual_block_comes_out_whole(quantize, residual_qdq):
    proto = onnx.load_model_from_string(residual_qdq) if quantize else residual_model()
    model, partition = _partition(proto)
    block = partition.block_of(_conv(model, "b_w"))
    assert partition.block_of(_conv(model, "a_w")) is block
    [add] = [n for n in model.graph if n.op_type == "Add"]
    assert partition.block_of(add) is block
    assert len(block.weighted) == 2
    assert partition.block_of(_conv(model, "stem_w")) is not block
    assert partition.block_of(_conv(model, "head_w")) is not block
    assert len(block.inputs) == 1  # single entry: the stem's output, before its quantizer
    assert [v.name for v in block.inputs] == ["r0"]


def test_residual_in_layers_gives_multi_input_blocks(residual_qdq):
    model, partition = _partition(onnx.load_model_from_string(residual_qdq), granularity="layer")
    assert [len(b.weighted) for b in partition] == [1, 1, 1, 1, 0]
    second = partition.block_of(_conv(model, "b_w"))
    assert sorted(v.name for v in second.inputs) == ["ar", "r0_DequantizeLinear_Output"]  # the branch and the skip
    assert "Add" in _ops(second)


def test_float_layers_keep_their_trailing_activation():
    model, partition = _partition(residual_model(), granularity="layer")
    assert [_ops(b) for b in partition] == [["Conv", "Relu"], ["Conv", "Relu"], ["Conv", "Add", "Relu"], ["Conv"]]


# --------------------------------------------------------------------------- the bundled example


def test_bundled_example():
    model = onnx_ir.load(EXAMPLES / "cnn_qdq.onnx")
    partition = BlockPartition.build(model)
    check_partition(model, partition)
    assert len(partition) == 8
    assert [len(b.weighted) for b in partition] == [1, 1, 1, 1, 1, 1, 1, 0]
    assert [[v.name for v in b.inputs] for b in partition][:3] == [["input"], ["relu1"], ["relu2"]]
    assert _ops(partition[6]) == ["QuantizeLinear", "DequantizeLinear", "GlobalAveragePool", "QuantizeLinear",
                                  "DequantizeLinear", "Flatten", "QuantizeLinear", "DequantizeLinear", "Gemm"]
    layers = BlockPartition.build(model, granularity="layer")
    assert [b.describe() for b in layers] == [b.describe() for b in partition]


@pytest.mark.parametrize("name", ["cnn_constants_qdq.onnx", "cnn_float.onnx"])
def test_bundled_variants(name):
    model = onnx_ir.load(EXAMPLES / name)
    partition = BlockPartition.build(model)
    check_partition(model, partition)
    assert sum(len(b.weighted) for b in partition) == 7


def test_min_and_max_ops_merge_and_split():
    model = onnx_ir.load(EXAMPLES / "cnn_qdq.onnx")
    pairs = BlockPartition.build(model, min_ops=2, max_ops=2)
    check_partition(model, pairs)
    assert [len(b.weighted) for b in pairs] == [2, 2, 2, 1, 0]
    model, partition = _partition(quantized("mlp", "u8s8-channel"), max_ops=2)
    assert [len(b.weighted) for b in partition] == [1, 1, 1, 0]
    assert partition.num_split_regions == 1
    model, partition = _partition(quantized("mlp", "u8s8-channel"), min_ops=2, max_ops=2)
    assert [len(b.weighted) for b in partition] == [2, 1, 0]


@pytest.mark.parametrize("kwargs", [dict(min_ops=0), dict(min_ops=3, max_ops=2), dict(granularity="layers")])
def test_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        BlockPartition.build(onnx_ir.from_proto(conv_relu_model()), **kwargs)


# --------------------------------------------------------------------------- edge cases


def _parse(text: str) -> onnx_ir.Model:
    return onnx_ir.from_proto(onnx.parser.parse_model(textwrap.dedent(text)))


def test_dialect_quantizers():
    model = _parse("""
        <ir_version: 10, opset_import: ["" : 21, "qdq_passes" : 1]>
        g (float[1,4] x) => (float[1,4] y)
          <float[4,4] w1 = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}, float[4,4] w2 = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1},
           float s = {0.1}, int8 z = {0}, float sa = {0.05}, uint8 za = {128}>
        {
          xq = qdq_passes.INTQuantizer (x, sa, za)
          w1q = qdq_passes.AdaroundINTQuantizer (w1, s, z)
          h = MatMul (xq, w1q)
          hr = Relu (h)
          hq = qdq_passes.INTQuantizer (hr, sa, za)
          w2q = qdq_passes.AdaroundINTQuantizer (w2, s, z)
          y = MatMul (hq, w2q)
        }
    """)
    partition = BlockPartition.build(model)
    check_partition(model, partition)
    assert [b.describe() for b in partition] == [
        "block 0: ops=[qdq_passes.INTQuantizer, MatMul, Relu] weighted=1 inputs=[x] outputs=[hr]",
        "block 1: ops=[qdq_passes.INTQuantizer, MatMul] weighted=1 inputs=[hr] outputs=[y]",
    ]
    assert [n.op_type for n in partition[0].constant_nodes] == ["AdaroundINTQuantizer"]


def test_no_weighted_ops_and_empty_graph():
    model = _parse("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { t = Relu (x)  y = Neg (t) }
    """)
    partition = BlockPartition.build(model)
    check_partition(model, partition)
    assert [b.describe() for b in partition] == ["block 0: ops=[Relu, Neg] weighted=0 inputs=[x] outputs=[y]"]
    empty = _parse("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] x) { }
    """)
    assert len(BlockPartition.build(empty)) == 0


def test_unsorted_graph_is_partitioned_in_topological_order():
    model = onnx_ir.from_proto(residual_model())
    nodes = list(model.graph)
    model.graph.remove(nodes, safe=False)
    model.graph.extend(reversed(nodes))
    partition = BlockPartition.build(model)
    assert [_ops(b) for b in partition] == [["Conv", "Relu"], ["Conv", "Relu", "Conv", "Add", "Relu"], ["Conv"]]
    assert [v.name for v in partition[2].inputs] == ["r1"]


def test_subgraph_reads_are_edges():
    model = _parse("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1,4] x) => (float[1,4] y)
          <float[4,4] w1 = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}, float[4,4] w2 = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1},
           bool c = {1}>
        {
          h = MatMul (x, w1)
          t = Relu (h)
          u = If (c) <then_branch = g1 () => (float[1,4] o1) { o1 = Neg (t) },
                      else_branch = g2 () => (float[1,4] o2) { o2 = Identity (t) }>
          y = MatMul (u, w2)
        }
    """)
    partition = BlockPartition.build(model)
    check_partition(model, partition)
    [if_node] = [n for n in model.graph if n.op_type == "If"]
    block = partition.block_of(if_node)  # reads t only inside its branches
    assert [_ops(b) for b in partition] == [["MatMul", "Relu"], ["If", "MatMul"]]
    assert [v.name for v in block.inputs] == ["t"]
    assert [v.name for v in partition[0].outputs] == ["t"]


def test_shared_constant_chain_is_copied_into_every_reader():
    """A quantized constant read by two blocks: each block computes it (a block runs from
    initializers alone), and the blocks stay apart (nothing is learned in it)."""
    model = _parse("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1,4] x) => (float[1,4] y)
          <int8[4,4] w = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}, float s = {0.1}, int8 z = {0}>
        {
          wd = DequantizeLinear (w, s, z)
          h = MatMul (x, wd)
          hr = Relu (h)
          y = MatMul (hr, wd)
        }
    """)
    partition = BlockPartition.build(model)
    check_partition(model, partition)
    assert len(partition) == 2
    assert [[n.op_type for n in b.constant_nodes] for b in partition] == [["DequantizeLinear"]] * 2
    assert partition.block_of(partition[1].constant_nodes[0]) is partition[0]


def test_shared_adaround_weight_merges_the_blocks_that_read_it():
    """A tied weight AdaRound learns (here read directly and through a Transpose): one block from
    its first reader to its last, so it is rounded once with all its readers in the loss."""
    model = _parse("""
        <ir_version: 10, opset_import: ["" : 21, "qdq_passes" : 1]>
        g (float[1,4] x) => (float[1,4] y)
          <float[4,4] w = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}, float[4,4] v = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1},
           float s = {0.1}, int8 z = {0}, float sa = {0.05}, uint8 za = {128}>
        {
          wq = qdq_passes.AdaroundINTQuantizer (w, s, z)
          vq = qdq_passes.AdaroundINTQuantizer (v, s, z)
          a = MatMul (x, wq)
          aq = qdq_passes.INTQuantizer (a, sa, za)
          b = MatMul (aq, vq)
          bq = qdq_passes.INTQuantizer (b, sa, za)
          wt = Transpose (wq)
          y = MatMul (bq, wt)
        }
    """)
    partition = BlockPartition.build(model, max_ops=1)
    check_partition(model, partition)
    assert [len(b.weighted) for b in partition] == [3]
    assert sorted(n.op_type for n in partition[0].constant_nodes) == ["AdaroundINTQuantizer"] * 2 + ["Transpose"]
    untied = _parse(onnx.printer.to_text(onnx_ir.to_proto(model)).replace("y = MatMul (bq, wt)", "y = MatMul (bq, vq)"))
    assert [len(b.weighted) for b in BlockPartition.build(untied, max_ops=1)] == [1, 2]


# --------------------------------------------------------------------------- speed


def _chain(groups: int) -> onnx_ir.Model:
    """``groups`` x (Q, DQ, weight DQ, Conv): 4 nodes per group, built directly in onnx_ir."""
    def const(name: str, array: np.ndarray) -> onnx_ir.Value:
        value = onnx_ir.Value(name=name, const_value=onnx_ir.tensor(array, name=name))
        graph.register_initializer(value)
        return value

    x = onnx_ir.Value(name="x", type=onnx_ir.TensorType(onnx_ir.DataType.FLOAT), shape=onnx_ir.Shape([1, 2, 4, 4]))
    graph = onnx_ir.Graph([x], [], nodes=[], name="chain", opset_imports={"": 21})
    scale, zero = const("s", np.array(0.1, np.float32)), const("z", np.array(0, np.int8))
    current = x
    for g in range(groups):
        weight = const(f"w{g}", np.ones((2, 2, 1, 1), np.int8))
        q = onnx_ir.node("QuantizeLinear", [current, scale, zero], num_outputs=1)
        dq = onnx_ir.node("DequantizeLinear", [q.outputs[0], scale, zero], num_outputs=1)
        wdq = onnx_ir.node("DequantizeLinear", [weight, scale, zero], num_outputs=1)
        conv = onnx_ir.node("Conv", [dq.outputs[0], wdq.outputs[0]], num_outputs=1)
        conv.outputs[0].name = f"c{g}"
        graph.extend([q, dq, wdq, conv])
        current = conv.outputs[0]
    graph.outputs.append(current)
    return onnx_ir.Model(graph, ir_version=10)


def test_ten_thousand_nodes_partition_fast():
    model = _chain(2500)
    assert len(model.graph) == 10_000
    start = time.perf_counter()
    partition = BlockPartition.build(model)
    seconds = time.perf_counter() - start
    print(f"\nBlockPartition on 10,000 nodes: {seconds:.3f} s, {len(partition)} blocks")
    assert len(partition) == 2500 and all(len(b.weighted) == 1 for b in partition)
    assert seconds < 10.0


# --------------------------------------------------------------------------- print-blocks


def test_print_blocks_lines_and_no_change():
    model = onnx_ir.load(EXAMPLES / "cnn_qdq.onnx")
    before = onnx_ir.to_proto(model).SerializeToString()
    pass_ = PrintBlocksPass(granularity="layer")
    pass_.stream = io.StringIO()
    result = pass_(model)
    assert result.modified is False
    assert onnx_ir.to_proto(model).SerializeToString() == before
    lines = pass_.stream.getvalue().splitlines()
    assert lines[0] == "block 0: ops=[QuantizeLinear, DequantizeLinear, Conv] weighted=1 inputs=[input] outputs=[relu1]"
    assert lines[-1] == "block 7: ops=[QuantizeLinear, DequantizeLinear] weighted=0 inputs=[logits_QuantizeLinear_Input] outputs=[logits]"
    assert pass_.stats == {"num-blocks": 8, "num-weighted-ops": 7, "num-split-regions": 0}


def test_print_blocks_through_the_cli(tmp_path, capsys):
    from qdq_passes.cli import main

    code = main([str(EXAMPLES / "cnn_qdq.onnx"), "-o", str(tmp_path / "out.onnx"), "-p", "print-blocks{min-ops=2 max-ops=2}"])
    assert code == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("block ")]
    assert [ln.split(" weighted=")[1].split()[0] for ln in lines] == ["2", "2", "2", "1", "0"]


def test_print_blocks_rejects_min_above_max():
    from qdq_passes import parse_pipeline
    from qdq_passes.infra.errors import OptionError

    with pytest.raises(OptionError, match="min-ops"):
        parse_pipeline("print-blocks{min-ops=3 max-ops=2}")


GOLDEN = Path(__file__).resolve().parents[1] / "passes" / "print-blocks"


@pytest.mark.parametrize(
    ("granularity", "expected"),
    [
        ("block", [
            "block 0: ops=[QuantizeLinear, DequantizeLinear, Conv, Relu] weighted=1 inputs=[x] outputs=[r0]",
            "block 1: ops=[QuantizeLinear, DequantizeLinear, Conv, Relu, QuantizeLinear, DequantizeLinear, Conv, "
            "QuantizeLinear, DequantizeLinear, Add] weighted=2 inputs=[r0] outputs=[sum]",
            "block 2: ops=[QuantizeLinear, DequantizeLinear] weighted=0 inputs=[sum] outputs=[y]",
        ]),
        ("layer", [
            "block 0: ops=[QuantizeLinear, DequantizeLinear, Conv, Relu] weighted=1 inputs=[x] outputs=[r0]",
            "block 1: ops=[QuantizeLinear, DequantizeLinear, Conv, Relu] weighted=1 inputs=[r0] outputs=[r0d, ar]",
            "block 2: ops=[QuantizeLinear, DequantizeLinear, Conv, QuantizeLinear, DequantizeLinear, Add] weighted=1 "
            "inputs=[ar, r0d] outputs=[sum]",
            "block 3: ops=[QuantizeLinear, DequantizeLinear] weighted=0 inputs=[sum] outputs=[y]",
        ]),
    ],
)
def test_print_blocks_on_the_golden_residual_case(granularity, expected):
    """The lines the golden cases of tests/passes/print-blocks print (the golden runner keeps only the model)."""
    from qdq_passes.model_io import load_model

    model = load_model(GOLDEN / "residual_qdq.onnxtxt")
    pass_ = PrintBlocksPass(granularity=granularity)
    pass_.stream = io.StringIO()
    assert pass_(model).modified is False
    assert pass_.stream.getvalue().splitlines() == expected


def test_side_outputs_and_dead_ends_do_not_break_the_chain():
    proto = residual_model()
    proto.graph.output.append(helper.make_tensor_value_info("r0", TensorProto.FLOAT, [1, 4, 8, 8]))
    proto.graph.node.insert(2, helper.make_node("Shape", ["r0"], ["dead_shape"]))
    proto.graph.node.insert(3, helper.make_node("Cast", ["dead_shape"], ["dead_cast"], to=TensorProto.FLOAT))
    model, partition = _partition(proto)
    assert [_ops(b) for b in partition] == [
        ["Conv", "Relu"], ["Shape", "Cast", "Conv", "Relu", "Conv", "Add", "Relu"], ["Conv"]
    ]
    assert [v.name for v in partition[0].outputs] == ["r0"]  # a graph output read further on, once


def _random_dag(seed: int) -> onnx.ModelProto:
    """A random DAG of weighted MatMuls, Relu, Add, Softmax and activation Q/DQ pairs, with side
    outputs and dead ends: the invariants must hold whatever the shape of the graph."""
    rng = np.random.default_rng(seed)
    values, nodes, inits = ["x"], [], [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    for k in range(int(rng.integers(5, 40))):
        kind = rng.choice(["matmul", "relu", "add", "qdq", "softmax"], p=[0.35, 0.15, 0.2, 0.2, 0.1])
        a = values[-1 - int(rng.integers(0, min(len(values), 4)))]
        out = f"v{k}"
        if kind == "matmul":
            inits.append(numpy_helper.from_array(np.ones((4, 4), np.int8), f"w{k}"))
            nodes.append(helper.make_node("DequantizeLinear", [f"w{k}", "s", "z"], [f"w{k}d"]))
            nodes.append(helper.make_node("MatMul", [a, f"w{k}d"], [out]))
        elif kind == "add":
            b = values[int(rng.integers(0, len(values)))]
            nodes.append(helper.make_node("Add", [a, b], [out]))
        elif kind == "qdq":
            nodes.append(helper.make_node("QuantizeLinear", [a, "s", "z"], [f"{out}q"]))
            nodes.append(helper.make_node("DequantizeLinear", [f"{out}q", "s", "z"], [out]))
        else:
            nodes.append(helper.make_node("Relu" if kind == "relu" else "Softmax", [a], [out]))
        values.append(out)
    picks = {values[-1]} | {values[int(i)] for i in rng.integers(1, len(values), int(rng.integers(0, 3)))}
    outputs = [helper.make_tensor_value_info(v, TensorProto.FLOAT, [1, 4]) for v in sorted(picks)]
    graph = helper.make_graph(nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("seed", range(60))
def test_invariants_on_random_graphs(seed):
    for kwargs in [{}, dict(min_ops=2, max_ops=3), dict(max_ops=1), dict(granularity="layer")]:
        model, partition = _partition(_random_dag(seed), **kwargs)
        weights = [len(b.weighted) for b in partition]
        assert all(w <= (1 if kwargs.get("granularity") else kwargs.get("max_ops", 4)) for w in weights)
        assert all(weights[:-1]) or sum(weights) == 0  # only the last block may be weightless


def test_dialect_names_match_ir_dialect():
    dialect = pytest.importorskip("qdq_passes.ir.dialect")
    from qdq_passes.ir.blocks import DIALECT_DOMAIN, DIALECT_QUANTIZERS

    assert DIALECT_DOMAIN == dialect.DOMAIN and DIALECT_QUANTIZERS == set(dialect.OPS)


@pytest.mark.parametrize("weights", ["nearest", "adaround"])
def test_same_blocks_after_insert_quantizers(weights):
    """Quantizer nodes cut where their Q/DQ pairs did: same blocks, same boundary values."""
    import qdq_passes

    pipeline = "insert-quantizers" + ("{weights=adaround}" if weights == "adaround" else "")
    for proto in [quantized("attention", "u8s8-channel"), onnx.load(EXAMPLES / "cnn_qdq.onnx")]:
        qdq = BlockPartition.build(onnx_ir.from_proto(onnx.load_model_from_string(proto.SerializeToString())))
        model = qdq_passes.run(proto, pipeline)
        dialect = BlockPartition.build(model)
        check_partition(model, dialect)

        def summary(partition: BlockPartition) -> list[tuple]:
            return [(len(b.weighted), [v.name for v in b.inputs], [v.name for v in b.outputs]) for b in partition]

        assert summary(dialect) == summary(qdq)


def _shape_chain_model() -> onnx.ModelProto:
    """x[N,8] -> MatMul -> Relu -> MatMul -> Reshape to (Shape(x)[0], 2, 4) -> y: the shape value is
    made from the graph input and read after the second weighted op."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["n", "tail"], ["target"], axis=0),
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["z"]),
        helper.make_node("Reshape", ["z", "target"], ["y"]),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([2, 4], np.int64), "tail")]
    graph = helper.make_graph(nodes, "shape_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shape_computations_are_recomputed_not_passed():
    """Per layer, the block that reshapes by ``Shape(x)`` gets its own copy of the shape chain and
    reads ``x``; no block passes the shape value on."""
    model, partition = _partition(_shape_chain_model(), granularity="layer")
    reshape = next(n for n in model.graph if n.op_type == "Reshape")
    reader = partition.block_of(reshape)
    assert [n.op_type for n in reader.compute_nodes][:3] == ["Shape", "Slice", "Concat"]
    assert "x" in [v.name for v in reader.inputs]
    assert not any(v.name in ("s", "n", "target") for b in partition for v in b.outputs)
    first = partition[0]
    shape_node = next(n for n in model.graph if n.op_type == "Shape")
    assert partition.block_of(shape_node) is first  # the block that first holds it
    assert is_shape_node(next(n for n in model.graph if n.op_type == "Concat"))
    assert not is_shape_node(next(n for n in model.graph if n.op_type == "Reshape"))


def test_tensor_made_from_a_shape_alone_is_recomputed_where_read():
    """``ConstantOfShape(Shape(h))`` (an LSTM's zero initial state) goes with its reader, not to the
    first block: that would make the first block read ``h`` of a later block."""
    model = _parse("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1,4] x) => (float[1,4] y)
          <float[4,4] w0 = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}, float[4,4] w1 = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1},
           float[4,4] w2 = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}>
        {
          a = MatMul (x, w0)
          r = Relu (a)
          h = MatMul (r, w1)
          s = Shape (h)
          z = ConstantOfShape (s)
          c = Add (h, z)
          y = MatMul (c, w2)
        }
    """)
    partition = BlockPartition.build(model, granularity="layer")
    check_partition(model, partition)
    zeros = next(n for n in model.graph if n.op_type == "ConstantOfShape")
    assert is_shape_node(zeros)
    assert not any(v.name == "h" for v in partition[0].inputs)


def test_a_copied_shape_node_brings_the_constant_chain_it_reads():
    """A shape computation copied into a later block (step 9) reads a ``Cast`` of a constant (PP-OCR's
    recognizer): the copy brings that constant node too."""
    model = _parse("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2,4] x) => (float[2,4] y)
          <float[4,4] w0 = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}, float[4,4] w1 = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1},
           float[4,4] w2 = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}, float[2] ones = {1, 1}>
        {
          a = MatMul (x, w0)
          s = Shape (a)
          c = Cast <to = 7> (ones)
          target = Mul (s, c)
          r = Relu (a)
          h = MatMul (r, w1)
          t = Reshape (h, target)
          y = MatMul (t, w2)
        }
    """)
    partition = BlockPartition.build(model, granularity="layer")
    check_partition(model, partition)
    reshape = next(n for n in model.graph if n.op_type == "Reshape")
    holder = partition.block_of(reshape)
    assert {"Cast", "Mul", "Shape"} <= {n.op_type for n in holder.nodes}
