"""``adaround``: learn, block by block, whether each weight rounds up or down (AdaRound).

Runs on a model whose weight quantizers are ``AdaroundINTQuantizer`` nodes (made by
``insert-quantizers{weights=adaround}``), with calibration data. For each block of the
:class:`~qdq_passes.ir.blocks.BlockPartition`, in order:

1. Inputs. The quantized path starts from the calibration inputs and runs through the blocks
   already rounded (earlier blocks' hard-rounded torch modules), never by re-running model
   prefixes; the float path runs the same blocks with every quantizer replaced by its float
   meaning (an activation quantizer whose range starts at exactly 0 becomes a Relu: that clamp is
   the Relu onnxruntime folded into it; other quantizers become identities; stored codes of
   biases dequantize). Only values later blocks read are kept (``cache-mb`` spills them to disk).
2. Loss. The squared error of the block outputs (summed over axis 1, the channels of NCHW
   outputs, averaged over the other axes) against the float block's outputs; an output read only by zero-based activation
   quantizers is compared after a Relu (the clamp that follows it), which peers leave out. After
   ``warm-start`` of the iterations, ``reg * sum(1 - |2h - 1| ** beta)`` is added, beta annealed
   from ``beta[0]`` to ``beta[1]`` on a cosine.
3. Optimisation. Adam on every ``alpha`` of the block, a random batch of ``batch-size`` samples
   per step (seeded by ``seed`` and the block index, so runs are reproducible).
4. Hard rounding. The block's reconstruction error with hard AdaRound rounding is compared with
   nearest rounding on the calibration data; if AdaRound is worse, nearest is kept (counted).
5. Write-back. The chosen codes become the quantizers' stored integers (``q_folded=1``,
   ``rounding=adaround``), so ``lower-qdq`` and onnxruntime reproduce the torch outputs exactly.

Blocks with an op ``to_torch`` cannot convert are skipped with a warning and counted; their
outputs are computed by onnxruntime on the block alone. Weight quantizers already folded (no float
weight) cannot be rounded again: run ``insert-quantizers{float-model=...}`` to restore the float
weights. Scales, zero points and activation quantizers never change.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import onnx_ir

from qdq_passes.calib import load_calibration
from qdq_passes.infra.errors import PreconditionFailed, QdqError
from qdq_passes.infra.options import option
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.registry import register_pass
from qdq_passes.ir import dialect
from qdq_passes.ir.blocks import Block, BlockPartition
from qdq_passes.ir.qdq import constant_array, node_label
from qdq_passes.runtime import configured_torch, ort_session_options

__all__ = ["AdaroundPass", "AdaroundOptions", "BlockReport"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AdaroundOptions:
    """Options of ``adaround``."""

    calib: str | None = option(None, "calibration data: .npz or a folder of .npz (qdq-opt --calib fills it)")
    iters: int = option(1000, "optimisation steps per block")
    lr: float = option(0.1, "Adam learning rate on alpha (Quark's default; 0.01 lost 1.5 dB on the demo CNN)")
    reg: float = option(0.01, "weight of the rounding regulariser")
    beta: tuple[float, float] = option((20.0, 2.0), "regulariser exponent, annealed from the first to the second")
    warm_start: float = option(0.2, "fraction of the steps before the regulariser starts")
    batch_size: int = option(32, "calibration samples per step")
    granularity: Literal["block", "layer"] = option("block", "block: residual/attention blocks whole; layer: one op")
    min_ops: int = option(1, "fewest weighted ops per block")
    max_ops: int = option(4, "most weighted ops per block")
    input: Literal["quant", "float"] = option("quant", "block inputs from the quantized (rounded) or the float path")
    max_samples: int = option(0, "use at most this many calibration samples (0: all)")
    seed: int = option(0, "seed of the batch sampling")
    device: str = option("cpu", "torch device (cpu, cuda)")
    threads: int = option(0, "torch threads for this pass (0: the run's setting)")
    cache_mb: int = option(2048, "activation cache held in memory before spilling to disk (MB)")


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

    def line(self) -> str:
        """One line for the statistics report."""
        if self.status in ("no-weights", "skipped"):
            return f"block {self.index} [{self.ops}]: {self.status}"
        return (f"block {self.index} [{self.ops}]: {self.weights} weights, mse nearest {self.mse_nearest:.4g} "
                f"-> adaround {self.mse_adaround:.4g} ({self.status}, {self.seconds:.1f} s)")


@register_pass
class AdaroundPass(QdqPass):
    """Learn up/down rounding of every AdaRound weight quantizer, block by block (see the module doc).

    1. No unfolded ``AdaroundINTQuantizer`` in the model: nothing to do (``modified=False``), so
       a second run changes nothing.
    2. Calibration data is required (``calib``); a missing or mismatched file is a clear error.
    3. Each block is trained, hard-rounded, checked against nearest rounding and written back.
    4. A block ``to_torch`` cannot convert: skipped with a warning, counted in ``num-blocks-skipped``,
       its outputs computed by onnxruntime; its AdaRound quantizers keep nearest rounding.
    5. Folded AdaRound quantizers (no float weight) are left alone with a warning.
    """

    argument = "adaround"
    summary = "Learn weight rounding block by block on calibration data (AdaRound)"
    Options = AdaroundOptions
    statistics = {
        "num-blocks": "blocks in the partition",
        "num-blocks-trained": "blocks whose weights were optimised",
        "num-blocks-reverted": "blocks where AdaRound was worse than nearest on the calibration data",
        "num-blocks-skipped": "blocks with an op to_torch cannot convert",
        "num-weights-rounded": "weight quantizers whose codes were written back",
        "num-codes-changed": "weight codes that differ from nearest rounding",
    }

    def __init__(self, options: AdaroundOptions | None = None, **kwargs: object) -> None:
        super().__init__(options, **kwargs)
        self.reports: list[BlockReport] = []

    @property
    def details(self) -> list[str]:
        """Per-block lines for the statistics report."""
        return [r.line() for r in self.reports]

    def precondition(self, model: onnx_ir.Model) -> None:
        if self._trainable(model) and self.options.calib is None:
            raise PreconditionFailed("needs calibration data: give calib=PATH (qdq-opt --calib PATH)")

    @staticmethod
    def _trainable(model: onnx_ir.Model) -> list[onnx_ir.Node]:
        return [n for n in model.graph if n.domain == dialect.DOMAIN and n.op_type == dialect.ADAROUND_QUANTIZER
                and not dialect.quantizer_params(n).q_folded]

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        self.reports = []
        folded = [n for n in model.graph if n.domain == dialect.DOMAIN and n.op_type == dialect.ADAROUND_QUANTIZER
                  and dialect.quantizer_params(n).q_folded and dialect.quantizer_params(n).rounding != dialect.ADAROUND]
        for node in folded:
            logger.warning("adaround: %s holds stored codes without a float weight; left at its rounding "
                           "(insert-quantizers{float-model=...} restores float weights)", node_label(node))
        if not self._trainable(model):
            return onnx_ir.passes.PassResult(model, False)
        torch = configured_torch()
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        o = self.options
        if o.iters < 0 or o.batch_size < 1 or not 0 <= o.warm_start <= 1 or o.lr <= 0:
            raise QdqError(f"adaround: invalid options {o}")
        calib = load_calibration(o.calib, model, max_samples=o.max_samples or None)
        onnx_ir.passes.common.ShapeInferencePass()(model)
        partition = BlockPartition.build(model, granularity=o.granularity, min_ops=o.min_ops, max_ops=o.max_ops)
        self.bump("num-blocks", len(partition))
        runner = _Runner(model, partition, calib.inputs, o, self)
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

    def __init__(self, model: onnx_ir.Model, partition: BlockPartition, inputs: dict[str, np.ndarray],
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
        by_name = {v.name: v for v in model.graph.inputs}
        for name, array in inputs.items():
            value = by_name[name]
            array = np.ascontiguousarray(array)
            self.quant.put(value, array)
            self.float.put(value, array)
        self.chunk = max(64, options.batch_size)

    def run(self) -> None:
        from qdq_passes.quantizers import materialize

        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            tqdm = None
        blocks = list(self.partition)
        for block in blocks:
            start = time.perf_counter()
            ops = ",".join(n.op_type for n in block.weighted) or "-"
            from qdq_passes.ir.to_torch import UnsupportedOp, block_to_module

            try:
                qmod = block_to_module(block.nodes, block.inputs, block.outputs, opset_imports=self.model.opset_imports,
                                       quantizer_module=materialize).to(self.device)
                fmod = block_to_module(block.nodes, block.inputs, block.outputs, opset_imports=self.model.opset_imports,
                                       quantizer_module=self._float_quantizer).to(self.device)
            except UnsupportedOp as exc:
                logger.warning("adaround: block %d skipped (%s); its weights keep nearest rounding", block.index, exc)
                self.pass_.bump("num-blocks-skipped")
                self.pass_.reports.append(BlockReport(block.index, ops, 0, math.nan, math.nan, 0.0, "skipped"))
                self._run_with_onnxruntime(block)
                self._release(block)
                continue
            ada_nodes = [n for n in block.nodes if n.domain == dialect.DOMAIN and n.op_type == dialect.ADAROUND_QUANTIZER
                         and not dialect.quantizer_params(n).q_folded]
            quantizers = [materialize(n) for n in ada_nodes]
            quantizers = [q for q in quantizers if q.alpha is not None]
            f_inputs = [self._tensor(self.float.get(v)) for v in block.inputs]
            q_inputs = [self._tensor(self.quant.get(v)) for v in block.inputs]
            with self.torch.no_grad():
                f_out = self._evaluate(fmod, f_inputs)
            transforms = [self._loss_relu(v) for v in block.outputs]
            if quantizers and self.o.iters > 0:
                train_inputs = q_inputs if self.o.input == "quant" else f_inputs
                report = self._train(block, qmod, quantizers, train_inputs, q_inputs, f_out, transforms, ops, tqdm)
                report.seconds = time.perf_counter() - start
                self.pass_.reports.append(report)
            else:
                self.pass_.reports.append(BlockReport(block.index, ops, 0, math.nan, math.nan, 0.0, "no-weights"))
            with self.torch.no_grad():
                q_out = self._evaluate(qmod, q_inputs)
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
            self._release(block)
        self.quant.close()
        self.float.close()

    # -- pieces -------------------------------------------------------------------------------

    def _tensor(self, array: np.ndarray):  # noqa: ANN202
        return self.torch.from_numpy(np.asarray(array)).to(self.device)

    def _evaluate(self, module, inputs: Sequence) -> list:  # noqa: ANN001
        """Run ``module`` over all samples in chunks; returns one tensor per block output."""
        n = inputs[0].shape[0] if inputs else 1
        parts: list[list] = []
        for start in range(0, n, self.chunk):
            out = module(*[t[start:start + self.chunk] for t in inputs])
            outs = out if isinstance(out, tuple) else (out,)
            if not parts:
                parts = [[] for _ in outs]
            for p, t in zip(parts, outs):
                p.append(t.detach())
        return [self.torch.cat(p) for p in parts]

    def _float_quantizer(self, node: onnx_ir.Node):  # noqa: ANN202
        """The float meaning of a quantizer: Relu (zero-based activation), identity, or dequantize."""
        from qdq_passes.quantizers import materialize

        nn = self.torch.nn
        params = dialect.quantizer_params(node)
        if params.q_folded:
            return materialize(node)  # stored codes without a float weight (biases): their dequantized value
        if constant_array(node.inputs[0]) is None and _zero_based(node):
            return nn.ReLU()
        return nn.Identity()

    def _loss_relu(self, value: onnx_ir.Value) -> bool:
        """Whether the output is only read by zero-based activation quantizers (compare after Relu)."""
        uses = [use.node for use in value.uses()]
        return bool(uses) and not value.is_graph_output() and all(
            dialect.is_quantizer(n) and _zero_based(n) for n in uses)

    def _train(self, block: Block, qmod, quantizers: list, train_inputs: list, q_inputs: list,  # noqa: ANN001
               targets: list, transforms: list[bool], ops: str, tqdm) -> BlockReport:  # noqa: ANN001
        torch = self.torch
        o = self.o
        relu = torch.nn.functional.relu

        def recon(outs, tgts) -> torch.Tensor:  # noqa: ANN001
            total = 0.0
            for out, tgt, use_relu in zip(outs, tgts, transforms):
                if use_relu:
                    out, tgt = relu(out), relu(tgt)
                diff = (out - tgt).float()
                total = total + (diff.pow(2).sum(1).mean() if diff.dim() > 1 else diff.pow(2).mean())
            return total

        def full_mse() -> float:
            with torch.no_grad():
                outs = self._evaluate(qmod, q_inputs)
                return float(recon(outs, targets))

        for q in quantizers:
            q.use_soft_rounding = False
        mse_nearest = full_mse()
        initial = [q.alpha.detach().clone() for q in quantizers]
        params = [q.alpha for q in quantizers]
        for q in quantizers:
            q.use_soft_rounding = True
        optimizer = torch.optim.Adam(params, lr=o.lr)
        generator = torch.Generator().manual_seed(o.seed * 1_000_003 + block.index)
        n = train_inputs[0].shape[0]
        warm = int(o.warm_start * o.iters)
        beta_start, beta_end = o.beta
        steps = range(o.iters)
        bar = tqdm(steps, desc=f"adaround block {block.index} [{ops}]", leave=False, disable=None) if tqdm else steps
        for it in bar:
            idx = torch.randint(n, (min(o.batch_size, n),), generator=generator).to(self.device)
            out = qmod(*[t.index_select(0, idx) for t in train_inputs])
            outs = out if isinstance(out, tuple) else (out,)
            loss = recon(outs, [t.index_select(0, idx) for t in targets])
            if it >= warm and o.reg > 0:
                progress = (it - warm) / max(1, o.iters - warm)
                beta = beta_end + 0.5 * (beta_start - beta_end) * (1 + math.cos(progress * math.pi))
                loss = loss + o.reg * sum(q.regularizer(beta) for q in quantizers)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if tqdm and it % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4g}")
        for q in quantizers:
            q.use_soft_rounding = False
        mse_ada = full_mse()
        status = "trained"
        if mse_ada > mse_nearest:
            with torch.no_grad():
                for q, alpha in zip(quantizers, initial):
                    q.alpha.copy_(alpha)
            status = "reverted"
            self.pass_.bump("num-blocks-reverted")
        else:
            self.pass_.bump("num-blocks-trained")
        return BlockReport(block.index, ops, len(quantizers), mse_nearest, mse_ada, 0.0, status)

    def _release(self, block: Block) -> None:
        for value in block.inputs:
            self.remaining[value] -= 1
            if self.remaining[value] == 0:
                self.quant.drop(value)
                self.float.drop(value)

    def _run_with_onnxruntime(self, block: Block) -> None:
        """Outputs of a block torch cannot run: onnxruntime on the block alone, both paths."""
        import onnxruntime

        for cache, model in ((self.quant, self.model), (self.float, _float_clone(self.model))):
            proto = _block_model(model, [v.name for v in block.inputs], [v.name for v in block.outputs])
            session = onnxruntime.InferenceSession(proto.SerializeToString(), ort_session_options(),
                                                   providers=["CPUExecutionProvider"])
            feeds = [cache.get(v) for v in block.inputs]
            n = feeds[0].shape[0]
            results: list[list[np.ndarray]] = [[] for _ in block.outputs]
            for i in range(n):
                outs = session.run([v.name for v in block.outputs],
                                   {v.name: f[i:i + 1] for v, f in zip(block.inputs, feeds)})
                for r, out in zip(results, outs):
                    r.append(out)
            for value, r in zip(block.outputs, results):
                cache.put(value, np.concatenate(r))


def dialect_write_back(node: onnx_ir.Node) -> bool:
    """Write the trained codes of ``node`` into the IR (see ``quantizers.write_back``)."""
    from qdq_passes.quantizers import write_back

    return write_back(node)


def _nearest_codes(node: onnx_ir.Node, module) -> np.ndarray:  # noqa: ANN001
    """The nearest-rounding codes of an AdaRound quantizer's float weight."""
    spec = dialect.quantizer_spec(node)
    weight = constant_array(node.inputs[0])
    return spec.quantize(np.asarray(weight, dtype=np.float32)).astype(np.int64)


def _zero_based(node: onnx_ir.Node) -> bool:
    """Whether an activation quantizer's representable range starts at exactly 0 (a Relu's clamp)."""
    if constant_array(node.inputs[0]) is not None:
        return False
    spec = dialect.quantizer_spec(node)
    lower = (spec.qmin - spec.zero_point.astype(np.float64)) * spec.scale.astype(np.float64)
    return bool(np.all(lower == 0))


def _float_clone(model: onnx_ir.Model) -> onnx_ir.Model:
    """A copy of ``model`` in which quantizers take their float meaning (for onnxruntime fallbacks)."""
    clone = model.clone()
    graph = clone.graph
    for node in list(graph):
        if not dialect.is_quantizer(node) or dialect.quantizer_params(node).q_folded:
            continue
        x = node.inputs[0]
        out = node.outputs[0]
        if constant_array(x) is None and _zero_based(node):
            relu_out = onnx_ir.Value(name=f"{out.name}_float_relu", type=out.type, shape=out.shape)
            relu = onnx_ir.Node("", "Relu", [x], outputs=[relu_out])
            graph.insert_after(node, relu)
            replacement = relu_out
        else:
            replacement = x
        if out.is_graph_output():
            continue
        out.replace_all_uses_with(replacement)
    return clone


def _block_model(model: onnx_ir.Model, inputs: list[str], outputs: list[str]):  # noqa: ANN202
    """The sub-model computing ``outputs`` from ``inputs`` (onnx's extractor)."""
    import onnx
    import onnx.utils

    proto = onnx_ir.to_proto(model)
    return onnx.utils.Extractor(proto).extract_model(inputs, outputs)
