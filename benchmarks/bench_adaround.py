"""AdaRound quality, wall time, memory and per-iteration cost on the test models.

For the CNN and the transformer encoder layer of ``tests/adaround_models.py`` (INT4 per-channel
weights by onnxruntime, uint8 activations), three configurations, each in its own subprocess (so the
peak RSS is per run): nearest rounding (onnxruntime's model), AdaRound per layer
(``granularity=layer``) and per block. Prints a markdown table: SQNR against the float model on
hold-out inputs, top-1 agreement (argmax over the last axis: classes for the CNN, features per token
for the transformer), the pass's wall time, peak RSS, and per layer the seconds per iteration
against the time of that layer's conv/matmul alone at the same batch (the floor).

Run: python benchmarks/bench_adaround.py [--iters 1000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"nearest": None, "layer": {"granularity": "layer"}, "block": {"granularity": "block"}}


def _case(name: str):  # noqa: ANN202
    from tests.adaround_models import cnn_case, transformer_case

    return cnn_case() if name == "cnn" else transformer_case()


def _floors(case, batch: int, threads: int) -> list[float]:  # noqa: ANN001
    """Seconds of each weighted op's conv/matmul alone on ``batch`` samples, in graph order."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    torch.set_num_threads(threads)
    model = onnx.shape_inference.infer_shapes(case.float_model)
    shapes = {}
    for vi in [*model.graph.input, *model.graph.value_info]:
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.input[1] not in weights:
            continue
        x = torch.randn(shapes[node.input[0]])
        w = torch.from_numpy(np.ascontiguousarray(weights[node.input[1]]))
        if node.op_type == "Conv":
            attrs = {a.name: list(a.ints) for a in node.attribute}
            stride, pad = attrs.get("strides", [1, 1]), attrs.get("pads", [0, 0, 0, 0])[:2]

            def fn(x=x, w=w, stride=stride, pad=pad):  # noqa: ANN001, ANN202
                return torch.nn.functional.conv2d(x, w, None, stride, pad)
        elif node.op_type == "Gemm":
            def fn(x=x, w=w):  # noqa: ANN001, ANN202
                return x @ w.T
        else:
            def fn(x=x, w=w):  # noqa: ANN001, ANN202
                return x @ w
        for _ in range(3):
            fn()
        reps = 50
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        out.append((time.perf_counter() - start) / reps)
    return out


def worker(model: str, config: str, iters: int, threads: int) -> dict:
    import numpy as np
    import onnx
    import onnx_ir

    import qdq_passes
    from qdq_passes.adaround import AdaroundPass
    from qdq_passes.passes.insert_quantizers import InsertQuantizersPass
    from tests.adaround_models import save_npz, sqnr_db, top1_agreement
    from tests.models import run_ort

    qdq_passes.configure(threads=threads, seed=0)
    case = _case(model)
    reference = run_ort(case.float_model, case.holdout, threads)[0]
    result: dict = {"model": model, "config": config}
    if CONFIGS[config] is None:
        quantized = run_ort(case.qdq_model, case.holdout, threads)[0]
        result["seconds"] = 0.0
    else:
        with tempfile.TemporaryDirectory() as tmp:
            calib = save_npz(Path(tmp) / "calib.npz", case.calib)
            ir_model = onnx_ir.from_proto(onnx.load_model_from_string(case.qdq_model.SerializeToString()))
            InsertQuantizersPass(weights="adaround")(ir_model)
            ada = AdaroundPass(calib=str(calib), iters=iters, threads=threads, **CONFIGS[config])
            start = time.perf_counter()
            ada(ir_model)
            result["seconds"] = time.perf_counter() - start
            lowered = qdq_passes.run(ir_model, "lower-qdq,fold-qdq")
        quantized = run_ort(lowered, case.holdout, threads)[0]
        result["blocks"] = [(r.ops, r.weights, r.seconds / max(1, iters), r.status) for r in ada.reports if r.weights]
        if config == "layer":
            result["floors"] = _floors(case, ada.options.batch_size, threads)
    result["sqnr"] = sqnr_db(reference, quantized)
    result["top1"] = top1_agreement(reference, quantized)
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del np
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.iters, args.threads)))
        return
    rows = []
    for model in ("cnn", "transformer"):
        for config in CONFIGS:
            proc = subprocess.run([sys.executable, __file__, "--worker", model, config, "--iters", str(args.iters),
                                   "--threads", str(args.threads)], capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                sys.exit(proc.stderr)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"AdaRound, INT4 per-channel weights / uint8 activations, {args.iters} iterations, {args.threads} thread(s)\n")
    print("| model | rounding | SQNR dB | top-1 = float | pass wall s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['config']} | {r['sqnr']:.2f} | {r['top1']:.3f} | {r['seconds']:.1f} | {r['rss_mb']:.0f} |")
    print("\n| model | layer | ms / iteration | conv/matmul alone ms | ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["config"] != "layer":
            continue
        for i, ((ops, _, per_iter, status), floor) in enumerate(zip(r["blocks"], r["floors"])):
            print(f"| {r['model']} | {i} {ops} ({status}) | {per_iter * 1e3:.2f} | {floor * 1e3:.3f} | "
                  f"{per_iter / floor:.0f}x |")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
