"""Qualcomm AIMET ONNX AdaRound with the case's scales (runs in ``_envs/aimet``).

AIMET's AdaRound needs float weights and its own quantization simulation:
``QuantizationSimModel(float.onnx, param_type=int4|int8, activation_type=int8)``, initialised by
``compute_encodings`` on the calibration batches, then every scale and zero point of onnxruntime's
quantization loaded over AIMET's own (``load_encodings_to_sim``, from the encodings that AIMET's
``_remove_onnx_qdq_nodes`` reads off ``qdq_keep.onnx``; uint8 activations become 8-bit encodings
with the same offset). Not ``QuantizationSimModel.from_onnx_qdq(qdq_keep.onnx)``: its sim holds the
same weights and encodings and scores the same before AdaRound, but AdaRound then makes it worse
(cnn-w4, 200 iterations: 20.24 -> 13.35 dB in AIMET's own session; this path: 20.28 -> 22.05 dB). ``Adaround.apply_adaround(sim, batches,
num_iterations=N)`` then runs with AIMET's own fixed hyper-parameters (Adam lr 1e-3, reg 0.01, beta
20 -> 2, warm start 0.2) except the per-step batch, set to ``--batch-size`` through the module
constant ``BATCH_SIZE`` (32 by default, so unchanged at 32). The rounded weights are divided by the
(frozen) scales and written as codes into onnxruntime's folded ``qdq.onnx``, so the scored graph is
the same as for every other tool.

    python tool_aimet.py CASE_DIR OUT.onnx --iters N --batch-size B --threads T
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, case_files, report, set_threads, weight_slots, write_codes  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("case_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--iters", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, default=None, help="ignored: AIMET's AdaRound learning rate is fixed")
    p.add_argument("--threads", type=int, required=True)
    a = p.parse_args()
    set_threads(a.threads)
    import numpy as np
    import onnx
    from aimet_onnx.adaround import adaround_optimizer
    from aimet_onnx.adaround.adaround_weight import Adaround
    from aimet_onnx.common.onnx._utils import _remove_onnx_qdq_nodes
    from aimet_onnx.quantsim import QuantizationSimModel, load_encodings_to_sim
    from onnx import numpy_helper

    meta, calib = case_files(a.case_dir)
    bits = meta["bits"]
    adaround_optimizer.BATCH_SIZE = a.batch_size
    n = len(next(iter(calib.values())))
    batches = [{k: v[i:i + a.batch_size] for k, v in calib.items()} for i in range(0, n, a.batch_size)]
    float_model = onnx.load(a.case_dir / "float.onnx")
    biases = {n.input[2] for n in float_model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2}
    with Timer() as t:
        sim = QuantizationSimModel(onnx.load(a.case_dir / "float.onnx"), param_type=f"int{bits}",
                                   activation_type="int8")
        sim.compute_encodings(batches)
        encodings = _remove_onnx_qdq_nodes(onnx.load(a.case_dir / "qdq_keep.onnx"))
        encodings = [e for e in encodings if e["name"] in sim.qc_quantize_op_dict and e["name"] not in biases]
        load_encodings_to_sim(sim, {"version": "2.0.0", "encodings": encodings}, strict=False, allow_overwrite=True,
                              disable_missing_quantizers=False)
        print(f"loaded {len(encodings)} onnxruntime encodings into AIMET's sim")
        floats = {t.name: numpy_helper.to_array(t) for t in onnx.load(a.case_dir / "float.onnx").graph.initializer}
        slots = weight_slots(onnx.load(a.case_dir / "qdq.onnx"))
        sim_inits = {t.name: t for t in sim.model.model.graph.initializer}
        for name in slots:
            if not np.array_equal(numpy_helper.to_array(sim_inits[name]), floats[name]):
                raise SystemExit(f"AIMET's sim does not hold the float weight {name}")
        Adaround.apply_adaround(sim, batches, num_iterations=a.iters)
    qmin, qmax = (-8, 7) if bits == 4 else (-128, 127)
    codes, off_grid, clipped = {}, 0.0, 0
    sim_inits = {t.name: t for t in sim.model.model.graph.initializer}
    for name, slot in slots.items():
        w = numpy_helper.to_array(sim_inits[name]).astype(np.float64)
        shape = [1] * w.ndim
        shape[slot["axis"]] = -1
        x = w / slot["scale"].astype(np.float64).reshape(shape)
        r = np.round(x)
        off_grid = max(off_grid, float(np.abs(x - r).max()))
        clipped += int(np.sum((r < qmin) | (r > qmax)))
        codes[slot["init"]] = np.clip(r, qmin, qmax)
    onnx.save(write_codes(onnx.load(a.case_dir / "qdq.onnx"), codes), a.out)
    # AIMET writes soft-rounded weights back and its sim then rounds them to nearest with the frozen
    # encodings: the codes above are what its own QDQ export holds.
    print(f"max distance of AIMET's weights from the grid: {off_grid:.3g} steps; {clipped} codes clipped")
    note = "lr 1e-3 (fixed in AIMET)" + (f"; {clipped} codes clipped" if clipped else "")
    report(algo_s=t.seconds, note=note, enforce_int4=False)


if __name__ == "__main__":
    main()
