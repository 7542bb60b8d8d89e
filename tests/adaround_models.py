"""Seeded models and data for the AdaRound tests and ``benchmarks/bench_adaround.py``.

* :func:`cnn_case`: a synthetic 10-class image task (class templates = seeded smooth random patterns,
  samples = a template with random gain, shift and smooth noise) at 3x16x16; a small CNN (six 3x3
  convolutions with Relu, global average pooling, a linear head) trained on it in torch for a few
  seconds; exported to ONNX with ``onnx.helper`` (opset 21, symbolic batch).
* :func:`transformer_case`: one post-LN transformer encoder layer (d=32, 2 heads, seq 16: MatMul
  projections with bias, Softmax attention, LayerNormalization, Gelu MLP), random but sensible
  weights, on inputs that are token embeddings plus positions.
* :func:`ort_int4`: onnxruntime's ``quantize_static`` (QDQ, MinMax, per-channel **INT4** weights,
  uint8 activations, ``AddQDQPairToWeight=True`` so the float weights stay in the model).

Everything is deterministic for a given seed (torch runs on the thread count given, 1 by default).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "Case",
    "cnn_case",
    "ort_int4",
    "save_npz",
    "sqnr_db",
    "top1_agreement",
    "transformer_case",
]

OPSET = 21
IR_VERSION = 10
IMG = 16
NUM_CLASSES = 10
#: (out_channels, stride) of the CNN's six 3x3 convolutions
CNN_CONVS = [(16, 1), (16, 2), (32, 1), (32, 1), (64, 2), (64, 1)]
SEQ, DIM, HEADS, MLP = 16, 32, 2, 64
VOCAB = 64
RANK = 6


@dataclasses.dataclass
class Case:
    """A float model, its onnxruntime INT4 QDQ model, calibration and hold-out inputs."""

    name: str
    float_model: onnx.ModelProto
    qdq_model: onnx.ModelProto
    calib: dict[str, np.ndarray]
    holdout: dict[str, np.ndarray]


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """``10 log10(sum f^2 / sum (q - f)^2)`` in dB."""
    f = np.asarray(reference, np.float64)
    q = np.asarray(test, np.float64)
    noise = float(np.sum((q - f) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(f**2)) / noise)


def top1_agreement(reference: np.ndarray, test: np.ndarray) -> float:
    """Fraction of rows (over the last axis) whose argmax agrees."""
    return float(np.mean(np.argmax(reference, -1) == np.argmax(test, -1)))


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez`` to ``path`` (returned)."""
    np.savez(path, **arrays)
    return Path(path)


# --------------------------------------------------------------------------- data


def _upsample(n_in: int, n_out: int) -> np.ndarray:
    pos = np.linspace(0.0, n_in - 1, n_out)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def _smooth(rng: np.random.Generator, n: int, size: int = IMG) -> np.ndarray:
    img = np.zeros((n, 3, size, size))
    for coarse, weight in ((3, 1.0), (6, 0.5)):
        up = _upsample(coarse, size)
        img += weight * (up @ rng.standard_normal((n, 3, coarse, coarse)) @ up.T)
    return img


def image_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples float32[n,3,16,16] with labels; the class templates do not depend on ``seed``."""
    templates = _smooth(np.random.default_rng(1234), NUM_CLASSES)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n)
    gain = 1 + 0.3 * rng.standard_normal((n, 1, 1, 1))
    x = templates[labels] * gain + 0.8 * _smooth(rng, n) + 0.2 * rng.standard_normal((n, 3, IMG, IMG))
    shifts = rng.integers(-2, 3, (n, 2))
    for i, (dy, dx) in enumerate(shifts):
        x[i] = np.roll(x[i], (int(dy), int(dx)), axis=(1, 2))
    return x.astype(np.float32), labels.astype(np.int64)


# --------------------------------------------------------------------------- CNN


def train_cnn(x: np.ndarray, y: np.ndarray, seed: int, steps: int, num_classes: int = NUM_CLASSES) -> dict[str, np.ndarray]:
    """Train the six-conv CNN (``CNN_CONVS``, GAP, linear head) on ``(x, y)``; its weights by name.

    Seeded; Adam at 3e-3, batches of 64. Shared with benchmarks/vs_peers/build_data.py.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c_in = 3
    for c_out, stride in CNN_CONVS:
        layers += [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.ReLU()]
        c_in = c_out
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (64,), generator=gen)
        loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = {}
    for i, conv in enumerate([m for m in net if isinstance(m, nn.Conv2d)], start=1):
        weights[f"conv{i}.weight"] = conv.weight.detach().numpy().copy()
        weights[f"conv{i}.bias"] = conv.bias.detach().numpy().copy()
    weights["fc.weight"] = net[-1].weight.detach().numpy().copy()
    weights["fc.bias"] = net[-1].bias.detach().numpy().copy()
    return weights


def _train_cnn(seed: int, threads: int, steps: int) -> dict[str, np.ndarray]:
    import torch

    torch.set_num_threads(threads)
    x, y = image_task(2048, seed + 1)
    return train_cnn(x, y, seed, steps)


def _model(nodes, name, inputs, outputs, weights) -> onnx.ModelProto:  # noqa: ANN001
    tensors = [numpy_helper.from_array(np.ascontiguousarray(w), k) for k, w in weights.items()]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qdq-passes-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def cnn_float_model(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The trained CNN as ONNX: input float[batch,3,16,16] -> logits float[batch,10]."""
    nodes = []
    x = "input"
    for i, (_, stride) in enumerate(CNN_CONVS, start=1):
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}"],
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        x = f"relu{i}"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, IMG, IMG])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])
    return _model(nodes, "cnn", [inp], [out], weights)


# --------------------------------------------------------------------------- transformer


def transformer_float_model(seed: int = 0) -> onnx.ModelProto:
    """One post-LN encoder layer: x[batch,16,32] -> LN(h + MLP(h)), h = LN(x + Attn(x))."""
    rng = np.random.default_rng(seed)
    dh = DIM // HEADS

    def lin(n_in: int, n_out: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((n_in, n_out)) * gain / np.sqrt(n_in)).astype(np.float32)

    w = {
        "wq": lin(DIM, DIM, 2.0), "bq": 0.1 * rng.standard_normal(DIM),
        "wk": lin(DIM, DIM, 2.0), "bk": 0.1 * rng.standard_normal(DIM),
        "wv": lin(DIM, DIM), "bv": 0.1 * rng.standard_normal(DIM),
        "wo": lin(DIM, DIM), "bo": 0.1 * rng.standard_normal(DIM),
        "ln1_g": 1 + 0.1 * rng.standard_normal(DIM), "ln1_b": 0.1 * rng.standard_normal(DIM),
        "w1": lin(DIM, MLP, np.sqrt(2.0)), "b1": 0.1 * rng.standard_normal(MLP),
        "w2": lin(MLP, DIM), "b2": 0.1 * rng.standard_normal(DIM),
        "ln2_g": 1 + 0.1 * rng.standard_normal(DIM), "ln2_b": 0.1 * rng.standard_normal(DIM),
        "heads_shape": np.array([0, 0, HEADS, dh], np.int64),
        "merge_shape": np.array([0, 0, DIM], np.int64),
        "inv_sqrt_dh": np.array(1 / np.sqrt(dh), np.float32),
    }
    weights = {k: (v if v.dtype == np.int64 else v.astype(np.float32)) for k, v in w.items()}
    mk = helper.make_node
    nodes = []
    for p in "qkv":
        nodes += [mk("MatMul", ["x", f"w{p}"], [f"{p}_mm"]), mk("Add", [f"{p}_mm", f"b{p}"], [p]),
                  mk("Reshape", [p, "heads_shape"], [f"{p}_h"])]
    nodes += [
        mk("Transpose", ["q_h"], ["q_t"], perm=[0, 2, 1, 3]),
        mk("Transpose", ["k_h"], ["k_t"], perm=[0, 2, 3, 1]),
        mk("Transpose", ["v_h"], ["v_t"], perm=[0, 2, 1, 3]),
        mk("MatMul", ["q_t", "k_t"], ["scores_raw"]),
        mk("Mul", ["scores_raw", "inv_sqrt_dh"], ["scores"]),
        mk("Softmax", ["scores"], ["probs"], axis=-1),
        mk("MatMul", ["probs", "v_t"], ["ctx_t"]),
        mk("Transpose", ["ctx_t"], ["ctx_h"], perm=[0, 2, 1, 3]),
        mk("Reshape", ["ctx_h", "merge_shape"], ["ctx"]),
        mk("MatMul", ["ctx", "wo"], ["o_mm"]), mk("Add", ["o_mm", "bo"], ["o"]),
        mk("Add", ["x", "o"], ["res1"]),
        mk("LayerNormalization", ["res1", "ln1_g", "ln1_b"], ["h"], axis=-1, epsilon=1e-5),
        mk("MatMul", ["h", "w1"], ["m1_mm"]), mk("Add", ["m1_mm", "b1"], ["m1"]),
        mk("Gelu", ["m1"], ["g"]),
        mk("MatMul", ["g", "w2"], ["m2_mm"]), mk("Add", ["m2_mm", "b2"], ["m2"]),
        mk("Add", ["h", "m2"], ["res2"]),
        mk("LayerNormalization", ["res2", "ln2_g", "ln2_b"], ["y"], axis=-1, epsilon=1e-5),
    ]
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SEQ, DIM])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", SEQ, DIM])
    return _model(nodes, "encoder_layer", [inp], [out], weights)


def token_inputs(n: int, seed: int) -> np.ndarray:
    """float32[n,16,32]: embeddings of random tokens (a fixed low-rank table) plus fixed positions."""
    table_rng = np.random.default_rng(4321)
    # Anisotropic, as trained embeddings are: most energy in a few directions (with white inputs
    # nearest rounding is already the best rounding and AdaRound has nothing to learn).
    basis = table_rng.standard_normal((RANK, DIM))
    table = table_rng.standard_normal((VOCAB, RANK)) @ basis / np.sqrt(RANK) * 1.5
    table += 0.1 * table_rng.standard_normal((VOCAB, DIM))
    pos = 0.5 * table_rng.standard_normal((SEQ, 2)) @ table_rng.standard_normal((2, DIM))
    ids = np.random.default_rng(seed).integers(0, VOCAB, (n, SEQ))
    return (table[ids] + pos).astype(np.float32)


# --------------------------------------------------------------------------- onnxruntime INT4


class _Reader:
    def __init__(self, name: str, data: np.ndarray, batch: int = 16) -> None:
        self._batches = iter([{name: data[i:i + batch]} for i in range(0, len(data), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def ort_int4(float_model: onnx.ModelProto, input_name: str, calib: np.ndarray,
             op_types: list[str] | None = None, keep_float_weights: bool = True) -> onnx.ModelProto:
    """onnxruntime QDQ: per-channel INT4 weights, uint8 activations, MinMax.

    ``keep_float_weights``: ``AddQDQPairToWeight`` (float weight -> Q -> DQ); else folded int4 codes -> DQ.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
            onnx.save(float_model, src)
            quantize_static(
                str(src), str(dst), _Reader(input_name, calib),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt4,
                calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=op_types,
                extra_options={"AddQDQPairToWeight": keep_float_weights},
            )
            return onnx.load(dst)
    finally:
        logging.getLogger().setLevel(level)


# --------------------------------------------------------------------------- cases


@functools.lru_cache(maxsize=4)
def cnn_case(seed: int = 0, threads: int = 1, steps: int = 250, n_calib: int = 64, n_holdout: int = 256) -> Case:
    """The trained CNN, quantized by onnxruntime (INT4 per-channel weights, uint8 activations)."""
    model = cnn_float_model(_train_cnn(seed, threads, steps))
    calib, _ = image_task(n_calib, seed + 2)
    holdout, _ = image_task(n_holdout, seed + 3)
    return Case("cnn", model, ort_int4(model, "input", calib), {"input": calib}, {"input": holdout})


@functools.lru_cache(maxsize=4)
def transformer_case(seed: int = 0, n_calib: int = 64, n_holdout: int = 128) -> Case:
    """The encoder layer, its MatMuls quantized by onnxruntime (INT4 per-channel weights)."""
    model = transformer_float_model(seed)
    calib = token_inputs(n_calib, seed + 2)
    holdout = token_inputs(n_holdout, seed + 3)
    return Case("transformer", model, ort_int4(model, "x", calib, op_types=["MatMul"]), {"x": calib}, {"x": holdout})
