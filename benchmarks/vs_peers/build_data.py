"""Build every case's float model, calibration/hold-out data and onnxruntime QDQ models.

Runs in the ``_envs/data`` virtual environment (torch, scikit-learn, onnx, onnxruntime) and writes,
per case, into ``_work/<case>/``:

* ``float.onnx``: the float model; ``calib.npz`` (calibration inputs), ``holdout.npz`` (scoring inputs);
* ``qdq_keep.onnx``: onnxruntime ``quantize_static`` (QDQ, MinMax, per-channel symmetric weights,
  uint8 asymmetric activations) with the float weights kept as Q/DQ pairs (``AddQDQPairToWeight``):
  the input of our pass;
* ``qdq.onnx``: the same quantization with folded weight codes (nearest rounding): the "nearest" row,
  and the template the peers' rounding is written into for scoring;
* ``qdq_int8c.onnx`` (W4 cases): ``qdq.onnx`` with the INT4 weight codes and zero points stored
  in int8 tensors (Quark reads no INT4);
* ``meta.json``: input name, weight bits, which ops were quantized.

``magika-w4``/``magika-w8``: the pretrained content-type model bundled in the ``magika`` wheel
(pinned ``magika==1.0.3``, installed into ``_envs/data``), cut at its logits (the softmax tail
dropped) and converted to opset 21; its inputs are built by magika's own feature extraction
(``Magika._get_result_or_features_from_path``: the first and last 1024 bytes of the first/last
4096, whitespace-stripped, padded with token 256) from real files found on this machine under
/usr/share, /usr/lib/python3*, /etc (files magika would not send to its model, e.g. under 8 bytes,
are skipped; identical inputs kept once; extensions taken round-robin for variety). 256 calibrate,
512 disjoint ones are held out; the file lists are in ``files.json``. Only the MatMul and Conv
weights are quantized (the one-hot byte embedding 257x64, the 5-tap Conv 512x256x5x1 and the
512x214 head).

Every tool reads these same files, so data, scales and zero points are identical for all of them.

    _envs/data/bin/python build_data.py --out _work --cases cnn-w4,cnn-w8,tfm-w4,tfm-w8 [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OPSET, IR_VERSION = 21, 10
IMG = 32
CNN_CONVS = [(16, 1), (16, 2), (32, 1), (32, 1), (64, 2), (64, 1)]  # as tests/adaround_models.py
N_CALIB, N_TEST = 256, 497
MAGIKA_HOLDOUT = 512
MAGIKA_ROOTS = ["/usr/share", *sorted(str(p) for p in Path("/usr/lib").glob("python3*")), "/etc"]


# --------------------------------------------------------------------------- sklearn digits CNN


def digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn's 1797 8x8 digits, bilinearly upsampled to 3x32x32, normalised; (train x, y, test x, y)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float64) / 16.0
    pos = np.linspace(0, 7, IMG)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, 7)
    frac = pos - lo
    up = np.zeros((IMG, 8))
    up[np.arange(IMG), lo] += 1 - frac
    up[np.arange(IMG), hi] += frac
    x = up @ x @ up.T  # [n,32,32]
    x = (x - 0.3) / 0.35
    x = np.repeat(x[:, None], 3, axis=1).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], d.target[order].astype(np.int64)
    return x[:-N_TEST], y[:-N_TEST], x[-N_TEST:], y[-N_TEST:]


def train_cnn(x: np.ndarray, y: np.ndarray, seed: int, steps: int) -> dict[str, np.ndarray]:
    """The digits CNN: the architecture and training loop of tests/adaround_models.py, on these data."""
    sys.path.insert(0, str(ROOT))
    from tests.adaround_models import train_cnn as train

    return train(x, y, seed, steps, num_classes=10)


def cnn_model(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes, x = [], "input"
    for i, (_, stride) in enumerate(CNN_CONVS, start=1):
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}"],
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        x = f"relu{i}"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"]),
              helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1)]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, IMG, IMG])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
    tensors = [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in weights.items()]
    model = helper.make_model(helper.make_graph(nodes, "digits_cnn", [inp], [out], initializer=tensors),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qdq-passes-vs-peers")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------- magika (pretrained, from its wheel)


def magika_files(n: int, seed: int) -> tuple[list[str], np.ndarray, object]:
    """``n`` distinct magika model inputs [n, 2048] int32 from real files, with their paths."""
    import hashlib
    import os
    import random

    try:
        from magika import Magika
    except ImportError:
        raise SystemExit("magika cases need magika==1.0.3 in _envs/data: _envs/data/bin/pip install magika==1.0.3")

    mk = Magika()
    cfg = mk._model_config
    groups: dict[str, list[str]] = {}
    for root in MAGIKA_ROOTS:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for f in sorted(filenames):
                path = os.path.join(dirpath, f)
                try:
                    if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) < 8:
                        continue
                except OSError:
                    continue
                ext = os.path.splitext(f)[1].lower()
                groups.setdefault(ext if 1 < len(ext) <= 8 else "", []).append(path)
    rng = random.Random(seed)
    queues = []
    for ext in sorted(groups):
        rng.shuffle(groups[ext])
        queues.append(groups[ext])
    paths, rows, seen = [], [], set()
    depth = 0
    while len(rows) < n and any(depth < len(q) for q in queues):
        for q in queues:  # round-robin over extensions: variety of content types
            if depth >= len(q) or len(rows) >= n:
                continue
            try:
                result, feats = mk._get_result_or_features_from_path(Path(q[depth]))
            except OSError:
                continue
            if feats is None:  # magika answers without its model (empty, tiny, unreadable)
                continue
            x = list(feats.beg[: cfg.beg_size]) + list(feats.end[-cfg.end_size:])  # as _get_raw_predictions
            h = hashlib.sha1(np.asarray(x, np.int32).tobytes()).hexdigest()
            if h not in seen:
                seen.add(h)
                paths.append(q[depth])
                rows.append(x)
        depth += 1
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} usable files under {MAGIKA_ROOTS}, {n} needed")
    return paths, np.asarray(rows, dtype=np.int32), mk


def magika_float_model(mk: object) -> onnx.ModelProto:
    """magika's bundled model up to its logits (softmax tail dropped), opset 21."""
    import tempfile

    from onnx import version_converter

    src = Path(mk._model_path)
    m = onnx.load(src)
    logits = next(n.output[0] for n in m.graph.node if n.name.endswith("Dense_1/AddV2"))
    with tempfile.TemporaryDirectory() as tmp:
        onnx.utils.extract_model(str(src), f"{tmp}/cut.onnx", [m.graph.input[0].name], [logits])
        m = onnx.load(f"{tmp}/cut.onnx")
    m = version_converter.convert_version(m, OPSET)
    used = {n.domain for n in m.graph.node}
    keep = [o for o in m.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    for node in m.graph.node:  # output renamed "logits"
        node.output[:] = ["logits" if o == logits else o for o in node.output]
    m.graph.output[0].name = "logits"
    m.ir_version = IR_VERSION
    m.producer_name = "qdq-passes-vs-peers (magika standard model, cut at logits)"
    onnx.checker.check_model(m, full_check=True)
    return m


# --------------------------------------------------------------------------- onnxruntime QDQ


class _Reader:
    def __init__(self, name: str, data: np.ndarray, batch: int = 32) -> None:
        self._batches = iter([{name: data[i:i + batch]} for i in range(0, len(data), batch)])

    def get_next(self):  # noqa: ANN201
        return next(self._batches, None)


def ort_qdq(src: Path, dst: Path, input_name: str, calib: np.ndarray, bits: int, op_types: list[str] | None,
            keep_float_weights: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(str(src), str(dst), _Reader(input_name, calib), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt4 if bits == 4 else QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=op_types,
                    extra_options={"AddQDQPairToWeight": keep_float_weights})


def int4_to_int8_containers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """INT4 initializers (weight codes, zero points) as int8 tensors holding the same values."""
    n = 0
    for i, t in enumerate(model.graph.initializer):
        if t.data_type == TensorProto.INT4:
            arr = numpy_helper.to_array(t).astype(np.int8)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, t.name))
            n += 1
    onnx.checker.check_model(model)
    return model, n


# --------------------------------------------------------------------------- cases


def build(case: str, out: Path, threads: int, seed: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    family, wbits = case.split("-")
    bits = int(wbits[1:])
    d = out / case
    d.mkdir(parents=True, exist_ok=True)
    if family == "cnn":
        base = out / "_cnn_float.npz"
        xtr, ytr, xte, yte = digits(seed)
        if not base.exists():
            start = time.perf_counter()
            w = train_cnn(xtr, ytr, seed, steps=400)
            np.savez(base, **w)
            print(f"trained the CNN in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        model = cnn_model(dict(np.load(base)))
        calib = xtr[np.random.default_rng(seed + 1).choice(len(xtr), N_CALIB, replace=False)]
        holdout, labels = xte, yte
        input_name, op_types, classes = "input", None, True
    elif family == "tfm":
        sys.path.insert(0, str(ROOT))
        from tests.adaround_models import token_inputs, transformer_float_model

        model = transformer_float_model(seed)
        calib, holdout, labels = token_inputs(N_CALIB, seed + 2), token_inputs(512, seed + 3), None
        input_name, op_types, classes = "x", ["MatMul"], False
    elif family == "magika":
        paths, x, mk = magika_files(N_CALIB + MAGIKA_HOLDOUT, seed)
        model = magika_float_model(mk)
        input_name = model.graph.input[0].name
        calib, holdout, labels = x[:N_CALIB], x[N_CALIB:], None
        op_types, classes = ["MatMul", "Conv"], True
        # the cut model must give magika's own answers: same argmax as its full model's softmax
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        full = ort.InferenceSession(str(mk._model_path), so, providers=["CPUExecutionProvider"])
        cut = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        probs = full.run(None, {input_name: holdout})[0]
        lg = cut.run(None, {input_name: holdout})[0]
        if not (probs.argmax(-1) == lg.argmax(-1)).all():
            raise SystemExit("the cut magika model disagrees with the bundled one")
        space = mk._model_config.target_labels_space
        top = np.bincount(lg.argmax(-1), minlength=len(space))
        (out / case).mkdir(parents=True, exist_ok=True)
        (out / case / "files.json").write_text(json.dumps({
            "roots": MAGIKA_ROOTS, "calib": paths[:N_CALIB], "holdout": paths[N_CALIB:],
            "holdout_float_labels": {space[i]: int(c) for i, c in enumerate(top) if c}}, indent=1))
    else:
        raise SystemExit(f"unknown case {case}")
    for node in model.graph.node:  # Quark pairs float and quantized layers by node name
        node.name = node.name or f"{node.op_type}_{node.output[0]}"
    onnx.save(model, d / "float.onnx")
    np.savez(d / "calib.npz", **{input_name: calib})
    np.savez(d / "holdout.npz", **{input_name: holdout})
    if labels is not None:
        np.save(d / "labels.npy", labels)
    ort_qdq(d / "float.onnx", d / "qdq_keep.onnx", input_name, calib, bits, op_types, True)
    ort_qdq(d / "float.onnx", d / "qdq.onnx", input_name, calib, bits, op_types, False)
    meta = {"case": case, "input": input_name, "bits": bits, "classes": classes, "n_calib": len(calib),
            "n_holdout": len(holdout), "op_types": op_types}
    if family == "magika":
        import magika

        meta["model"] = f"magika {magika.__version__} {Path(mk._model_path).parent.name}, cut at logits, opset {OPSET}"
        meta["holdout_distinct_labels"] = int((top > 0).sum())
    if bits == 4:
        m, n = int4_to_int8_containers(onnx.load(d / "qdq.onnx"))
        onnx.save(m, d / "qdq_int8c.onnx")
        meta["int4_tensors_converted"] = n
    (d / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "_work")
    p.add_argument("--cases", default="cnn-w4,cnn-w8,tfm-w4,tfm-w8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    for case in a.cases.split(","):
        print(json.dumps(build(case, a.out, a.threads, a.seed)))


if __name__ == "__main__":
    main()
