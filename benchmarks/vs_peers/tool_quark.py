"""AMD Quark ONNX fast-finetune (AdaRound) on the case's onnxruntime QDQ model (runs in ``_envs/quark``).

``quark.onnx.algorithm.apply_FastFinetune(float.onnx, qdq, reader, extra_options)`` with
``extra_options["FastFinetune"]`` = OptimAlgorithm adaround, NumIterations, BatchSize, LearningRate
(set explicitly; the config classes drop some keys, the raw dict is read directly), OptimDevice cpu,
FixedSeed 0. The QDQ model is onnxruntime's folded one (integer codes -> DequantizeLinear), the
form fast-finetune wants. W4: Quark reads no INT4, so it gets ``qdq_int8c.onnx`` (the same 4-bit
codes and scales in int8 tensors); its clamp then uses the int8 range, and the scorer counts and
clamps codes outside [-8, 7].

    python tool_quark.py CASE_DIR OUT.onnx --iters N --batch-size B --lr LR --threads T
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Reader, Timer, case_files, report, set_threads  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("case_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--iters", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--threads", type=int, required=True)
    a = p.parse_args()
    set_threads(a.threads)
    case_dir = a.case_dir.resolve()
    out = a.out.resolve()
    os.chdir(out.parent)  # Quark appends quantized_info.csv to the working directory
    import onnx
    from quark.onnx.algorithm import apply_FastFinetune

    meta, calib = case_files(case_dir)
    qdq = case_dir / ("qdq_int8c.onnx" if meta["bits"] == 4 else "qdq.onnx")
    options = {"FastFinetune": {
        "OptimAlgorithm": "adaround", "OptimDevice": "cpu", "NumIterations": a.iters, "BatchSize": a.batch_size,
        "LearningRate": a.lr, "FixedSeed": 0,
    }}
    with Timer() as t:
        model = apply_FastFinetune(str(case_dir / "float.onnx"), str(qdq), Reader(calib, a.batch_size),
                                   extra_options=options)
    onnx.save(model, out)
    note = "W4 as 4-bit codes in int8 tensors" if meta["bits"] == 4 else ""
    report(algo_s=t.seconds, note=note, enforce_int4=meta["bits"] == 4)


if __name__ == "__main__":
    main()
