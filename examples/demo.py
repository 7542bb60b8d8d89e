#!/usr/bin/env python3
"""The bundled example, end to end (`make demo`).

1. Clean-up passes on the onnxruntime-quantized CNNs in examples/: bit-identical in onnxruntime.
2. `insert-quantizers,lower-qdq,fold-qdq` (torch-backed quantizer nodes and back): bit-identical.
3. AdaRound: the float CNN quantized by onnxruntime to W4A8 (int4 per-channel weights, uint8
   activations, opset 21), then `insert-quantizers{weights=adaround},adaround,lower-qdq,fold-qdq`
   with the bundled calibration data; SQNR against the float model, nearest vs AdaRound.
4. One pipeline from the float model: `quantize{weights=int4 ...},insert-quantizers{...},adaround,
   lower-qdq,fold-qdq`; SQNR nearest (`quantize` alone) vs AdaRound.

Outputs go to examples/_out/.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime

HERE = Path(__file__).resolve().parent
OUT = HERE / "_out"
CLEANUP = "constants-to-initializers,cse,dce,topo-sort,check"
ROUND_TRIP = "insert-quantizers,lower-qdq,fold-qdq"
ADAROUND = "insert-quantizers{weights=adaround},adaround{iters=500},lower-qdq,fold-qdq"
QUANTIZE = "quantize{weights=int4 weight-granularity=channel acts=uint8}"


def qdq_opt(*args: str) -> None:
    """Run qdq-opt as a user would, echoing the command and what it printed."""
    cmd = [str(Path(sys.executable).with_name("qdq-opt")), *args]
    print("$ qdq-opt " + " ".join(shlex.quote(a) for a in args), flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True)
    print("\n".join("  " + line for line in (result.stdout + result.stderr).rstrip().splitlines()))
    if result.returncode != 0:
        sys.exit(f"demo: qdq-opt failed with exit code {result.returncode}")


def outputs(path: Path, samples: np.ndarray) -> list[np.ndarray]:
    """onnxruntime outputs, optimisations off (bit-exact comparisons), one thread."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: samples[i : i + 1]})[0] for i in range(len(samples))]


def compare(before: Path, after: Path, samples: np.ndarray) -> bool:
    """Print whether two models give bit-identical outputs on every sample."""
    a, b = outputs(before, samples), outputs(after, samples)
    same = sum(np.array_equal(x, y) for x, y in zip(a, b))
    print(f"  onnxruntime: {same}/{len(samples)} held-out outputs bit-identical to {before.name}")
    return same == len(samples)


def sqnr(reference: Path, model: Path, samples: np.ndarray) -> float:
    """Output SQNR (dB) of ``model`` against ``reference`` over the samples."""
    f = np.concatenate(outputs(reference, samples)).astype(np.float64)
    q = np.concatenate(outputs(model, samples)).astype(np.float64)
    return float(10 * np.log10((f**2).sum() / ((q - f) ** 2).sum()))


def quantize_w4a8(dst: Path) -> None:
    """The float CNN quantized by onnxruntime: int4 per-channel weights (kept as float Q/DQ pairs)."""
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    logging.getLogger().setLevel(logging.ERROR)
    model = onnx.version_converter.convert_version(onnx.load(HERE / "cnn_float.onnx"), 21)
    model.ir_version = max(model.ir_version, 10)
    src = OUT / "cnn_float_opset21.onnx"
    onnx.save(model, src)
    calib = np.load(HERE / "calib.npz")["input"]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"input": calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):  # noqa: ANN201
            return next(self.feeds, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt4,
                    extra_options={"AddQDQPairToWeight": True})


def main() -> int:
    OUT.mkdir(exist_ok=True)
    samples = np.load(HERE / "holdout.npz")["input"]
    ok = True
    for name in ["cnn_qdq", "cnn_constants_qdq"]:
        src, dst = HERE / f"{name}.onnx", OUT / f"{name}.clean.onnx"
        print(f"\n== {name}: clean-up passes on a QDQ model made by onnxruntime.quantization")
        qdq_opt(str(src), "-o", str(dst), "-p", CLEANUP, "--pass-statistics", "--threads", "1")
        ok &= compare(src, dst, samples)

    src, dst = HERE / "cnn_qdq.onnx", OUT / "cnn_qdq.roundtrip.onnx"
    print("\n== cnn_qdq: Q/DQ -> torch-backed quantizer nodes -> Q/DQ with folded weights")
    qdq_opt(str(src), "-o", str(dst), "-p", ROUND_TRIP, "--pass-statistics", "--threads", "1")
    ok &= compare(src, dst, samples)

    print("\n== AdaRound on W4A8: float CNN -> onnxruntime int4/uint8 QDQ -> AdaRound -> lowered")
    w4 = OUT / "cnn_w4a8.onnx"
    quantize_w4a8(w4)
    rounded = OUT / "cnn_w4a8.adaround.onnx"
    qdq_opt(str(w4), "-o", str(rounded), "-p", ADAROUND, "--calib", str(HERE / "calib.npz"),
            "--pass-statistics", "--timing", "--threads", "1")
    float_model = HERE / "cnn_float.onnx"
    nearest, learned = sqnr(float_model, w4, samples), sqnr(float_model, rounded, samples)
    print(f"  output SQNR vs the float model on {len(samples)} held-out samples: "
          f"nearest rounding {nearest:.2f} dB, AdaRound {learned:.2f} dB ({learned - nearest:+.2f} dB)")
    ok &= learned > nearest

    print("\n== From the float model: quantize (W4A8) -> AdaRound -> lowered, in one pipeline")
    nearest_path, learned_path = OUT / "cnn_quantize.nearest.onnx", OUT / "cnn_quantize.adaround.onnx"
    qdq_opt(str(float_model), "-o", str(nearest_path), "-p", QUANTIZE + ",fold-qdq",
            "--calib", str(HERE / "calib.npz"), "--threads", "1")
    qdq_opt(str(float_model), "-o", str(learned_path), "-p", QUANTIZE + "," + ADAROUND,
            "--calib", str(HERE / "calib.npz"), "--threads", "1", "--timing")
    nearest, learned = sqnr(float_model, nearest_path, samples), sqnr(float_model, learned_path, samples)
    print(f"  output SQNR vs the float model on {len(samples)} held-out samples: "
          f"nearest rounding {nearest:.2f} dB, AdaRound {learned:.2f} dB ({learned - nearest:+.2f} dB)")
    ok &= learned > nearest
    print("\ndemo: " + ("all checks passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
