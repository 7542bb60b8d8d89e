"""The block loop of ``adaround``: each block in order, its inputs on both paths, its result.

For each block of the partition: the quantized path's inputs come from the calibration inputs
through the blocks already rounded, the float path's through the same blocks in float
(:mod:`.float_path`); only values later blocks read are kept (:class:`.cache.ActivationCache`).
The block is trained (:class:`.training.BlockTrainer`), its outputs cached, its codes written back.
A block torch cannot convert or run keeps nearest rounding and has its outputs computed by
onnxruntime (:mod:`.onnxruntime_block`); a block whose output has no batch axis is merged with the
next. :meth:`Runner.run` returns one :class:`.report.BlockResult` per block; it never touches the pass.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir
import torch

from qdq_passes.adaround.batch_axes import NoBatchAxis, batch_axis, model_layout
from qdq_passes.adaround.cache import ActivationCache
from qdq_passes.adaround.float_path import compared_after_relu, float_quantizer
from qdq_passes.adaround.onnxruntime_block import BlockSession, block_model, prefix_model
from qdq_passes.adaround.pass_ import AdaroundOptions, Tuning
from qdq_passes.adaround.report import BlockReport, BlockResult, BlockStatus, RoundingPath
from qdq_passes.adaround.selection import hold_out
from qdq_passes.adaround.training import BlockJob, BlockTrainer, evaluate
from qdq_passes.calib import CalibrationData
from qdq_passes.ir import dialect
from qdq_passes.ir.blocks import Block, BlockPartition, merge_blocks
from qdq_passes.ir.qdq import constant_array
from qdq_passes.ir.to_torch import BlockModule, UnsupportedOp, block_to_module
from qdq_passes.quantizers import materialize, write_back

__all__ = ["Runner"]

logger = logging.getLogger(__name__)


class Runner:
    """Walks the blocks in order, keeping the float and quantized activations they need."""

    def __init__(self, model: onnx_ir.Model, partition: BlockPartition, calib: CalibrationData,
                 options: AdaroundOptions, tuning: Tuning) -> None:
        self.model = model
        self.partition = partition
        self.calib = calib
        self.o = options
        self.tuning = tuning
        self.device = torch.device(options.device)
        budget = options.cache_mb * 1024 * 1024 // 2
        self.quant = ActivationCache(budget)
        self.float = ActivationCache(budget)
        self.remaining: dict[onnx_ir.Value, int] = {}
        for block in partition:
            for value in block.inputs:
                self.remaining[value] = self.remaining.get(value, 0) + 1
        by_name = {v.name: v for v in model.graph.inputs}
        #: where the model holds each cached value's batch (the cache holds samples on axis 0; None:
        #: one value shared by the samples); blocks with another layout than axis 0 everywhere
        self.axes: dict[onnx_ir.Value, int | None] = {by_name[k]: a for k, a in calib.batch_axes.items()}
        self.layout_blocks: set[int] = set()
        for name, array in calib.inputs.items():
            array = np.ascontiguousarray(array)
            self.quant.put(by_name[name], array)
            self.float.put(by_name[name], array)
        self.max_eval_chunk = max(256, options.batch_size)
        self.eval_chunk = self.max_eval_chunk  # no_grad full-data passes; sized per block (_size_chunks)

    def run(self) -> list[BlockResult]:
        """Every block's result, in order (merged blocks count once)."""
        blocks = list(self.partition)
        fallback = self._plan_fallbacks(blocks)
        results: list[BlockResult] = []
        i = 0
        try:
            while i < len(blocks):
                block = blocks[i]
                try:
                    result = self._block(block, fallback)
                except NoBatchAxis as exc:
                    if i + 1 < len(blocks):  # the value is cut where it has no batch axis ([T * B, C])
                        logger.info("adaround: block %d merged with block %d (%s)", block.index,
                                    blocks[i + 1].index, exc)
                        blocks[i:i + 2] = [self._merge(block, blocks[i + 1], fallback)]
                        continue
                    result = self._skip(block, time.perf_counter(), str(exc), run=False)
                results.append(result)
                self._progress(result.report)
                self._release(block)
                i += 1
        finally:  # spilled caches go on failure and on a signal too
            self.quant.close()
            self.float.close()
        return results

    def _block(self, block: Block, fallback: dict[int, str]) -> BlockResult:
        """Train, skip or evaluate one block; raises :class:`NoBatchAxis` (nothing done) when an
        output has no batch axis."""
        start = time.perf_counter()
        missing = [v for v in block.inputs if v not in self.quant]
        if missing:
            return self._skip(block, start, f"its input {missing[0].name!r} could not be evaluated", run=False)
        if block.index in fallback:
            return self._skip(block, start, fallback[block.index], warn=False)  # warned up front
        ada_nodes = [n for n in block.nodes if dialect.is_adaround_quantizer(n) and not dialect.quantizer_params(n).q_folded]
        qmod = self._module(block, materialize)
        fmod = self._module(block, float_quantizer)
        try:
            self._batch_layout(block, qmod, fmod)
            return self._process(block, qmod, fmod, ada_nodes, start)
        except NoBatchAxis:
            raise
        except (RuntimeError, ValueError) as exc:
            # torch could build the block but not run it on these data (e.g. a shape tensor
            # without a batch axis crossing blocks): keep nearest rounding, use onnxruntime.
            for node in ada_nodes:
                materialize(node, refresh=True)
            for value in block.outputs:
                self.quant.drop(value)
                self.float.drop(value)
            return self._skip(block, start, f"torch could not run it: {_first_line(exc)}")

    def _process(self, block: Block, qmod: BlockModule, fmod: BlockModule, ada_nodes: list[onnx_ir.Node],
                 start: float) -> BlockResult:
        """Train one block's AdaRound weights, cache its outputs on both paths, write its codes back."""
        quantizers = [(n, materialize(n)) for n in ada_nodes]
        quantizers = [(n, q) for n, q in quantizers if q.alpha is not None]
        f_inputs = [self._tensor(self.float.get(v)) for v in block.inputs]
        q_inputs = [self._tensor(self.quant.get(v)) for v in block.inputs]
        self._size_chunks(fmod, f_inputs)
        with torch.no_grad():
            f_out = evaluate(fmod, f_inputs, self.eval_chunk)
        relus = [compared_after_relu(v) for v in block.outputs]
        if quantizers and self.o.iters > 0:
            train_inputs = q_inputs if self.o.input == "quant" else f_inputs
            layout = None
            if block.index in self.layout_blocks:
                layout = ([self.axes.get(v, 0) for v in block.inputs], [self.axes[v] for v in block.outputs])
            job = BlockJob(block, _ops(block), qmod, quantizers, relus, layout, self.model.opset_imports, self.device,
                           self.eval_chunk)
            samples = hold_out(train_inputs, q_inputs, f_out, self.o.holdout, self.o.seed, self.device)
            result = BlockTrainer(self.o, self.tuning, job, samples).run()
            result.report.seconds = time.perf_counter() - start
        else:
            result = BlockResult(BlockReport(block.index, _ops(block), 0, math.nan, math.nan, 0.0,
                                             BlockStatus.NO_WEIGHTS))
        with torch.no_grad():
            q_out = evaluate(qmod, q_inputs, self.eval_chunk)
        for value, f, q in zip(block.outputs, f_out, q_out):
            self.float.put(value, f.cpu().numpy())
            self.quant.put(value, q.cpu().numpy())
        for node in ada_nodes:
            if materialize(node).alpha is not None:
                before = _nearest_codes(node)
                if write_back(node):
                    result.written.append((node, before))
                    result.stats["num-weights-rounded"] += 1
                    after = constant_array(node.inputs[0])
                    result.stats["num-codes-changed"] += int(np.count_nonzero(after.astype(np.int64) != before))
        return result

    def _skip(self, block: Block, start: float, cause: str, run: bool = True, warn: bool = True) -> BlockResult:
        """A block not trained: its weights keep nearest rounding, its outputs come from
        onnxruntime (``run``); reported with its cause, never the end of the run."""
        path = RoundingPath.ONNXRUNTIME if run else RoundingPath.NONE
        if run:
            try:
                self._run_with_onnxruntime(block)
            except NoBatchAxis:
                raise
            except Exception as exc:  # noqa: BLE001 - reported as the cause, the run goes on
                path = RoundingPath.NONE
                cause = f"{cause}; onnxruntime could not evaluate it either: {_first_line(exc)}"
        if warn or path == RoundingPath.NONE:
            logger.warning("adaround: block %d skipped (%s); its weights keep nearest rounding", block.index, cause)
        report = BlockReport(block.index, _ops(block), 0, math.nan, math.nan, time.perf_counter() - start,
                             BlockStatus.SKIPPED, path, cause=cause)
        result = BlockResult(report)
        result.stats["num-blocks-skipped"] += 1
        return result

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

    def _module(self, block: Block, quantizer_module: Callable[[onnx_ir.Node], torch.nn.Module]) -> BlockModule:
        return block_to_module(block.nodes, block.inputs, block.outputs, opset_imports=self.model.opset_imports,
                               quantizer_module=quantizer_module).to(self.device)

    def _plan_fallbacks(self, blocks: list[Block]) -> dict[int, str]:
        """Before any training: the blocks torch cannot convert, each with its cause (warned, once)."""
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

    def _batch_layout(self, block: Block, qmod: BlockModule, fmod: BlockModule) -> None:
        """Find where the block's outputs hold the batch (running the float block on one sample and
        on two) and, unless every input and output holds it on axis 0, have both modules take and
        give samples on axis 0 (``BlockModule.set_batch_layout``)."""
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

    def _size_chunks(self, module: BlockModule, inputs: Sequence[torch.Tensor]) -> None:
        """Size the block's full-data evaluation chunks so its intermediates stay near the tuning's
        ``eval_budget_mb`` (measured on one sample; a block holding a large one-hot, say, gets small
        chunks instead of gigabytes of temporaries)."""
        self.eval_chunk = self.max_eval_chunk
        if not inputs or any(t.dim() == 0 for t in inputs):
            return
        try:
            per_sample = module.peak_bytes(*[t[:1] for t in inputs])
        except RuntimeError:  # e.g. a shape tensor without a batch axis: keep the default
            return
        budget = self.tuning.eval_budget_mb << 20
        self.eval_chunk = max(1, min(self.max_eval_chunk, budget // max(1, per_sample)))

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(array)).to(self.device)

    def _progress(self, report: BlockReport) -> None:
        """One line per block on stderr when nobody watches a terminal (tqdm shows bars otherwise)."""
        if not sys.stderr.isatty():
            print(f"adaround: {report.index + 1}/{len(self.partition)} {report.line()}", file=sys.stderr, flush=True)

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
            results = [self._block_session(block, cache).run([cache.get(v) for v in block.inputs], in_axes)
                       for cache in (self.quant, self.float)]
        except NoBatchAxis:
            raise
        except Exception as exc:  # noqa: BLE001 - the prefix is the last resort
            logger.info("adaround: block %d: onnxruntime on the block alone failed (%s); running the model's prefix",
                        block.index, _first_line(exc))
            graph_inputs = [v for v in self.model.graph.inputs if v.name in self.calib.inputs]
            feeds = [self.calib.inputs[v.name] for v in graph_inputs]
            axes = [self.calib.batch_axes.get(v.name, 0) for v in graph_inputs]
            results = []
            for float_path in (False, True):
                proto = prefix_model(self.model, block.outputs, float_path=float_path)
                results.append(BlockSession(proto, graph_inputs, block.outputs).run(feeds, axes))
        for cache, (outs, out_axes) in zip((self.quant, self.float), results):
            self.axes.update(zip(block.outputs, out_axes))
            for value, out in zip(block.outputs, outs):
                cache.put(value, out)

    def _block_session(self, block: Block, cache: ActivationCache) -> BlockSession:
        dtypes = {v: onnx_ir.DataType.from_numpy(cache.get(v).dtype) for v in block.inputs}
        proto = block_model(self.model, block.nodes, block.inputs, block.outputs, float_path=cache is self.float,
                            input_dtypes=dtypes)
        return BlockSession(proto, block.inputs, block.outputs)


def _ops(block: Block) -> str:
    return ",".join(n.op_type for n in block.weighted) or "-"


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when empty), at most 200 characters."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _nearest_codes(node: onnx_ir.Node) -> np.ndarray:
    """The nearest-rounding codes of an AdaRound quantizer's float weight."""
    weight = constant_array(node.inputs[0])
    return dialect.quantizer_spec(node).quantize(np.asarray(weight, dtype=np.float32)).astype(np.int64)
