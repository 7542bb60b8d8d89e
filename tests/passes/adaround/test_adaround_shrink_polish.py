"""``adaround`` on the Gram path: the shrunk loss (``shrink``) and the polish of the hard rounding.

* ``GramLoss.shrunk``: ``kappa = 0`` is the loss itself; ``kappa = 1`` couples no two weights (its
  minimiser is nearest rounding); in between, the Gram terms interpolate.
* ``polish``: every flip it takes lowers the exact Gram loss, and it stops at a rounding no single
  flip improves (checked by brute force, float64).
* The pass: a Gemm with fewer calibration rows than inputs takes the Gram path under ``gram=auto``
  even where a direct step is cheaper, retrains on the shrunk losses and keeps the best on the
  held-out samples (never worse there than unshrunk AdaRound); ``shrink=[]`` or ``holdout=0``
  turn it off. The polish is kept only where the held-out error drops, and is counted.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qdq_passes.adaround import AdaroundPass
from qdq_passes.adaround.gram import GramLoss, gram_layout, polish
from qdq_passes.infra.errors import QdqError
from qdq_passes.passes.insert_quantizers import InsertQuantizersPass
from tests.adaround_models import ort_int4, save_npz, sqnr_db
from tests.models import run_ort


def _gram(o: int, k: int, rows: int, seed: int = 0) -> GramLoss:
    """A Gemm-layout GramLoss over random correlated rows (float64)."""
    g = torch.Generator().manual_seed(seed)
    node = onnx_ir.serde.deserialize_node(helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1))
    loss = GramLoss(gram_layout(node, (o, k)), torch.float64)
    x = torch.randn(rows, k, generator=g, dtype=torch.float64) @ torch.randn(k, k, generator=g, dtype=torch.float64)
    loss.accumulate(x, torch.randn(rows, o, generator=g, dtype=torch.float64))
    loss.finish(float(rows))
    return loss


def _exact(loss: GramLoss, dw: torch.Tensor) -> float:
    return float(torch.sum(dw * (dw @ loss.h + 2 * loss.g)))


def test_shrunk_interpolates_between_the_loss_and_independent_weights():
    loss = _gram(5, 8, 6)  # fewer rows than inputs: H singular
    assert loss.rows == 6 and torch.linalg.matrix_rank(loss.h) == 6
    same = loss.shrunk(0.0)
    assert torch.equal(same.h, loss.h) and torch.equal(same.g, loss.g)
    flat = loss.shrunk(1.0)
    assert torch.equal(flat.h, torch.diag(torch.diagonal(loss.h))) and not flat.g.any()
    half = loss.shrunk(0.5)
    assert torch.allclose(half.h, 0.5 * (loss.h + flat.h)) and torch.allclose(half.g, 0.5 * loss.g)
    assert torch.linalg.matrix_rank(half.h) == 8  # shrunk: no null space left to fit
    # kappa = 1: each weight on its own, so the polish from any rounding ends at nearest
    w = torch.randn(5, 8, dtype=torch.float64)
    floor = torch.floor(w)
    up = torch.rand(5, 8, generator=torch.Generator().manual_seed(1)) < 0.5
    dw = floor + up - w
    flip = torch.where(up, -1.0, 1.0).to(torch.float64)
    mask, _ = polish(flat, dw, flip, sweeps=4)
    assert torch.equal((floor + (up ^ mask)), torch.round(w))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polish_descends_to_a_rounding_no_single_flip_improves(seed):
    loss = _gram(4, 7, 30, seed)
    g = torch.Generator().manual_seed(seed + 10)
    w = torch.randn(4, 7, generator=g, dtype=torch.float64)
    floor = torch.floor(w)
    up = torch.rand(4, 7, generator=g) < 0.5
    flip = torch.where(up, -1.0, 1.0).to(torch.float64)
    flip[0, 0] = 0.0  # a weight the clamp leaves no choice for never moves
    before = _exact(loss, floor + up - w)
    mask, flips = polish(loss, floor + up - w, flip, sweeps=50)
    assert flips >= int(mask.sum()) > 0 and not mask[0, 0]
    new_up = up ^ mask
    dw = floor + new_up - w
    after = _exact(loss, dw)
    assert after < before
    for o in range(4):
        for k in range(1, 7) if o == 0 else range(7):
            trial = dw.clone()
            trial[o, k] += -1.0 if new_up[o, k] else 1.0
            assert _exact(loss, trial) >= after - 1e-9 * abs(after)


# --------------------------------------------------------------------------- the pass


def _few_samples_case(k: int = 128, o: int = 16, n_calib: int = 64):
    """One Gemm with more inputs (128) than calibration samples (64): the Gram matrix is singular."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((o, k)) / np.sqrt(k)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", o])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    mix = (rng.standard_normal((k, k)) / np.sqrt(k)).astype(np.float32)
    calib = (rng.standard_normal((n_calib, k)) @ mix).astype(np.float32)
    holdout = (rng.standard_normal((512, k)) @ mix).astype(np.float32)
    return model, ort_int4(model, "x", calib), calib, holdout


@pytest.fixture(scope="module")
def few_samples_case():
    return _few_samples_case()


def _run(case, tmp_path, iters: int = 200, **options):
    _, qdq, calib, _ = case
    ir_model = onnx_ir.from_proto(onnx.load_model_from_string(qdq.SerializeToString()))
    InsertQuantizersPass(weights="adaround")(ir_model)
    ada = AdaroundPass(calib=str(save_npz(tmp_path / "calib.npz", {"x": calib})), iters=iters, threads=1, **options)
    ada(ir_model)
    import qdq_passes

    (report,) = [r for r in ada.reports if r.weights]
    return ada, report, qdq_passes.run(ir_model, "lower-qdq,fold-qdq")


def test_few_samples_take_the_shrunk_gram_path(few_samples_case, tmp_path):
    model, qdq, _, holdout = few_samples_case
    ada, report, lowered = _run(few_samples_case, tmp_path)
    assert report.path == "gram" and ada.stats["num-blocks-shrunk"] == 1
    # without shrink the same (first) training is kept: the shrunk ladder never does worse held out
    plain, plain_report, _ = _run(few_samples_case, tmp_path, shrink=[])
    assert plain_report.path == "direct" and plain.stats["num-blocks-shrunk"] == 0  # a direct step is cheaper
    gram_only, gram_report, _ = _run(few_samples_case, tmp_path, shrink=[], gram="on")
    assert gram_report.path == "gram" and gram_report.shrink == 0 and gram_report.status == "reverted"  # overfit
    assert min(report.mse_adaround, report.mse_nearest) <= min(gram_report.mse_adaround, gram_report.mse_nearest)
    # unshrunk AdaRound fit the singular Gram matrix and lost to nearest; shrunk, it beats nearest
    reference = run_ort(model, {"x": holdout})[0]
    nearest = sqnr_db(reference, run_ort(qdq, {"x": holdout})[0])
    learned = sqnr_db(reference, run_ort(lowered, {"x": holdout})[0])
    assert learned > nearest + 0.2, (nearest, learned)
    # no held-out samples, nothing to choose with: no shrink
    _, unheld, _ = _run(few_samples_case, tmp_path, holdout=0.0)
    assert unheld.shrink == 0
    with pytest.raises(QdqError, match="option 'shrink' must be greater than 0, got 0.0"):
        _run(few_samples_case, tmp_path, shrink=[0.0])


def test_polish_lowers_the_held_out_error_at_few_iterations(tmp_path):
    """30 steps leave the soft rounding unfinished; the polish finishes the descent on the exact loss
    (kept: the held-out error drops) and onnxruntime agrees on held-out inputs."""
    case = _few_samples_case(k=32, n_calib=256)  # more samples than inputs: no shrink
    model, qdq, _, holdout = case
    ada, report, lowered = _run(case, tmp_path, iters=30)
    off, off_report, plain = _run(case, tmp_path, iters=30, polish=0)
    assert off_report.polished == 0 and off.stats["num-weights-polished"] == 0
    assert report.polished > 0 and ada.stats["num-weights-polished"] == report.polished
    assert report.shrink == 0 and ada.stats["num-blocks-shrunk"] == 0
    assert report.mse_adaround < off_report.mse_adaround < report.mse_nearest
    reference = run_ort(model, {"x": holdout})[0]
    polished, unpolished = (sqnr_db(reference, run_ort(m, {"x": holdout})[0]) for m in (lowered, plain))
    assert polished > unpolished + 0.3, (polished, unpolished)
    with pytest.raises(QdqError, match="option 'polish' must be at least 0, got -1"):
        _run(case, tmp_path, polish=-1)


def test_per_sample_errors_average_to_the_loss_and_decide_only_clear_gains():
    from qdq_passes.adaround.selection import clearly_lower, per_sample_loss, reconstruction_loss

    g = torch.Generator().manual_seed(0)
    outs = [torch.randn(6, 3, 4, 5, generator=g), torch.randn(6, 7, generator=g), torch.randn(6, generator=g)]
    tgts = [torch.randn(t.shape, generator=g) for t in outs]
    relus = [True, False, False]
    per = per_sample_loss(outs, tgts, relus)
    assert per.shape == (6,) and per.dtype == torch.float64
    assert float(per.mean()) == pytest.approx(float(reconstruction_loss(outs, tgts, relus)), rel=1e-6)
    old = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert clearly_lower(old - 0.5, old)  # the same gain on every sample
    assert not clearly_lower(old + torch.tensor([-3.0, 2.9, -0.1, 0.1], dtype=torch.float64), old)  # noise
    assert not clearly_lower(old, old) and not clearly_lower(old[:1] - 1, old[:1])  # one sample: no verdict
