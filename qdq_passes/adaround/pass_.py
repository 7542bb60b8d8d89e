"""The ``adaround`` pass and its options; importing it costs no torch (the runner is imported when
the pass runs)."""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import TYPE_CHECKING, Literal

import onnx_ir

from qdq_passes.adaround.report import BlockReport
from qdq_passes.calib import (calib_batch_axis_option, calib_option, check_batch_axis_option, load_calibration,
                              max_samples_option, parse_batch_axes)
from qdq_passes.infra.errors import OptionError, PreconditionFailed
from qdq_passes.infra.options import PassOptions, option
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.registry import register_pass
from qdq_passes.ir import dialect
from qdq_passes.ir.qdq import node_label
from qdq_passes.partition import Granularity, PartitionOptions, granularity_option, max_ops_option, min_ops_option
from qdq_passes.passes.cleanup import ShapeInferencePass
from qdq_passes.runtime import configured_torch

__all__ = ["AdaroundOptions", "AdaroundPass", "Tuning"]

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from qdq_passes.adaround.model_check import ModelCheck

_DEVICE = re.compile(r"^(cpu|mps|(cuda|xpu)(:[0-9]+)?)$")


@dataclasses.dataclass(frozen=True)
class AdaroundOptions(PassOptions):
    """Options of ``adaround``."""

    calib: str | None = calib_option()
    calib_batch_axis: tuple[str, ...] = calib_batch_axis_option()
    iters: int = option(1000, "optimisation steps per block", at_least=0)
    lr: float = option(0.1, "Adam learning rate on alpha", above=0)
    reg: float = option(0.01, "weight of the rounding regulariser", at_least=0)
    beta: tuple[float, float] = option((20.0, 2.0), "regulariser exponent, annealed from the first to the second",
                                       above=0)
    warm_start: float = option(0.2, "fraction of the steps before the regulariser starts", at_least=0, at_most=1)
    batch_size: int = option(32, "calibration samples per step", at_least=1)
    granularity: Granularity = granularity_option()
    min_ops: int = min_ops_option()
    max_ops: int = max_ops_option()
    input: Literal["quant", "float"] = option("quant", "block inputs from the quantized (rounded) or the float path")
    max_samples: int = max_samples_option()
    seed: int = option(0, "seed of the batch sampling", at_least=0)
    device: str = option("cpu", "torch device: cpu, cuda, cuda:N, mps, xpu or xpu:N")
    threads: int = option(0, "torch threads for this pass (0: the run's setting)", at_least=0)
    cache_mb: int = option(2048, "activation cache held in memory before spilling to disk (MB)", at_least=0)
    gram: Literal["auto", "on", "off"] = option(
        "auto", "Gram fast path for a block that is one linear op with a plain squared-error loss (exact; "
        "optimises the whole calibration set each step): auto where a step is cheaper than a direct one, "
        "on wherever exact, off never")
    holdout: float = option(
        0.125, "fraction of the calibration samples kept out of training: on them each block's AdaRound "
        "rounding is compared with nearest and the better kept (0: compare on the training samples)",
        at_least=0, below=1)
    polish: int = option(
        4, "for a block on the Gram path: after training, flip single weights' rounding while the exact "
        "loss drops, at most this many sweeps over the weights (kept when the held-out error drops by more "
        "than its standard error; 0: off)", at_least=0)
    shrink: tuple[float, ...] = option(
        (0.5, 0.8, 0.9, 0.95), "for a Gram-path block with fewer calibration rows than inputs, or that lost to "
        "nearest on the held-out samples: retrain on the loss shrunk toward independent weights by each of these "
        "strengths and keep the best on the held-out samples (needs holdout > 0; empty: never)", above=0, at_most=1)
    model_check: bool = option(
        True, "after the last block, compare the whole model's held-out output error with nearest rounding's "
        "and put the blocks that hurt back to nearest (needs holdout > 0)")
    relu_refine: float = option(
        0.2, "for a one-op block compared after a Relu (the Gram form is not exact there): the fraction of "
        "the steps, the last ones, on that exact loss; the steps before optimise the Gram form of the loss "
        "before the Relu (1: every step exact; gram=off: likewise)", at_least=0, at_most=1)

    def validate(self) -> None:
        check_batch_axis_option(self.calib_batch_axis)
        PartitionOptions.of(self)
        if not _DEVICE.match(self.device):
            raise OptionError(f"option 'device' must be cpu, cuda, cuda:N, mps, xpu or xpu:N, got {self.device!r}",
                              key="device")


@dataclasses.dataclass(frozen=True)
class Tuning:
    """Implementation settings that are not pipeline options: tests and benchmarks set them to
    compare the fast paths with the plain ones (``AdaroundPass(..., tuning=Tuning(...))``)."""

    conv_fast: bool = True  # the conv+Relu fast path where it is exact (False: the block module)
    eval_budget_mb: int = 256  # intermediates of one full-data evaluation chunk, at most (MB)


@register_pass
class AdaroundPass(QdqPass):
    """Learn up/down rounding of every AdaRound weight quantizer, block by block (the algorithm:
    :mod:`qdq_passes.adaround`).

    1. No ``AdaroundINTQuantizer`` in the model: a precondition failure naming
       ``insert-quantizers{weights=adaround}``. All of them already rounded: nothing to do
       (``modified=False``, a warning), so a second run changes nothing.
    2. Calibration data is required (``calib``); a missing or mismatched file is a clear error.
    3. Each block is trained, hard-rounded, checked against nearest rounding and written back.
    4. A block ``to_torch`` cannot convert: known before training, warned once, counted in
       ``num-blocks-skipped``, its outputs computed by onnxruntime; its AdaRound quantizers keep
       nearest rounding. The run never ends on a block.
    5. Folded AdaRound quantizers (no float weight) are left alone with a warning.
    6. AdaRound quantizers inside subgraphs (If/Loop/Scan bodies) are not trained (blocks are cut
       from the main graph): each is named in a warning and keeps nearest rounding, so it is
       lowered as an ordinary quantized weight.
    """

    argument = "adaround"
    summary = "Learn weight rounding block by block on calibration data (AdaRound)"
    Options = AdaroundOptions
    statistics = {
        "num-blocks": "blocks in the partition",
        "num-blocks-trained": "blocks whose weights were optimised",
        "num-blocks-reverted": "blocks where AdaRound was worse than nearest on the calibration data",
        "num-blocks-skipped": "blocks not trained (no torch converter, torch could not run them, or an input missing)",
        "num-weights-rounded": "weight quantizers whose codes were written back",
        "num-codes-changed": "weight codes that differ from nearest rounding",
        "num-blocks-gram": "trained blocks optimised by the Gram fast path (all steps, or the first before relu-refine)",
        "num-blocks-shrunk": "Gram-path blocks retrained on shrunk losses (see shrink)",
        "num-weights-polished": "weight codes flipped by the Gram path's polish",
        "num-blocks-model-reverted": "trained blocks put back to nearest by the model-level check",
    }

    def __init__(self, options: AdaroundOptions | None = None, *, tuning: Tuning | None = None,
                 **kwargs: object) -> None:
        super().__init__(options, **kwargs)
        self.tuning = tuning or Tuning()
        self.reports: list[BlockReport] = []
        self.model_check: ModelCheck | None = None

    @property
    def details(self) -> list[str]:
        """Per-block lines for the statistics report, then the model check's."""
        return [r.line() for r in self.reports] + ([self.model_check.line()] if self.model_check else [])

    def precondition(self, model: onnx_ir.Model) -> None:
        if not any(dialect.is_adaround_quantizer(n)
                   for n in onnx_ir.traversal.RecursiveGraphIterator(model.graph)):
            raise PreconditionFailed("no AdaRound weight quantizers in the model: run "
                                     "insert-quantizers{weights=adaround} before adaround")
        if self._trainable(model) and self.options.calib is None:
            raise PreconditionFailed("needs calibration data: give calib=PATH (qdq-opt --calib PATH)")

    @staticmethod
    def _trainable(model: onnx_ir.Model) -> list[onnx_ir.Node]:
        return [n for n in model.graph if dialect.is_adaround_quantizer(n)
                and not dialect.quantizer_params(n).q_folded]

    def prerequisites(self, model: onnx_ir.Model) -> list[QdqPass]:
        """Blocks are cut and converted on inferred shapes (``shape-infer``) when there is something to train."""
        return [ShapeInferencePass()] if self._trainable(model) else []

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        self.reports = []
        self.model_check = None
        inner = [n for n in dialect.quantizer_nodes(model)
                 if n.graph is not model.graph and n.op_type == dialect.ADAROUND_QUANTIZER]
        for node in inner:
            logger.warning("adaround: %s is inside subgraph '%s': not trained (AdaRound cuts blocks from the "
                           "main graph); it keeps nearest rounding", node_label(node), node.graph.name)
        folded = [n for n in model.graph if dialect.is_adaround_quantizer(n)
                  and dialect.quantizer_params(n).q_folded and dialect.quantizer_params(n).rounding != dialect.ADAROUND]
        for node in folded:
            logger.warning("adaround: %s holds stored codes without a float weight; left at its rounding "
                           "(insert-quantizers{float-model=...} restores float weights)", node_label(node))
        if not self._trainable(model):
            if not folded and any(dialect.is_adaround_quantizer(n)
                                  for n in model.graph):
                logger.warning("adaround: every AdaRound quantizer already holds learned codes; nothing to do")
            return onnx_ir.passes.PassResult(model, False)
        torch = configured_torch()
        threads = torch.get_num_threads()
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        try:
            return self._round(model)
        finally:  # the pass's own thread count ends with it
            torch.set_num_threads(threads)

    def _round(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        o = self.options
        calib = load_calibration(o.calib, model, max_samples=o.max_samples or None,
                                 batch_axes=parse_batch_axes(o.calib_batch_axis))
        partition = PartitionOptions.of(o).build(model)
        self.bump("num-blocks", len(partition))
        from qdq_passes.adaround.runner import Runner

        from qdq_passes.adaround.model_check import Evaluator, check_model

        evaluator = Evaluator.before_training(model, calib, o.holdout, o.seed) if o.model_check else None
        results = Runner(model, partition, calib, o, self.tuning).run()
        self.model_check = check_model(evaluator, results) if evaluator is not None else None
        for result in results:
            self.reports.append(result.report)
            for name, count in result.stats.items():
                self.bump(name, count)
        dialect.ensure_functions(model)
        return onnx_ir.passes.PassResult(model, True)


