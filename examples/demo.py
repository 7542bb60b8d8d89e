#!/usr/bin/env python3
"""The bundled example, end to end (`make demo`).

Runs `qdq-opt` on the onnxruntime-quantized CNNs in examples/ and checks with onnxruntime that
the outputs are bit-identical to the inputs' on the held-out samples. Outputs go to examples/_out/.
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


def main() -> int:
    OUT.mkdir(exist_ok=True)
    samples = np.load(HERE / "holdout.npz")["input"]
    ok = True
    for name in ["cnn_qdq", "cnn_constants_qdq"]:
        src, dst = HERE / f"{name}.onnx", OUT / f"{name}.clean.onnx"
        print(f"\n== {name}: clean-up passes on a QDQ model made by onnxruntime.quantization")
        qdq_opt(str(src), "-o", str(dst), "-p", CLEANUP, "--pass-statistics", "--threads", "1")
        ok &= compare(src, dst, samples)
    print("\ndemo: " + ("all outputs bit-identical" if ok else "MISMATCH"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
