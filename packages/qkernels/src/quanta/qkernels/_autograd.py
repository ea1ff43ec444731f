"""Backward formulas of the linear ops: gradients for input, bias, scale and a float zero_point.

Codes are integers and get no gradient. The weight is rebuilt with the dequantize ops in the
backward pass instead of being saved, so a quantized layer keeps its small memory footprint.
"""

from __future__ import annotations

import torch


def _weight_grad(grad: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """d(loss)/d(weight) [N, K] of output = input @ weightᵀ, in fp32."""
    grad_2d = grad.reshape(-1, grad.shape[-1]).float()
    return grad_2d.T @ input.reshape(-1, input.shape[-1]).float()


def _bias_grad(grad: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return grad.reshape(-1, grad.shape[-1]).sum(0).to(bias.dtype)


def _setup_linear_symmetric(ctx, inputs, output) -> None:
    input, codes, scale, bias = inputs
    ctx.save_for_backward(input, codes, scale, bias)


def _backward_linear_symmetric(ctx, grad):
    input, codes, scale, bias = ctx.saved_tensors
    grad_input = grad_scale = grad_bias = None
    if ctx.needs_input_grad[0]:
        weight = torch.ops.quanta.dequantize_symmetric(codes, scale, grad.dtype)
        grad_input = (grad @ weight).to(input.dtype)
    if ctx.needs_input_grad[2]:
        grad_weight = _weight_grad(grad, input)
        grad_scale = (grad_weight * codes.float()).sum(-1, keepdim=True).to(scale.dtype)
    if ctx.needs_input_grad[3]:
        grad_bias = _bias_grad(grad, bias)
    return grad_input, None, grad_scale, grad_bias


def _setup_linear_affine(ctx, inputs, output) -> None:
    input, packed, scale, zero_point, bits, group_size, bias = inputs
    ctx.save_for_backward(input, packed, scale, zero_point, bias)
    ctx.bits, ctx.group_size = bits, group_size


def _backward_linear_affine(ctx, grad):
    input, packed, scale, zero_point, bias = ctx.saved_tensors
    bits, group_size = ctx.bits, ctx.group_size
    grad_input = grad_scale = grad_zero_point = grad_bias = None
    codes = torch.ops.quanta.unpack(packed, bits, input.shape[-1])
    if ctx.needs_input_grad[0]:
        weight = torch.ops.quanta.dequantize_affine(
            codes, scale, zero_point, group_size, grad.dtype
        )
        grad_input = (grad @ weight).to(input.dtype)
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        n, k = codes.shape
        groups = (n, k // group_size, group_size)
        grad_weight = _weight_grad(grad, input).reshape(groups)
        if ctx.needs_input_grad[2]:
            shifted = codes.float().reshape(groups) - zero_point.float().unsqueeze(-1)
            grad_scale = (grad_weight * shifted).sum(-1).to(scale.dtype)
        if ctx.needs_input_grad[3]:
            grad_zero_point = (-grad_weight.sum(-1) * scale.float()).to(zero_point.dtype)
    if ctx.needs_input_grad[6]:
        grad_bias = _bias_grad(grad, bias)
    return grad_input, None, grad_scale, grad_zero_point, None, None, grad_bias


def _group_scale_grad(grad, input, unit_weight, scale, group_size):
    """d(loss)/d(scale) [N, K // group_size] where weight = unit_weight * scale per group."""
    n, k = unit_weight.shape
    groups = (n, k // group_size, group_size)
    grad_weight = _weight_grad(grad, input).reshape(groups)
    return (grad_weight * unit_weight.float().reshape(groups)).sum(-1).to(scale.dtype)


def _setup_linear_lut4(ctx, inputs, output) -> None:
    input, packed, table, scale, group_size, bias = inputs
    ctx.save_for_backward(input, packed, table, scale, bias)
    ctx.group_size = group_size


def _backward_linear_lut4(ctx, grad):
    input, packed, table, scale, bias = ctx.saved_tensors
    grad_input = grad_scale = grad_bias = None
    codes = torch.ops.quanta.unpack(packed, 4, input.shape[-1])
    if ctx.needs_input_grad[0]:
        weight = torch.ops.quanta.dequantize_lut4(codes, table, scale, ctx.group_size, grad.dtype)
        grad_input = (grad @ weight).to(input.dtype)
    if ctx.needs_input_grad[3]:
        grad_scale = _group_scale_grad(grad, input, table[codes.long()], scale, ctx.group_size)
    if ctx.needs_input_grad[5]:
        grad_bias = _bias_grad(grad, bias)
    return grad_input, None, None, grad_scale, None, grad_bias


def _setup_linear_grouped(ctx, inputs, output) -> None:
    input, codes, scale, group_size, bias = inputs
    ctx.save_for_backward(input, codes, scale, bias)
    ctx.group_size = group_size


def _backward_linear_grouped(ctx, grad):
    input, codes, scale, bias = ctx.saved_tensors
    grad_input = grad_scale = grad_bias = None
    if ctx.needs_input_grad[0]:
        weight = torch.ops.quanta.dequantize_grouped(codes, scale, ctx.group_size, grad.dtype)
        grad_input = (grad @ weight).to(input.dtype)
    if ctx.needs_input_grad[2]:
        grad_scale = _group_scale_grad(grad, input, codes, scale, ctx.group_size)
    if ctx.needs_input_grad[4]:
        grad_bias = _bias_grad(grad, bias)
    return grad_input, None, grad_scale, None, grad_bias


def register() -> None:
    torch.library.register_autograd(
        "quanta::linear_symmetric",
        _backward_linear_symmetric,
        setup_context=_setup_linear_symmetric,
    )
    torch.library.register_autograd(
        "quanta::linear_affine", _backward_linear_affine, setup_context=_setup_linear_affine
    )
    torch.library.register_autograd(
        "quanta::linear_lut4", _backward_linear_lut4, setup_context=_setup_linear_lut4
    )
    torch.library.register_autograd(
        "quanta::linear_grouped", _backward_linear_grouped, setup_context=_setup_linear_grouped
    )
