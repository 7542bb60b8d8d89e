"""The ``adaround`` fast paths: the Gram form of the loss, and the cut block of the direct path.

* Gram: for Conv, Gemm and MatMul layouts, ``GramLoss`` equals the direct squared error summed
  over axis 1 and averaged over the rest, on the whole data, in value and gradient (float64).
* The pass on a single-Gemm model takes the Gram path (``gram=auto``) and is at least as good as
  nearest rounding; ``gram=off`` runs the direct path.
* Direct path: the cut block (``Split``: the part that does not depend on the rounding evaluated
  once, then the rest on the soft weights of ``SoftWeight``) computes what the whole block module
  computes with the quantizers' own soft rounding, bit for bit.
* Conv fast path: ``ConvReluLoss`` equals the direct conv + Relu loss in value and gradient
  (float64, pads/strides/dilations/no bias), and the pass on the CNN takes it and writes the same
  codes as with it off. ``SoftChain`` and ``FusedAdam`` give the same bits as autograd through
  the quantizer's ops and as ``torch.optim.Adam(fused=True)``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from qdq_passes.adaround import AdaroundPass, Tuning
from qdq_passes.adaround.soft_rounding import SoftChain, SoftWeight
from qdq_passes.adaround.split import Split
from qdq_passes.adaround.gram import GramLoss, gram_layout
from qdq_passes.passes.insert_quantizers import InsertQuantizersPass
from qdq_passes.ir import dialect
from qdq_passes.ir.blocks import BlockPartition
from tests.adaround_models import ort_int4, save_npz, sqnr_db, transformer_case
from tests.models import run_ort


def _node(op_type: str, **attrs: object) -> onnx_ir.Node:
    proto = helper.make_node(op_type, ["x", "w", "b"] if op_type != "MatMul" else ["x", "w"], ["y"], **attrs)
    return onnx_ir.serde.deserialize_node(proto)


def _direct(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (y - t).pow(2).sum(1).mean()


CASES = {
    "conv": (dict(op_type="Conv", strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2]), (6, 4, 3, 3), (10, 4, 9, 8)),
    "gemm-transB": (dict(op_type="Gemm", transB=1), (7, 12), (40, 12)),
    "gemm": (dict(op_type="Gemm"), (12, 7), (40, 12)),
    "matmul": (dict(op_type="MatMul"), (12, 7), (5, 9, 12)),
}


def _forward(kind: str, attrs: dict, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if kind == "conv":
        p = attrs["pads"]
        return F.conv2d(F.pad(x, (p[1], p[3], p[0], p[2])), w, b, attrs["strides"], 0, attrs["dilations"])
    if kind == "gemm-transB":
        return F.linear(x, w, b)
    if kind == "gemm":
        return x @ w + b
    return x @ w


@pytest.mark.parametrize("kind", list(CASES))
def test_gram_loss_and_gradient_equal_direct_full_batch(kind):
    attrs, w_shape, x_shape = CASES[kind]
    attrs = dict(attrs)
    node = _node(attrs.pop("op_type"), **attrs)
    gen = torch.Generator().manual_seed(0)
    dt = torch.float64
    x = torch.randn(x_shape, generator=gen, dtype=dt)
    w = torch.randn(w_shape, generator=gen, dtype=dt)
    out_ch = w_shape[0] if kind in ("conv", "gemm-transB") else w_shape[1]
    b = None if kind == "matmul" else torch.randn(out_ch, generator=gen, dtype=dt)
    # a target that is not W x + b: the input of the float path differs (quantization noise)
    target = _forward(kind, attrs, x + 0.05 * torch.randn(x_shape, generator=gen, dtype=dt), w, b)
    wq = (w + 0.1 * torch.randn(w_shape, generator=gen, dtype=dt)).requires_grad_()

    layout = gram_layout(node, w_shape)
    assert layout is not None
    gram = GramLoss(layout, dtype=dt)
    with torch.no_grad():
        for sl in (slice(0, 3), slice(3, None)):  # chunked accumulation
            gram.accumulate(x[sl], _forward(kind, attrs, x[sl], w, b) - target[sl])
    gram.finish(target.numel() / target.shape[1])
    loss_gram = gram.loss(layout.weight_to_matrix(wq - w))
    (grad_gram,) = torch.autograd.grad(loss_gram, wq)

    loss_direct = _direct(_forward(kind, attrs, x, wq, b), target)
    (grad_direct,) = torch.autograd.grad(loss_direct, wq)
    assert loss_gram.item() == pytest.approx(loss_direct.item(), rel=1e-10)
    torch.testing.assert_close(grad_gram, grad_direct, rtol=1e-9, atol=1e-12)
    # the hand-written gradient (no autograd), mapped back to the weight's layout
    grad_m, loss_value = gram.grad(layout.weight_to_matrix(wq.detach() - w), with_loss=True)
    assert loss_value == pytest.approx(loss_direct.item(), rel=1e-10)
    torch.testing.assert_close(layout.matrix_to_weight(grad_m), grad_direct, rtol=1e-9, atol=1e-12)


def test_gram_layout_refuses_what_is_not_exact():
    assert gram_layout(_node("Conv", group=2), (4, 2, 3, 3)) is None
    assert gram_layout(_node("Gemm", transA=1), (4, 4)) is None
    assert gram_layout(_node("Gemm", alpha=2.0), (4, 4)) is None
    assert gram_layout(_node("Conv", auto_pad="SAME_UPPER"), (4, 2, 3, 3)) is None
    assert gram_layout(_node("MatMul"), (2, 4, 4)) is None


# --------------------------------------------------------------------------- the pass on one Gemm


def _gemm_case(op: str = "Gemm"):
    """One Gemm (weight [O, K], transB=1: the Gram matrix is the weight itself) or MatMul (weight
    [K, O]: the Gram matrix is its transpose, so gradients come back through a transposed view)."""
    rng = np.random.default_rng(0)
    k, o = 24, 16
    w = (rng.standard_normal((o, k)) / np.sqrt(k)).astype(np.float32)
    b = (0.1 * rng.standard_normal(o)).astype(np.float32)
    node = (helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1) if op == "Gemm"
            else helper.make_node("MatMul", ["x", "w"], ["y"]))
    if op != "Gemm":
        w = np.ascontiguousarray(w.T)
    graph = helper.make_graph(
        [node], op.lower(),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", o])],
        [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if op == "Gemm" else []))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    mix = rng.standard_normal((k, k)).astype(np.float32) / np.sqrt(k)  # correlated features
    calib = (rng.standard_normal((128, k)) @ mix).astype(np.float32)
    holdout = (rng.standard_normal((256, k)) @ mix).astype(np.float32)
    return model, ort_int4(model, "x", calib), calib, holdout


@pytest.fixture(scope="module", params=["Gemm", "MatMul"])
def gemm_case(request):
    return _gemm_case(request.param)


def _run(gemm_case, tmp_path, tuning=None, **options):
    model, qdq, calib, _ = gemm_case
    ir_model = onnx_ir.from_proto(onnx.load_model_from_string(qdq.SerializeToString()))
    InsertQuantizersPass(weights="adaround")(ir_model)
    ada = AdaroundPass(calib=str(save_npz(tmp_path / "calib.npz", {"x": calib})), iters=300, threads=1, tuning=tuning,
                       **options)
    ada(ir_model)
    import qdq_passes

    return ada, qdq_passes.run(ir_model, "lower-qdq,fold-qdq")


def test_single_gemm_takes_the_gram_path_and_beats_nearest(gemm_case, tmp_path):
    model, qdq, _, holdout = gemm_case
    ada, lowered = _run(gemm_case, tmp_path)
    (report,) = [r for r in ada.reports if r.weights]
    assert report.path == "gram" and ada.stats["num-blocks-gram"] == 1
    assert report.status == "trained" and report.mse_adaround <= report.mse_nearest
    reference = run_ort(model, {"x": holdout})[0]
    nearest = sqnr_db(reference, run_ort(qdq, {"x": holdout})[0])
    learned = sqnr_db(reference, run_ort(lowered, {"x": holdout})[0])
    assert learned >= nearest, (nearest, learned)

    off, _ = _run(gemm_case, tmp_path, gram="off")
    (direct,) = [r for r in off.reports if r.weights]
    assert direct.path == "direct" and off.stats["num-blocks-gram"] == 0
    assert direct.mse_adaround <= direct.mse_nearest


def test_evaluation_chunks_follow_the_memory_budget(gemm_case, tmp_path, monkeypatch):
    """Full-data evaluations run in chunks sized from the block's measured per-sample intermediates
    (``Tuning.eval_budget_mb``); a budget that allows one sample at a time gives the same codes."""
    import qdq_passes.adaround.runner as adaround_module

    chunks: list[int] = []
    size = adaround_module.Runner._size_chunks

    def record(self, module, inputs):  # noqa: ANN001
        size(self, module, inputs)
        chunks.append(self.eval_chunk)

    monkeypatch.setattr(adaround_module.Runner, "_size_chunks", record)
    _, default = _run(gemm_case, tmp_path)
    assert chunks and chunks[0] == 256
    _, tiny = _run(gemm_case, tmp_path, tuning=Tuning(eval_budget_mb=0))
    assert chunks[-1] == 1
    codes = [[np.asarray(init.const_value.numpy()) for init in m.graph.initializers.values()
              if init.const_value is not None and init.const_value.dtype.itemsize <= 1] for m in (default, tiny)]
    assert codes[0] and all(np.array_equal(a, b) for a, b in zip(*codes))


def test_holdout_samples_decide_and_never_train(gemm_case, tmp_path):
    """``holdout``: the nearest-vs-AdaRound decision is measured on samples training never sees (the
    same seeded subset for every block); ``holdout=0`` measures on the training samples; the decision
    data differ, and an out-of-range share is refused."""
    from qdq_passes.infra.errors import QdqError

    held, _ = _run(gemm_case, tmp_path, holdout=0.25)
    all_samples, _ = _run(gemm_case, tmp_path, holdout=0.0)
    (a,) = [r for r in held.reports if r.weights]
    (b,) = [r for r in all_samples.reports if r.weights]
    assert a.mse_nearest != b.mse_nearest  # measured on different samples
    # the held-out subset is the seeded one: the pass's nearest errors on it and on all samples are
    # in the ratio of onnxruntime's (whose output also passes the output quantizer the pass leaves out)
    model, qdq, calib, _ = gemm_case
    order = torch.randperm(len(calib), generator=torch.Generator().manual_seed(0))
    check = order[: round(0.25 * len(calib))].sort().values.numpy()
    error = ((run_ort(qdq, {"x": calib})[0] - run_ort(model, {"x": calib})[0]) ** 2).sum(1)
    assert a.mse_nearest / b.mse_nearest == pytest.approx(float(error[check].mean() / error.mean()), rel=1e-2)
    with pytest.raises(QdqError, match="option 'holdout' must be less than 1, got 1.0"):
        _run(gemm_case, tmp_path, holdout=1.0)


# --------------------------------------------------------------------------- the cut block


def test_cut_block_matches_whole_block_with_soft_rounding():
    from qdq_passes.ir.to_torch import block_to_module
    from qdq_passes.quantizers import materialize

    case = transformer_case()
    model = onnx_ir.from_proto(onnx.load_model_from_string(case.qdq_model.SerializeToString()))
    InsertQuantizersPass(weights="adaround")(model)
    onnx_ir.passes.common.ShapeInferencePass()(model)
    x = torch.from_numpy(case.calib["x"][:8])
    for granularity in ("block", "layer"):
        for block in BlockPartition.build(model, granularity=granularity):
            nodes = [n for n in block.nodes if n.op_type == dialect.ADAROUND_QUANTIZER]
            if not nodes:
                continue
            pairs = [(n, materialize(n)) for n in nodes]
            gen = torch.Generator().manual_seed(block.index)
            with torch.no_grad():
                for _, q in pairs:
                    q.alpha.copy_(torch.randn(q.alpha.shape, generator=gen))
            whole = block_to_module(block.nodes, block.inputs, block.outputs, opset_imports=model.opset_imports,
                                    quantizer_module=materialize)
            # block inputs: run the model's prefix in torch on the whole graph would be heavy; use
            # random tensors of the recorded shapes (the comparison is of two evaluations).
            inputs = [x if v.name == "x" else torch.randn([8, *[d for d in v.shape[1:]]], generator=gen)
                      for v in block.inputs]
            split = Split(block, [n for n, _ in pairs], model.opset_imports, torch.device("cpu"))
            per_sample, constants = split.frontier(inputs, 3)
            weights = [SoftWeight(n, q, torch.device("cpu")) for n, q in pairs]
            for _, q in pairs:
                q.use_soft_rounding = True
            try:
                with torch.no_grad():
                    expected = whole(*inputs)
                    got = split.module(*per_sample, *constants, *[w.dequantize(w.quantizer.h()) for w in weights])
            finally:
                for _, q in pairs:
                    q.use_soft_rounding = False
            expected = expected if isinstance(expected, tuple) else (expected,)
            got = got if isinstance(got, tuple) else (got,)
            kept = [expected[i] for i in split.trained_outputs]
            assert len(kept) == len(got) >= 1
            for e, g in zip(kept, got):
                torch.testing.assert_close(g, e, rtol=0, atol=0)
            for w in weights:
                with torch.no_grad():
                    torch.testing.assert_close(w.hard(), w.quantizer(w.weight), rtol=0, atol=0)


# --------------------------------------------------------------------------- the conv fast path


CONV_CASES = {
    "3x3-pad1": dict(strides=[1, 1], pads=[1, 1, 1, 1]),
    "stride2": dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    "asym-dilated": dict(strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2]),
    "valid-nobias": dict(auto_pad="VALID"),
}


@pytest.mark.parametrize("kind", list(CONV_CASES))
def test_conv_fast_path_loss_and_gradient_equal_direct(kind):
    """ConvReluLoss equals the direct path (block conv, Relu, squared error summed over channels and
    averaged over the rest) on a gathered batch, in value and gradient (float64)."""
    from qdq_passes.adaround.selection import reconstruction_loss
    from qdq_passes.adaround.conv import ConvReluLoss, conv_geometry
    from qdq_passes.ir.to_torch import block_to_module

    attrs = dict(CONV_CASES[kind])
    bias = kind != "valid-nobias"
    names = ["x", "w", "b"] if bias else ["x", "w"]
    inputs = [onnx_ir.Value(name=nm) for nm in names]
    attributes = [onnx_ir.AttrInt64s("kernel_shape", [3, 3])] + [
        onnx_ir.AttrString(k, v) if isinstance(v, str) else onnx_ir.AttrInt64s(k, v) for k, v in attrs.items()]
    node = onnx_ir.Node("", "Conv", inputs, attributes=attributes, num_outputs=1)
    gen = torch.Generator().manual_seed(1)
    dt = torch.float64
    n, batch = 12, 5
    x = torch.randn(n, 4, 9, 8, generator=gen, dtype=dt)
    w = torch.randn(6, 4, 3, 3, generator=gen, dtype=dt)
    b = torch.randn(6, generator=gen, dtype=dt) if bias else None
    geometry = conv_geometry(node, tuple(w.shape))
    assert geometry is not None
    # the reference: the to_torch conversion of the same node, as the direct path runs it
    module = block_to_module([node], inputs, [node.outputs[0]], opset_imports={"": 17})
    y_float = module(x, w + 0.05 * torch.randn(w.shape, generator=gen, dtype=dt), *([b] if bias else []))
    target = F.relu(y_float)  # the targets' Relu is taken once
    fast = ConvReluLoss(x, tuple(w.shape), b, target, geometry, batch)
    for step in range(3):
        idx = torch.randint(n, (batch,), generator=gen)
        wq = (w + 0.1 * torch.randn(w.shape, generator=gen, dtype=dt)).requires_grad_()
        out = module(x.index_select(0, idx), wq, *([b] if bias else []))
        # the direct path's loss (_recon) without its float32 cast
        loss_direct = (F.relu(out) - target.index_select(0, idx)).pow(2).sum(1).mean()
        (grad_direct,) = torch.autograd.grad(loss_direct, wq)
        wf = wq.detach().clone().requires_grad_()
        loss_fast = fast.loss(wf * 1.0, idx)  # through another op, as the soft weight is
        (grad_fast,) = torch.autograd.grad(loss_fast * 3.0, wf)
        torch.testing.assert_close(loss_fast, loss_direct, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad_fast, 3.0 * grad_direct, rtol=1e-10, atol=1e-12)
        loss_hand, grad_hand = fast.loss_and_grad(wq.detach(), idx)  # no autograd
        torch.testing.assert_close(loss_hand, loss_direct, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad_hand, grad_direct, rtol=1e-10, atol=1e-12)
        loss32 = reconstruction_loss([out.float()], [target.index_select(0, idx).float()], [True], targets_done=True)
        torch.testing.assert_close(loss_fast.float(), loss32, rtol=1e-5, atol=1e-7)


def test_conv_fast_path_same_codes_as_direct_path(tmp_path, monkeypatch):
    """On the CNN the pass takes the conv path for its Relu-compared conv blocks and writes the same
    codes as the direct path (float32: same batches, loss and gradient up to rounding)."""
    from tests.adaround_models import cnn_case

    case = cnn_case()
    calib = save_npz(tmp_path / "calib.npz", {"input": case.calib["input"][:32]})
    runs = {}
    for mode in ("on", "off"):
        model = onnx_ir.from_proto(onnx.load_model_from_string(case.qdq_model.SerializeToString()))
        InsertQuantizersPass(weights="adaround")(model)
        ada = AdaroundPass(calib=str(calib), iters=30, batch_size=8, threads=1, tuning=Tuning(conv_fast=mode == "on"))
        ada(model)
        codes = {n.name: np.asarray(n.inputs[0].const_value.numpy()).copy() for n in model.graph
                 if n.op_type == dialect.ADAROUND_QUANTIZER}
        runs[mode] = (ada, codes)
    on, off = runs["on"][0], runs["off"][0]
    assert any(r.path == "conv" for r in on.reports)
    assert all(r.path != "conv" for r in off.reports)
    total = sum(c.size for c in runs["on"][1].values())
    differ = sum(int(np.count_nonzero(runs["on"][1][k] != runs["off"][1][k])) for k in runs["on"][1])
    assert differ <= max(1, total // 1000), (differ, total)


def test_relu_compared_convs_take_gram_steps_then_exact_ones(tmp_path):
    """``relu-refine``: a Relu-compared conv block runs the Gram form of the pre-Relu loss for the
    first steps and the exact post-Relu loss for the last ones (path ``gram+conv``), and its hard
    rounding still beats nearest on the exact loss; ``relu-refine=1`` and ``gram=off`` keep every
    step exact; the result is reproducible; an out-of-range value is refused."""
    from qdq_passes.infra.errors import QdqError
    from tests.adaround_models import cnn_case

    case = cnn_case()
    calib = save_npz(tmp_path / "calib.npz", {"input": case.calib["input"][:32]})

    def run(**options):
        model = onnx_ir.from_proto(onnx.load_model_from_string(case.qdq_model.SerializeToString()))
        InsertQuantizersPass(weights="adaround")(model)
        ada = AdaroundPass(calib=str(calib), iters=40, batch_size=8, threads=1, **options)
        ada(model)
        codes = [np.asarray(n.inputs[0].const_value.numpy()).copy() for n in model.graph
                 if n.op_type == dialect.ADAROUND_QUANTIZER]
        return ada, codes

    hybrid, codes = run(gram="on")
    convs = [r for r in hybrid.reports if r.ops == "Conv"]
    assert convs and all(r.path == "gram+conv" for r in convs)
    assert all(r.status == "trained" and r.mse_adaround <= r.mse_nearest for r in convs)
    assert hybrid.stats["num-blocks-gram"] >= len(convs)
    auto, _ = run()  # gram=auto: where a Gram step costs less than a batch step (the early, large convs)
    assert {r.path for r in auto.reports if r.ops == "Conv"} == {"gram+conv", "conv"}
    _, again = run(gram="on")
    assert all(np.array_equal(a, b) for a, b in zip(codes, again))
    for options in ({"relu_refine": 1.0}, {"gram": "off"}):
        exact, _ = run(**options)
        assert all(r.path == "conv" for r in exact.reports if r.ops == "Conv"), options
    with pytest.raises(QdqError, match="option 'relu-refine' must be at most 1, got 1.5"):
        run(relu_refine=1.5)


def test_fused_adam_matches_torch_adam():
    """The pass's Adam (one fused-kernel call per step) updates exactly as torch's fused Adam."""
    from qdq_passes.adaround.soft_rounding import FusedAdam

    gen = torch.Generator().manual_seed(3)
    a = [torch.randn(5, 3, generator=gen).requires_grad_(), torch.randn(7, generator=gen).requires_grad_()]
    b = [t.detach().clone().requires_grad_() for t in a]
    ours = FusedAdam(a, 0.1)
    ref = torch.optim.Adam(b, lr=0.1, fused=True)
    for _ in range(5):
        grads = [torch.randn(t.shape, generator=gen) for t in a]
        for opt, ps in ((ours, a), (ref, b)):
            opt.zero_grad(set_to_none=True)
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def _regularizer(h, beta: float):  # noqa: ANN001, ANN202
    """AdaRound's rounding regulariser ``sum(1 - |2h - 1| ** beta)``, written out as the paper has it."""
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


def test_soft_chain_matches_quantizer_ops():
    """``SoftWeight.soft_and_regularizer`` (one autograd node) equals ``soft(h())`` and
    ``reg * _regularizer(h, beta)`` in value and in alpha's gradient (float64), clamped codes and
    saturated h included."""
    from qdq_passes.quantizers import materialize

    case = transformer_case()
    model = onnx_ir.from_proto(onnx.load_model_from_string(case.qdq_model.SerializeToString()))
    InsertQuantizersPass(weights="adaround")(model)
    node = next(n for n in model.graph if n.op_type == dialect.ADAROUND_QUANTIZER)
    q = materialize(node)
    sw = SoftWeight(node, q, torch.device("cpu"))
    dt = torch.float64
    for name in ("weight", "scale", "zero_point", "floor", "lo", "hi"):
        setattr(sw, name, getattr(sw, name).to(dt))
    gen = torch.Generator().manual_seed(5)
    alpha = (4 * torch.randn(q.alpha.shape, generator=gen, dtype=dt)).requires_grad_()  # many saturated h
    q.alpha = torch.nn.Parameter(alpha.detach().clone())
    with torch.no_grad():  # push some codes against the clamp bounds
        sw.floor.view(-1)[::7] = sw.hi.max() if sw.hi.dim() == 0 else sw.hi.reshape(-1)[0]
    gw = torch.randn(sw.weight.shape, generator=gen, dtype=dt)
    for beta, reg in ((None, 0.01), (20.0, 0.01), (3.0, 0.5)):
        q.alpha.grad = None
        w_ref = sw.dequantize(q.h())
        loss_ref = (w_ref * gw).sum()
        if beta is not None:
            loss_ref = loss_ref + reg * _regularizer(q.h(), beta)
        (g_ref,) = torch.autograd.grad(loss_ref, q.alpha)
        w, r = SoftChain.apply(q.alpha, sw, beta, reg)
        loss = (w * gw).sum() + (r if beta is not None else 0)
        (g,) = torch.autograd.grad(loss, q.alpha)
        torch.testing.assert_close(w, w_ref, rtol=0, atol=0)
        torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    # float32, as the pass runs it: the same bits as autograd through the quantizer's ops
    sw32 = SoftWeight(node, q, torch.device("cpu"))
    q.alpha = torch.nn.Parameter((4 * torch.randn(q.alpha.shape, generator=gen)).float())
    gw = torch.randn(sw32.weight.shape, generator=gen)
    for beta, reg in ((None, 0.01), (20.0, 0.01), (2.5, 0.01)):
        h = q.h()
        loss_ref = (sw32.dequantize(h) * gw).sum()
        if beta is not None:
            loss_ref = loss_ref + reg * sum(_regularizer(x, beta) for x in [h])
        (g_ref,) = torch.autograd.grad(loss_ref, q.alpha)
        w, r = sw32.soft_and_regularizer(beta, reg)
        loss = (w * gw).sum()
        if beta is not None:
            loss = loss + r
        (g,) = torch.autograd.grad(loss, q.alpha)
        assert torch.equal(loss, loss_ref) and torch.equal(g, g_ref)
