"""Build a torch quantizer from a :class:`~qdq_passes.ir.quant.QuantSpec`."""

from __future__ import annotations

import numpy as np
import torch

from qdq_passes.ir.quant import QuantSpec
from qdq_passes.quantizers.base_qdq_quantizers import (
    AdaroundINTQuantizer,
    FPQuantizer,
    INTQuantizer,
)

__all__ = ["quantizer_from_spec"]

_FLOAT8 = {
    "FLOAT8E4M3FN": torch.float8_e4m3fn,
    "FLOAT8E4M3FNUZ": torch.float8_e4m3fnuz,
    "FLOAT8E5M2": torch.float8_e5m2,
    "FLOAT8E5M2FNUZ": torch.float8_e5m2fnuz,
}


def quantizer_from_spec(
    spec: QuantSpec,
    *,
    q_folded: bool = False,
    adaround: bool = False,
    weight: torch.Tensor | None = None,
) -> INTQuantizer | AdaroundINTQuantizer | FPQuantizer:
    """The quantizer computing ``spec``'s Q/DQ: integer types give :class:`INTQuantizer`
    (:class:`AdaroundINTQuantizer` with ``adaround``, its ``alpha`` set from ``weight`` if given),
    float8 types a saturating :class:`FPQuantizer`. The range is the dtype's (int4 [-8, 7], ...).
    """
    spec.validate()
    scale = torch.from_numpy(np.asarray(spec.scale, dtype=np.float32))
    zero_point = torch.from_numpy(np.asarray(spec.zero_point).astype(np.float32))
    args = (scale, zero_point, torch.tensor(spec.qmin), torch.tensor(spec.qmax))
    ch_axis = 0 if spec.axis is None else spec.axis
    if spec.is_float8:
        if adaround:
            raise ValueError(f"AdaRound needs an integer type, not {spec.qdtype.name}")
        if not spec.saturate:
            raise ValueError("float8 with saturate=0 has no torch quantizer (torch casts differ)")
        return FPQuantizer(
            *args, ch_axis, q_folded, _FLOAT8[spec.qdtype.name], block_size=spec.block_size
        )
    if adaround:
        return AdaroundINTQuantizer(
            *args, ch_axis, q_folded, block_size=spec.block_size, weight=weight
        )
    return INTQuantizer(*args, ch_axis, q_folded, block_size=spec.block_size)
