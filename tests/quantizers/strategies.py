"""Hypothesis strategies: quantization specs and inputs full of rounding hazards.

Structure (type, layout, shape, axis, block size, scale regime) is drawn by hypothesis; values
come from a numpy generator seeded by a drawn integer. Inputs mix uniform values, exact ties
``(k + 0.5) * s``, their float32 neighbours, saturation, NaN, +-Inf, +-0.0; scales include tiny
normal ones and float16 ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx_ir
from hypothesis import assume
from hypothesis import strategies as st

from qdq_passes.ir.quant import QuantSpec, storage_dtype

__all__ = ["FLOAT8_TYPES", "INT_TYPES", "Case", "quant_cases", "random_codes"]

INT_TYPES = (
    onnx_ir.DataType.INT4,
    onnx_ir.DataType.UINT4,
    onnx_ir.DataType.INT8,
    onnx_ir.DataType.UINT8,
    onnx_ir.DataType.INT16,
    onnx_ir.DataType.UINT16,
)
FLOAT8_TYPES = (
    onnx_ir.DataType.FLOAT8E4M3FN,
    onnx_ir.DataType.FLOAT8E4M3FNUZ,
    onnx_ir.DataType.FLOAT8E5M2,
    onnx_ir.DataType.FLOAT8E5M2FNUZ,
)
_SCALE_EXPONENTS = {  # regime -> range of binary exponents of the scale
    "typical": (-12, 2),
    "large": (3, 20),
    "tiny": (-126, -118),
}


@dataclass(frozen=True)
class Case:
    """A spec, an input ``x`` (the scale's float type) and random codes ``q`` for DQ."""

    spec: QuantSpec
    x: np.ndarray
    q: np.ndarray


def _scale(
    rng: np.random.Generator, shape: tuple[int, ...], regime: str, dtype: type
) -> np.ndarray:
    """Positive normal scales with 8 significant bits, so ``(k + 0.5) * s`` is exact."""
    lo, hi = _SCALE_EXPONENTS[regime]
    if dtype == np.float16:
        lo = max(lo, -14)
        hi = max(min(hi, 12), lo)
    mantissa = rng.integers(128, 256, size=shape) / 128.0
    return np.asarray(np.ldexp(mantissa, rng.integers(lo, hi + 1, size=shape)), dtype=dtype)


def _float8_grid(qdtype: onnx_ir.DataType) -> np.ndarray:
    """The finite values of a float8 type, sorted."""
    values = np.arange(256, dtype=np.uint8).view(storage_dtype(qdtype)).astype(np.float32)
    return np.unique(values[np.isfinite(values)])


def _values(rng: np.random.Generator, spec: QuantSpec, s: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """Flat float32 inputs: 30 % uniform, 25 % ties, 15 % near-ties, 10 % saturating, 20 % other."""
    n = s.size
    s = s.reshape(-1).astype(np.float32)
    if spec.is_float8:
        grid = _float8_grid(spec.qdtype)
        i = rng.integers(0, grid.size - 1, size=n)
        lo_v, hi_v = grid[i], grid[i + 1]
        tie = (lo_v + hi_v) / 2
        uniform = lo_v + (hi_v - lo_v) * rng.random(n, dtype=np.float32)
        big = grid[-1] * 1.5
    else:
        k = rng.integers(spec.qmin - 3, spec.qmax + 3, size=n) - zp.reshape(-1).astype(np.int64)
        tie = k + 0.5
        uniform = k + rng.random(n)
        big = float(spec.qmax - spec.qmin) * 2
    with np.errstate(over="ignore"):
        ties = (tie * s).astype(np.float32)
        near = np.nextafter(ties, np.where(rng.random(n) < 0.5, -np.inf, np.inf).astype(np.float32))
        sat = (rng.choice([-1.0, 1.0], n) * big * (1 + rng.random(n)) * s).astype(np.float32)
        extreme = rng.choice(np.array([1e30, -1e30, 3e9, -3e9, 65504, 1.0], np.float32), n)
        special = rng.choice(np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], np.float32), n)
        out = (uniform * s).astype(np.float32)
    pick = rng.random(n)
    bounds = (0.30, 0.55, 0.70, 0.80, 0.90, 1.0)
    for start, stop, source in zip(
        bounds, bounds[1:], (ties, near, sat, extreme, special), strict=False
    ):
        out = np.where((pick >= start) & (pick < stop), source, out)
    return out


def random_codes(rng: np.random.Generator, spec: QuantSpec, shape: tuple[int, ...]) -> np.ndarray:
    """Codes of every value of the type (float8: any bit pattern, NaN included)."""
    storage = storage_dtype(spec.qdtype)
    if spec.is_float8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8).view(storage)
    return rng.integers(spec.qmin, spec.qmax + 1, size=shape).astype(storage)


@st.composite
def quant_cases(
    draw: st.DrawFn,
    qdtypes: tuple[onnx_ir.DataType, ...] = INT_TYPES,
    float16_scales: bool = True,
) -> Case:
    """A random :class:`Case` over ``qdtypes`` and every layout."""
    qdtype = draw(st.sampled_from(qdtypes))
    layout = draw(st.sampled_from(["tensor", "channel", "block"]))
    rank = draw(st.integers(1, 3))
    shape = draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank))
    axis = draw(st.integers(-rank, rank - 1))
    block_size = 0
    if layout == "tensor":
        scale_shape: tuple[int, ...] = draw(st.sampled_from([(), (1,)]))
    elif layout == "channel":
        scale_shape = (shape[axis],)
    else:
        shape[axis] = draw(st.integers(1, 12))
        block_size = draw(st.integers(1, shape[axis]))
        scale_shape = tuple(
            math.ceil(d / block_size) if i == axis % rank else d for i, d in enumerate(shape)
        )
        # onnxruntime 1.32 rejects a blocked scale of one element ("block_size must be 0 for
        # per-tensor quantization"), although ONNX allows it.
        assume(math.prod(scale_shape) > 1)
    regime = draw(st.sampled_from(sorted(_SCALE_EXPONENTS)))
    dtype = draw(st.sampled_from([np.float32, np.float16])) if float16_scales else np.float32
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = _scale(rng, scale_shape, regime, dtype)
    storage = storage_dtype(qdtype)
    if qdtype in FLOAT8_TYPES or draw(st.booleans()):
        zp = np.zeros(scale_shape, storage)
    else:
        lo, hi = ml_dtypes.iinfo(storage).min, ml_dtypes.iinfo(storage).max
        zp = rng.integers(lo, hi + 1, size=scale_shape).astype(storage)
    spec = QuantSpec(scale, zp, qdtype, None if layout == "tensor" else axis, block_size)
    spec.validate(tuple(shape))
    s = spec.expand(scale.astype(np.float32), tuple(shape))
    z = spec.expand(zp.astype(np.float32), tuple(shape))
    with np.errstate(over="ignore"):
        x = _values(rng, spec, s, z).reshape(shape).astype(dtype)
    return Case(spec, x, random_codes(rng, spec, tuple(shape)))
