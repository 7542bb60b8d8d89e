"""Small seeded models and onnxruntime helpers shared by the test-suite.

Builders return ``onnx.ModelProto``; convert with ``onnx_ir.from_proto`` as needed
(and never reuse the proto afterwards: they share tensors).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import onnx.version_converter
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "assert_bit_identical",
    "attention_model",
    "constant_weights_model",
    "conv_relu_model",
    "if_float_model",
    "mlp_model",
    "ort_quantize",
    "ort_quantized_if_model",
    "random_inputs",
    "run_ort",
]

OPSET = 17
IR_VERSION = 8


def _he(rng: np.random.Generator, shape: Sequence[int], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _bias(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.standard_normal(n) * 0.1).astype(np.float32)


def _model(
    nodes: list[onnx.NodeProto],
    name: str,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    weights: Mapping[str, np.ndarray],
    *,
    as_constants: bool = False,
) -> onnx.ModelProto:
    """Assemble a model; weights become initializers or leading Constant nodes."""
    tensors = [numpy_helper.from_array(w, name) for name, w in weights.items()]
    if as_constants:
        consts = [helper.make_node("Constant", [], [t.name], value=t) for t in tensors]
        graph = helper.make_graph(consts + nodes, name, inputs, outputs)
    else:
        graph = helper.make_graph(nodes, name, inputs, outputs, initializer=tensors)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qdq-passes-tests"
    )
    model.ir_version = IR_VERSION
    return model


def _conv_relu(seed: int, as_constants: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weights = {
        "conv1_w": _he(rng, (4, 3, 3, 3), 27),
        "conv1_b": _bias(rng, 4),
        "conv2_w": _he(rng, (4, 4, 3, 3), 36),
        "conv2_b": _bias(rng, 4),
    }
    nodes = [
        helper.make_node(
            "Conv", ["x", "conv1_w", "conv1_b"], ["conv1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("Conv", ["relu1", "conv2_w", "conv2_b"], ["y"], kernel_shape=[3, 3]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])
    return _model(nodes, "conv_relu", [x], [y], weights, as_constants=as_constants)


def conv_relu_model(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv(3->4, 3x3, pads 1) -> Relu -> Conv(4->4, 3x3) -> y[1,4,6,6]."""
    return _conv_relu(seed, as_constants=False)


def constant_weights_model(seed: int = 0) -> onnx.ModelProto:
    """``conv_relu_model`` with every weight and bias in a Constant node (as Paddle exports)."""
    return _conv_relu(seed, as_constants=True)


def mlp_model(seed: int = 0) -> onnx.ModelProto:
    """x[2,16] -> Gemm(transB=1) -> Relu -> Gemm(transB=0) -> MatMul(W) -> + x -> y[2,16]."""
    rng = np.random.default_rng(seed)
    weights = {
        "fc1_w": _he(rng, (32, 16), 16),  # [N, K], transB=1
        "fc1_b": _bias(rng, 32),
        "fc2_w": _he(rng, (32, 16), 32),  # [K, N], transB=0
        "fc2_b": _bias(rng, 16),
        "proj_w": _he(rng, (16, 16), 16),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "fc1_w", "fc1_b"], ["fc1"], transB=1),
        helper.make_node("Relu", ["fc1"], ["relu1"]),
        helper.make_node("Gemm", ["relu1", "fc2_w", "fc2_b"], ["fc2"], transB=0),
        helper.make_node("MatMul", ["fc2", "proj_w"], ["proj"]),
        helper.make_node("Add", ["x", "proj"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])
    return _model(nodes, "mlp", [x], [y], weights)


def attention_model(seed: int = 0) -> onnx.ModelProto:
    """x[1,8,16] -> softmax((x Wq)(x Wk)^T) (x Wv) -> Wo -> y[1,8,16]."""
    rng = np.random.default_rng(seed)
    weights = {name: _he(rng, (16, 16), 16) for name in ("wq", "wk", "wv", "wo")}
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"]),
        helper.make_node("MatMul", ["ctx", "wo"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])
    return _model(nodes, "attention", [x], [y], weights)


# --------------------------------------------------------------------------- data


def random_inputs(
    model: onnx.ModelProto | onnx_ir.Model, n: int = 1, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """``n`` seeded feeds for the graph inputs (symbolic or unknown dims become 1)."""
    if isinstance(model, onnx_ir.Model):
        model = onnx_ir.to_proto(model)
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        ttype = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in ttype.shape.dim]
        specs.append((vi.name, helper.tensor_dtype_to_np_dtype(ttype.elem_type), shape))
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        feed = {}
        for name, dtype, shape in specs:
            if np.issubdtype(dtype, np.floating):
                feed[name] = rng.standard_normal(shape).astype(dtype)
            elif dtype == np.bool_:
                feed[name] = rng.integers(0, 2, shape).astype(np.bool_)
            else:
                feed[name] = rng.integers(0, 10, shape).astype(dtype)
        feeds.append(feed)
    return feeds


class _FeedReader:
    """An onnxruntime ``CalibrationDataReader`` over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


# --------------------------------------------------------------------------- onnxruntime


def ort_quantize(
    float_model: onnx.ModelProto,
    tmp_dir: str | os.PathLike,
    *,
    per_channel: bool = True,
    weight_type: str = "QInt8",
    activation_type: str = "QUInt8",
    extra_options: dict | None = None,
    n_calib: int = 8,
    seed: int = 0,
    opset: int | None = None,
) -> onnx.ModelProto:
    """Quantize with ``onnxruntime.quantization.quantize_static`` (QDQ, MinMax).

    ``weight_type``/``activation_type`` name ``QuantType`` members. ``opset``
    first converts the float model's default domain to that opset (4-bit types
    need 21, else onnxruntime emits ``com.microsoft`` Q/DQ).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    if opset is not None:
        model = onnx.version_converter.convert_version(model, opset)
        if opset >= 21:
            model.ir_version = max(model.ir_version, 10)
    tmp = Path(tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    src, dst = tmp / "ort_float.onnx", tmp / "ort_qdq.onnx"
    onnx.save(model, src)
    reader = _FeedReader(random_inputs(model, n=n_calib, seed=seed))
    quantize_static(
        str(src),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType[activation_type],
        weight_type=QuantType[weight_type],
        extra_options=extra_options,
    )
    return onnx.load(dst)


def _session_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = threads
    so.log_severity_level = 3
    return so


def _has_external_data(model: onnx_ir.Model) -> bool:
    return any(
        isinstance(v.const_value, onnx_ir.ExternalTensor)
        for graph in model.graphs()
        for v in graph.initializers.values()
    )


def run_ort(
    model_or_path: onnx.ModelProto | onnx_ir.Model | str | os.PathLike,
    feeds: Mapping[str, np.ndarray],
    threads: int = 1,
) -> list[np.ndarray]:
    """Run on the CPU provider with all graph optimisations off (no fusion)."""
    import onnxruntime as ort

    so = _session_options(threads)
    providers = ["CPUExecutionProvider"]
    if isinstance(model_or_path, onnx_ir.Model):
        if _has_external_data(model_or_path):
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "model.onnx")
                onnx_ir.save(model_or_path, path, external_data="model.onnx.data")
                sess = ort.InferenceSession(path, so, providers=providers)
                return sess.run(None, dict(feeds))
        model_or_path = onnx_ir.to_proto(model_or_path)
    if isinstance(model_or_path, onnx.ModelProto):
        sess = ort.InferenceSession(model_or_path.SerializeToString(), so, providers=providers)
    else:
        sess = ort.InferenceSession(os.fspath(model_or_path), so, providers=providers)
    return sess.run(None, dict(feeds))


def assert_bit_identical(a_outputs: Sequence[np.ndarray], b_outputs: Sequence[np.ndarray]) -> None:
    """Assert two output lists are equal bit for bit (any NaN equals any NaN; -0.0 differs from 0.0)."""
    assert len(a_outputs) == len(b_outputs), f"{len(a_outputs)} outputs vs {len(b_outputs)}"
    for i, (a, b) in enumerate(zip(a_outputs, b_outputs)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype, f"output {i}: dtype {a.dtype} vs {b.dtype}"
        assert a.shape == b.shape, f"output {i}: shape {a.shape} vs {b.shape}"
        if a.dtype.kind in "fc":
            bits = np.dtype(f"u{a.dtype.itemsize}")
            differ = (a.view(bits) != b.view(bits)) & ~(np.isnan(a) & np.isnan(b))
            if not differ.any():
                continue
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            max_diff = float(np.nanmax(np.where(differ, diff, 0.0)))
        else:
            differ = a != b
            if not differ.any():
                continue
            max_diff = int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64))))
        raise AssertionError(
            f"output {i} ({a.dtype}{list(a.shape)}): {int(differ.sum())} of {a.size} elements differ, "
            f"max abs diff {max_diff}"
        )


def _branch_nodes(tag: str, seed: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Conv(3->4, 3x3) -> Relu -> Conv(4->4, 1x1) reading the outer value ``x``; its output's name."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_he(rng, (4, 3, 3, 3), 27), f"w_{tag}"),
        numpy_helper.from_array(_bias(rng, 4), f"b_{tag}"),
        numpy_helper.from_array(_he(rng, (4, 4, 1, 1), 4), f"w2_{tag}"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", f"w_{tag}", f"b_{tag}"], [f"c_{tag}"], pads=[1, 1, 1, 1], name=f"conv_{tag}"),
        helper.make_node("Relu", [f"c_{tag}"], [f"r_{tag}"], name=f"relu_{tag}"),
        helper.make_node("Conv", [f"r_{tag}", f"w2_{tag}"], [f"y_{tag}"], name=f"conv2_{tag}"),
    ]
    return nodes, inits, f"y_{tag}"


def _if_model(branches: dict[str, onnx.GraphProto], opset: int) -> onnx.ModelProto:
    """``y = If(sr > 8000, then, else)`` over x[1,3,8,8] (read by the branches from the outer scope)."""
    cond = helper.make_node("Greater", ["sr", "threshold"], ["wide"], name="is_wide")
    choose = helper.make_node("If", ["wide"], ["y"], then_branch=branches["wide"], else_branch=branches["narrow"],
                              name="by_rate")
    graph = helper.make_graph(
        [cond, choose], "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(np.array(8000, np.int64), "threshold")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    onnx.checker.check_model(model, full_check=True)
    return model


def if_float_model() -> onnx.ModelProto:
    """A float model whose whole network sits in the two branches of an If on a sample-rate input
    (as silero-vad's 8 kHz / 16 kHz split); each branch keeps its weights as its own initializers."""
    branches = {}
    for seed, tag in enumerate(("wide", "narrow")):
        nodes, inits, out = _branch_nodes(tag, seed)
        branches[tag] = helper.make_graph(nodes, f"branch_{tag}", [],
                                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return _if_model(branches, 17)


def ort_quantized_if_model(tmp_dir: str | os.PathLike) -> onnx.ModelProto:
    """``if_float_model`` with each branch quantized by ``onnxruntime.quantization.quantize_static``.

    onnxruntime's quantizer does not enter subgraphs, so each branch is quantized as a model of its
    own (input ``x``) and put back into the If: Q/DQ pairs inside both branches, as a user who
    quantized the branches gets, with the branch's weights, scales and zero points as its own
    initializers.
    """
    branches = {}
    for seed, tag in enumerate(("wide", "narrow")):
        nodes, inits, out = _branch_nodes(tag, seed)
        alone = helper.make_graph(nodes, f"branch_{tag}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4, 8, 8])], inits)
        model = helper.make_model(alone, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        quantized = ort_quantize(model, Path(tmp_dir) / tag, seed=seed)
        graph = quantized.graph
        del graph.input[:]
        del graph.value_info[:]
        branches[tag] = graph
    return _if_model(branches, 17)
