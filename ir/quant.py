"""Quantization points: :class:`QuantSpec` and the numpy reference of ONNX Q/DQ.

``QuantSpec.quantize`` and ``QuantSpec.dequantize`` follow ONNX ``QuantizeLinear`` /
``DequantizeLinear`` (opset 21) and match onnxruntime's CPU kernels bit for bit:

* Q: ``saturate(round_half_even(x / s) + zp)`` with a true float32 division, the zero point added
  after rounding; NaN gives ``qmin``, +Inf ``qmax``, -Inf ``qmin``. float8: ``cast(x / s)`` rounded
  to nearest even; with ``saturate`` +-Inf and overflow become +-max finite, NaN stays NaN.
* DQ: ``(q - zp) * s`` in float32 (one rounding); float16 scales give float16 output, rounded once.
* Granularity: per-tensor (scale of shape ``()`` or ``(1,)``), per-axis (1-D scale of length
  ``D[axis]``) or blocked (scale of x's rank, ``S[axis] = ceil(D / block_size)``, ragged last
  block).

This module is the bottom layer: numpy, ml_dtypes and onnx_ir only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import ml_dtypes
import numpy as np
import onnx_ir

__all__ = ["QuantSpec", "expand_param", "qrange", "storage_dtype"]

_INT_TYPES = (
    onnx_ir.DataType.INT4,
    onnx_ir.DataType.UINT4,
    onnx_ir.DataType.INT8,
    onnx_ir.DataType.UINT8,
    onnx_ir.DataType.INT16,
    onnx_ir.DataType.UINT16,
    onnx_ir.DataType.INT32,
)
_FLOAT8_TYPES = (
    onnx_ir.DataType.FLOAT8E4M3FN,
    onnx_ir.DataType.FLOAT8E4M3FNUZ,
    onnx_ir.DataType.FLOAT8E5M2,
    onnx_ir.DataType.FLOAT8E5M2FNUZ,
)
_SCALE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def storage_dtype(qdtype: onnx_ir.DataType) -> np.dtype:
    """Numpy dtype holding one code of ``qdtype`` (e.g. ``ml_dtypes.int4`` for INT4)."""
    if qdtype not in _INT_TYPES + _FLOAT8_TYPES:
        raise ValueError(f"unsupported quantized type {qdtype!r}")
    return np.dtype(qdtype.numpy())


def qrange(qdtype: onnx_ir.DataType) -> tuple[int, int] | tuple[float, float]:
    """``(qmin, qmax)``: the integer range, or +-max finite for float8 types."""
    dtype = storage_dtype(qdtype)
    if qdtype in _FLOAT8_TYPES:
        fmax = float(ml_dtypes.finfo(dtype).max)
        return -fmax, fmax
    info = ml_dtypes.iinfo(dtype)
    return int(info.min), int(info.max)


def expand_param(
    p: np.ndarray, x_shape: tuple[int, ...], axis: int | None = None, block_size: int = 0
) -> np.ndarray:
    """Broadcast a scale or zero point to ``x_shape`` (a read-only view or a new array).

    ``axis=None`` is per-tensor; ``block_size > 0`` repeats each entry ``block_size`` times along
    ``axis`` and cuts at ``D[axis]`` (ragged last block); otherwise ``p`` is 1-D along ``axis``.
    """
    p = np.asarray(p)
    if axis is None:
        return np.broadcast_to(p.reshape(()), x_shape)
    axis = _norm_axis(axis, len(x_shape))
    if block_size > 0:
        p = np.repeat(p, block_size, axis=axis)
        return np.take(p, np.arange(x_shape[axis]), axis=axis)
    shape = [1] * len(x_shape)
    shape[axis] = p.size
    return np.broadcast_to(p.reshape(shape), x_shape)


def _norm_axis(axis: int, rank: int) -> int:
    """``axis`` in ``[0, rank)``; ``ValueError`` if out of range."""
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def _first_bad(name: str, bad: np.ndarray, arr: np.ndarray, what: str) -> str | None:
    """Message naming the first index where ``bad`` holds, or None."""
    if not bad.any():
        return None
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f"[{', '.join(map(str, idx))}]" if arr.ndim else ""
    return f"{name}{where} is {arr[idx].item()!r}{what}"


@dataclass(frozen=True, eq=False)
class QuantSpec:
    """One quantization point: scale, zero point, quantized type and granularity.

    ``scale`` is float32 (or float16) of shape ``()``/``(1,)`` (per-tensor), ``(C,)`` (per-axis)
    or x's rank (blocked); ``zero_point`` has the same shape in the storage dtype of ``qdtype``.
    ``axis=None`` means per-tensor; ``block_size > 0`` means blocked along ``axis``. ``saturate``
    only matters for float8 types.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    qdtype: onnx_ir.DataType
    axis: int | None = None
    block_size: int = 0
    saturate: bool = True

    @classmethod
    def from_arrays(
        cls,
        scale: np.ndarray | float,
        zero_point: np.ndarray | int | None = None,
        qdtype: onnx_ir.DataType | None = None,
        axis: int | None = None,
        block_size: int = 0,
        saturate: bool = True,
    ) -> QuantSpec:
        """Build and validate a spec from arrays.

        A float64 or integer scale becomes float32 (bfloat16 is refused by ``validate``).
        ``qdtype`` defaults to the zero point's type (UINT8 when there is no zero point); a zero
        point of another integer dtype is converted when its values fit. A single-element scale
        without ``block_size`` is per-tensor whatever ``axis`` says, as in ONNX (its zero point
        then takes the scale's shape: ONNX's own tests pair a ``()`` scale with a ``(1,)`` zp).
        """
        scale = np.asarray(scale)
        if scale.dtype.kind in "iuf" and scale.dtype not in _SCALE_DTYPES:
            scale = scale.astype(np.float32)
        if zero_point is None:
            qdtype = onnx_ir.DataType.UINT8 if qdtype is None else qdtype
            zero_point = np.zeros(scale.shape, storage_dtype(qdtype))
        zero_point = np.asarray(zero_point)
        if qdtype is None:
            qdtype = onnx_ir.DataType.from_numpy(zero_point.dtype)
        target = storage_dtype(qdtype)
        if zero_point.dtype != target:
            converted = zero_point.astype(target)
            if not np.array_equal(converted.astype(np.float64), zero_point.astype(np.float64)):
                raise ValueError(f"zero_point {zero_point!r} does not fit in {qdtype.name}")
            zero_point = converted
        if scale.size == 1 and scale.ndim <= 1 and block_size == 0:
            axis = None
            if zero_point.size == 1:
                zero_point = zero_point.reshape(scale.shape)
        spec = cls(scale, zero_point, qdtype, axis, block_size, saturate)
        spec.validate()
        return spec

    @property
    def is_float8(self) -> bool:
        """True for the four float8 types."""
        return self.qdtype in _FLOAT8_TYPES

    @property
    def qmin(self) -> int | float:
        """Smallest code (int), or -max finite for float8."""
        return qrange(self.qdtype)[0]

    @property
    def qmax(self) -> int | float:
        """Largest code (int), or +max finite for float8."""
        return qrange(self.qdtype)[1]

    @property
    def granularity(self) -> Literal["tensor", "channel", "block"]:
        """``"tensor"``, ``"channel"`` (per-axis) or ``"block"``."""
        if self.block_size > 0:
            return "block"
        return "tensor" if self.axis is None else "channel"

    def validate(self, x_shape: tuple[int, ...] | None = None) -> None:
        """Raise ``ValueError`` saying what is wrong and where (against ``x_shape`` if given)."""
        scale, zp = np.asarray(self.scale), np.asarray(self.zero_point)
        storage = storage_dtype(self.qdtype)
        if scale.dtype not in _SCALE_DTYPES:
            raise ValueError(f"scale dtype is {scale.dtype}, expected float32 or float16")
        if zp.dtype != storage:
            raise ValueError(f"zero_point dtype is {zp.dtype}, {self.qdtype.name} needs {storage}")
        if zp.shape != scale.shape:
            raise ValueError(f"zero_point shape {zp.shape} differs from scale shape {scale.shape}")
        s32 = scale.astype(np.float32)
        # float32 denormals are fine: onnxruntime's quantize_static writes them for near-zero weight
        # channels, and its Q/DQ kernels, torch and numpy divide and multiply by them alike (true
        # division, no reciprocal); float16 ones are refused (not checked against onnxruntime).
        tiny = np.finfo(np.float16).tiny if scale.dtype == np.float16 else 0.0
        for bad, what in (
            (np.isnan(s32), ""),
            (np.isinf(s32), ""),
            (s32 == 0, ""),
            (s32 < 0, ", scales must be positive"),
            (np.abs(s32) < tiny, f", a float16 denormal (smallest normal is {tiny:g})"),
        ):
            msg = _first_bad("scale", bad, scale, what)
            if msg:
                raise ValueError(msg)
        if self.is_float8:
            msg = _first_bad("zero_point", zp.astype(np.float32) != 0, zp, ", float8 needs 0")
            if msg:
                raise ValueError(msg)
        if self.block_size < 0:
            raise ValueError(f"block_size is {self.block_size}, must be >= 0")
        granularity = self.granularity
        if granularity == "tensor":
            if scale.shape not in ((), (1,)):
                raise ValueError(f"per-tensor scale has shape {scale.shape}, expected () or (1,)")
            return
        if self.axis is None:
            raise ValueError("blocked quantization needs an axis")
        if granularity == "channel" and scale.ndim != 1:
            raise ValueError(f"per-axis scale has shape {scale.shape}, expected 1-D")
        if x_shape is None:
            if granularity == "block":
                _norm_axis(self.axis, scale.ndim)
            return
        axis = _norm_axis(self.axis, len(x_shape))
        dim = x_shape[axis]
        if granularity == "channel":
            if scale.shape[0] != dim:
                raise ValueError(
                    f"scale has {scale.shape[0]} entries, x has {dim} along axis {axis}"
                )
            return
        if scale.ndim != len(x_shape):
            raise ValueError(f"blocked scale has rank {scale.ndim}, x has rank {len(x_shape)}")
        for i, (d, n) in enumerate(zip(x_shape, scale.shape, strict=True)):
            if i != axis and d != n:
                raise ValueError(
                    f"scale shape {scale.shape} differs from x shape {x_shape} at dim {i}"
                )
        n = scale.shape[axis]
        if n == 0:
            raise ValueError(f"blocked scale has no block along axis {axis}")
        low = math.ceil(dim / n)
        high = math.ceil(dim / (n - 1)) - 1 if n > 1 else math.inf
        if not low <= self.block_size <= high:
            raise ValueError(
                f"block_size {self.block_size} is out of [{low}, {high}] for {n} blocks over {dim}"
            )

    def expand(self, p: np.ndarray, x_shape: tuple[int, ...]) -> np.ndarray:
        """``expand_param`` with this spec's axis and block size."""
        axis = None if self.granularity == "tensor" else self.axis
        return expand_param(p, x_shape, axis, self.block_size)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """ONNX QuantizeLinear: codes in the storage dtype of ``qdtype``."""
        if self.qdtype == onnx_ir.DataType.INT32:
            raise ValueError("INT32 is DequantizeLinear-only (bias codes)")
        x = np.asarray(x, dtype=np.float32)
        s = self.expand(self.scale.astype(np.float32), x.shape)
        storage = storage_dtype(self.qdtype)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            v = x / s
            if self.is_float8:
                if self.saturate:
                    np.clip(v, self.qmin, self.qmax, out=v)
                return v.astype(storage)
            v = np.rint(v).astype(np.float64) + self.expand(self.zero_point.astype(np.float64), x.shape)
        v = np.nan_to_num(v, nan=self.qmin, posinf=self.qmax, neginf=self.qmin)
        return np.clip(v, self.qmin, self.qmax).astype(storage)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """ONNX DequantizeLinear: float32 (float16 when the scale is float16)."""
        q = np.asarray(q)
        s = self.expand(self.scale.astype(np.float32), q.shape)
        if self.is_float8:
            v = q.astype(np.float32)
        else:
            zp = self.expand(self.zero_point.astype(np.int64), q.shape)
            v = (q.astype(np.int64) - zp).astype(np.float32)
        with np.errstate(over="ignore"):
            return (v * s).astype(self.scale.dtype)
