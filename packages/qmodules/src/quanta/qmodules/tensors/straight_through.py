"""Straight-through gradients for quantization-aware training (QAT).

Before `freeze()`, a quantized module's weight is quantized from its float parameter at every
access, and activations are quantized at every call. With gradients enabled,
`straight_through_quantize` makes that quantization an identity for autograd: the gradient of the
dequantized tensor reaches the float one unchanged, while the scale and zero point stay constants
and get none. `straight_through_dequantize` is the way back to float for code that runs above
autograd (torch functions): the gradient of the float result reaches the quantized tensor.

`straight_through_linear` is the backward of a linear layer on such a weight. It rebuilds the
weight once (`dequantize()`: one unpack and one dequantize for 2/4-bit codes) for the input
gradient and never materializes it otherwise: the weight gradient only needs the input, the bias
gradient only the output gradient. Nothing the size of the weight is saved between the passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # base.py imports this module: no runtime import of QTensor here
    from quanta.qmodules.tensors.base import QTensor


def needs_weight_grad(weight: object) -> bool:
    """True when `weight` is a quantized tensor that autograd must carry a gradient through."""
    from quanta.qmodules.tensors.base import QTensor  # here: base.py imports this module

    return isinstance(weight, QTensor) and _wants_grad(weight)


def _wants_grad(tensor: torch.Tensor) -> bool:
    return tensor.requires_grad and torch.is_grad_enabled()


class _StraightThroughQuantize(torch.autograd.Function):
    """float tensor -> QTensor in the forward pass; the identity on gradients in the backward."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, quantize: Callable[[torch.Tensor], QTensor]):
        # autograd is off inside forward: the scale and zero point come out detached
        return quantize(tensor.detach())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def straight_through_quantize(
    tensor: torch.Tensor, quantize: Callable[[torch.Tensor], QTensor]
) -> QTensor:
    """`quantize(tensor)`, with the straight-through estimator when a gradient is wanted.

    With autograd enabled and `tensor.requires_grad`, the returned QTensor requires grad and
    its gradient (a plain tensor of the same shape) is passed to `tensor` unchanged.
    Otherwise this is `quantize(tensor.detach())` and records nothing.
    """
    if _wants_grad(tensor):
        return _StraightThroughQuantize.apply(tensor, quantize)
    return quantize(tensor.detach())


class _StraightThroughDequantize(torch.autograd.Function):
    """QTensor -> float tensor; the gradient of the float tensor passes to the QTensor."""

    @staticmethod
    def forward(ctx, tensor: QTensor):
        return tensor.dequantize()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad


def straight_through_dequantize(tensor: QTensor) -> torch.Tensor:
    """`tensor.dequantize()`, recorded by autograd when the QTensor requires grad (QAT)."""
    if _wants_grad(tensor):
        return _StraightThroughDequantize.apply(tensor)
    return tensor.dequantize()


class _StraightThroughLinear(torch.autograd.Function):
    """F.linear on a QTensor weight that requires grad; gradients for input, weight and bias."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, weight: QTensor, bias: torch.Tensor | None):
        # saves the codes and scales (the QTensor), never a dequantized copy of the weight
        ctx.save_for_backward(input, weight, bias)
        # autograd is off here: F.linear takes the QTensor's op path (linear_symmetric/_affine)
        return F.linear(input, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        input, weight, bias = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # the only time the backward rebuilds the weight: one dequantize, one matmul
            grad_input = (grad @ weight.dequantize().to(grad.dtype)).to(input.dtype)
        grad_2d = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            input_2d = input.reshape(-1, input.shape[-1]).to(grad.dtype)
            grad_weight = (grad_2d.T @ input_2d).to(weight.dtype)
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = grad_2d.sum(0).to(bias.dtype)
        return grad_input, grad_weight, grad_bias


def straight_through_linear(
    input: torch.Tensor, weight: QTensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """F.linear(input, weight, bias) with gradients for the QTensor weight (see module doc)."""
    return _StraightThroughLinear.apply(input, weight, bias)
