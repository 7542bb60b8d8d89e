"""The model-level check of ``adaround``: never worse than nearest rounding on held-out data.

Each block's rounding is chosen on its own outputs (:mod:`.selection`), yet errors can compound
through the blocks after it. After the last block the whole model runs in onnxruntime on the
held-out calibration samples (the ones no block trained on), with the chosen codes and with
nearest rounding everywhere; the output error of each is measured against the float path (every
quantizer in its float meaning). Where the chosen codes do worse, each trained block's harm is
measured (the model's error with that block alone back at nearest rounding), and the blocks go
back to nearest one at a time, the most harmful first, until the model is no worse than nearest
rounding (at the latest when every block is back): one evaluation per trained block, and one per
block reverted.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir

from qdq_passes.adaround.onnxruntime_block import BlockSession, prefix_model
from qdq_passes.adaround.report import BlockResult, BlockStatus
from qdq_passes.adaround.selection import held_out_split
from qdq_passes.calib import CalibrationData
from qdq_passes.ir import dialect
from qdq_passes.ir.quant import storage_dtype
from qdq_passes.quantizers import materialize

__all__ = ["Evaluator", "ModelCheck", "check_model"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ModelCheck:
    """The held-out output errors (relative: squared error over the float output's energy, summed
    over the outputs) with the chosen codes and with nearest rounding, and the blocks reverted."""

    chosen: float
    nearest: float
    reverted: list[int]
    final: float

    def line(self) -> str:
        """One line for the statistics report."""
        verdict = (f"blocks {', '.join(map(str, self.reverted))} back to nearest, then {self.final:.4g}"
                   if self.reverted else "kept")
        return f"model check: held-out error {self.chosen:.4g} (nearest {self.nearest:.4g}): {verdict}"


class Evaluator:
    """The model's outputs on the held-out samples, in onnxruntime, against the float path's taken
    when the evaluator is made (before any code is written: the float weights are still there)."""

    def __init__(self, model: onnx_ir.Model, calib: CalibrationData, check: np.ndarray) -> None:
        self.model = model
        self.inputs = [v for v in model.graph.inputs if v.name in calib.inputs]
        self.axes = [calib.batch_axes.get(v.name, 0) for v in self.inputs]
        self.feeds = [calib.inputs[v.name] if a is None else calib.inputs[v.name][check]
                      for v, a in zip(self.inputs, self.axes)]
        self.reference = self._run(float_path=True)

    @classmethod
    def before_training(cls, model: onnx_ir.Model, calib: CalibrationData, share: float,
                        seed: int) -> Evaluator | None:
        """The evaluator of the held-out samples; None without any (or, warned, where onnxruntime
        cannot run the model)."""
        n_all = next((a.shape[0] for name, a in calib.inputs.items() if calib.batch_axes.get(name, 0) is not None), 0)
        split = held_out_split(n_all, share, seed)
        if split is None:
            return None
        try:
            return cls(model, calib, split[0].numpy())
        except Exception as exc:  # noqa: BLE001 - the check is skipped, the run goes on
            logger.warning("adaround: no model check: onnxruntime could not run the model (%s)",
                           str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            return None

    def _run(self, float_path: bool) -> list[np.ndarray]:
        outputs = list(self.model.graph.outputs)
        proto = prefix_model(self.model, outputs, float_path=float_path)
        return BlockSession(proto, self.inputs, outputs).run(self.feeds, self.axes)[0]

    def error(self) -> float:
        """The relative held-out output error of the model as it is now."""
        total = 0.0
        for out, ref in zip(self._run(float_path=False), self.reference):
            ref64 = np.asarray(ref, np.float64)
            energy = float(np.sum(ref64 ** 2))
            total += float(np.sum((np.asarray(out, np.float64) - ref64) ** 2)) / (energy if energy > 0 else 1.0)
        return total


def _set_codes(node: onnx_ir.Node, codes: np.ndarray) -> None:
    """Store ``codes`` as the folded AdaRound quantizer's integers."""
    value = node.inputs[0]
    params = dialect.quantizer_params(node)
    value.const_value = onnx_ir.Tensor(codes.astype(storage_dtype(params.qdtype)), name=value.name)


def _by_harm(trained: list[BlockResult], chosen: dict[onnx_ir.Node, np.ndarray], evaluator: Evaluator,
             error: float) -> list[BlockResult]:
    """The trained blocks, the one whose return to nearest alone lowers the model's error most first."""
    harm = []
    for r in trained:
        for node, nearest in r.written:
            _set_codes(node, nearest)
        harm.append(error - evaluator.error())
        for node, _ in r.written:
            _set_codes(node, chosen[node])
    return [r for _, r in sorted(zip(harm, trained), key=lambda pair: -pair[0])]


def check_model(evaluator: Evaluator, results: list[BlockResult]) -> ModelCheck | None:
    """Run the check (see the module doc); the reverted blocks' reports say so. None when nothing
    was trained."""
    trained = [r for r in results if r.report.status == BlockStatus.TRAINED and r.written]
    if not trained:
        return None
    chosen = {node: np.asarray(node.inputs[0].const_value.numpy()).astype(np.int64) for r in trained
              for node, _ in r.written}
    chosen_error = evaluator.error()
    for node, nearest in (pair for r in trained for pair in r.written):
        _set_codes(node, nearest)
    nearest_error = evaluator.error()
    for node, codes in chosen.items():
        _set_codes(node, codes)
    check = ModelCheck(chosen_error, nearest_error, [], chosen_error)
    if chosen_error > nearest_error:
        for r in _by_harm(trained, chosen, evaluator, chosen_error):
            for node, nearest in r.written:
                _set_codes(node, nearest)
                r.stats["num-codes-changed"] -= int(np.count_nonzero(chosen[node] != nearest))
            r.report.status = BlockStatus.MODEL_REVERTED
            r.stats["num-blocks-model-reverted"] += 1
            check.reverted.append(r.report.index)
            check.final = evaluator.error()
            if check.final <= nearest_error:
                break
    for node in chosen:
        materialize(node, refresh=True)
    return check
