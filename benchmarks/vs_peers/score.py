"""Score a quantized model against the float model on the hold-out inputs (our venv, onnxruntime).

SQNR = 10 log10(sum f^2 / sum (q - f)^2) over the outputs; top-1 agreement (argmax over classes) where
the case has classes; accuracy on the labels; share of weight codes that differ from the nearest
model's (``--nearest``), weights matched by where they are used (the weighted op consuming the
DequantizeLinear, in graph order), since tools name their code initializers differently. onnxruntime runs with graph optimisations off and the
given thread count. For W4 cases, weight codes are checked against the INT4 range [-8, 7]: codes a
tool wrote outside it (possible when a peer stores 4-bit codes in int8 tensors) are counted and
clamped into range before scoring (``--enforce-int4``), so every W4 row is a valid INT4 model.

    python score.py CASE_DIR MODEL.onnx [--threads 1] [--enforce-int4] -> one JSON line
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


def run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray], threads: int) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    data = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


CODE_TYPES = (TensorProto.INT8, TensorProto.INT4, TensorProto.UINT8, TensorProto.UINT4)
# ops a weight may pass through between its DequantizeLinear and the op that uses it
PASS_THROUGH = {"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Cast"}


def weight_codes(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Integer initializers read as the data input of a DequantizeLinear (weight codes, not biases)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            t = inits[node.input[0]]
            if t.data_type in CODE_TYPES:
                out[node.input[0]] = numpy_helper.to_array(t)
    return out


def codes_by_structure(model: onnx.ModelProto) -> dict[tuple, str]:
    """Weight-code initializer name keyed by where it is used, not by its name.

    Key: (op type of the weighted op that consumes the DequantizeLinear, possibly through
    Reshape/Transpose/..., that op's rank among the ops of its type in graph order, input slot).
    Tools name their initializers differently (ours: ``*_adaround_dequantized_quantized``; onnxruntime,
    Quark and AIMET: ``*_quantized``), but the graph around the weights is the same.
    """
    codes = weight_codes(model)
    consumers: dict[str, list[tuple[int, int]]] = {}
    for i, node in enumerate(model.graph.node):
        for slot, name in enumerate(node.input):
            consumers.setdefault(name, []).append((i, slot))
    rank, seen = {}, {}
    for i, node in enumerate(model.graph.node):
        rank[i] = seen.get(node.op_type, 0)
        seen[node.op_type] = rank[i] + 1
    out: dict[tuple, str] = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in codes:
            continue
        tensor, hops = node.output[0], 0
        while hops < 8:
            users = consumers.get(tensor, [])
            if len(users) != 1:
                break
            i, slot = users[0]
            user = model.graph.node[i]
            if user.op_type in PASS_THROUGH and slot == 0:
                tensor, hops = user.output[0], hops + 1
                continue
            out[(user.op_type, rank[i], slot)] = node.input[0]
            break
    return out


def changed_codes(reference: onnx.ModelProto, model: onnx.ModelProto) -> tuple[int, int, int]:
    """(codes that differ, codes compared, weights not matched) between two models of the same graph."""
    near, mine = weight_codes(reference), weight_codes(model)
    ref_at, my_at = codes_by_structure(reference), codes_by_structure(model)
    changed = total = unmatched = 0
    for key, ref_name in ref_at.items():
        name = my_at.get(key)
        if name is None or mine[name].shape != near[ref_name].shape:
            unmatched += 1
            continue
        changed += int(np.sum(mine[name].astype(np.int32) != near[ref_name].astype(np.int32)))
        total += near[ref_name].size
    return changed, total, unmatched


def enforce_int4(model: onnx.ModelProto) -> int:
    """Clamp int8-stored weight codes into [-8, 7] in place; returns how many were outside."""
    inits = {t.name: t for t in model.graph.initializer}
    bad = 0
    for name, codes in weight_codes(model).items():
        if inits[name].data_type != TensorProto.INT8:
            continue
        outside = (codes < -8) | (codes > 7)
        if outside.any():
            bad += int(outside.sum())
            inits[name].CopyFrom(numpy_helper.from_array(np.clip(codes, -8, 7).astype(np.int8), name))
    return bad


def score(case_dir: Path, model_path: Path, threads: int, enforce: bool, reference_codes: Path | None) -> dict:
    meta = json.loads((case_dir / "meta.json").read_text())
    feeds = dict(np.load(case_dir / "holdout.npz"))
    ref = run(str(case_dir / "float.onnx"), feeds, threads)
    model = onnx.load(model_path)
    result: dict = {}
    if enforce:
        result["codes_outside_int4"] = enforce_int4(model)
    if reference_codes is not None:
        changed, total, unmatched = changed_codes(onnx.load(reference_codes), model)
        result["codes_changed_pct"] = 100.0 * changed / total if total else None
        if unmatched:
            result["codes_unmatched"] = unmatched
    q = run(model, feeds, threads)
    f, qq = ref.astype(np.float64), q.astype(np.float64)
    noise = float(np.sum((qq - f) ** 2))
    result["sqnr_db"] = float("inf") if noise == 0 else float(10 * np.log10(np.sum(f**2) / noise))
    if meta["classes"]:
        result["top1_agree"] = float(np.mean(ref.argmax(-1) == q.argmax(-1)))
        labels = case_dir / "labels.npy"
        if labels.exists():
            y = np.load(labels)
            result["acc"] = float(np.mean(q.argmax(-1) == y))
            result["acc_float"] = float(np.mean(ref.argmax(-1) == y))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("case_dir", type=Path)
    p.add_argument("model", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--enforce-int4", action="store_true")
    p.add_argument("--nearest", type=Path, help="nearest-rounding model whose codes count as unchanged")
    a = p.parse_args()
    print(json.dumps(score(a.case_dir, a.model, a.threads, a.enforce_int4, a.nearest)))


if __name__ == "__main__":
    main()
