"""``adaround``: learn, block by block, whether each weight rounds up or down (AdaRound).

Importing this package costs no torch: :mod:`.pass_` holds the pass and its options, and the
modules below it are imported when the pass runs. For each block of the
:class:`~qdq_passes.ir.blocks.BlockPartition`, in order (:mod:`.runner`):

1. Inputs. The quantized path starts from the calibration inputs and runs through the blocks
   already rounded; the float path runs the same blocks with every quantizer in its float meaning
   (:mod:`.float_path`). Only values later blocks read are kept (:mod:`.cache`, ``cache-mb``).
2. Loss. The squared error of the block outputs (summed over axis 1, averaged over the other axes)
   against the float block's outputs, compared after a Relu where an output is read only by
   zero-based activation quantizers; after ``warm-start`` of the steps, ``reg * sum(1 - |2h - 1|
   ** beta)`` is added, beta annealed from ``beta[0]`` to ``beta[1]`` on a cosine (:mod:`.training`).
3. Optimisation. Adam on every ``alpha`` of the block (:mod:`.soft_rounding`). The part of the
   block the rounding does not change is evaluated once over all samples (:mod:`.split`); each
   step then optimises the objective the plan gives for it (:mod:`.objectives`): a random batch
   through the rest of the block, the Gram form of the loss over every sample (:mod:`.gram`), or
   the conv+Relu fast path (:mod:`.conv`).
4. Choice. AdaRound's hard rounding, its polished form and any shrunk retraining are compared on
   the ``holdout`` samples training never sees; nearest rounding is kept where it is better
   (:mod:`.selection`).
5. Write-back. The chosen codes become the quantizers' stored integers (``q_folded=1``,
   ``rounding=adaround``), so ``lower-qdq`` and onnxruntime reproduce the torch outputs exactly.

A block torch cannot convert or run keeps nearest rounding and has its outputs computed by
onnxruntime (:mod:`.onnxruntime_block`); what happened to each block is a
:class:`.report.BlockReport`. The reasons behind these choices: docs/design-notes.md.
"""

from qdq_passes.adaround.pass_ import AdaroundOptions, AdaroundPass, Tuning
from qdq_passes.adaround.report import BlockReport, BlockStatus, RoundingPath

__all__ = ["AdaroundOptions", "AdaroundPass", "BlockReport", "BlockStatus", "RoundingPath", "Tuning"]
