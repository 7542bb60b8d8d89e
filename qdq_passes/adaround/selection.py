"""Choosing a block's rounding: the reconstruction error, the held-out samples, the candidates.

Every rounding a block tries (AdaRound's, its polished form, each shrunk retraining) is a
:class:`Candidate` measured on the same held-out samples, which training never sees; a challenger
replaces the incumbent only where it is :func:`clearly_lower` (by more than the standard error of
the per-sample difference), and nearest rounding is kept where the chosen AdaRound rounding has the
higher held-out error.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

import torch

__all__ = ["reconstruction_loss", "per_sample_loss", "clearly_lower", "Candidate", "Samples", "hold_out",
           "held_out_split"]


def _differences(outs: Sequence[torch.Tensor], tgts: Sequence[torch.Tensor], relus: Sequence[bool],
                 targets_done: bool = False) -> Iterator[torch.Tensor]:
    """Per output, ``out - target`` in float32, after a Relu where ``relus`` says
    (``targets_done``: the targets' Relu is already taken)."""
    relu = torch.nn.functional.relu
    for out, tgt, use_relu in zip(outs, tgts, relus):
        if use_relu:
            out = relu(out)
            if not targets_done:
                tgt = relu(tgt)
        yield (out - tgt).float()


def reconstruction_loss(outs: Sequence[torch.Tensor], tgts: Sequence[torch.Tensor], relus: Sequence[bool],
                        targets_done: bool = False) -> torch.Tensor | float:
    """The block loss: per output, squared error summed over axis 1, averaged over the rest."""
    total: torch.Tensor | float = 0.0
    for diff in _differences(outs, tgts, relus, targets_done):
        total = total + (diff.pow(2).sum(1).mean() if diff.dim() > 1 else diff.pow(2).mean())
    return total


def per_sample_loss(outs: Sequence[torch.Tensor], tgts: Sequence[torch.Tensor],
                    relus: Sequence[bool]) -> torch.Tensor | None:
    """Each sample's share of :func:`reconstruction_loss` (float64, ``[N]``): their mean is its value."""
    total = None
    for diff in _differences(outs, tgts, relus):
        err = diff.double().pow(2)
        err = err.sum(1).flatten(1).mean(1) if err.dim() > 2 else err.sum(1) if err.dim() == 2 else err
        total = err if total is None else total + err
    return total


def clearly_lower(new: torch.Tensor | None, old: torch.Tensor | None) -> bool:
    """Whether per-sample errors ``new`` are lower than ``old`` (same samples) by more than one
    standard error of the mean difference (at least two samples)."""
    if new is None or old is None or new.numel() < 2 or new.shape != old.shape:
        return False
    gain = old - new
    return float(gain.mean()) > float(gain.std()) / math.sqrt(gain.numel())


@dataclasses.dataclass
class Candidate:
    """A hard rounding of the block's weights (``alpha``'s signs) and its held-out error."""

    alphas: list[torch.Tensor]
    mse: float
    errors: torch.Tensor | None  # per held-out sample
    shrink: float = 0.0
    polished: int = 0

    def beats(self, other: Candidate) -> bool:
        """Whether this candidate's held-out error is clearly lower than ``other``'s."""
        return clearly_lower(self.errors, other.errors)


@dataclasses.dataclass
class Samples:
    """A block's tensors split into the training samples and the held-out ones."""

    train_inputs: list[torch.Tensor]
    train_targets: list[torch.Tensor]
    check_inputs: list[torch.Tensor]  # quantized-path inputs of the held-out samples
    check_targets: list[torch.Tensor]
    held_out: bool  # False: no samples kept out (the check runs on the training samples)


def held_out_split(n_all: int, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The sorted indices of the held-out samples and of the training ones: ``share`` of ``n_all``,
    the same ones in every block and at the model level (by ``seed``); None when none is held out."""
    n_check = int(round(share * n_all))
    if not 0 < n_check < n_all:
        return None
    order = torch.randperm(n_all, generator=torch.Generator().manual_seed(seed))
    return order[:n_check].sort().values, order[n_check:].sort().values


def hold_out(train_inputs: list[torch.Tensor], q_inputs: list[torch.Tensor], targets: list[torch.Tensor],
             share: float, seed: int, device: torch.device) -> Samples:
    """Keep ``share`` of the samples out of training (:func:`held_out_split`)."""
    n_all = train_inputs[0].shape[0] if train_inputs and train_inputs[0].dim() else 0
    split = held_out_split(n_all, share, seed)
    batched = all(t.dim() and t.shape[0] == n_all for t in [*q_inputs, *train_inputs, *targets])
    if split is None or not batched:
        return Samples(train_inputs, targets, q_inputs, targets, held_out=False)
    check, train = (t.to(device) for t in split)
    return Samples([t.index_select(0, train) for t in train_inputs], [t.index_select(0, train) for t in targets],
                   [t.index_select(0, check) for t in q_inputs], [t.index_select(0, check) for t in targets],
                   held_out=True)
