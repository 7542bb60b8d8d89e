"""What each AdaRound step optimises: one interface, three objectives, and the plan that picks them.

* :class:`DirectObjective`: a random batch through the block's trained part (autograd).
* :class:`GramObjective`: the block is one linear op read without a Relu; the loss in its Gram form
  (:mod:`.gram`) on the whole calibration set, hand-written gradient.
* :class:`ConvReluObjective`: the block is one 2-D Conv compared after a Relu; a random batch over
  preallocated buffers (:mod:`.conv`), hand-written gradient.

:func:`plan` returns the objective of each phase: the Gram form for every step where it is exact
(and, under ``gram=auto``, cheaper or shrinkable); for a Relu-compared one-op block, the Gram form
before the Relu for the first ``1 - relu-refine`` of the steps, then the exact loss.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Protocol

import onnx_ir
import torch

from qdq_passes.adaround.conv import ConvReluLoss, conv_geometry
from qdq_passes.adaround.gram import GramLoss, gram_layout
from qdq_passes.adaround.pass_ import AdaroundOptions, Tuning
from qdq_passes.adaround.report import RoundingPath
from qdq_passes.adaround.selection import reconstruction_loss
from qdq_passes.adaround.soft_rounding import SoftWeight, reg_value, soft_backward, soft_forward
from qdq_passes.adaround.split import Split

__all__ = ["Objective", "DirectObjective", "GramObjective", "ConvReluObjective", "Plan", "plan",
           "match_single_linear"]

logger = logging.getLogger(__name__)

#: The values crossing a :class:`Split`'s cut: per-sample tensors (all samples) and constants.
Frontier = tuple[list[torch.Tensor], list[torch.Tensor]]


class Objective(Protocol):
    """One step's loss: sets the gradient of every ``alpha`` (they start each step without one)."""

    def step(self, beta: float | None, generator: torch.Generator, shown: bool) -> torch.Tensor | float | None:
        """Compute the gradients at regulariser exponent ``beta`` (None: no regulariser); return the
        loss where ``shown`` (else it may be None)."""


@dataclasses.dataclass
class DirectObjective:
    """The squared error of the trained part's outputs on a random batch, by autograd."""

    split: Split
    frontier: Frontier
    targets: list[torch.Tensor]  # with their Relu taken where ``relus`` says
    relus: list[bool]
    weights: list[SoftWeight]
    batch: int
    reg: float

    def step(self, beta: float | None, generator: torch.Generator, shown: bool) -> torch.Tensor:  # noqa: ARG002
        per_sample, constants = self.frontier
        pairs = [w.soft_and_regularizer(beta, self.reg) for w in self.weights]
        n = per_sample[0].shape[0]
        device = per_sample[0].device
        idx = torch.randint(n, (self.batch,), generator=generator).to(device)
        out = self.split.module(*[t.index_select(0, idx) for t in per_sample], *constants, *[p[0] for p in pairs])
        outs = out if isinstance(out, tuple) else (out,)
        loss = reconstruction_loss(outs, [t.index_select(0, idx) for t in self.targets], self.relus,
                                   targets_done=True)
        for _, r in pairs:
            if r is not None:
                loss = loss + r
        loss.backward()
        return loss


class _SingleWeightObjective(abc.ABC):
    """A one-weight objective with a hand-written gradient: no autograd graph per step."""

    def __init__(self, weight: SoftWeight, reg: float) -> None:
        self.weight = weight
        self.reg = reg

    @abc.abstractmethod
    def loss_and_grad(self, soft: torch.Tensor, generator: torch.Generator,
                      shown: bool) -> tuple[torch.Tensor | float | None, torch.Tensor]:
        """The loss (where ``shown``) and its gradient in the soft weight."""

    def step(self, beta: float | None, generator: torch.Generator, shown: bool) -> torch.Tensor | float | None:
        w = self.weight
        alpha = w.quantizer.alpha
        soft, saved = soft_forward(alpha, w, beta)
        loss, grad_w = self.loss_and_grad(soft, generator, shown)
        # the fused Adam kernel walks grad and param in memory order: same (contiguous) layout
        alpha.grad = soft_backward(saved, w, grad_w.contiguous(), beta, self.reg).contiguous()
        if shown and beta is not None:
            loss = float(loss) + float(reg_value(saved, beta, self.reg))
        return loss


class GramObjective(_SingleWeightObjective):
    """The Gram form of the loss of a one-linear-op block (every sample, every step)."""

    def __init__(self, weight: SoftWeight, reg: float, gram: GramLoss) -> None:
        super().__init__(weight, reg)
        self.gram = gram

    def loss_and_grad(self, soft: torch.Tensor, generator: torch.Generator,  # noqa: ARG002
                      shown: bool) -> tuple[torch.Tensor | float | None, torch.Tensor]:
        layout = self.gram.layout
        grad_m, loss = self.gram.grad(layout.weight_to_matrix(soft - self.weight.weight), with_loss=shown)
        return loss, layout.matrix_to_weight(grad_m)

    def shrunk(self, kappa: float) -> GramObjective:
        """The same objective on the shrunk Gram loss (see ``shrink``)."""
        return GramObjective(self.weight, self.reg, self.gram.shrunk(kappa))


class ConvReluObjective(_SingleWeightObjective):
    """The exact loss of a one-Conv block compared after a Relu, on a random batch."""

    def __init__(self, weight: SoftWeight, reg: float, loss: ConvReluLoss, n: int, batch: int) -> None:
        super().__init__(weight, reg)
        self.loss = loss
        self.n = n
        self.batch = batch

    def loss_and_grad(self, soft: torch.Tensor, generator: torch.Generator,
                      shown: bool) -> tuple[torch.Tensor | float | None, torch.Tensor]:  # noqa: ARG002
        idx = torch.randint(self.n, (self.batch,), generator=generator).to(soft.device)
        return self.loss.loss_and_grad(soft, idx)


@dataclasses.dataclass
class Plan:
    """The objective of each step: ``first`` for the first ``first_steps``, then ``rest``."""

    first: GramObjective | None
    first_steps: int
    rest: Objective
    path: RoundingPath
    iters: int

    def objective_at(self, it: int) -> Objective:
        """The objective of step ``it``."""
        return self.first if self.first is not None and it < self.first_steps else self.rest

    @property
    def pure_gram(self) -> GramObjective | None:
        """The Gram objective where every step takes it (polish and shrink apply), else None."""
        return self.first if self.first is not None and self.first_steps == self.iters else None


def match_single_linear(split: Split, weights: Sequence[SoftWeight]) -> onnx_ir.Node | None:
    """The one node of the trained part when it is a linear op reading the one AdaRound weight as
    its input 1 and a per-sample value as its input 0, and making the only trained output; else None."""
    if len(weights) != 1 or len(split.trained_nodes) != 1:
        return None
    node = split.trained_nodes[0]
    w_value = weights[0].node.outputs[0]
    if (len(node.inputs) < 2 or node.inputs[1] is not w_value or node.inputs[0] not in split.per_sample
            or split.outputs != [node.outputs[0]] or any(v is w_value for v in node.inputs[2:])):
        return None
    return node


def plan(options: AdaroundOptions, tuning: Tuning, split: Split, frontier: Frontier, weights: list[SoftWeight],
         targets: list[torch.Tensor], relus: list[bool], layout: bool, eval_chunk: int, block: int) -> Plan:
    """The objectives of a block's steps; ``targets`` are the trained outputs' float targets (no Relu
    taken), ``layout``: the block holds its batch elsewhere than on axis 0 (direct path only)."""
    o = options
    taken = [torch.nn.functional.relu(t) if r else t for t, r in zip(targets, relus)]
    per_sample = frontier[0]
    batch = min(o.batch_size, per_sample[0].shape[0])
    direct = DirectObjective(split, frontier, taken, relus, weights, batch, o.reg)
    if layout:
        return Plan(None, 0, direct, RoundingPath.DIRECT, o.iters)
    node = match_single_linear(split, weights)
    gram_node = node if o.gram != "off" else None
    gram = None
    first_steps = 0
    if gram_node is not None and relus == [False]:
        gram = _gram_objective(o, gram_node, split, frontier, weights[0], targets[0], eval_chunk, block, False)
        first_steps = o.iters if gram is not None else 0
    elif gram_node is not None and relus == [True] and o.relu_refine < 1:
        # Compared after a Relu: the Gram form of the loss before it for the first steps.
        gram = _gram_objective(o, gram_node, split, frontier, weights[0], targets[0], eval_chunk, block, True)
        first_steps = round((1 - o.relu_refine) * o.iters) if gram is not None else 0
    rest: Objective = direct
    if first_steps != o.iters:
        conv = _conv_objective(o, node, split, frontier, weights[0], taken[0], batch) if (
            node is not None and tuning.conv_fast and relus == [True] and split.cut) else None
        rest = conv if conv is not None else direct
    name = "conv" if isinstance(rest, ConvReluObjective) else "direct"
    path = "gram" if first_steps == o.iters else f"gram+{name}" if first_steps else name
    return Plan(gram, first_steps, rest, RoundingPath(path), o.iters)


def _gram_objective(o: AdaroundOptions, node: onnx_ir.Node, split: Split, frontier: Frontier, weight: SoftWeight,
                    target: torch.Tensor, chunk: int, block: int, surrogate: bool) -> GramObjective | None:
    """The block's Gram objective where its form is exact (and, under ``auto``, cheaper, or shrinkable:
    fewer rows than inputs, ``shrink`` set, not the ``relu-refine`` surrogate); else None."""
    layout = gram_layout(node, tuple(weight.weight.shape))
    if layout is None:
        return None
    per_sample, constants = frontier
    x_all = per_sample[split.per_sample.index(node.inputs[0])]
    n = x_all.shape[0]
    rows_per_sample = layout.features(x_all[:1]).shape[0]
    k = layout.weight_to_matrix(weight.weight).shape[1]
    few_rows = n * rows_per_sample < k and bool(o.shrink) and not surrogate
    if o.gram == "auto" and k > 3 * min(o.batch_size, n) * rows_per_sample and not few_rows:
        return None  # one Gram step (O K^2) would cost more than a direct step (3 B P O K)
    gram = GramLoss(layout)
    # the float64 feature rows of a chunk stay near 32 MB (a conv's im2col is K times its input)
    gram_chunk = max(1, min(chunk, (32 << 20) // max(1, rows_per_sample * k * 8)))
    with torch.no_grad():
        for start in range(0, n, gram_chunk):
            sl = slice(start, start + gram_chunk)
            y0 = split.module(*[t[sl] for t in per_sample], *constants, weight.weight)
            gram.accumulate(x_all[sl], y0 - target[sl])
        denominator = target.numel() / target.shape[1] if target.dim() > 1 else target.numel()
        gram.finish(denominator)
        # Safety net: at the current (hard) rounding the Gram loss must equal the direct one.
        hard = weight.hard()
        direct = 0.0
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            y = split.module(*[t[sl] for t in per_sample], *constants, hard)
            direct += float((y - target[sl]).double().pow(2).sum())
        direct /= denominator
        value = float(gram.loss(layout.weight_to_matrix(hard - weight.weight)))
    if not math.isclose(value, direct, rel_tol=1e-3, abs_tol=1e-9 * max(1.0, gram.constant)):
        logger.warning("adaround: block %d: Gram loss %.6g differs from the direct loss %.6g; using the direct path",
                       block, value, direct)
        return None
    return GramObjective(weight, o.reg, gram)


def _conv_objective(o: AdaroundOptions, node: onnx_ir.Node, split: Split, frontier: Frontier, weight: SoftWeight,
                    target: torch.Tensor, batch: int) -> ConvReluObjective | None:
    """The conv fast path's objective for the block's one linear ``node`` (compared after a Relu,
    its Relu taken in ``target``) where it is exact; else None."""
    geometry = conv_geometry(node, tuple(weight.weight.shape))
    if geometry is None:
        return None
    per_sample, constants = frontier
    x = per_sample[split.per_sample.index(node.inputs[0])]
    bias = None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        if node.inputs[2] not in split.constants:
            return None
        bias = constants[split.constants.index(node.inputs[2])]
        if bias.dim() != 1:
            return None
    if (x.dim() != 4 or target.dim() != 4 or not x.is_floating_point() or x.dtype != weight.weight.dtype
            or target.dtype != x.dtype):
        return None
    if ConvReluLoss.bytes_needed(x, target, geometry) > o.cache_mb * 1024 * 1024 // 2:
        return None
    loss = ConvReluLoss(x, tuple(weight.weight.shape), bias, target, geometry, batch)
    return ConvReluObjective(weight, o.reg, loss, x.shape[0], batch)
