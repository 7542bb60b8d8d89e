"""The model-level check: after the last block, the whole model is never worse than nearest
rounding on the held-out samples, and only the blocks that hurt go back to nearest."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir
import pytest
import torch

import qdq_passes
from qdq_passes.adaround import AdaroundPass, BlockStatus
from qdq_passes.adaround import training as training_module
from qdq_passes.adaround.selection import held_out_split
from qdq_passes.passes.insert_quantizers import InsertQuantizersPass
from tests.adaround_models import cnn_case, save_npz
from tests.models import run_ort

HURT = 6  # the block whose rounding the test spoils: the classifier head (Gemm), last weighted block


@pytest.fixture(scope="module")
def case():
    return cnn_case()


def _spoil_block(monkeypatch) -> None:
    """Block ``HURT`` trains as usual and reports its gain, then every weight rounds the other way:
    an AdaRound whose block-level choice hurts the model."""
    original = training_module.BlockTrainer.run

    def spoiled(self):  # noqa: ANN001, ANN202
        result = original(self)
        if self.job.block.index == HURT:
            with torch.no_grad():
                for p in self.params:
                    p.neg_()
        return result

    monkeypatch.setattr(training_module.BlockTrainer, "run", spoiled)


def _run(case, tmp_path, **options):  # noqa: ANN001, ANN202
    qdq_passes.configure(threads=1, seed=0)
    calib = save_npz(tmp_path / "calib.npz", case.calib)
    model = onnx_ir.from_proto(onnx.load_model_from_string(case.qdq_model.SerializeToString()))
    InsertQuantizersPass(weights="adaround")(model)
    ada = AdaroundPass(calib=str(calib), iters=20, batch_size=16, threads=1, **options)
    ada(model)
    return ada, qdq_passes.run(model, "lower-qdq,fold-qdq")


def _held_out_error(case, model) -> float:  # noqa: ANN001
    """The relative output error against the float model on the samples no block trained on."""
    check, _ = held_out_split(len(case.calib["input"]), 0.125, 0)
    feeds = {"input": case.calib["input"][check.numpy()]}
    ref = run_ort(case.float_model, feeds)[0].astype(np.float64)
    out = run_ort(model, feeds)[0].astype(np.float64)
    return float(np.sum((out - ref) ** 2) / np.sum(ref ** 2))


def test_unchecked_adaround_that_hurts_loses_to_nearest(case, tmp_path, monkeypatch):
    """The premise: with the check off, the spoiled block makes the model worse than nearest."""
    _spoil_block(monkeypatch)
    _, spoiled = _run(case, tmp_path, model_check=False)
    nearest = onnx_ir.from_proto(case.qdq_model)
    assert _held_out_error(case, spoiled) > _held_out_error(case, nearest)


def test_the_check_puts_the_block_that_hurts_back_first(case, tmp_path, monkeypatch):
    """The spoiled head is the most harmful block: it goes back to nearest first, and the model
    ends no worse than nearest rounding on the held-out samples."""
    _spoil_block(monkeypatch)
    ada, checked = _run(case, tmp_path)
    assert ada.model_check is not None and ada.model_check.chosen > ada.model_check.nearest
    assert ada.model_check.reverted[0] == HURT
    assert ada.model_check.final <= ada.model_check.nearest
    statuses = {r.index: r.status for r in ada.reports if r.weights}
    assert statuses[HURT] == BlockStatus.MODEL_REVERTED
    assert ada.stats["num-blocks-model-reverted"] == len(ada.model_check.reverted)
    assert any(line.startswith("model check:") and f"blocks {HURT}" in line for line in ada.details)
    nearest = onnx_ir.from_proto(case.qdq_model)
    assert _held_out_error(case, checked) <= _held_out_error(case, nearest) * (1 + 1e-6)


class _Contributions:
    """A stand-in for the onnxruntime evaluator: the model's error is the sum of each block's
    contribution, which depends only on whether the block holds its chosen codes or nearest's."""

    def __init__(self, blocks: dict) -> None:  # noqa: ANN001
        self.blocks = blocks  # node -> (nearest codes, error when chosen, error when nearest)

    def error(self) -> float:
        total = 0.0
        for node, (nearest, chosen_error, nearest_error) in self.blocks.items():
            at_nearest = np.array_equal(np.asarray(node.inputs[0].const_value.numpy()).astype(np.int64), nearest)
            total += nearest_error if at_nearest else chosen_error
        return total


def test_only_the_blocks_that_hurt_go_back(case, tmp_path):
    """Block A's rounding helps the model, block B's hurts it more than A helps: B goes back to
    nearest, A keeps its rounding."""
    from qdq_passes.adaround.model_check import check_model
    from qdq_passes.adaround.report import BlockReport, BlockResult
    from qdq_passes.ir import dialect

    qdq_passes.configure(threads=1, seed=0)
    calib = save_npz(tmp_path / "calib2.npz", case.calib)
    ir_model = onnx_ir.from_proto(onnx.load_model_from_string(case.qdq_model.SerializeToString()))
    InsertQuantizersPass(weights="adaround")(ir_model)
    AdaroundPass(calib=str(calib), iters=20, batch_size=16, threads=1, model_check=False)(ir_model)
    a, b = [n for n in ir_model.graph if n.op_type == dialect.ADAROUND_QUANTIZER][:2]
    nearest = {n: np.asarray(n.inputs[0].const_value.numpy()).astype(np.int64) ^ 1 for n in (a, b)}  # not the codes
    results = [BlockResult(BlockReport(i, "Conv", 1, 1.0, 0.5, 0.0, BlockStatus.TRAINED), written=[(n, nearest[n])])
               for i, n in enumerate((a, b))]
    stub = _Contributions({a: (nearest[a], 0.5, 1.0), b: (nearest[b], 3.0, 1.0)})
    check = check_model(stub, results)
    assert (check.chosen, check.nearest, check.reverted, check.final) == (3.5, 2.0, [1], 1.5)
    assert [r.report.status for r in results] == [BlockStatus.TRAINED, BlockStatus.MODEL_REVERTED]
    assert np.array_equal(np.asarray(b.inputs[0].const_value.numpy()).astype(np.int64), nearest[b])
    assert not np.array_equal(np.asarray(a.inputs[0].const_value.numpy()).astype(np.int64), nearest[a])


def test_a_model_adaround_improves_is_left_alone(case, tmp_path):
    ada, _ = _run(case, tmp_path)
    assert ada.model_check is not None and ada.model_check.reverted == []
    assert ada.model_check.chosen <= ada.model_check.nearest
    assert ada.stats["num-blocks-model-reverted"] == 0


def test_without_held_out_samples_there_is_no_check(case, tmp_path):
    ada, _ = _run(case, tmp_path, holdout=0.0)
    assert ada.model_check is None and not any(line.startswith("model check:") for line in ada.details)
