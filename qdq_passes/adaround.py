"""``adaround``: learn, block by block, whether each weight rounds up or down (AdaRound).

Runs on a model whose weight quantizers are ``AdaroundINTQuantizer`` nodes (made by
``insert-quantizers{weights=adaround}``), with calibration data. For each block of the
:class:`~qdq_passes.ir.blocks.BlockPartition`, in order:

1. Inputs. The quantized path starts from the calibration inputs and runs through the blocks
   already rounded (earlier blocks' hard-rounded torch modules), never by re-running model
   prefixes; the float path runs the same blocks with every quantizer replaced by its float
   meaning (an activation quantizer whose range starts at exactly 0 becomes ``clamp(x, 0, upper
   end of its range)``: the Relu or Clip onnxruntime folded into it; other quantizers become
   identities; stored codes of biases dequantize). Only values later blocks read are kept (``cache-mb`` spills them to disk).
2. Loss. The squared error of the block outputs (summed over axis 1, the channels of NCHW
   outputs, averaged over the other axes) against the float block's outputs; an output read only by zero-based activation
   quantizers is compared after a Relu (the clamp that follows it), which peers leave out. After
   ``warm-start`` of the iterations, ``reg * sum(1 - |2h - 1| ** beta)`` is added, beta annealed
   from ``beta[0]`` to ``beta[1]`` on a cosine.
3. Optimisation. Adam on every ``alpha`` of the block, a random batch of ``batch-size`` samples
   per step (seeded by ``seed`` and the block index, so runs are reproducible). What the rounding
   does not change is computed once per block, not per step: the block is cut after the part that
   does not depend on ``alpha`` (its input quantizers on the cached samples, folded biases,
   ...), which is evaluated once over all samples; ``floor(W / s)`` of each weight is taken once;
   the Relu of the targets once; outputs the rounding does not reach are constant and left out.
   Gram fast path (``gram``): a block whose only node depending on ``alpha`` is one Conv
   (2-D, ``group=1``), Gemm or MatMul with the AdaRound weight, whose output is compared without
   a Relu, has the loss ``sum(dW * (dW H + 2 G)) + ||R||^2`` (normalised as above) with
   ``H = X X^T`` and ``G = R^T X^T`` built once from all samples (``adaround_gram``); each step
   then costs O(out x fan-in^2), whatever the number of samples, and optimises the loss on the
   *whole* calibration set instead of a random batch. ``auto`` takes it where a step is cheaper
   than a direct one; a self-check against the direct loss guards it.
   Relu-compared one-op blocks (``relu-refine``, report path ``gram+conv`` or ``gram+direct``):
   the Gram form is not exact after a Relu, so the first ``1 - relu-refine`` of the steps
   optimise the Gram form of the loss *before* the Relu (a cheap full-data surrogate), and the
   last ``relu-refine`` the exact loss after it on random batches. On the benchmark CNN
   (benchmarks/RESULTS.md) 0.2 keeps the exact path's SQNR within noise at a third of its time.
   Conv fast path (``adaround_conv``): a block whose only node depending on ``alpha`` is one 2-D
   Conv compared after a Relu runs each exact step (same random batch) over preallocated batch
   buffers, in place, with a weight-only conv backward. Single-weight fast-path steps (Gram or
   conv) use a hand-written gradient (no autograd graph): the soft weight from ``alpha``
   (``_soft_forward``), the loss's gradient in it, then back to ``alpha`` (``_soft_backward``).
   Other steps build the soft weight and the regulariser in one autograd node (``_SoftChain``,
   the same bits as autograd through the quantizer's ops). Every step updates with one fused-Adam
   kernel call (``_FusedAdam``, the same bits as ``torch.optim.Adam(fused=True)``).
4. Hard rounding. The block's reconstruction error with hard AdaRound rounding is compared with
   nearest rounding on the ``holdout`` share of the calibration samples, which training never sees
   (on all of them with ``holdout=0``); if AdaRound is worse, nearest is kept (counted). With few
   samples for many weights AdaRound can fit the calibration set and lose elsewhere (magika's
   512x214 head, 256 samples: better on them, worse on other files); held-out samples catch it.
   Polish (``polish``, pure-Gram blocks): the hard rounding is then refined by exact descent on
   the Gram loss, flipping single weights while the loss drops (``adaround_gram.polish``, one
   step's cost per sweep), and kept if the held-out error drops by more than its standard error
   (over the held-out samples): the soft optimisation stops short of a rounding no single flip
   improves, more so at few steps.
   Shrink (``shrink``, pure-Gram blocks with held-out samples): where the block has fewer
   calibration rows than inputs (``H`` singular; ``gram=auto`` then takes the Gram path even
   where a direct step is cheaper) or AdaRound lost to nearest on the held-out samples, the block
   is retrained on shrunk losses, ``H -> (1-k) H + k diag(H)``, ``G -> (1-k) G`` for each ``k``
   of ``shrink`` (``k = 1`` has nearest rounding as its minimiser); a shrunk rounding replaces the
   best so far only where it lowers the held-out error by more than the standard error of the
   difference (with a handful of held-out samples, the choice would otherwise follow noise: the
   demo's 4 held-out samples picked a rounding 2 dB worse on other inputs). On magika's head (512 inputs, 224 training samples) unshrunk
   AdaRound lost 0.9 dB on other files and ``k = 0.9`` gained 0.3 dB.
5. Write-back. The chosen codes become the quantizers' stored integers (``q_folded=1``,
   ``rounding=adaround``), so ``lower-qdq`` and onnxruntime reproduce the torch outputs exactly.

Blocks with an op ``to_torch`` cannot convert are found before any training, warned about once
and counted as skipped (their weights keep nearest rounding); their outputs are computed by
onnxruntime on the block cut out of the model (``block_onnxruntime``), or on the model's prefix;
a block neither runtime evaluates is reported with its cause and never ends the run. Values whose
batch is not on axis 0 (``calib-batch-axis``) are carried through the blocks with their samples on
axis 0 in the cache; a block whose output has no batch axis is merged with the next. When stderr
is not a terminal, one line per block reports it. Weight quantizers already folded (no float
weight) cannot be rounded again: run ``insert-quantizers{float-model=...}`` to restore the float
weights. Scales, zero points and activation quantizers never change.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import onnx_ir

from qdq_passes.calib import CalibrationData, check_batch_axis_option, load_calibration, parse_batch_axes
from qdq_passes.cleanup import infer_shapes
from qdq_passes.infra.errors import OptionError, PreconditionFailed, QdqError
from qdq_passes.infra.options import PassOptions, option
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.registry import register_pass
from qdq_passes.ir import dialect
from qdq_passes.block_onnxruntime import (
    BlockSession,
    NoBatchAxis,
    batch_axis,
    block_model,
    float_clamp,
    model_layout,
    prefix_model,
    zero_based,
)
from qdq_passes.ir.blocks import Block, BlockPartition, is_shape_node, merge_blocks
from qdq_passes.ir.qdq import constant_array, node_label
from qdq_passes.runtime import configured_torch, ort_session_options

__all__ = ["AdaroundPass", "AdaroundOptions", "BlockReport"]

logger = logging.getLogger(__name__)

#: Take the conv fast path (``adaround_conv``) where it is exact; False runs such blocks through the
#: block module like any other (for comparisons and tests).
CONV_FAST = True

#: Intermediates of one full-data evaluation chunk, at most (MB; see ``_Runner._size_chunks``).
EVAL_BUDGET_MB = 256


@dataclasses.dataclass(frozen=True)
class AdaroundOptions(PassOptions):
    """Options of ``adaround``."""

    calib: str | None = option(None, "calibration data: .npz or a folder of .npz (qdq-opt --calib fills it)",
                               input_path=True)
    calib_batch_axis: tuple[str, ...] = option(
        (), "NAME=AXIS for calibration inputs whose batch is not on axis 0 (AXIS 'none': one value for "
        "every sample); qdq-opt --calib-batch-axis fills it")
    iters: int = option(1000, "optimisation steps per block", at_least=0)
    lr: float = option(0.1, "Adam learning rate on alpha (Quark's default; 0.01 lost 1.5 dB on the demo CNN)",
                       above=0)
    reg: float = option(0.01, "weight of the rounding regulariser", at_least=0)
    beta: tuple[float, float] = option((20.0, 2.0), "regulariser exponent, annealed from the first to the second",
                                       above=0)
    warm_start: float = option(0.2, "fraction of the steps before the regulariser starts", at_least=0, at_most=1)
    batch_size: int = option(32, "calibration samples per step", at_least=1)
    granularity: Literal["block", "layer"] = option("block", "block: residual/attention blocks whole; layer: one op")
    min_ops: int = option(1, "fewest weighted ops per block", at_least=1)
    max_ops: int = option(4, "most weighted ops per block", at_least=1)
    input: Literal["quant", "float"] = option("quant", "block inputs from the quantized (rounded) or the float path")
    max_samples: int = option(0, "use at most this many calibration samples (0: all)", at_least=0)
    seed: int = option(0, "seed of the batch sampling", at_least=0)
    device: str = option("cpu", "torch device (cpu, cuda)")
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
        (0.5, 0.8, 0.9, 0.95), "for a Gram-path block with fewer calibration rows than inputs, or whose AdaRound "
        "rounding lost to nearest on the held-out samples: retrain with the loss's data terms shrunk by each "
        "of these (H -> (1-k) H + k diag(H), G -> (1-k) G) and keep the best on the held-out samples (by more "
        "than the standard error of the difference) "
        "(needs holdout > 0; empty: never)", above=0, at_most=1)
    relu_refine: float = option(
        0.2, "for a one-op block compared after a Relu (the Gram form is not exact there): the fraction of "
        "the steps, the last ones, on that exact loss; the steps before optimise the Gram form of the loss "
        "before the Relu (1: every step exact; gram=off: likewise)", at_least=0, at_most=1)

    def validate(self) -> None:
        check_batch_axis_option(self.calib_batch_axis)
        if self.min_ops > self.max_ops:
            raise OptionError(f"option 'min-ops' must be at most max-ops ({self.max_ops}), got {self.min_ops}",
                              key="min-ops")


@dataclasses.dataclass
class BlockReport:
    """What happened to one block."""

    index: int
    ops: str
    weights: int
    mse_nearest: float
    mse_adaround: float
    seconds: float
    status: str  # trained | reverted | no-weights | skipped
    path: str = "direct"  # direct (random batches through the block) | conv (same, conv fast path) | gram
    shrink: float = 0.0  # the Gram loss's shrinkage kept (``shrink``; 0: none)
    polished: int = 0  # codes flipped by the polish (``polish``) and kept
    cause: str = ""  # why a block was skipped

    def line(self) -> str:
        """One line for the statistics report."""
        if self.status == "no-weights":
            return f"block {self.index} [{self.ops}]: {self.status}"
        if self.status == "skipped":
            return f"block {self.index} [{self.ops}]: skipped, outputs by {self.path} ({self.cause})"
        extra = (f", shrink {self.shrink:g}" if self.shrink else "") + (
            f", {self.polished} polished" if self.polished else "")
        return (f"block {self.index} [{self.ops}]: {self.weights} weights, mse nearest {self.mse_nearest:.4g} "
                f"-> adaround {self.mse_adaround:.4g} ({self.status}, {self.path}{extra}, {self.seconds:.1f} s)")


@register_pass
class AdaroundPass(QdqPass):
    """Learn up/down rounding of every AdaRound weight quantizer, block by block (see the module doc).

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
    }

    def __init__(self, options: AdaroundOptions | None = None, **kwargs: object) -> None:
        super().__init__(options, **kwargs)
        self.reports: list[BlockReport] = []

    @property
    def details(self) -> list[str]:
        """Per-block lines for the statistics report."""
        return [r.line() for r in self.reports]

    def precondition(self, model: onnx_ir.Model) -> None:
        if not any(n.domain == dialect.DOMAIN and n.op_type == dialect.ADAROUND_QUANTIZER
                   for n in onnx_ir.traversal.RecursiveGraphIterator(model.graph)):
            raise PreconditionFailed("no AdaRound weight quantizers in the model: run "
                                     "insert-quantizers{weights=adaround} before adaround")
        if self._trainable(model) and self.options.calib is None:
            raise PreconditionFailed("needs calibration data: give calib=PATH (qdq-opt --calib PATH)")

    @staticmethod
    def _trainable(model: onnx_ir.Model) -> list[onnx_ir.Node]:
        return [n for n in model.graph if n.domain == dialect.DOMAIN and n.op_type == dialect.ADAROUND_QUANTIZER
                and not dialect.quantizer_params(n).q_folded]

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        self.reports = []
        inner = [n for n in dialect.quantizer_nodes(model)
                 if n.graph is not model.graph and n.op_type == dialect.ADAROUND_QUANTIZER]
        for node in inner:
            logger.warning("adaround: %s is inside subgraph '%s': not trained (AdaRound cuts blocks from the "
                           "main graph); it keeps nearest rounding", node_label(node), node.graph.name)
        folded = [n for n in model.graph if n.domain == dialect.DOMAIN and n.op_type == dialect.ADAROUND_QUANTIZER
                  and dialect.quantizer_params(n).q_folded and dialect.quantizer_params(n).rounding != dialect.ADAROUND]
        for node in folded:
            logger.warning("adaround: %s holds stored codes without a float weight; left at its rounding "
                           "(insert-quantizers{float-model=...} restores float weights)", node_label(node))
        if not self._trainable(model):
            if not folded and any(n.domain == dialect.DOMAIN and n.op_type == dialect.ADAROUND_QUANTIZER
                                  for n in model.graph):
                logger.warning("adaround: every AdaRound quantizer already holds learned codes; nothing to do")
            return onnx_ir.passes.PassResult(model, False)
        torch = configured_torch()
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        o = self.options
        calib = load_calibration(o.calib, model, max_samples=o.max_samples or None,
                                 batch_axes=parse_batch_axes(o.calib_batch_axis))
        infer_shapes(model, who="adaround")
        partition = BlockPartition.build(model, granularity=o.granularity, min_ops=o.min_ops, max_ops=o.max_ops)
        self.bump("num-blocks", len(partition))
        runner = _Runner(model, partition, calib, o, self)
        runner.run()
        dialect.ensure_functions(model)
        return onnx_ir.passes.PassResult(model, True)


class _Cache:
    """Activations of live values, in memory up to a budget, then in memory-mapped files."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.arrays: dict[onnx_ir.Value, np.ndarray] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._count = 0

    def put(self, value: onnx_ir.Value, array: np.ndarray) -> None:
        if self.used + array.nbytes > self.budget and array.nbytes > 0:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="qdq-adaround-")
            self._count += 1
            mm = np.lib.format.open_memmap(f"{self._tmp.name}/{self._count}.npy", mode="w+", dtype=array.dtype,
                                           shape=array.shape)
            mm[...] = array
            self.arrays[value] = mm
            return
        self.arrays[value] = array
        self.used += array.nbytes

    def get(self, value: onnx_ir.Value) -> np.ndarray:
        return self.arrays[value]

    def drop(self, value: onnx_ir.Value) -> None:
        array = self.arrays.pop(value, None)
        if array is not None and not isinstance(array, np.memmap):
            self.used -= array.nbytes

    def close(self) -> None:
        self.arrays.clear()
        if self._tmp is not None:
            self._tmp.cleanup()


class _Runner:
    """Walks the blocks in order, keeping the float and quantized activations they need."""

    def __init__(self, model: onnx_ir.Model, partition: BlockPartition, calib: CalibrationData,
                 options: AdaroundOptions, pass_: AdaroundPass) -> None:
        self.torch = configured_torch()
        self.model = model
        self.partition = partition
        self.o = options
        self.pass_ = pass_
        self.device = self.torch.device(options.device)
        budget = options.cache_mb * 1024 * 1024 // 2
        self.quant = _Cache(budget)
        self.float = _Cache(budget)
        self.remaining: dict[onnx_ir.Value, int] = {}
        for block in partition:
            for value in block.inputs:
                self.remaining[value] = self.remaining.get(value, 0) + 1
        inputs = calib.inputs
        self.calib = calib
        by_name = {v.name: v for v in model.graph.inputs}
        #: where the model holds each cached value's batch (the cache holds samples on axis 0; None:
        #: one value shared by the samples); blocks with another layout than axis 0 everywhere
        self.axes: dict[onnx_ir.Value, int | None] = {by_name[k]: a for k, a in calib.batch_axes.items()}
        self.layout_blocks: set[int] = set()
        for name, array in inputs.items():
            value = by_name[name]
            array = np.ascontiguousarray(array)
            self.quant.put(value, array)
            self.float.put(value, array)
        self.chunk = max(64, options.batch_size)
        self.max_eval_chunk = max(256, options.batch_size)
        self.eval_chunk = self.max_eval_chunk  # no_grad full-data passes; sized per block (_size_chunks)

    def run(self) -> None:
        from qdq_passes.quantizers import materialize

        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            tqdm = None
        blocks = list(self.partition)
        fallback = self._plan_fallbacks(blocks)
        i = 0
        try:
            while i < len(blocks):
                block = blocks[i]
                try:
                    self._block(block, fallback, tqdm)
                except NoBatchAxis as exc:
                    if i + 1 == len(blocks):
                        self._skip(block, self._ops(block), time.perf_counter(), str(exc), run=False)
                    else:  # the value is cut where it has no batch axis ([T * B, C]): one block with the next
                        logger.info("adaround: block %d merged with block %d (%s)", block.index, blocks[i + 1].index,
                                    exc)
                        blocks[i:i + 2] = [self._merge(block, blocks[i + 1], fallback)]
                        continue
                i += 1
        finally:  # spilled caches go on failure and on a signal too
            self.quant.close()
            self.float.close()

    @staticmethod
    def _ops(block: Block) -> str:
        return ",".join(n.op_type for n in block.weighted) or "-"

    def _block(self, block: Block, fallback: dict[int, str], tqdm) -> None:  # noqa: ANN001
        """Train, skip or evaluate one block; raises :class:`NoBatchAxis` (nothing done) when an
        output has no batch axis."""
        from qdq_passes.quantizers import materialize

        start = time.perf_counter()
        ops = self._ops(block)
        ada_nodes = [n for n in block.nodes if n.domain == dialect.DOMAIN and n.op_type == dialect.ADAROUND_QUANTIZER
                     and not dialect.quantizer_params(n).q_folded]
        missing = [v for v in block.inputs if v not in self.quant.arrays]
        if missing:
            self._skip(block, ops, start, f"its input {missing[0].name!r} could not be evaluated", run=False)
            return
        if block.index in fallback:
            self._skip(block, ops, start, fallback[block.index], warn=False)  # warned up front
            return
        qmod = self._module(block, materialize)
        fmod = self._module(block, self._float_quantizer)
        saved_stats, saved_reports = dict(self.pass_.stats), len(self.pass_.reports)
        try:
            self._batch_layout(block, qmod, fmod)
            self._process(block, qmod, fmod, ada_nodes, ops, start, tqdm)
        except NoBatchAxis:
            raise
        except (RuntimeError, ValueError) as exc:
            self.pass_.stats.update(saved_stats)
            del self.pass_.reports[saved_reports:]
            # torch could build the block but not run it on these data (e.g. a shape tensor
            # without a batch axis crossing blocks): keep nearest rounding, use onnxruntime.
            for node in ada_nodes:
                materialize(node, refresh=True)
            for value in block.outputs:
                self.quant.drop(value)
                self.float.drop(value)
            self._skip(block, ops, start, f"torch could not run it: {_first_line(exc)}")
            return
        self._progress(self.pass_.reports[-1])
        self._release(block)

    def _merge(self, first: Block, second: Block, fallback: dict[int, str]) -> Block:
        """``first`` and ``second`` as one block; the reader counts and the fallback plan follow."""
        merged = merge_blocks(first, second, lambda v: self.remaining.get(v, 0) > (1 if v in second.inputs else 0))
        for v in second.inputs:  # second's reads are now the merged block's, counted once
            if v in first.outputs or v in first.inputs:
                self.remaining[v] -= 1
        cause = fallback.pop(first.index, None) or fallback.pop(second.index, None)
        fallback.pop(second.index, None)
        if cause is not None:
            fallback[merged.index] = cause
        return merged

    def _module(self, block: Block, quantizer_module):  # noqa: ANN001, ANN202
        from qdq_passes.ir.to_torch import block_to_module

        return block_to_module(block.nodes, block.inputs, block.outputs, opset_imports=self.model.opset_imports,
                               quantizer_module=quantizer_module).to(self.device)

    def _batch_layout(self, block: Block, qmod, fmod) -> None:  # noqa: ANN001
        """Find where the block's outputs hold the batch (running the float block on one sample and
        on two) and, unless every input and output holds it on axis 0, have both modules take and
        give samples on axis 0 (``BlockModule.set_batch_layout``)."""
        torch = self.torch
        in_axes = [self.axes.get(v, 0) for v in block.inputs]
        feeds = [self.float.get(v) for v in block.inputs]
        n = next((f.shape[0] for f, a in zip(feeds, in_axes) if a is not None), 0)
        out_axes: list[int | None] = [0] * len(block.outputs)
        if n >= 2 and block.outputs:
            with torch.no_grad():
                runs = []
                for stop in (1, 2):
                    out = fmod(*[self._tensor(model_layout(f, 0, stop, a)) for f, a in zip(feeds, in_axes)])
                    runs.append(out if isinstance(out, tuple) else (out,))
            out_axes = [batch_axis(a.shape, b.shape, v.name) for a, b, v in zip(*runs, block.outputs)]
        self.axes.update(zip(block.outputs, out_axes))
        if any(a != 0 for a in [*in_axes, *out_axes]):
            self.layout_blocks.add(block.index)
            qmod.set_batch_layout(in_axes, out_axes)
            fmod.set_batch_layout(in_axes, out_axes)

    def _plan_fallbacks(self, blocks: list[Block]) -> dict[int, str]:
        """Before any training: the blocks torch cannot convert, each with its cause (warned, once)."""
        from qdq_passes.ir.to_torch import UnsupportedOp
        from qdq_passes.quantizers import materialize

        causes: dict[int, str] = {}
        for block in blocks:
            try:
                self._module(block, materialize)
            except UnsupportedOp as exc:
                causes[block.index] = f"no torch converter: {exc}"
        if causes:
            listed = "; ".join(f"block {i} ({c.removeprefix('no torch converter: ')})" for i, c in causes.items())
            logger.warning("adaround: %d of %d blocks run in onnxruntime, their weights keep nearest rounding: %s",
                           len(causes), len(blocks), listed)
        return causes

    def _skip(self, block: Block, ops: str, start: float, cause: str, run: bool = True, warn: bool = True) -> None:
        """A block not trained: its weights keep nearest rounding, its outputs come from
        onnxruntime (``run``); reported with its cause, never the end of the run."""
        path = "onnxruntime" if run else "none"
        if run:
            try:
                self._run_with_onnxruntime(block)
            except NoBatchAxis:
                raise
            except Exception as exc:  # noqa: BLE001 - reported as the cause, the run goes on
                path = "none"
                cause = f"{cause}; onnxruntime could not evaluate it either: {_first_line(exc)}"
        self.pass_.bump("num-blocks-skipped")
        report = BlockReport(block.index, ops, 0, math.nan, math.nan, time.perf_counter() - start, "skipped",
                             path, cause=cause)
        if warn or path == "none":
            logger.warning("adaround: block %d skipped (%s); its weights keep nearest rounding", block.index, cause)
        self.pass_.reports.append(report)
        self._progress(report)
        self._release(block)

    def _progress(self, report: BlockReport) -> None:
        """One line per block on stderr when nobody watches a terminal (tqdm shows bars otherwise)."""
        if not sys.stderr.isatty():
            print(f"adaround: {report.index + 1}/{len(self.partition)} {report.line()}", file=sys.stderr, flush=True)

    def _process(self, block: Block, qmod, fmod, ada_nodes: list[onnx_ir.Node], ops: str, start: float,  # noqa: ANN001
                 tqdm) -> None:  # noqa: ANN001
        """Train one block's AdaRound weights, cache its outputs on both paths, write its codes back."""
        from qdq_passes.quantizers import materialize

        quantizers = [(n, materialize(n)) for n in ada_nodes]
        quantizers = [(n, q) for n, q in quantizers if q.alpha is not None]
        f_inputs = [self._tensor(self.float.get(v)) for v in block.inputs]
        q_inputs = [self._tensor(self.quant.get(v)) for v in block.inputs]
        self._size_chunks(fmod, f_inputs)
        with self.torch.no_grad():
            f_out = self._evaluate(fmod, f_inputs, self.eval_chunk)
        transforms = [self._loss_relu(v) for v in block.outputs]
        if quantizers and self.o.iters > 0:
            train_inputs = q_inputs if self.o.input == "quant" else f_inputs
            report = self._train(block, qmod, quantizers, train_inputs, q_inputs, f_out, transforms, ops, tqdm)
            report.seconds = time.perf_counter() - start
            self.pass_.reports.append(report)
        else:
            self.pass_.reports.append(BlockReport(block.index, ops, 0, math.nan, math.nan, 0.0, "no-weights"))
        with self.torch.no_grad():
            q_out = self._evaluate(qmod, q_inputs, self.eval_chunk)
        for value, f, q in zip(block.outputs, f_out, q_out):
            self.float.put(value, f.cpu().numpy())
            self.quant.put(value, q.cpu().numpy())
        for node in ada_nodes:
            module = materialize(node)
            if module.alpha is not None:
                before = _nearest_codes(node, module)
                if dialect_write_back(node):
                    self.pass_.bump("num-weights-rounded")
                    after = constant_array(node.inputs[0])
                    self.pass_.bump("num-codes-changed", int(np.count_nonzero(after.astype(np.int64) != before)))

    # -- pieces -------------------------------------------------------------------------------

    def _size_chunks(self, module, inputs: Sequence) -> None:  # noqa: ANN001
        """Size the block's full-data evaluation chunks so its intermediates stay near
        ``EVAL_BUDGET_MB`` (measured on one sample; a block holding a large one-hot, say, gets
        small chunks instead of gigabytes of temporaries)."""
        self.eval_chunk = self.max_eval_chunk
        if not inputs or any(t.dim() == 0 for t in inputs):
            return
        try:
            per_sample = module.peak_bytes(*[t[:1] for t in inputs])
        except RuntimeError:  # e.g. a shape tensor without a batch axis: keep the default
            return
        budget = EVAL_BUDGET_MB << 20
        self.eval_chunk = max(1, min(self.max_eval_chunk, budget // max(1, per_sample)))

    def _tensor(self, array: np.ndarray):  # noqa: ANN202
        return self.torch.from_numpy(np.asarray(array)).to(self.device)

    def _evaluate(self, module, inputs: Sequence, chunk: int | None = None) -> list:  # noqa: ANN001
        """Run ``module`` over all samples in chunks; returns one tensor per block output."""
        chunk = chunk or self.chunk
        n = inputs[0].shape[0] if inputs else 1
        parts: list[list] = []
        for start in range(0, n, chunk):
            out = module(*[t[start:start + chunk] for t in inputs])
            outs = out if isinstance(out, tuple) else (out,)
            if not parts:
                parts = [[] for _ in outs]
            for p, t in zip(parts, outs):
                p.append(t.detach())
        return [self.torch.cat(p) for p in parts]

    def _float_quantizer(self, node: onnx_ir.Node):  # noqa: ANN202
        """The float meaning of a quantizer (``_float_clamp``): a clamp, identity, or dequantize."""
        from qdq_passes.quantizers import materialize

        nn = self.torch.nn
        params = dialect.quantizer_params(node)
        if params.q_folded:
            return materialize(node)  # stored codes without a float weight (biases): their dequantized value
        clamp = float_clamp(node)
        if clamp is None:
            return nn.Identity()
        return nn.ReLU() if clamp == math.inf else nn.Hardtanh(0.0, clamp)

    def _loss_relu(self, value: onnx_ir.Value) -> bool:
        """Whether the output is only read by zero-based activation quantizers (compare after Relu)."""
        uses = [use.node for use in value.uses()]
        return bool(uses) and not value.is_graph_output() and all(
            dialect.is_quantizer(n) and zero_based(n) for n in uses)

    def _train(self, block: Block, qmod, quantizers: list, train_inputs: list, q_inputs: list,  # noqa: ANN001
               targets: list, transforms: list[bool], ops: str, tqdm) -> BlockReport:  # noqa: ANN001
        torch = self.torch
        o = self.o
        check_inputs, check_targets = q_inputs, targets
        n_all = train_inputs[0].shape[0] if train_inputs and train_inputs[0].dim() else 0
        n_check = int(round(o.holdout * n_all))
        batched = all(t.dim() and t.shape[0] == n_all for t in [*q_inputs, *train_inputs, *targets])
        if 0 < n_check < n_all and batched:
            # Samples held out of training decide between AdaRound and nearest (same ones per block).
            order = torch.randperm(n_all, generator=torch.Generator().manual_seed(o.seed)).to(self.device)
            check, train = order[:n_check].sort().values, order[n_check:].sort().values
            check_inputs = [t.index_select(0, check) for t in q_inputs]
            check_targets = [t.index_select(0, check) for t in targets]
            train_inputs = [t.index_select(0, train) for t in train_inputs]
            targets = [t.index_select(0, train) for t in targets]

        def full_mse(per_sample: bool = False):  # noqa: ANN202
            """The held-out reconstruction error; with ``per_sample``, also each sample's share."""
            with torch.no_grad():
                outs = self._evaluate(qmod, check_inputs, self.eval_chunk)
                mse = float(_recon(torch, outs, check_targets, transforms))
                return (mse, _recon_per_sample(torch, outs, check_targets, transforms)) if per_sample else mse

        for _, q in quantizers:
            q.use_soft_rounding = False
        mse_nearest = full_mse()
        initial = [q.alpha.detach().clone() for _, q in quantizers]
        params = [q.alpha for _, q in quantizers]
        layout = block.index in self.layout_blocks
        split = _Split(block, quantizers, self.model.opset_imports, self.device, cut=not layout)
        frontier = split.frontier(train_inputs, self.eval_chunk)
        if frontier is None:  # a value crossing the cut has no batch axis: run the whole block per step
            split = _Split(block, quantizers, self.model.opset_imports, self.device, cut=False)
            frontier = split.frontier(train_inputs, self.eval_chunk)
        if layout:  # the batch elsewhere than on axis 0: the whole block per step, no fast path
            split.module.set_batch_layout([self.axes.get(v, 0) for v in block.inputs],
                                          [self.axes[block.outputs[i]] for i in split.trained_outputs])
        kept = split.trained_outputs
        tgts = [targets[i] for i in kept]
        relus = [transforms[i] for i in kept]
        # The targets never change: their Relu (when the loss compares after one) is taken once.
        tgts = [torch.nn.functional.relu(t) if r else t for t, r in zip(tgts, relus)]
        weights = [_SoftWeight(node, q, self.device) for node, q in quantizers]
        gram = None if layout else self._gram(block, split, frontier, weights, tgts, relus)
        gram_steps = o.iters if gram is not None else 0
        if gram is None and relus == [True] and o.relu_refine < 1 and not layout:
            # Compared after a Relu: the Gram form of the loss before it for the first steps.
            gram = self._gram(block, split, frontier, weights, [targets[i] for i in kept], [False],
                              surrogate=True)
            gram_steps = round((1 - o.relu_refine) * o.iters) if gram is not None else 0
        per_sample, constants = frontier
        n = per_sample[0].shape[0] if per_sample else train_inputs[0].shape[0]
        batch = min(o.batch_size, n)
        conv = None if gram_steps == o.iters or layout else self._conv_fast(split, frontier, weights, tgts, relus, batch)
        warm = int(o.warm_start * o.iters)
        beta_start, beta_end = o.beta

        def beta_at(it: int) -> float | None:
            """The regulariser's exponent at step ``it`` (cosine-annealed after the warm start; None before)."""
            if it < warm or o.reg <= 0:
                return None
            return beta_end + 0.5 * (beta_start - beta_end) * (1 + math.cos((it - warm) / max(1, o.iters - warm) * math.pi))

        rest = "conv" if conv is not None else "direct"
        path = "gram" if gram_steps == o.iters else f"gram+{rest}" if gram_steps else rest

        def optimize(gram, desc: str) -> None:  # noqa: ANN001
            """``o.iters`` Adam steps from the initial ``alpha`` (fresh optimizer, same batches)."""
            optimizer = _adam(torch, params, o.lr, self.device)
            generator = torch.Generator().manual_seed(o.seed * 1_000_003 + block.index)
            steps = range(o.iters)
            bar = tqdm(steps, desc=desc, leave=False, disable=None) if tqdm else steps
            show = tqdm is not None and not getattr(bar, "disable", True)
            for it in bar:
                beta = beta_at(it)
                shown = show and it % 50 == 0
                if it < gram_steps or conv is not None:
                    # One weight, a hand-written gradient: no autograd graph per step.
                    w = weights[0]
                    soft, saved = _soft_forward(params[0], w, beta)
                    if it < gram_steps:
                        grad_m, loss = gram.grad(gram.layout.weight_to_matrix(soft - w.weight), with_loss=shown)
                        grad_w = gram.layout.matrix_to_weight(grad_m)
                    else:
                        idx = torch.randint(n, (batch,), generator=generator).to(self.device)
                        loss, grad_w = conv.loss_and_grad(soft, idx)
                    optimizer.zero_grad(set_to_none=True)
                    # the fused Adam kernel walks grad and param in memory order: same (contiguous) layout
                    params[0].grad = _soft_backward(saved, w, grad_w.contiguous(), beta, o.reg).contiguous()
                    if shown and beta is not None:
                        loss = float(loss) + float(_reg_value(saved, beta, o.reg))
                else:
                    # soft weights and the regulariser from alpha in one autograd node per weight
                    pairs = [w.soft_and_regularizer(beta, o.reg) for w in weights]
                    softs = [p[0] for p in pairs]
                    idx = torch.randint(n, (batch,), generator=generator).to(self.device)
                    out = split.module(*[t.index_select(0, idx) for t in per_sample], *constants, *softs)
                    outs = out if isinstance(out, tuple) else (out,)
                    loss = _recon(torch, outs, [t.index_select(0, idx) for t in tgts], relus, targets_done=True)
                    if beta is not None:
                        for _, r in pairs:
                            loss = loss + r
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                optimizer.step()
                if shown:
                    bar.set_postfix(loss=f"{float(loss):.4g}")

        def restore(alphas: list) -> None:  # noqa: ANN001
            with torch.no_grad():
                for p, alpha in zip(params, alphas):
                    p.copy_(alpha)

        polished = 0

        def train(g, desc: str) -> tuple:  # noqa: ANN001
            """Optimise from the initial ``alpha`` on ``g`` (Gram blocks); returns the held-out error
            and its per-sample shares. A pure-Gram block's hard rounding is then polished, kept
            where the held-out error drops by more than its standard error."""
            nonlocal polished
            restore(initial)
            optimize(g, desc)
            for _, q in quantizers:
                q.use_soft_rounding = False
            result = full_mse(per_sample=True)
            if o.polish and gram_steps == o.iters:
                before = [p.detach().clone() for p in params]
                flips = self._polish(g, weights[0], params[0])
                if flips:
                    after = full_mse(per_sample=True)
                    if _clearly_lower(after[1], result[1]):
                        result = after
                        polished += flips
                    else:
                        restore(before)
            return result

        mse_ada, errors = train(gram, f"adaround block {block.index} [{ops}, {path}]")
        shrink = 0.0
        if (o.shrink and gram_steps == o.iters and check_inputs is not q_inputs
                and (gram.rows < gram.fan_in or mse_ada > mse_nearest * (1 + 1e-6))):
            # Few samples for the fan-in (H singular), or AdaRound lost on the held-out samples:
            # retrain on the shrunk loss; a shrunk rounding replaces the best so far only where it
            # lowers the held-out error by more than the standard error of the difference.
            best, best_polished = [p.detach().clone() for p in params], polished
            for kappa in o.shrink:
                polished = 0
                mse, per = train(gram.shrunk(kappa), f"adaround block {block.index} [{ops}, gram shrink {kappa:g}]")
                if _clearly_lower(per, errors):
                    mse_ada, errors, shrink = mse, per, kappa
                    best, best_polished = [p.detach().clone() for p in params], polished
            restore(best)
            polished = best_polished
            self.pass_.bump("num-blocks-shrunk")
        status = "trained"
        if mse_ada > mse_nearest:
            restore(initial)
            status = "reverted"
            self.pass_.bump("num-blocks-reverted")
        else:
            self.pass_.bump("num-blocks-trained")
        if gram_steps:
            self.pass_.bump("num-blocks-gram")
        if status == "reverted":
            shrink, polished = 0.0, 0
        self.pass_.bump("num-weights-polished", polished)
        return BlockReport(block.index, ops, len(quantizers), mse_nearest, mse_ada, 0.0, status, path, shrink, polished)

    def _polish(self, gram, weight: _SoftWeight, alpha) -> int:  # noqa: ANN001
        """Polish ``alpha``'s hard rounding on ``gram`` (see :func:`adaround_gram.polish`); returns how
        many codes changed."""
        from qdq_passes.adaround_gram import polish

        torch = self.torch
        layout = gram.layout
        with torch.no_grad():
            up = alpha >= 0
            hard = weight._dequantize(up)
            dw = layout.weight_to_matrix(hard - weight.weight)
            flip = layout.weight_to_matrix(weight._dequantize(~up) - hard)
            mask, _ = polish(gram, dw, flip, self.o.polish)
            flips = int(mask.sum())
            if flips:
                new_up = up ^ layout.matrix_to_weight(mask)
                size = alpha.abs().clamp_min(1e-3)
                alpha.copy_(torch.where(new_up, size, -size))
        return flips

    def _gram(self, block: Block, split: _Split, frontier: tuple, weights: list, targets: list,  # noqa: ANN001
              relus: list[bool], surrogate: bool = False):  # noqa: ANN202
        """The block's :class:`GramLoss` where the Gram form is exact (and, under ``auto``, cheaper, or
        shrinkable: fewer rows than inputs, ``shrink`` set, not the ``relu-refine`` surrogate); else None."""
        from qdq_passes.adaround_gram import GramLoss, gram_layout

        torch = self.torch
        if self.o.gram == "off" or len(weights) != 1 or len(split.trained_nodes) != 1 or relus != [False]:
            return None
        node = split.trained_nodes[0]
        weight = weights[0]
        per_sample, constants = frontier
        if (len(node.inputs) < 2 or node.inputs[1] is not weight.node.outputs[0]
                or node.inputs[0] not in split.per_sample or split.outputs != [node.outputs[0]]
                or any(v is weight.node.outputs[0] for v in node.inputs[2:])):
            return None
        layout = gram_layout(node, tuple(weight.weight.shape))
        if layout is None:
            return None
        x_all = per_sample[split.per_sample.index(node.inputs[0])]
        target = targets[0]
        chunk = self.eval_chunk
        n = x_all.shape[0]
        rows_per_sample = layout.features(x_all[:1]).shape[0]
        out_ch, k = layout.weight_to_matrix(weight.weight).shape
        few_rows = n * rows_per_sample < k and bool(self.o.shrink) and not surrogate
        if self.o.gram == "auto" and k > 3 * min(self.o.batch_size, n) * rows_per_sample and not few_rows:
            # one Gram step (O K^2) would cost more than a direct step (3 B P O K); with fewer rows
            # than inputs the Gram path is kept all the same: its loss can be shrunk (``shrink``)
            return None
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
                           block.index, value, direct)
            return None
        return gram

    def _conv_fast(self, split: _Split, frontier: tuple, weights: list, targets: list, relus: list[bool],  # noqa: ANN001
                   batch: int):  # noqa: ANN202
        """The block's :class:`ConvReluLoss` where the conv fast path is exact; else None."""
        from qdq_passes.adaround_conv import ConvReluLoss, conv_geometry

        if (not CONV_FAST or len(weights) != 1 or len(split.trained_nodes) != 1 or relus != [True]
                or not split.cut):
            return None
        node = split.trained_nodes[0]
        weight = weights[0]
        per_sample, constants = frontier
        w_value = weight.node.outputs[0]
        if (len(node.inputs) < 2 or node.inputs[1] is not w_value or node.inputs[0] is w_value
                or node.inputs[0] not in split.per_sample or split.outputs != [node.outputs[0]]):
            return None
        geometry = conv_geometry(node, tuple(weight.weight.shape))
        if geometry is None:
            return None
        x = per_sample[split.per_sample.index(node.inputs[0])]
        bias = None
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            b = node.inputs[2]
            if b is w_value or b not in split.constants:
                return None
            bias = constants[split.constants.index(b)]
            if bias.dim() != 1:
                return None
        target = targets[0]
        if (x.dim() != 4 or target.dim() != 4 or not x.is_floating_point() or x.dtype != weight.weight.dtype
                or target.dtype != x.dtype):
            return None
        extra = ConvReluLoss.bytes_needed(x, target, geometry)
        if extra > self.o.cache_mb * 1024 * 1024 // 2:
            return None
        return ConvReluLoss(x, tuple(weight.weight.shape), bias, target, geometry, batch)

    def _release(self, block: Block) -> None:
        for value in block.inputs:
            self.remaining[value] -= 1
            if self.remaining[value] == 0:
                self.quant.drop(value)
                self.float.drop(value)

    def _run_with_onnxruntime(self, block: Block) -> None:
        """Both paths' outputs of a block torch cannot run, by onnxruntime: the block cut out as a
        model of its own, or, where that fails (a value crossing the cut without a batch axis),
        the model's prefix up to the block from the calibration inputs."""
        in_axes = [self.axes.get(v, 0) for v in block.inputs]
        try:
            results = [self._block_session(block, path).run([cache.get(v) for v in block.inputs], in_axes)
                       for cache, path in ((self.quant, False), (self.float, True))]
        except NoBatchAxis:
            raise
        except Exception as exc:  # noqa: BLE001 - the prefix is the last resort
            logger.info("adaround: block %d: onnxruntime on the block alone failed (%s); running the model's prefix",
                        block.index, _first_line(exc))
            graph_inputs = [v for v in self.model.graph.inputs if v.name in self.calib.inputs]
            feeds = [self.calib.inputs[v.name] for v in graph_inputs]
            axes = [self.calib.batch_axes.get(v.name, 0) for v in graph_inputs]
            results = []
            for path in (False, True):
                proto = prefix_model(self.model, block.outputs, float_path=path)
                results.append(BlockSession(proto, graph_inputs, block.outputs).run(feeds, axes))
        for cache, (outs, out_axes) in zip((self.quant, self.float), results):
            self.axes.update(zip(block.outputs, out_axes))
            for value, out in zip(block.outputs, outs):
                cache.put(value, out)

    def _block_session(self, block: Block, float_path: bool) -> BlockSession:
        cache = self.float if float_path else self.quant
        dtypes = {v: onnx_ir.DataType.from_numpy(cache.get(v).dtype) for v in block.inputs}
        proto = block_model(self.model, block.nodes, block.inputs, block.outputs, float_path=float_path,
                            input_dtypes=dtypes)
        return BlockSession(proto, block.inputs, block.outputs)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when empty), at most 200 characters."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _differences(torch, outs: Sequence, tgts: Sequence, transforms: Sequence[bool], targets_done: bool = False):  # noqa: ANN001, ANN202
    """Per output, ``out - target`` in float32, after a Relu where its transform is True
    (``targets_done``: the targets' Relu is already applied)."""
    relu = torch.nn.functional.relu
    for out, tgt, use_relu in zip(outs, tgts, transforms):
        if use_relu:
            out = relu(out)
            if not targets_done:
                tgt = relu(tgt)
        yield (out - tgt).float()


def _recon(torch, outs: Sequence, tgts: Sequence, transforms: Sequence[bool], targets_done: bool = False):  # noqa: ANN001, ANN202
    """The reconstruction loss: per output, squared error summed over axis 1, averaged over the rest
    (see :func:`_differences` for the Relu)."""
    total = 0.0
    for diff in _differences(torch, outs, tgts, transforms, targets_done):
        total = total + (diff.pow(2).sum(1).mean() if diff.dim() > 1 else diff.pow(2).mean())
    return total


def _recon_per_sample(torch, outs: Sequence, tgts: Sequence, transforms: Sequence[bool]):  # noqa: ANN001, ANN202
    """Each sample's share of :func:`_recon` (float64, ``[N]``): its mean is ``_recon``'s value."""
    total = None
    for diff in _differences(torch, outs, tgts, transforms):
        err = diff.double().pow(2)
        err = err.sum(1).flatten(1).mean(1) if err.dim() > 2 else err.sum(1) if err.dim() == 2 else err
        total = err if total is None else total + err
    return total


def _clearly_lower(new, old) -> bool:  # noqa: ANN001
    """Whether per-sample errors ``new`` are lower than ``old`` (same samples) by more than one
    standard error of the mean difference (at least two samples)."""
    if new is None or old is None or new.numel() < 2 or new.shape != old.shape:
        return False
    gain = old - new
    return float(gain.mean()) > float(gain.std()) / math.sqrt(gain.numel())


def _regularizer(h, beta: float):  # noqa: ANN001, ANN202
    """AdaRound's rounding regulariser ``sum(1 - |2h - 1| ** beta)`` (as the quantizer's, on a given h)."""
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


class _FusedAdam:
    """``torch.optim.Adam(params, lr, fused=True)`` (default betas, eps, no weight decay) as one call
    of the same fused kernel per step, without the optimizer's per-step Python bookkeeping (about
    0.3 ms a step on CPU: a sizeable part of a small conv block's step). Same state, same updates,
    bit for bit (``test_fused_adam_matches_torch_adam``)."""

    def __init__(self, torch, params: list, lr: float) -> None:  # noqa: ANN001
        self._torch = torch
        self.params = list(params)
        self.lr = lr
        with torch.no_grad():
            self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
            self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
            self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: ARG002 - always to None
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        torch = self._torch
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        steps = [self.steps[i] for i in live]
        with torch.no_grad():
            torch._foreach_add_(steps, 1)
            torch._fused_adam_([self.params[i] for i in live], [self.params[i].grad for i in live],
                               [self.exp_avgs[i] for i in live], [self.exp_avg_sqs[i] for i in live], [], steps,
                               amsgrad=False, lr=self.lr, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
                               maximize=False, grad_scale=None, found_inf=None)


def _adam(torch, params: list, lr: float, device):  # noqa: ANN001, ANN202
    """Adam on ``params``: :class:`_FusedAdam` where the fused kernel applies, else torch's Adam."""
    if (hasattr(torch, "_fused_adam_") and device.type in ("cpu", "cuda") and params
            and all(p.dtype == torch.float32 and p.device == params[0].device for p in params)):
        return _FusedAdam(torch, params, lr)
    return torch.optim.Adam(params, lr=lr, **_adam_kwargs(device))


def _adam_kwargs(device) -> dict:  # noqa: ANN001
    """The fused Adam kernel where torch has one for the device (one kernel per step instead of ~10)."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


class _SoftWeight:
    """An AdaRound quantizer's output as a function of ``h(alpha)``, with ``floor(W / s)`` taken once.

    ``soft(h)`` and ``hard()`` are the quantizer's own soft and hard forwards on its float weight,
    computed by the same operations in the same order (so bit-identical), without redoing the
    division, the floor and the scale/zero-point broadcast every step."""

    def __init__(self, node: onnx_ir.Node, quantizer, device) -> None:  # noqa: ANN001
        torch = configured_torch()
        self._torch = torch
        self.node = node
        self.quantizer = quantizer
        self.weight = torch.from_numpy(np.array(constant_array(node.inputs[0]), dtype=np.float32)).to(device)
        with torch.no_grad():
            self.scale, self.zero_point = quantizer.tensor_sync(self.weight)
            self.floor = torch.floor(self.weight.to(self.scale.dtype) / self.scale)
            self.lo, self.hi = quantizer.min_q.to(self.scale), quantizer.max_q.to(self.scale)

    def _dequantize(self, offset):  # noqa: ANN001, ANN202
        codes = self._torch.clamp(self.floor + offset.to(self.floor.dtype) + self.zero_point, self.lo, self.hi)
        return ((codes - self.zero_point) * self.scale).to(self.weight.dtype)

    def soft(self, h):  # noqa: ANN001, ANN202
        """The soft-rounded weight for ``h = quantizer.h()`` (differentiable)."""
        return self._dequantize(h)

    def hard(self):  # noqa: ANN202
        """The hard-rounded weight (``alpha >= 0`` rounds up)."""
        return self._dequantize(self.quantizer.alpha.detach() >= 0)

    def soft_and_regularizer(self, beta: float | None, reg: float):  # noqa: ANN201
        """``(soft(h), reg * sum(1 - |2h - 1| ** beta))`` (None for the second when ``beta`` is None)
        from ``alpha`` in one autograd node (:class:`_SoftChain`): the same values as ``h()``,
        ``soft`` and ``_regularizer``, gradients up to rounding, a few kernels instead of ~25."""
        q = self.quantizer
        if beta is None:
            return _SoftChain.apply(q.alpha, self, None, reg)[0], None
        w, r = _SoftChain.apply(q.alpha, self, beta, reg)
        return w, r


class _SoftChain(configured_torch().autograd.Function):
    """``alpha -> (soft weight, reg * regulariser)`` of a :class:`_SoftWeight`, analytic backward.

    Forward: ``h = clamp(sigmoid(a) (ZETA - GAMMA) + GAMMA, 0, 1)``, ``codes = clamp(floor + h + zp,
    lo, hi)``, ``W = (codes - zp) s``, ``R = reg sum(1 - |2h - 1| ** beta)``. Backward (clamps pass
    the gradient on their closed range, as torch's do): ``dh = dW s [lo <= floor + h + zp <= hi]
    - dR reg beta |2h - 1| ** (beta - 1) sign(2h - 1) 2``, ``da = dh [0 <= pre <= 1] (ZETA - GAMMA)
    sigmoid(a) (1 - sigmoid(a))``."""

    @staticmethod
    def forward(ctx, alpha, sw: _SoftWeight, beta: float | None, reg: float):  # noqa: ANN001, ANN205
        weight, saved = _soft_forward(alpha, sw, beta)
        ctx.sw, ctx.beta, ctx.reg = sw, beta, reg
        ctx.save_for_backward(*saved)
        if beta is None:
            return weight, weight.new_zeros(())
        return weight, _reg_value(saved, beta, reg)

    @staticmethod
    def backward(ctx, grad_w, grad_r):  # noqa: ANN001, ANN205
        return _soft_backward(ctx.saved_tensors, ctx.sw, grad_w, ctx.beta, ctx.reg, grad_r), None, None, None


def _soft_forward(alpha, sw: _SoftWeight, beta: float | None):  # noqa: ANN001, ANN202
    """The soft weight of ``alpha`` and what its backward needs, ``(sig, pre, keep, t)`` (t: None
    without the regulariser)."""
    torch = sw._torch
    from qdq_passes.quantizers.base_qdq_quantizers import AdaroundConstants as c

    with torch.no_grad():
        sig = torch.sigmoid(alpha)
        pre = sig * (c.ZETA - c.GAMMA) + c.GAMMA
        h = torch.clamp(pre, 0.0, 1.0)
        codes = sw.floor + h.to(sw.floor.dtype) + sw.zero_point
        weight = ((torch.clamp(codes, sw.lo, sw.hi) - sw.zero_point) * sw.scale).to(sw.weight.dtype)
        keep = (codes >= sw.lo) & (codes <= sw.hi)
        t = None if beta is None else 2 * h - 1
    return weight, (sig, pre, keep, t)


def _reg_value(saved: tuple, beta: float, reg: float):  # noqa: ANN202
    """``reg * sum(1 - |2h - 1| ** beta)`` from :func:`_soft_forward`'s saved tensors."""
    t = saved[3]
    return reg * (1 - t.abs().pow(beta)).sum()


def _soft_backward(saved: tuple, sw: _SoftWeight, grad_w, beta: float | None, reg: float, grad_r=1.0):  # noqa: ANN001, ANN202
    """alpha's gradient from the soft weight's (``grad_w``) and the regulariser's (``grad_r``).

    The operations (and their order) of autograd's backward through h(), soft() and
    reg * _regularizer(), so the gradient is the same to the bit."""
    from qdq_passes.quantizers.base_qdq_quantizers import AdaroundConstants as c

    sig, pre, keep, t = saved
    dh = ((grad_w.to(sw.scale.dtype) * sw.scale) * keep).to(sig.dtype)
    if t is not None and beta is not None:
        g = -(grad_r * reg)  # mul by reg, then 1 - x
        g = g * (beta * t.abs().pow(beta - 1))  # pow backward
        g = g * t.sgn()  # abs backward
        dh = dh + g * 2  # 2 h - 1
    dpre = dh * ((pre >= 0) & (pre <= 1))
    return (dpre * (c.ZETA - c.GAMMA)) * (1 - sig) * sig


class _Split:
    """A block cut in two: what the trained rounding does not change, and what it does.

    The first part (the block's activation quantizers on its inputs, folded biases, nearest-rounded
    weights, ...) is evaluated once over all samples (``frontier``); ``module`` computes the block
    outputs that depend on the rounding from those values (``per_sample``, then ``constants``) and
    the AdaRound weights (one input per quantizer, in order), so a step runs only that part.
    Outputs that do not depend on the rounding are constant in the loss and left out of training.
    Should a value crossing the cut not be a float tensor with the batch as its first axis (say a
    ``Shape``), nothing is cut: the first part is then empty."""

    def __init__(self, block: Block, quantizers: list, opset_imports, device, cut: bool = True) -> None:  # noqa: ANN001
        from qdq_passes.ir.to_torch import block_to_module
        from qdq_passes.quantizers import materialize

        ada = {node for node, _ in quantizers}
        block_nodes = set(block.nodes)
        weights = [node.outputs[0] for node, _ in quantizers]
        dependent: set[onnx_ir.Value] = set(weights)
        trained: list[onnx_ir.Node] = []
        for node in block.nodes:
            if node not in ada and any(v is not None and v in dependent for v in node.inputs):
                trained.append(node)
                dependent.update(node.outputs)
        trained_set = set(trained)
        prefix = [n for n in block.nodes if n not in ada and n not in trained_set]
        # Shape computations the trained part reads are recomputed with it (a shape value has no
        # batch axis: it cannot be evaluated once over all samples and sliced per batch).
        memo: dict = {}
        wanted = [v for n in trained for v in n.inputs if v is not None]
        while wanted:
            producer = wanted.pop().producer()
            if producer is not None and producer not in trained_set and producer not in ada and is_shape_node(
                    producer, None, memo) and producer in block_nodes:
                trained_set.add(producer)
                wanted.extend(v for v in producer.inputs if v is not None)
        trained = [n for n in block.nodes if n in trained_set]
        sample_values = set(block.inputs)
        for node in prefix:
            if any(v is not None and v in sample_values for v in node.inputs):
                sample_values.update(node.outputs)
        made = {v for n in prefix for v in n.outputs} | set(block.inputs)
        frontier: list[onnx_ir.Value] = []
        for node in trained:
            for v in node.inputs:
                if v is not None and v not in dependent and v in made and v not in frontier:
                    frontier.append(v)
        self.trained_outputs = [i for i, v in enumerate(block.outputs) if v in dependent]
        self.outputs = [block.outputs[i] for i in self.trained_outputs]
        per_sample = [v for v in frontier if v in sample_values]
        constants = [v for v in frontier if v not in sample_values]
        self.cut = cut and bool(per_sample) and all(v.dtype is not None and v.dtype.is_floating_point()
                                                    for v in per_sample)
        if not self.cut:
            trained, per_sample, constants = [n for n in block.nodes if n not in ada], list(block.inputs), []
            self.trained_outputs = list(range(len(block.outputs)))
            self.outputs = list(block.outputs)
        self.trained_nodes = trained
        self.per_sample = per_sample
        self.constants = constants

        def build(nodes, inputs, outputs):  # noqa: ANN001, ANN202
            return block_to_module(nodes, inputs, outputs, opset_imports=opset_imports,
                                   quantizer_module=materialize).to(device)

        self.block_inputs = list(block.inputs)
        self.sample_module = build(_needed(prefix, per_sample), block.inputs, per_sample) if self.cut else None
        self.constant_module = build(_needed(prefix, constants), [], constants) if constants else None
        self.module = build(trained, [*per_sample, *constants, *weights], self.outputs)

    def frontier(self, inputs: list, chunk: int) -> tuple[list, list] | None:
        """The values crossing the cut: per-sample ones over all samples, and the constant ones.

        None when a per-sample value turns out to have no batch axis (cut again with ``cut=False``)."""
        torch = configured_torch()
        with torch.no_grad():
            constants = []
            if self.constant_module is not None:
                out = self.constant_module()
                constants = list(out) if isinstance(out, tuple) else [out]
            if self.sample_module is None:
                return list(inputs), constants
            n = inputs[0].shape[0]
            parts: list[list] = [[] for _ in self.per_sample]
            for start in range(0, n, chunk):
                out = self.sample_module(*[t[start:start + chunk] for t in inputs])
                outs = out if isinstance(out, tuple) else (out,)
                for p, t in zip(parts, outs):
                    if t.dim() == 0 or t.shape[0] != min(chunk, n - start):
                        return None
                    p.append(t)
            return [torch.cat(p) for p in parts], constants


def _needed(nodes: list[onnx_ir.Node], outputs: list[onnx_ir.Value]) -> list[onnx_ir.Node]:
    """The nodes of ``nodes`` (in order) that ``outputs`` depend on."""
    want = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(v in want for v in node.outputs):
            keep.append(node)
            want.update(v for v in node.inputs if v is not None)
    return keep[::-1]


def dialect_write_back(node: onnx_ir.Node) -> bool:
    """Write the trained codes of ``node`` into the IR (see ``quantizers.write_back``)."""
    from qdq_passes.quantizers import write_back

    return write_back(node)


def _nearest_codes(node: onnx_ir.Node, module) -> np.ndarray:  # noqa: ANN001
    """The nearest-rounding codes of an AdaRound quantizer's float weight."""
    spec = dialect.quantizer_spec(node)
    weight = constant_array(node.inputs[0])
    return spec.quantize(np.asarray(weight, dtype=np.float32)).astype(np.int64)
