"""Write the bundled example into examples/ (deterministic, byte-reproducible).

Outputs:
  cnn_float.onnx          small float CNN, input float[1,3,32,32], 10 logits, opset 17
  cnn_qdq.onnx            cnn_float quantized by onnxruntime.quantization.quantize_static
                          (QDQ, uint8 activations, int8 per-channel weights, MinMax) on calib.npz
  cnn_constants_qdq.onnx  the same network with its weights in Constant nodes, quantized the same
                          way: onnxruntime's tool does not see those weights (per-tensor uint8
                          Q/DQ, float biases); the `constants-to-initializers` pass fixes that
  calib.npz               {"input": float32[32,3,32,32]} smooth random images
  holdout.npz             {"input": float32[16,3,32,32]} other images, same distribution

Run: python examples/make_example.py [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240601
OPSET = 17
IR_VERSION = 8
INPUT = "input"
# (out_channels, stride) of the six 3x3 convolutions
CONVS = [(16, 1), (16, 2), (32, 1), (32, 2), (64, 1), (64, 2)]
NUM_CLASSES = 10


def build_cnn(*, weights_as_constants: bool = False) -> onnx.ModelProto:
    """Six Conv+Relu (He-initialised), GlobalAveragePool, Flatten, Gemm -> logits[1,10]."""
    rng = np.random.default_rng(SEED)
    weights: dict[str, np.ndarray] = {}
    nodes: list[onnx.NodeProto] = []
    x, c_in = INPUT, 3
    for i, (c_out, stride) in enumerate(CONVS, start=1):
        fan_in = c_in * 9
        he = rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2.0 / fan_in)
        weights[f"conv{i}.weight"] = he.astype(np.float32)
        weights[f"conv{i}.bias"] = (rng.standard_normal(c_out) * 0.05).astype(np.float32)
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"conv{i}.weight", f"conv{i}.bias"],
                [f"conv{i}"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            )
        )
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        x, c_in = f"relu{i}", c_out
    weights["fc.weight"] = (rng.standard_normal((NUM_CLASSES, c_in)) * np.sqrt(1.0 / c_in)).astype(np.float32)
    weights["fc.bias"] = np.zeros(NUM_CLASSES, np.float32)
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    tensors = [numpy_helper.from_array(w, name) for name, w in weights.items()]
    if weights_as_constants:
        nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in tensors] + nodes
        tensors = []
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, NUM_CLASSES])],
        initializer=tensors,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qdq-passes-example"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _upsample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Bilinear interpolation matrix [n_out, n_in] (align_corners style)."""
    pos = np.linspace(0.0, n_in - 1, n_out)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def smooth_images(n: int, seed: int) -> np.ndarray:
    """``n`` smooth random images float32[n,3,32,32]: coarse noise upsampled plus a little fine noise."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, 3, 32, 32))
    for size, weight in ((4, 1.0), (8, 0.5), (16, 0.25)):
        up = _upsample_matrix(size, 32)
        img += weight * (up @ rng.standard_normal((n, 3, size, size)) @ up.T)
    img += 0.05 * rng.standard_normal(img.shape)
    img = (img - img.mean(axis=(1, 2, 3), keepdims=True)) / img.std(axis=(1, 2, 3), keepdims=True)
    return img.astype(np.float32)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but byte-reproducible (fixed zip timestamps, sorted keys)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


class _Reader:
    """CalibrationDataReader over the rows of one input array, batch 1."""

    def __init__(self, data: np.ndarray) -> None:
        self._rows = iter(data)

    def get_next(self) -> dict[str, np.ndarray] | None:
        row = next(self._rows, None)
        return None if row is None else {INPUT: row[None]}


def quantize(model: onnx.ModelProto, calib: np.ndarray) -> onnx.ModelProto:
    """onnxruntime QDQ: uint8 activations, int8 per-channel weights, MinMax."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        onnx.save(model, src)
        quantize_static(
            str(src),
            str(dst),
            _Reader(calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        return onnx.load(dst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    out: Path = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's pre-processing advice

    calib = smooth_images(32, SEED + 1)
    holdout = smooth_images(16, SEED + 2)
    float_model = build_cnn()
    files = {
        "cnn_float.onnx": float_model.SerializeToString(),
        "cnn_qdq.onnx": quantize(float_model, calib).SerializeToString(),
        "cnn_constants_qdq.onnx": quantize(build_cnn(weights_as_constants=True), calib).SerializeToString(),
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    save_npz(out / "calib.npz", {INPUT: calib})
    save_npz(out / "holdout.npz", {INPUT: holdout})
    for name in [*files, "calib.npz", "holdout.npz"]:
        print(f"{(out / name).stat().st_size:>9,d} B  {out / name}")


if __name__ == "__main__":
    main()
