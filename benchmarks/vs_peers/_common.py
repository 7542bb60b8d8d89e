"""Shared by the peer tool scripts (imports only numpy, onnx and, lazily, torch/onnxruntime).

* :func:`set_threads`: torch's intra-op thread count, and every onnxruntime session the tool opens
  (peers create their own sessions with the default, all cores) gets the same intra-op count.
* :class:`Reader`: an onnxruntime-style calibration data reader over ``calib.npz`` (``get_next``,
  ``rewind``/``reset_iter``), ``batch`` samples per call.
* :func:`weight_slots`: for a folded onnxruntime QDQ model, each weight's code initializer, scale,
  zero point and axis, keyed by the float weight's name.
* :func:`write_codes`: a copy of a folded QDQ model with given integer codes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def set_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    import onnxruntime as ort

    original = ort.InferenceSession.__init__

    def init(self, path_or_bytes, sess_options=None, *args, **kwargs):  # noqa: ANN001, ANN202
        if sess_options is None:
            sess_options = ort.SessionOptions()
        if sess_options.intra_op_num_threads == 0:
            sess_options.intra_op_num_threads = threads
        if sess_options.inter_op_num_threads == 0:
            sess_options.inter_op_num_threads = 1
        original(self, path_or_bytes, sess_options, *args, **kwargs)

    ort.InferenceSession.__init__ = init


class Reader:
    """Calibration data reader: ``batch`` samples per ``get_next``."""

    def __init__(self, calib: dict[str, np.ndarray], batch: int) -> None:
        self.calib, self.batch = calib, batch
        self.n = len(next(iter(calib.values())))
        self.rewind()

    def rewind(self) -> None:
        self._i = 0

    reset_iter = rewind

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= self.n:
            return None
        out = {k: v[self._i:self._i + self.batch] for k, v in self.calib.items()}
        self._i += self.batch
        return out

    def __len__(self) -> int:
        return (self.n + self.batch - 1) // self.batch


def weight_slots(model: onnx.ModelProto) -> dict[str, dict]:
    """Float weight name -> {codes, scale, zero_point, axis, init} for a folded ORT QDQ model."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        name = node.input[0]
        if not name.endswith("_quantized") or inits[name].data_type == onnx.TensorProto.INT32:
            continue  # biases (int32) are not rounded by any tool
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        out[name[: -len("_quantized")]] = {
            "init": name,
            "codes": numpy_helper.to_array(inits[name]),
            "scale": numpy_helper.to_array(inits[node.input[1]]),
            "zero_point": numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 else None,
            "axis": axis,
        }
    return out


def write_codes(model: onnx.ModelProto, codes: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Replace the code initializers (keys: initializer names) keeping each one's dtype."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in codes:
            dtype = numpy_helper.to_array(t).dtype
            t.CopyFrom(numpy_helper.from_array(np.asarray(codes[t.name]).astype(dtype), t.name))
    return out


def case_files(case_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((case_dir / "meta.json").read_text())
    return meta, dict(np.load(case_dir / "calib.npz"))


def report(**kw: object) -> None:
    """The tool's last stdout line: a JSON object the runner reads."""
    sys.stdout.flush()
    print("RESULT " + json.dumps(kw), flush=True)


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
