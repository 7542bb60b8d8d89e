"""``scan_qdq`` as the Q/DQ passes use it: errors named, nodes left alone logged and counted."""

from __future__ import annotations

import logging

import onnx_ir

from qdq_passes.infra.errors import QuantizationError
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.ir.qdq import InvalidQdq, QdqScan, node_label, scan_qdq

__all__ = ["scan_points"]

logger = logging.getLogger(__name__)


def scan_points(pass_: QdqPass, model: onnx_ir.Model) -> QdqScan:
    """The model's quantization points; invalid parameters raise :class:`QuantizationError`.

    Every Q/DQ node left alone is logged with its reason and counted in the pass's
    ``num-skipped`` statistic.
    """
    try:
        scan = scan_qdq(model)
    except InvalidQdq as exc:
        raise QuantizationError(str(exc)) from None
    for skipped in scan.skipped:
        logger.warning("%s: left %s alone: %s", pass_.argument, node_label(skipped.node), skipped.reason)
        pass_.bump("num-skipped")
    return scan
