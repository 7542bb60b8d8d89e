"""Torch quantizers of Quark's ``base_qdq_quantizers`` API, bit-exact with ONNX Q/DQ.

The forward passes follow ONNX ``QuantizeLinear``/``DequantizeLinear`` (opset 21) as onnxruntime's
CPU kernels compute them: a true float32 division ``x / s`` (never ``x * (1 / s)``), round half to
even, the zero point added after rounding, saturation, NaN to ``min_q``. See ``docs/quantizers.md``
for the maths and every difference from the original classes.

Layouts: per-tensor (one scale), per-channel (1-D scale along ``ch_axis``) and blocked
(``block_size > 0``: scale of the input's rank, ``ceil(D / block_size)`` entries along ``ch_axis``,
ragged last block; ONNX opset 21 layout).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from qdq_passes.ir.to_torch.quant import RoundHalfToEven

__all__ = [
    "AdaroundConstants",
    "AdaroundINTQuantizer",
    "FPQuantizer",
    "INTDeQuantFunction",
    "INTQuantDequantFunction",
    "INTQuantFunction",
    "INTQuantizer",
    "RoundHalfToEven",
]

_NONE5 = (None, None, None, None, None)


def _in_range(v: torch.Tensor, min_q: torch.Tensor, max_q: torch.Tensor) -> torch.Tensor:
    """Boolean mask of ``min_q <= v <= max_q`` (False on NaN), with one temporary."""
    return torch.ge(v, min_q).logical_and_(torch.le(v, max_q))


def _quantize(
    tensor: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    min_q: torch.Tensor,
    max_q: torch.Tensor,
    round_func: type[torch.autograd.Function],
    need_mask: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Codes ``clamp(round(x / s) + zp)`` (NaN -> min_q) in a fresh tensor; the in-range mask."""
    v = torch.div(tensor, scale)
    v = v.round_() if round_func is RoundHalfToEven else round_func.apply(v)
    v.add_(zero_point)
    mask = _in_range(v, min_q, max_q) if need_mask else None
    lo = float(min_q)
    v.clamp_(lo, float(max_q)).nan_to_num_(nan=lo)
    return v, mask


class INTQuantFunction(torch.autograd.Function):
    """ONNX QuantizeLinear: ``clamp(round(x / s) + zp, min_q, max_q)``, NaN -> ``min_q``.

    Returns the codes as floats. Backward (straight-through): ``grad / s`` where
    ``round(x / s) + zp`` lies in ``[min_q, max_q]``, 0 elsewhere and on NaN, so that composing
    it with :class:`INTDeQuantFunction` gives the gradient of :class:`INTQuantDequantFunction`.
    No gradient for the scale, zero point or range.
    """

    @staticmethod
    def forward(
        ctx: Any,
        tensor: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        min_q: torch.Tensor,
        max_q: torch.Tensor,
        round_func: type[torch.autograd.Function],
    ) -> torch.Tensor:
        """Quantize ``tensor``; ``scale``/``zero_point`` broadcast against it."""
        codes, mask = _quantize(
            tensor, scale, zero_point, min_q, max_q, round_func, ctx.needs_input_grad[0]
        )
        ctx.save_for_backward(mask, scale)
        return codes

    @staticmethod
    def backward(
        ctx: Any, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None, None, None]:
        """``grad / scale`` inside the range, 0 outside."""
        mask, scale = ctx.saved_tensors
        return torch.where(mask, grad_output / scale, 0.0), *_NONE5


class INTDeQuantFunction(torch.autograd.Function):
    """ONNX DequantizeLinear: ``(q - zp) * s``, one rounding; backward ``grad * s``.

    Integer inputs are subtracted in int64 before the single rounding to float.
    """

    @staticmethod
    def forward(
        ctx: Any, tensor: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
    ) -> torch.Tensor:
        """Dequantize codes ``tensor`` (float or integer)."""
        ctx.save_for_backward(scale)
        if tensor.is_floating_point():
            return torch.sub(tensor, zero_point).mul_(scale)
        return (tensor.long() - zero_point.long()).to(scale.dtype).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        """``grad * scale`` (the original's ``(grad - zp) * scale`` is wrong)."""
        (scale,) = ctx.saved_tensors
        return grad_output * scale, None, None


class INTQuantDequantFunction(torch.autograd.Function):
    """ONNX QuantizeLinear then DequantizeLinear: ``(clamp(round(x / s) + zp) - zp) * s``.

    Backward (straight-through): ``grad`` where ``round(x / s) + zp`` lies in
    ``[min_q, max_q]``, 0 elsewhere and on NaN; no gradient for the other inputs.
    """

    @staticmethod
    def forward(
        ctx: Any,
        tensor: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        min_q: torch.Tensor,
        max_q: torch.Tensor,
        round_func: type[torch.autograd.Function],
    ) -> torch.Tensor:
        """Fake-quantize ``tensor``, in place on one fresh tensor."""
        codes, mask = _quantize(
            tensor, scale, zero_point, min_q, max_q, round_func, ctx.needs_input_grad[0]
        )
        ctx.save_for_backward(mask)
        return codes.sub_(zero_point).mul_(scale)

    @staticmethod
    def backward(
        ctx: Any, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None, None, None]:
        """``grad`` inside the range, 0 outside."""
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad_output, 0.0), *_NONE5


def _shift(v: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``v + z`` in place, written ``v - (0 - z)`` so that -0.0 stays -0.0 when ``z`` is 0."""
    return v.sub_(0.0 - zero_point)


class _FPQuantDequantFunction(torch.autograd.Function):
    """``(float(cast_T(clamp(x / s + z, min_q, max_q))) - z) * s``; straight-through in range."""

    @staticmethod
    def forward(
        ctx: Any,
        tensor: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        min_q: torch.Tensor,
        max_q: torch.Tensor,
        quant_type: torch.dtype,
    ) -> torch.Tensor:
        """Fake-cast ``tensor`` to ``quant_type``."""
        v = _shift(torch.div(tensor, scale), zero_point)
        mask = _in_range(v, min_q, max_q) if ctx.needs_input_grad[0] else None
        v.clamp_(float(min_q), float(max_q))
        v.copy_(v.to(quant_type))
        ctx.save_for_backward(mask)
        return v.sub_(zero_point).mul_(scale)

    @staticmethod
    def backward(
        ctx: Any, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None, None, None]:
        """``grad`` where ``x / s + z`` lies in ``[min_q, max_q]``, 0 elsewhere."""
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad_output, 0.0), *_NONE5


def _buffer(value: torch.Tensor | Any) -> torch.Tensor:
    """A detached float32 copy of ``value``."""
    return torch.as_tensor(value).detach().to(torch.float32).clone()


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _restore(result: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """Cast a float result back to the input's float dtype (float16/bfloat16: one rounding)."""
    if tensor.is_floating_point() and result.dtype != tensor.dtype:
        return result.to(tensor.dtype)
    return result


def _prepare(tensor: torch.Tensor, keep_integers: bool = False) -> torch.Tensor:
    """``tensor`` in its compute dtype, detached under ``no_grad`` (so no backward mask is made).

    The explicit cast matters: a 0-d float32 scale would not promote a float16 tensor.
    """
    tensor = tensor if torch.is_grad_enabled() else tensor.detach()
    if keep_integers and not tensor.is_floating_point():
        return tensor
    return tensor.to(_compute_dtype(tensor))


class _ScaledQuantizer(nn.Module):
    """Shared state of the quantizers: scale, zero point, range and layout (all buffers)."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    min_q: torch.Tensor
    max_q: torch.Tensor

    def __init__(
        self,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        min_q: torch.Tensor,
        max_q: torch.Tensor,
        ch_axis: int = 0,
        q_folded: bool = False,
        *,
        block_size: int = 0,
    ) -> None:
        super().__init__()
        scale, zero_point = _buffer(scale), _buffer(zero_point)
        if zero_point.numel() != scale.numel():
            raise ValueError(
                f"zero_point shape {tuple(zero_point.shape)} differs from scale shape "
                f"{tuple(scale.shape)}"
            )
        if block_size < 0:
            raise ValueError(f"block_size is {block_size}, must be >= 0")
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point.reshape(scale.shape))
        self.register_buffer("min_q", _buffer(min_q).reshape(()))
        self.register_buffer("max_q", _buffer(max_q).reshape(()))
        if not self.min_q <= self.max_q:
            raise ValueError(f"min_q {float(self.min_q)} > max_q {float(self.max_q)}")
        self.ch_axis = ch_axis
        self.q_folded = q_folded
        self.block_size = block_size

    @property
    def granularity(self) -> str:
        """``"tensor"``, ``"channel"`` or ``"block"``."""
        if self.block_size > 0:
            return "block"
        return "tensor" if self.scale.numel() == 1 else "channel"

    def extra_repr(self) -> str:
        """Layout summary for ``print(module)``."""
        return (
            f"granularity={self.granularity}, ch_axis={self.ch_axis}, "
            f"block_size={self.block_size}, "
            f"range=[{float(self.min_q):g}, {float(self.max_q):g}], q_folded={self.q_folded}"
        )

    def _broadcast(self, param: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
        """``param`` shaped to broadcast (blocked: expand) against ``tensor``."""
        granularity = self.granularity
        if granularity == "tensor":
            return param.reshape(())
        rank = tensor.dim()
        if not -rank <= self.ch_axis < rank:
            raise ValueError(f"ch_axis {self.ch_axis} is out of range for rank {rank}")
        axis = self.ch_axis % rank
        dim = tensor.shape[axis]
        if granularity == "channel":
            if param.dim() != 1 or param.numel() != dim:
                raise ValueError(
                    f"per-channel scale has shape {tuple(param.shape)}, "
                    f"x has {dim} along axis {axis}"
                )
            return param.reshape([dim if i == axis else 1 for i in range(rank)])
        expected = [
            math.ceil(dim / self.block_size) if i == axis else d for i, d in enumerate(tensor.shape)
        ]
        if list(param.shape) != expected:
            raise ValueError(
                f"blocked scale has shape {tuple(param.shape)}, "
                f"x of shape {tuple(tensor.shape)} with "
                f"block_size {self.block_size} along axis {axis} needs {tuple(expected)}"
            )
        return param.repeat_interleave(self.block_size, dim=axis).narrow(axis, 0, dim)

    def tensor_sync(self, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point on ``tensor``'s device and compute dtype, shaped to broadcast.

        Returns new tensors or views of the buffers (do not modify them in place); the module's
        own buffers are never reassigned or reshaped.
        """
        dtype = _compute_dtype(tensor)
        scale = self.scale.to(device=tensor.device, dtype=dtype)
        zero_point = self.zero_point.to(device=tensor.device, dtype=dtype)
        return self._broadcast(scale, tensor), self._broadcast(zero_point, tensor)

    def dequantize(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(q - zp) * s`` (ONNX DequantizeLinear) in float32 (float64 for float64 codes)."""
        scale, zero_point = self.tensor_sync(tensor)
        return INTDeQuantFunction.apply(_prepare(tensor, keep_integers=True), scale, zero_point)

    def quantize_dequantize(self, tensor: torch.Tensor) -> torch.Tensor:
        """Quantize then dequantize: every concrete quantizer (INT, AdaRound, FP) defines it."""
        raise NotImplementedError(f"{type(self).__name__} does not define quantize_dequantize")

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """``dequantize`` if ``q_folded`` (input = stored codes), else ``quantize_dequantize``."""
        return self.dequantize(tensor) if self.q_folded else self.quantize_dequantize(tensor)


class INTQuantizer(_ScaledQuantizer):
    """Integer quantizer: ONNX QuantizeLinear, DequantizeLinear and the Q/DQ pair.

    ``scale``, ``zero_point``, ``min_q`` and ``max_q`` are float32 buffers (in ``state_dict``).
    A one-element scale is per-tensor; a 1-D scale is per-channel along ``ch_axis`` (negative
    allowed); ``block_size > 0`` is blocked along ``ch_axis``. ``forward`` fake-quantizes, or
    dequantizes when ``q_folded`` (the input is the stored integers). Inputs in float16/bfloat16
    are computed in float32; float64 stays float64.
    """

    def round_impl(self, tensor: torch.Tensor) -> torch.Tensor:
        """Round ``tensor`` (the values ``x / s``): half to even, straight-through gradient."""
        return RoundHalfToEven.apply(tensor)

    def quantize(self, tensor: torch.Tensor) -> torch.Tensor:
        """Codes ``clamp(round(x / s) + zp, min_q, max_q)`` as floats (ONNX QuantizeLinear)."""
        scale, zero_point = self.tensor_sync(tensor)
        return INTQuantFunction.apply(
            _prepare(tensor), scale, zero_point, self.min_q, self.max_q, RoundHalfToEven
        )

    def quantize_dequantize(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(clamp(round(x / s) + zp) - zp) * s``, bit-exact with ONNX Q then DQ."""
        scale, zero_point = self.tensor_sync(tensor)
        result = INTQuantDequantFunction.apply(
            _prepare(tensor), scale, zero_point, self.min_q, self.max_q, RoundHalfToEven
        )
        return _restore(result, tensor)


class AdaroundConstants:
    """Stretch of AdaRound's rectified sigmoid, ``clip(sigmoid(a) * (ZETA - GAMMA) + GAMMA, 0, 1)``.

    GAMMA -0.1, ZETA 1.1 (Nagel et al., 2020).
    """

    GAMMA = -0.1
    ZETA = 1.1


class AdaroundINTQuantizer(INTQuantizer):
    """Integer quantizer whose rounding (down or up) is learned through ``alpha`` (AdaRound).

    ``alpha`` is a parameter of the weight's shape, set by :meth:`initialize_alpha` (or the
    ``weight`` argument) so that ``h(alpha)`` is the fractional part of ``W / s``. While
    ``use_soft_rounding`` is True the codes are ``floor(W / s) + h(alpha) + zp``, differentiable in
    ``alpha``; after it they are ``floor(W / s) + (alpha >= 0) + zp``; both are clamped to
    ``[min_q, max_q]`` (the range of the real dtype, e.g. int4 [-8, 7]). Before ``alpha`` exists
    the quantizer rounds to nearest even, like :class:`INTQuantizer`.
    """

    alpha: nn.Parameter | None

    def __init__(
        self,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        min_q: torch.Tensor,
        max_q: torch.Tensor,
        ch_axis: int = 0,
        q_folded: bool = False,
        *,
        block_size: int = 0,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__(scale, zero_point, min_q, max_q, ch_axis, q_folded, block_size=block_size)
        self.register_parameter("alpha", None)
        self.use_soft_rounding = True
        if weight is not None:
            self.initialize_alpha(weight)

    def h(self) -> torch.Tensor:
        """Rectified sigmoid ``clip(sigmoid(alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)``."""
        if self.alpha is None:
            raise RuntimeError("alpha is not initialised: call initialize_alpha(weight) first")
        c = AdaroundConstants
        return torch.clamp(torch.sigmoid(self.alpha) * (c.ZETA - c.GAMMA) + c.GAMMA, 0.0, 1.0)

    def initialize_alpha(self, tensor: torch.Tensor) -> None:
        """Set ``alpha`` so that ``h(alpha) = W / s - floor(W / s)``.

        ``W / s`` is the forward's own division, so ``floor`` agrees with it; ``alpha`` is computed
        in float64. Hard rounding at this point is round-half-to-even, i.e. ONNX's Q: exact ties get
        ``alpha = +0`` (up) or ``-tiny`` (down), both with ``h = 0.5``. An existing ``alpha`` of the
        same shape is overwritten in place (optimisers holding it stay valid); otherwise a new
        parameter is created.
        """
        scale, _ = self.tensor_sync(tensor)
        with torch.no_grad():
            v = tensor.to(scale.dtype) / scale
            frac = (v - torch.floor(v)).double()
            c = AdaroundConstants
            alpha = -torch.log((c.ZETA - c.GAMMA) / (frac - c.GAMMA) - 1)
            # Exact ties: h = 0.5 either way; the sign picks the even code, as Q rounds.
            odd = torch.remainder(torch.floor(v), 2) == 1
            tie = torch.where(odd, 0.0, -torch.finfo(torch.float32).tiny).to(alpha.dtype)
            alpha = torch.where(frac == 0.5, tie, alpha)
            if self.alpha is not None and self.alpha.shape == alpha.shape:
                self.alpha.copy_(alpha)
            else:
                self.alpha = nn.Parameter(alpha.to(torch.float32))

    def _round(self, tensor: torch.Tensor, soft: bool) -> torch.Tensor:
        """``floor(t) + h(alpha)`` (soft) or ``floor(t) + (alpha >= 0)`` (hard)."""
        offset = self.h() if soft else (self.alpha >= 0)
        return torch.floor(tensor) + offset.to(tensor.dtype)

    def round_impl(self, tensor: torch.Tensor) -> torch.Tensor:
        """Round ``t = W / s`` with the current mode (nearest even before ``alpha`` exists)."""
        if self.alpha is None:
            return super().round_impl(tensor)
        return self._round(tensor, self.use_soft_rounding)

    def _codes(
        self, tensor: torch.Tensor, soft: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes ``clamp(rounded + zp, min_q, max_q)`` (differentiable in ``alpha``), scale, zp."""
        scale, zero_point = self.tensor_sync(tensor)
        rounded = self._round(tensor.to(scale.dtype) / scale, soft)
        lo, hi = self.min_q.to(scale), self.max_q.to(scale)
        return torch.clamp(rounded + zero_point, lo, hi), scale, zero_point

    def quantize(self, tensor: torch.Tensor) -> torch.Tensor:
        """Codes as floats: soft (non-integer) while training, hard after."""
        if self.alpha is None:
            return super().quantize(tensor)
        return self._codes(tensor, self.use_soft_rounding)[0]

    def quantize_dequantize(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(codes - zp) * s`` with the current rounding mode."""
        if self.alpha is None:
            return super().quantize_dequantize(tensor)
        codes, scale, zero_point = self._codes(tensor, self.use_soft_rounding)
        return _restore((codes - zero_point) * scale, tensor)

    def codes(self, tensor: torch.Tensor) -> torch.Tensor:
        """The chosen integer codes ``clamp(floor(W / s) + (alpha >= 0) + zp)`` as int64.

        Nearest-even codes before ``alpha`` exists. ``dequantize(codes)`` equals the hard forward.
        """
        with torch.no_grad():
            if self.alpha is None:
                return super().quantize(tensor).long()
            return self._codes(tensor, soft=False)[0].long()

    def regularizer(self, beta: float) -> torch.Tensor:
        """AdaRound's rounding regulariser ``sum(1 - |2 h(alpha) - 1| ** beta)``."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()


class FPQuantizer(_ScaledQuantizer):
    """Floating-point quantizer: scale, shift, round to ``quant_type`` (float16, bfloat16, float8).

    ``y = (float32(clamp(cast_T(x / s + z), min_q, max_q)) - z) * s``, round to nearest even
    on the cast. The clamp is applied before the cast, which gives the same result when
    ``min_q``/``max_q`` are representable in ``quant_type`` (checked) and keeps saturation right
    for float8 types whose torch casts overflow to NaN. Straight-through gradient inside the
    range. ``q_folded``: the input is already in ``quant_type`` and ``forward`` dequantizes.
    """

    def __init__(
        self,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        min_q: torch.Tensor,
        max_q: torch.Tensor,
        ch_axis: int = 0,
        q_folded: bool = False,
        quant_type: torch.dtype = torch.bfloat16,
        *,
        block_size: int = 0,
    ) -> None:
        super().__init__(scale, zero_point, min_q, max_q, ch_axis, q_folded, block_size=block_size)
        for name in ("min_q", "max_q"):
            bound = getattr(self, name)
            if bound.to(quant_type).to(torch.float32) != bound:
                raise ValueError(f"{name} {float(bound)} is not representable in {quant_type}")
        self.quant_type = quant_type

    def extra_repr(self) -> str:
        """Layout summary and target type."""
        return f"{super().extra_repr()}, quant_type={self.quant_type}"

    def quantize(self, tensor: torch.Tensor) -> torch.Tensor:
        """``cast_T(clamp(x / s + z, min_q, max_q))``, a tensor of ``quant_type``."""
        scale, zero_point = self.tensor_sync(tensor)
        v = _shift(torch.div(_prepare(tensor), scale), zero_point)
        return torch.clamp(v, self.min_q.to(v), self.max_q.to(v)).to(self.quant_type)

    def quantize_dequantize(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(float32(cast_T(clamp(x / s + z))) - z) * s``."""
        scale, zero_point = self.tensor_sync(tensor)
        result = _FPQuantDequantFunction.apply(
            _prepare(tensor), scale, zero_point, self.min_q, self.max_q, self.quant_type
        )
        return _restore(result, tensor)
