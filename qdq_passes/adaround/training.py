"""Training one block: optimise ``alpha`` on the planned objectives, then choose the rounding.

:class:`BlockTrainer` measures nearest rounding on the held-out samples, plans the objectives
(:func:`.objectives.plan`), trains AdaRound's candidate (polished on the Gram path), retrains on
shrunk Gram losses where that may help, and keeps the best candidate, or nearest rounding where
that is better (:mod:`.selection`).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Sequence

import onnx_ir
import torch
from tqdm import tqdm

from qdq_passes.adaround.gram import GramLoss, polish
from qdq_passes.adaround.objectives import Plan, plan
from qdq_passes.adaround.pass_ import AdaroundOptions, Tuning
from qdq_passes.adaround.report import BlockReport, BlockResult, BlockStatus
from qdq_passes.adaround.selection import Candidate, Samples, per_sample_loss, reconstruction_loss
from qdq_passes.adaround.soft_rounding import SoftWeight, adam
from qdq_passes.adaround.split import Split
from qdq_passes.ir.blocks import Block
from qdq_passes.ir.to_torch import BlockModule
from qdq_passes.quantizers.base_qdq_quantizers import AdaroundINTQuantizer

__all__ = ["BlockJob", "BlockTrainer", "evaluate"]


def evaluate(module: BlockModule, inputs: Sequence[torch.Tensor], chunk: int) -> list[torch.Tensor]:
    """Run ``module`` over all samples in chunks of ``chunk``; one tensor per module output."""
    n = inputs[0].shape[0] if inputs else 1
    parts: list[list[torch.Tensor]] = []
    for start in range(0, n, chunk):
        out = module(*[t[start:start + chunk] for t in inputs])
        outs = out if isinstance(out, tuple) else (out,)
        if not parts:
            parts = [[] for _ in outs]
        for p, t in zip(parts, outs):
            p.append(t.detach())
    return [torch.cat(p) for p in parts]


@dataclasses.dataclass
class BlockJob:
    """One block to train, as the runner hands it over."""

    block: Block
    ops: str
    qmod: BlockModule  # the block with its quantizers (hard rounding unless told otherwise)
    quantizers: list[tuple[onnx_ir.Node, AdaroundINTQuantizer]]
    relus: list[bool]  # per block output: compared after a Relu
    layout: tuple[list[int | None], list[int | None]] | None  # batch axes (inputs, outputs) unless all 0
    opset_imports: dict[str, int]
    device: torch.device
    eval_chunk: int


class BlockTrainer:
    """Trains one block's AdaRound weights and chooses their rounding (see the module doc)."""

    def __init__(self, options: AdaroundOptions, tuning: Tuning, job: BlockJob, samples: Samples) -> None:
        self.o = options
        self.tuning = tuning
        self.job = job
        self.samples = samples
        self.params = [q.alpha for _, q in job.quantizers]
        self.stats: collections.Counter[str] = collections.Counter()

    def run(self) -> BlockResult:
        """Train, choose, and report; ``alpha`` ends as the chosen rounding."""
        o, job = self.o, self.job
        for _, q in job.quantizers:
            q.use_soft_rounding = False
        mse_nearest = self._measure()[0]
        initial = [p.detach().clone() for p in self.params]
        steps = self._plan()
        best = self._candidate(steps, initial)
        gram = steps.pure_gram
        if (o.shrink and gram is not None and self.samples.held_out
                and (gram.gram.rows < gram.gram.fan_in or best.mse > mse_nearest * (1 + 1e-6))):
            # Few samples for the fan-in (H singular), or AdaRound lost on the held-out samples.
            for kappa in o.shrink:
                challenger = self._candidate(dataclasses.replace(steps, first=gram.shrunk(kappa)), initial, kappa)
                if challenger.beats(best):
                    best = challenger
            self.stats["num-blocks-shrunk"] += 1
        self._restore(best.alphas)
        status, shrink, polished = BlockStatus.TRAINED, best.shrink, best.polished
        if best.mse > mse_nearest:
            self._restore(initial)
            status, shrink, polished = BlockStatus.REVERTED, 0.0, 0
        self.stats["num-blocks-trained" if status == BlockStatus.TRAINED else "num-blocks-reverted"] += 1
        if steps.first_steps:
            self.stats["num-blocks-gram"] += 1
        self.stats["num-weights-polished"] += polished
        report = BlockReport(job.block.index, job.ops, len(job.quantizers), mse_nearest, best.mse, 0.0, status,
                             steps.path, shrink, polished)
        return BlockResult(report, self.stats)

    def _plan(self) -> Plan:
        """Cut the block (the whole block per step where it cannot be cut) and plan its objectives."""
        job, samples = self.job, self.samples
        ada = [node for node, _ in job.quantizers]
        split = Split(job.block, ada, job.opset_imports, job.device, cut=job.layout is None)
        frontier = split.frontier(samples.train_inputs, job.eval_chunk)
        if frontier is None:  # a value crossing the cut has no batch axis
            split = Split(job.block, ada, job.opset_imports, job.device, cut=False)
            frontier = split.frontier(samples.train_inputs, job.eval_chunk)
            assert frontier is not None
        if job.layout is not None:  # the batch elsewhere than on axis 0: the whole block per step
            in_axes, out_axes = job.layout
            split.module.set_batch_layout(in_axes, [out_axes[i] for i in split.trained_outputs])
        targets = [samples.train_targets[i] for i in split.trained_outputs]
        relus = [job.relus[i] for i in split.trained_outputs]
        weights = [SoftWeight(node, q, job.device) for node, q in job.quantizers]
        return plan(self.o, self.tuning, split, frontier, weights, targets, relus, job.layout is not None,
                    job.eval_chunk, job.block.index)

    def _candidate(self, steps: Plan, initial: list[torch.Tensor], shrink: float = 0.0) -> Candidate:
        """Train from ``initial`` on ``steps``, measure the hard rounding; on the Gram path, polish it
        and keep the polished rounding where it is clearly better."""
        self._restore(initial)
        self._optimize(steps, shrink)
        for _, q in self.job.quantizers:
            q.use_soft_rounding = False
        candidate = Candidate(self._snapshot(), *self._measure(), shrink=shrink)
        gram = steps.pure_gram
        if not self.o.polish or gram is None:
            return candidate
        flips = _polish_rounding(gram.gram, gram.weight, self.params[0], self.o.polish)
        if not flips:
            return candidate
        polished = Candidate(self._snapshot(), *self._measure(), shrink=shrink, polished=flips)
        if polished.beats(candidate):
            return polished
        self._restore(candidate.alphas)
        return candidate

    def _optimize(self, steps: Plan, shrink: float) -> None:
        """``iters`` Adam steps from the current ``alpha`` (fresh optimizer, the same batches every time)."""
        o, job = self.o, self.job
        optimizer = adam(self.params, o.lr, job.device)
        generator = torch.Generator().manual_seed(o.seed * 1_000_003 + job.block.index)
        phase = f"gram shrink {shrink:g}" if shrink else steps.path
        bar = tqdm(range(o.iters), desc=f"adaround block {job.block.index} [{job.ops}, {phase}]", leave=False,
                   disable=None)
        show = not getattr(bar, "disable", True)
        for it in bar:
            shown = show and it % 50 == 0
            optimizer.zero_grad(set_to_none=True)
            loss = steps.objective_at(it).step(beta_at(o, it), generator, shown)
            optimizer.step()
            if shown:
                bar.set_postfix(loss=f"{float(loss):.4g}")

    def _measure(self) -> tuple[float, torch.Tensor | None]:
        """The held-out reconstruction error with the current hard rounding, and each sample's share."""
        samples = self.samples
        with torch.no_grad():
            outs = evaluate(self.job.qmod, samples.check_inputs, self.job.eval_chunk)
            mse = float(reconstruction_loss(outs, samples.check_targets, self.job.relus))
            return mse, per_sample_loss(outs, samples.check_targets, self.job.relus)

    def _snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]

    def _restore(self, alphas: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, alpha in zip(self.params, alphas):
                p.copy_(alpha)


def beta_at(o: AdaroundOptions, it: int) -> float | None:
    """The regulariser's exponent at step ``it``: cosine-annealed from ``beta[0]`` to ``beta[1]``
    after the warm start; None before it (no regulariser) or with ``reg=0``."""
    warm = int(o.warm_start * o.iters)
    if it < warm or o.reg <= 0:
        return None
    beta_start, beta_end = o.beta
    return beta_end + 0.5 * (beta_start - beta_end) * (1 + math.cos((it - warm) / max(1, o.iters - warm) * math.pi))


def _polish_rounding(gram: GramLoss, weight: SoftWeight, alpha: torch.Tensor, sweeps: int) -> int:
    """Refine ``alpha``'s hard rounding by single flips on ``gram`` (:func:`.gram.polish`); returns
    how many codes changed."""
    layout = gram.layout
    with torch.no_grad():
        up = alpha >= 0
        hard = weight.dequantize(up)
        dw = layout.weight_to_matrix(hard - weight.weight)
        flip = layout.weight_to_matrix(weight.dequantize(~up) - hard)
        mask, _ = polish(gram, dw, flip, sweeps)
        flips = int(mask.sum())
        if flips:
            new_up = up ^ layout.matrix_to_weight(mask)
            size = alpha.abs().clamp_min(1e-3)
            alpha.copy_(torch.where(new_up, size, -size))
    return flips
