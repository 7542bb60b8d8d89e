"""Torch modules for dialect quantizer nodes: built from the IR, cached on the node, written back.

The IR is the truth; a torch module is a cache of it (``node.meta``, never serialized):

* :func:`materialize` builds the module of a quantizer node from its inputs and attributes
  (``quantizer_from_spec``) and keeps it in ``node.meta["qdq_passes.quantizer"]``;
* :func:`write_back` stores what training decided into the IR: for an ``AdaroundINTQuantizer``
  with a learned ``alpha``, the chosen integer codes replace the float weight (the node becomes
  ``q_folded=1``, ``rounding="adaround"``, overload ``"folded"``). Reloading a saved model then
  rebuilds an identical module.

Module per node:

1. ``INTQuantizer``: :class:`INTQuantizer` of the node's spec (``q_folded`` as the node's).
2. ``AdaroundINTQuantizer``: :class:`AdaroundINTQuantizer`; when not folded and ``x`` is a
   constant float weight, ``alpha`` is initialised from it (its hard rounding is then nearest
   even, exactly the node's Q/DQ) and ``use_soft_rounding`` is False, so the module computes what
   the IR says; a training pass switches soft rounding on. Folded nodes get no ``alpha``.
3. ``FPQuantizer``: float8 codes give the saturating :class:`FPQuantizer` of the spec; float16
   and bfloat16 an :class:`FPQuantizer` with range ``[-inf, inf]`` (the dialect's cast does not
   clamp: overflow becomes +-inf, as ONNX ``Cast`` does).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir
import torch

from qdq_passes.ir import dialect
from qdq_passes.ir.qdq import add_initializer, constant_array, fresh_name, node_label, remove_if_unused, value_names
from qdq_passes.ir.quant import storage_dtype
from qdq_passes.quantizers.base_qdq_quantizers import AdaroundINTQuantizer, FPQuantizer, INTQuantizer
from qdq_passes.quantizers.from_spec import quantizer_from_spec

__all__ = ["META_KEY", "materialize", "write_back", "cached_quantizer"]

logger = logging.getLogger(__name__)

#: Where the module lives in ``node.meta`` (onnx_ir's metadata store: never serialized).
META_KEY = "qdq_passes.quantizer"

_CAST_TYPES = {onnx_ir.DataType.FLOAT16: torch.float16, onnx_ir.DataType.BFLOAT16: torch.bfloat16}


def cached_quantizer(node: onnx_ir.Node) -> torch.nn.Module | None:
    """The module :func:`materialize` cached on ``node``, or None."""
    return node.meta.get(META_KEY)


def materialize(node: onnx_ir.Node, *, refresh: bool = False) -> INTQuantizer | AdaroundINTQuantizer | FPQuantizer:
    """The torch quantizer of a dialect node, built once and cached in ``node.meta``.

    ``refresh`` rebuilds it from the IR (dropping any trained state not written back).
    Raises :class:`~qdq_passes.ir.dialect.InvalidQuantizer` naming the node on bad parameters.
    """
    cached = cached_quantizer(node)
    if cached is not None and not refresh:
        return cached
    module = _build(node)
    node.meta[META_KEY] = module
    return module


def _build(node: onnx_ir.Node) -> INTQuantizer | AdaroundINTQuantizer | FPQuantizer:
    params = dialect.quantizer_params(node)
    if params.op == dialect.FP_QUANTIZER and params.qdtype in _CAST_TYPES:
        scale = torch.from_numpy(np.asarray(params.scale, dtype=np.float32))
        zero_point = torch.from_numpy(np.asarray(params.zero_point).astype(np.float32))
        inf = torch.tensor(float("inf"))
        ch_axis = 0 if params.axis is None else params.axis
        return FPQuantizer(
            scale, zero_point, -inf, inf, ch_axis, params.q_folded, _CAST_TYPES[params.qdtype],
            block_size=params.block_size,
        )
    spec = dialect.quantizer_spec(node)
    if params.op != dialect.ADAROUND_QUANTIZER:
        return quantizer_from_spec(spec, q_folded=params.q_folded)
    weight = None
    if not params.q_folded:
        array = constant_array(node.inputs[0])
        if array is not None and array.dtype.kind == "f":
            weight = torch.from_numpy(np.array(array, dtype=np.float32))
    module = quantizer_from_spec(spec, q_folded=params.q_folded, adaround=True, weight=weight)
    module.use_soft_rounding = False
    return module


def write_back(node: onnx_ir.Node, model: onnx_ir.Model | None = None) -> bool:
    """Store the trained state of ``node``'s cached module in the IR; return whether anything changed.

    Only an ``AdaroundINTQuantizer`` that is not folded and whose module has a learned ``alpha``
    has state to write: its hard-rounded codes become a new initializer named
    ``<weight>_adaround`` (deterministic; a suffix if taken) in the codes' storage type, replacing
    ``x``; the node gets ``q_folded=1``, ``rounding="adaround"`` and overload ``"folded"``; the
    float weight is dropped from the graph when nothing else uses it; the cache is rebuilt from
    the new IR. Scales and zero points never change. With ``model``, its dialect functions are
    updated too (otherwise call :func:`qdq_passes.ir.dialect.ensure_functions` afterwards).
    """
    module = cached_quantizer(node)
    if (
        node.op_type != dialect.ADAROUND_QUANTIZER
        or not isinstance(module, AdaroundINTQuantizer)
        or module.alpha is None
        or module.q_folded
    ):
        return False
    graph = node.graph
    if graph is None:
        raise ValueError(f"node {node_label(node)} is not in a graph")
    params = dialect.quantizer_params(node)
    weight_value = node.inputs[0]
    array = constant_array(weight_value)
    if array is None:
        raise dialect.InvalidQuantizer(f"node {node_label(node)}: its weight '{weight_value.name}' is not a constant")
    codes = module.codes(torch.from_numpy(np.array(array, dtype=np.float32))).numpy()
    stored = codes.astype(storage_dtype(params.qdtype))
    home = weight_value.graph if weight_value.graph is not None else graph
    name = fresh_name(f"{weight_value.name or 'weight'}_adaround", value_names(home))
    codes_value = add_initializer(home, name, stored, params.qdtype)
    node.replace_input_with(0, codes_value)
    dialect.mark_folded(node, rounding=dialect.ADAROUND)
    remove_if_unused(weight_value)
    logger.debug("node %s: AdaRound codes written to '%s'", node_label(node), name)
    materialize(node, refresh=True)
    if model is not None:
        dialect.ensure_functions(model)
    return True
