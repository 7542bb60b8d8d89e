"""Resize (opsets 10, 11-12, 13-17, 18, 19+): nearest, linear and cubic interpolation.

Output sizes, source coordinates, nearest-pixel rounding and filter weights follow onnxruntime's
CPU kernel (float32 arithmetic in the same order), so nearest resizing is bit-exact and linear /
cubic agree to a few ulps. Scales, sizes and roi may be constants or computed at run time (e.g.
``Shape -> Slice -> Concat``). Where a torch kernel computes the same thing (``upsample_nearest``
with power-of-two scales and asymmetric/floor, ``upsample_{linear1d,bilinear2d,trilinear3d}`` and
``upsample_bicubic2d`` with half_pixel / pytorch_half_pixel / align_corners on the trailing spatial
dims) it is used; every other combination resizes one axis at a time by index gathers and weighted
sums (bit-exact to onnxruntime for nearest and antialias, a few ulps otherwise). Everything is
differentiable with respect to float input. Integer inputs: nearest is exact; linear/cubic
interpolate in float32 and truncate (onnxruntime's fixed-point NHWC int8/uint8 kernel can differ
by one).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np
import onnx_ir
import torch

from qdq_passes.ir.to_torch.registry import ConvertContext, Converted, converter

__all__ = ["resize_10", "resize_11", "resize_13", "resize_18", "resize_19"]

_F = np.float32
_MODES = ("nearest", "linear", "cubic")
_COORDS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize")
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_POLICIES = ("stretch", "not_larger", "not_smaller")


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The attributes of one Resize node (``nearest`` is ``"simple"`` at opset 10)."""

    mode: str
    coord: str
    nearest: str
    cubic_a: float
    exclude_outside: bool
    extrapolation: float
    antialias: bool
    axes: tuple[int, ...] | None
    policy: str


def _read_spec(ctx: ConvertContext, opset: int) -> _Spec:
    mode = ctx.attr_string("mode", "nearest")
    if mode not in _MODES or (opset == 10 and mode == "cubic"):
        raise ctx.unsupported(f"mode {mode!r} is not supported")
    if opset == 10:
        return _Spec(mode, "asymmetric", "simple", -0.75, False, 0.0, False, None, "stretch")
    coord = ctx.attr_string("coordinate_transformation_mode", "half_pixel")
    coords = _COORDS + (("half_pixel_symmetric",) if opset >= 19 else ())
    if coord not in coords:
        raise ctx.unsupported(f"coordinate_transformation_mode {coord!r} is not supported at opset {opset}")
    nearest = ctx.attr_string("nearest_mode", "round_prefer_floor")
    if mode == "nearest" and nearest not in _NEAREST:
        raise ctx.unsupported(f"nearest_mode {nearest!r} is not supported")
    antialias, axes, policy = False, None, "stretch"
    if opset >= 18:
        antialias = bool(ctx.attr_int("antialias", 0))
        attr_axes = ctx.attr_ints("axes")
        axes = None if attr_axes is None else tuple(attr_axes)
        policy = ctx.attr_string("keep_aspect_ratio_policy", "stretch")
        if policy not in _POLICIES:
            raise ctx.unsupported(f"keep_aspect_ratio_policy {policy!r} is not supported")
    exclude = bool(ctx.attr_int("exclude_outside", 0))
    if antialias and mode == "nearest":
        raise ctx.unsupported("antialias=1 needs mode linear or cubic")
    if antialias and coord == "tf_crop_and_resize":
        raise ctx.unsupported("antialias=1 with tf_crop_and_resize is not implemented")
    if exclude and mode != "cubic" and not (antialias and mode == "linear"):
        raise ctx.unsupported("exclude_outside=1 needs mode cubic (or linear with antialias)")
    return _Spec(
        mode,
        coord,
        nearest if mode == "nearest" else "",
        float(_F(ctx.attr_float("cubic_coeff_a", -0.75))),
        exclude,
        ctx.attr_float("extrapolation_value", 0.0),
        antialias,
        axes,
        policy,
    )


# --------------------------------------------------------------------------- output size


def _round_half_away(v: float) -> int:
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def _plan(
    spec: _Spec, in_shape: Sequence[int], scales: Sequence[float] | None, sizes: Sequence[int] | None
) -> tuple[list[int], list[float]]:
    """``(output shape, per-axis float32 scale)`` as onnxruntime computes them."""
    rank = len(in_shape)
    axes = list(range(rank)) if spec.axes is None else [a % rank for a in spec.axes]
    if scales:
        if len(scales) != len(axes):
            raise ValueError(f"Resize: {len(scales)} scales for {len(axes)} axes")
        full = [1.0] * rank
        for a, s in zip(axes, scales):
            full[a] = float(_F(s))
        if any(s <= 0 for s in full):
            raise ValueError(f"Resize: scales must be positive, got {list(scales)}")
        return [int(_F(s) * _F(d)) for s, d in zip(full, in_shape)], full
    if sizes is None:
        raise ValueError("Resize needs scales or sizes")
    if len(sizes) != len(axes):
        raise ValueError(f"Resize: {len(sizes)} sizes for {len(axes)} axes")
    out = list(in_shape)
    for a, n in zip(axes, sizes):
        out[a] = int(n)
    full = [float(_F(o) / _F(d)) if d else 1.0 for o, d in zip(out, in_shape)]
    if spec.policy != "stretch":
        pick = min if spec.policy == "not_larger" else max
        p = pick(full[a] for a in axes)
        for a in range(rank):
            if a in axes:
                full[a] = p
                out[a] = _round_half_away(float(_F(p) * _F(in_shape[a])))
            else:
                full[a], out[a] = 1.0, in_shape[a]
    return out, full


def _full_roi(spec: _Spec, roi: Sequence[float] | None, rank: int) -> list[float]:
    """``[starts..., ends...]`` over every axis (default 0..1)."""
    if spec.coord != "tf_crop_and_resize" or not roi:
        return [0.0] * rank + [1.0] * rank
    if spec.axes is None:
        if len(roi) != 2 * rank:
            raise ValueError(f"Resize: roi of {len(roi)} values for rank {rank}")
        return [float(v) for v in roi]
    full = [0.0] * rank + [1.0] * rank
    n = len(spec.axes)
    for i, a in enumerate(spec.axes):
        full[a % rank], full[rank + a % rank] = float(roi[i]), float(roi[n + i])
    return full


# --------------------------------------------------------------------------- per-axis taps


def _original(coord: str, n_out: int, n_in: int, scale: float, r0: float, r1: float) -> np.ndarray:
    """Source coordinate of every output index (float32, onnxruntime's formulas)."""
    x = np.arange(n_out, dtype=_F)
    s, half = _F(scale), _F(0.5)
    if coord == "half_pixel":
        return (x + half) / s - half
    if coord == "pytorch_half_pixel":
        return (x + half) / s - half if n_out > 1 else np.zeros(n_out, _F)
    if coord == "tf_half_pixel_for_nn":
        return (x + half) / s
    if coord == "asymmetric":
        return x / s
    if coord == "align_corners":
        return np.zeros(n_out, _F) if n_out == 1 else x * _F(n_in - 1) / _F(n_out - 1)
    if coord == "tf_crop_and_resize":
        start, end, span = _F(r0), _F(r1), _F(n_in - 1)
        if n_out > 1:
            return start * span + (x * (end - start) * span) / _F(n_out - 1)
        return np.full(n_out, _F(0.5 * float(start + end) * float(span)), _F)
    # half_pixel_symmetric (the tail is computed in double, as in onnxruntime)
    adjustment = _F(n_out) / (s * _F(n_in))
    offset = (_F(n_in) / _F(2)) * (_F(1) - adjustment)
    return (np.float64(offset) + (x.astype(np.float64) + 0.5) / np.float64(s) - 0.5).astype(_F)


_TIE = _F(1e-6)


def _nearest_index(orig: np.ndarray, n_in: int, scale: float, mode: str) -> np.ndarray:
    """onnxruntime's nearest pixel. Its round modes take a fraction within 1e-6 of 0.5 as a tie
    (round_prefer_floor goes down, round_prefer_ceil up), so that coordinates like 7.4999995 that
    are 7.5 but for float error count as halfway (measured on onnxruntime 1.32)."""
    if mode == "simple":
        idx = np.ceil(orig) if scale < 1 else np.trunc(orig)
    elif mode == "floor":
        idx = np.floor(orig)
    elif mode == "ceil":
        idx = np.ceil(orig)
    else:
        low = np.floor(orig)
        frac = (orig - low).astype(_F)
        tie = np.abs(frac - _F(0.5)) <= _TIE
        idx = low + np.where(tie, mode == "round_prefer_ceil", frac > _F(0.5))
    return np.clip(idx, 0, n_in - 1).astype(np.int64)


def _cubic_coeffs(s: np.ndarray, a: float) -> list[np.ndarray]:
    a_, x = _F(a), np.abs(s).astype(_F)
    one, two = _F(1), _F(2)
    return [
        ((a_ * (x + one) - 5 * a_) * (x + one) + 8 * a_) * (x + one) - 4 * a_,
        ((a_ + two) * x - (a_ + 3)) * x * x + one,
        ((a_ + two) * (one - x) - (a_ + 3)) * (one - x) * (one - x) + one,
        ((a_ * (two - x) - 5 * a_) * (two - x) + 8 * a_) * (two - x) - 4 * a_,
    ]


def _aa_filter(x: np.ndarray, cubic: bool, a: float) -> np.ndarray:
    x = np.abs(x).astype(_F)
    if not cubic:
        return np.where(x < 1, _F(1) - x, _F(0)).astype(_F)
    a_ = _F(a)
    near = ((a_ + _F(2)) * x - (a_ + _F(3))) * x * x + _F(1)
    far = (((x - _F(5)) * x + _F(8)) * x - _F(4)) * a_
    return np.where(x < 1, near, np.where(x < 2, far, _F(0))).astype(_F)


Taps = tuple[tuple[np.ndarray, np.ndarray | None], ...]


def _antialias_taps(spec: _Spec, n_in: int, n_out: int, rscale: float, r0: float, r1: float) -> Taps:
    """onnxruntime's (Pillow-style) antialias filter weights as ``window`` taps."""
    cubic = spec.mode == "cubic"
    scale = _F(1) / _F(rscale)
    half_support = _F(2.0 if cubic else 1.0)
    support = half_support * scale if scale >= 1 else half_support
    window = int(math.ceil(float(support))) * 2 + 1
    inv_scale = _F(1) / scale if scale >= 1 else _F(1)
    orig = np.arange(n_out, dtype=_F) if scale == 1 else _original(spec.coord, n_out, n_in, rscale, r0, r1)
    idx = np.zeros((window, n_out), np.int64)
    wts = np.zeros((window, n_out), _F)
    for i in range(n_out):
        center = _F(0.5) + orig[i]
        lo = int(np.floor(center - support + _F(0.5)))
        hi = int(np.floor(center + support + _F(0.5)))
        hi = lo + min(max(hi - lo, 0), window)
        lo_cut, hi_cut = min(max(lo, 0), n_in), min(max(hi, 0), n_in)
        lo_w, hi_w = (lo_cut, hi_cut) if spec.exclude_outside else (lo, hi)
        count = hi_w - lo_w
        pos = (np.arange(count, dtype=np.int64) + lo_w).astype(_F)
        buf = list(_aa_filter((pos - center + _F(0.5)) * inv_scale, cubic, spec.cubic_a))
        total = _F(0)
        for w in buf:
            total = _F(total + w)
        if not spec.exclude_outside and lo_cut < hi_cut:
            neg = min(max(-lo_w, 0), count - 1)
            for j in range(neg):
                buf[neg] = _F(buf[neg] + buf[j])
            bound = min(max(count + lo_w - n_in, 0), count - 1)
            for j in range(count - bound, count):
                buf[count - bound - 1] = _F(buf[count - bound - 1] + buf[j])
            if neg or bound:
                for j in range(hi_cut - lo_cut):
                    buf[j] = buf[j + neg]
        inv_total = _F(1) if total == 0 else _F(1) / total
        for j in range(hi_cut - lo_cut):
            idx[j, i] = lo_cut + j
            wts[j, i] = _F(buf[j] * inv_total)
        for j in range(hi_cut - lo_cut, window):
            idx[j, i] = min(max(lo_cut, 0), n_in - 1)
    return tuple((idx[j], wts[j]) for j in range(window))


@functools.lru_cache(maxsize=256)
def _axis_taps(
    spec: _Spec, n_in: int, n_out: int, scale: float, r0: float, r1: float
) -> tuple[Taps, np.ndarray | None]:
    """``(taps, outside)`` for one resized axis: taps are ``(input index, weight or None)`` per
    output index, summed; ``outside`` marks outputs that take the extrapolation value."""
    if spec.antialias:
        return _antialias_taps(spec, n_in, n_out, scale, r0, r1), None
    orig = _original(spec.coord, n_out, n_in, scale, r0, r1)
    outside = None
    if spec.coord == "tf_crop_and_resize":
        outside = (orig < 0) | (orig > _F(n_in - 1))
        outside = outside if outside.any() else None
    if spec.mode == "nearest":
        return ((_nearest_index(orig, n_in, scale, spec.nearest), None),), outside
    if spec.mode == "linear":
        v = np.maximum(_F(0), np.minimum(orig, _F(n_in - 1)))
        i1 = np.minimum(v.astype(np.int64), n_in - 1)
        i2 = np.minimum(i1 + 1, n_in - 1)
        w2 = np.abs(v - i1.astype(_F))
        w1 = np.abs(v - i2.astype(_F))
        same = i1 == i2
        w1, w2 = np.where(same, _F(0.5), w1).astype(_F), np.where(same, _F(0.5), w2).astype(_F)
        return ((i1, w1), (i2, w2)), outside
    base = np.floor(orig)
    coeffs = _cubic_coeffs((orig - base).astype(_F), spec.cubic_a)
    taps = []
    index = [base.astype(np.int64) + k for k in (-1, 0, 1, 2)]
    if spec.exclude_outside:
        coeffs = [np.where((i < 0) | (i >= n_in), _F(0), c).astype(_F) for i, c in zip(index, coeffs)]
        total = coeffs[0] + coeffs[1] + coeffs[2] + coeffs[3]
        safe = np.where(total == 0, _F(1), total)  # all taps outside: extrapolated anyway
        coeffs = [(c / safe).astype(_F) for c in coeffs]
    for i, c in zip(index, coeffs):
        taps.append((np.clip(i, 0, n_in - 1), c))
    return tuple(taps), outside


def _apply_taps(y: torch.Tensor, axis: int, taps: Taps) -> torch.Tensor:
    shape = [1] * y.dim()
    shape[axis] = -1
    out: torch.Tensor | None = None
    for idx, w in taps:
        g = y.index_select(axis, torch.from_numpy(idx).to(y.device))
        if w is not None:
            g = g * torch.from_numpy(w).to(device=y.device, dtype=y.dtype).reshape(shape)
        out = g if out is None else out + g
    assert out is not None
    return out


# --------------------------------------------------------------------------- torch kernels


def _power_of_two(s: float) -> bool:
    m, _ = math.frexp(s)
    return m == 0.5


def _torch_kernel(
    x: torch.Tensor, spec: _Spec, axes: list[int], out_shape: list[int], scales: list[float]
) -> torch.Tensor | None:
    """The resize through a torch upsample kernel when it computes the same, else None."""
    rank = x.dim()
    if not x.is_floating_point() or spec.antialias or rank not in (3, 4, 5) or min(axes) < 2:
        return None
    if any(out_shape[a] == x.shape[a] for a in axes):
        return None  # torch copies an axis whose size does not change, whatever its scale
    size = out_shape[2:]
    sc = scales[2:]
    if spec.mode == "nearest":
        if spec.coord != "asymmetric" or spec.nearest not in ("floor", "simple"):
            return None
        if not all(_power_of_two(scales[a]) for a in axes):
            return None
        fn = {3: torch._C._nn.upsample_nearest1d, 4: torch._C._nn.upsample_nearest2d, 5: torch._C._nn.upsample_nearest3d}
        return fn[rank](x, size, *sc)
    if spec.coord == "align_corners":
        align = True
    elif spec.coord == "half_pixel" or (spec.coord == "pytorch_half_pixel" and all(out_shape[a] > 1 for a in axes)):
        align = False
    else:
        return None
    if spec.mode == "linear":
        fn = {3: torch._C._nn.upsample_linear1d, 4: torch._C._nn.upsample_bilinear2d, 5: torch._C._nn.upsample_trilinear3d}
        return fn[rank](x, size, align, *sc)
    if rank == 4 and spec.cubic_a == -0.75 and not spec.exclude_outside:
        return torch._C._nn.upsample_bicubic2d(x, size, align, *sc)
    return None


def _resize(
    x: torch.Tensor,
    spec: _Spec,
    scales: Sequence[float] | None,
    sizes: Sequence[int] | None,
    roi: Sequence[float] | None,
) -> torch.Tensor:
    in_shape = list(x.shape)
    out_shape, full = _plan(spec, in_shape, scales, sizes)
    if out_shape == in_shape:
        return x  # onnxruntime copies whenever the shape does not change
    if spec.antialias:
        axes = [a for a in range(x.dim()) if out_shape[a] != in_shape[a]]
    else:
        axes = [a for a in range(x.dim()) if full[a] != 1.0]
    if any(n == 0 for n in out_shape) or any(in_shape[a] == 0 for a in axes):
        return x.new_zeros(out_shape)
    fast = _torch_kernel(x, spec, axes, out_shape, full)
    if fast is not None:
        return fast
    rank = x.dim()
    r = _full_roi(spec, roi, rank)
    dtype = x.dtype
    y = x if spec.mode == "nearest" or x.is_floating_point() else x.to(torch.float32)
    mask: torch.Tensor | None = None
    for a in reversed(axes):  # innermost first, as onnxruntime's cubic kernel
        taps, outside = _axis_taps(spec, in_shape[a], out_shape[a], full[a], r[a], r[rank + a])
        y = _apply_taps(y, a, taps)
        if outside is not None:
            shape = [1] * rank
            shape[a] = -1
            m = torch.from_numpy(outside).to(y.device).reshape(shape)
            mask = m if mask is None else mask | m
    if mask is not None:
        y = y.masked_fill(mask, spec.extrapolation)
    return y if y.dtype == dtype else y.to(dtype)


# --------------------------------------------------------------------------- converters


def _floats(arr: np.ndarray | None) -> list[float] | None:
    return None if arr is None else [float(v) for v in np.asarray(arr, np.float32).reshape(-1)]


def _ints(arr: np.ndarray | None) -> list[int] | None:
    return None if arr is None else [int(v) for v in np.asarray(arr).reshape(-1)]


def _convert(ctx: ConvertContext, spec: _Spec, roi_at: int | None, scales_at: int, sizes_at: int | None) -> Converted:
    """Read constant roi/scales/sizes now; pass the computed ones to the run-time function."""
    const: dict[str, list | None] = {"roi": None, "scales": None, "sizes": None}
    runtime: list[tuple[str, int]] = []
    wanted = [("scales", scales_at)]
    if sizes_at is not None:
        wanted.append(("sizes", sizes_at))
    if roi_at is not None and spec.coord == "tf_crop_and_resize":
        wanted.append(("roi", roi_at))
    for name, pos in wanted:
        if not ctx.has_input(pos):
            continue
        arr = ctx.constant(pos)
        if arr is None:
            runtime.append((name, pos))
        else:
            const[name] = _ints(arr) if name == "sizes" else _floats(arr)
    if const["scales"]:  # constant non-empty scales: sizes are not read
        runtime = [(n, p) for n, p in runtime if n != "sizes"]
    elif not runtime and not const["sizes"]:
        raise ctx.unsupported("neither scales nor sizes is given")
    names = [n for n, _ in runtime]

    def run(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        got = dict(const)
        for name, v in zip(names, values):
            got[name] = [int(i) for i in v.reshape(-1).tolist()] if name == "sizes" else v.reshape(-1).tolist()
        scales = got["scales"] or None
        return _resize(x, spec, scales, None if scales else got["sizes"], got["roi"])

    return Converted(run, (0, *(p for _, p in runtime)))


@converter("Resize", since=10, until=10)
def resize_10(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Resize (10): inputs X, scales (constant or computed); ``mode`` nearest or linear, with
    asymmetric coordinates and onnxruntime's opset-10 nearest rounding (floor when upsampling,
    ceil when downsampling)."""
    return _convert(ctx, _read_spec(ctx, 10), None, 1, None)


@converter("Resize", since=11, until=12)
def resize_11(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Resize (11-12): inputs X, roi, scales, sizes (constant or computed); ``mode``
    nearest/linear/cubic; ``coordinate_transformation_mode`` half_pixel, pytorch_half_pixel,
    align_corners, asymmetric, tf_half_pixel_for_nn, tf_crop_and_resize (with
    ``extrapolation_value``); ``nearest_mode``; ``cubic_coeff_a``; ``exclude_outside``."""
    return _convert(ctx, _read_spec(ctx, 11), 1, 2, 3)


@converter("Resize", since=13, until=17)
def resize_13(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Resize (13-17): as 11, with roi and scales optional."""
    return _convert(ctx, _read_spec(ctx, 13), 1, 2, 3)


@converter("Resize", since=18, until=18)
def resize_18(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Resize (18): as 13, plus ``axes``, ``keep_aspect_ratio_policy`` and ``antialias`` (linear
    and cubic, onnxruntime's Pillow-style filter; not with tf_crop_and_resize)."""
    return _convert(ctx, _read_spec(ctx, 18), 1, 2, 3)


@converter("Resize", since=19)
def resize_19(node: onnx_ir.Node, ctx: ConvertContext) -> Converted:
    """Resize (19+): as 18, plus coordinate_transformation_mode half_pixel_symmetric."""
    return _convert(ctx, _read_spec(ctx, 19), 1, 2, 3)
