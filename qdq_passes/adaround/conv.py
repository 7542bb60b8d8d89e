"""The conv+Relu objective of ``adaround``: one Conv whose output is compared after a Relu.

A block whose only node depending on the trained rounding is one 2-D Conv with the AdaRound weight
(input 1), a per-sample input (input 0) and a constant bias (or none), and whose single trained
output is compared after a Relu (the uint8 activation quantizer folding it), has the step loss

    sum((relu(conv(X[idx], W) + b) - relu(T[idx])) ** 2) / (batch x positions)

(the direct path's squared error summed over channels, averaged over the rest). Its gradient in
``W`` is one weight-gradient convolution of ``G = 2 (relu(Y) - T) [Y > 0] / denominator``. The
direct path runs that as the block module under autograd: the gathered batch, the conv output, the
Relu, the difference, its square, the channel sum and their backward each allocate fresh
batch-sized tensors (on CPU, large fresh allocations are page faults: a sizeable part of a step).
:class:`ConvReluLoss` computes the same loss and weight gradient with one autograd node and
preallocated batch buffers, in place:

* the input is padded once over all samples (asymmetric pads included), so the conv runs unpadded;
* each step gathers the batch of inputs and targets into fixed buffers (``index_select(out=)``);
* the conv writes into a fixed buffer (oneDNN's ``mkldnn_convolution.out`` for float32 on CPU,
  ``conv2d`` otherwise); Relu, difference and mask are in place; the loss is one dot product;
* backward is ``convolution_backward`` for the weight only, scaled by the incoming gradient.

Same sampling (the caller draws the indices), same loss and gradient up to float32 rounding.
"""

from __future__ import annotations

import onnx_ir
import torch
import torch.nn.functional as F

from qdq_passes.ir.window import static_conv2d_window, torch_pad

__all__ = ["ConvReluLoss", "conv_geometry"]


def conv_geometry(node: onnx_ir.Node, weight_shape: tuple[int, ...]) -> dict | None:
    """Strides, dilations, torch pad tuple and group of a 2-D ONNX Conv with static pads; None if not handled."""
    window = static_conv2d_window(node, weight_shape)
    if window is None:
        return None
    return {
        "strides": list(window.strides),
        "dilations": list(window.dilations),
        "pad": tuple(torch_pad(window.begin, window.end)),  # F.pad order: W begin, W end, H begin, H end
        "group": node.attributes.get_int("group", 1),
    }


class _Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, weight: torch.Tensor, owner: ConvReluLoss) -> torch.Tensor:
        loss = owner._forward(weight)
        ctx.owner = owner
        ctx.save_for_backward(weight)
        return loss

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (weight,) = ctx.saved_tensors
        return ctx.owner._weight_grad(weight, grad), None


class ConvReluLoss:
    """``loss(W, idx)``: the Relu-compared squared error of one conv on the samples ``idx``.

    ``x`` (all samples, the conv's input) and ``target`` (all samples, already through the Relu)
    are kept; ``bias`` is constant. Buffers are sized for batches of ``batch`` samples."""

    def __init__(self, x: torch.Tensor, weight_shape: tuple[int, ...], bias: torch.Tensor | None,
                 target: torch.Tensor, geometry: dict, batch: int) -> None:
        pad = geometry["pad"]
        fmt = torch.contiguous_format  # channels_last measured no faster (oneDNN, 1 thread, AVX2)
        self.x = (F.pad(x, pad) if any(pad) else x).contiguous(memory_format=fmt)
        self.target = target.contiguous(memory_format=fmt)
        self.bias = None if bias is None else bias.reshape(-1).to(x.dtype).contiguous()
        self.stride = list(geometry["strides"])
        self.dilation = list(geometry["dilations"])
        self.group = geometry["group"]
        self.weight_shape = tuple(weight_shape)
        self.batch = batch
        self._xb = torch.empty((batch, *self.x.shape[1:]), dtype=self.x.dtype, device=self.x.device,
                               memory_format=fmt)
        self._tb = torch.empty((batch, *self.target.shape[1:]), dtype=self.target.dtype, device=self.x.device,
                               memory_format=fmt)
        self._yb = torch.empty_like(self._tb)
        self._mask = torch.empty_like(self._tb)
        self._mkldnn = (self.x.device.type == "cpu" and self.x.dtype == torch.float32
                        and torch.backends.mkldnn.is_available())
        self._n = batch

    @staticmethod
    def bytes_needed(x: torch.Tensor, target: torch.Tensor, geometry: dict) -> int:
        """Extra memory of the padded input copy (targets and buffers are small next to it)."""
        pad = geometry["pad"]
        if not any(pad):
            return 0
        n, c, h, w = x.shape
        return n * c * (h + pad[2] + pad[3]) * (w + pad[0] + pad[1]) * x.element_size()

    def _conv(self, xb: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self._mkldnn and weight.dtype == torch.float32:
            try:
                return torch.ops.aten.mkldnn_convolution.out(xb, weight.contiguous(), self.bias, [0, 0], self.stride,
                                                             self.dilation, self.group, out=out)
            except RuntimeError:  # pragma: no cover - a build without the out variant
                self._mkldnn = False
        out.copy_(F.conv2d(xb, weight, self.bias, self.stride, 0, self.dilation, self.group))
        return out

    def gather(self, idx: torch.Tensor) -> None:
        """Select the step's samples into the batch buffers."""
        n = int(idx.shape[0])
        self._n = n
        torch.index_select(self.x, 0, idx, out=self._xb[:n])
        torch.index_select(self.target, 0, idx, out=self._tb[:n])

    def _forward(self, weight: torch.Tensor) -> torch.Tensor:
        n = self._n
        xb, tb, yb, mask = self._xb[:n], self._tb[:n], self._yb[:n], self._mask[:n]
        self._conv(xb, weight.detach(), yb)
        yb.clamp_min_(0)
        torch.sign(yb, out=mask)  # 1 where relu(Y) > 0 (Y > 0), else 0
        yb.sub_(tb)
        flat = yb.reshape(-1)
        denominator = float(yb.numel() // yb.shape[1])
        loss = torch.dot(flat, flat) / denominator
        yb.mul_(mask)  # d loss / d Y, up to the factor 2 / denominator
        self._scale = 2.0 / denominator
        return loss

    def _weight_grad(self, weight: torch.Tensor, grad: torch.Tensor | float) -> torch.Tensor:
        n = self._n
        _, gw, _ = torch.ops.aten.convolution_backward(
            self._yb[:n], self._xb[:n], weight.detach().contiguous(), None, self.stride, [0, 0], self.dilation, False,
            [0, 0], self.group, [False, True, False])
        return gw.mul_(grad * self._scale)

    def loss_and_grad(self, weight: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of ``weight`` on the samples ``idx`` and its gradient in ``weight``, without autograd."""
        self.gather(idx)
        loss = self._forward(weight)
        return loss, self._weight_grad(weight, 1.0)

    def loss(self, weight: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of ``weight`` on the samples ``idx`` (gathered now if given), differentiable in it."""
        if idx is not None:
            self.gather(idx)
        return _Function.apply(weight, self)
