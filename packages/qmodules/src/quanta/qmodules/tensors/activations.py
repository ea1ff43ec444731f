"""QActivationTensor: an 8-bit activation (int8 or float8) with a symmetric scale.

Static activations carry one scale for the whole tensor (a 0-d scale); dynamic ones one scale
per token (a scale [..., 1] over the last dimension). Ops that are exact on the codes (views,
relu, cat of equal scales) keep a per-tensor activation quantized; softmax returns probabilities
quantized with scale 1/qmax; matmul/bmm of two quantized activations multiplies the codes and
scales once, and so does a linear of int8 activations with int8 weights (quanta::linear_int8)
or, on CUDA, of float8 ones with float8 weights of the same format (quanta::linear_float8);
anything else runs on the dequantized tensor (the QTensor fallback).

NaN in, NaN out. float8 codes hold NaN; int8 codes cannot, so a NaN input makes the scale that
covers it NaN: a dynamic row holding a NaN dequantizes to NaN as a whole (so does that row of
the next linear's output, as in the float model), a static tensor holding one dequantizes to NaN
as a whole (its one scale covers it all: marking rows would take a scale per row, which would
take static activations off the per-tensor paths above). ±Inf: static activations saturate to
the largest code, as the dequantized float model clamps them; a dynamic row holding one has an
infinite scale and dequantizes to NaN (0 * Inf), where the float model's linear gives ±Inf or NaN.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import is_fake

from quanta.qmodules.tensors.base import QSymmetricTensor, dequantized_call, linear_arguments
from quanta.qmodules.tensors.bytes import QBytesTensor
from quanta.qmodules.tensors.straight_through import (
    straight_through_dequantize,
    straight_through_quantize,
)
from quanta.qtypes import QType

aten = torch.ops.aten

# Ops that only rearrange elements: applied to the codes, the per-tensor scale is kept.
_LAYOUT_OPS = (
    aten.transpose.int,
    aten.permute.default,
    aten.t.default,
    aten.unsqueeze.default,
    aten.squeeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.expand.default,
    aten.slice.Tensor,
    aten.select.int,
    aten.unbind.int,
    aten.split.Tensor,
    aten.split_with_sizes.default,
    aten.chunk.default,
)
# Views of the outer tensor: its strides are contiguous while the codes' may not be (after a
# transpose), so these reshape the codes, copying only where a view is impossible.
_VIEW_OPS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default)


class QActivationTensor(QSymmetricTensor):
    """8-bit activation codes of any shape and a scale that broadcasts against them.

    The logical tensor is `codes * scale` in the scale's float dtype. A 0-d scale (static,
    calibrated) keeps the tensor quantized through layout ops; a per-token scale [..., 1]
    (dynamic) is meant for the next linear only, and any other op dequantizes it.
    """

    @classmethod
    def quantize(cls, x: torch.Tensor, scale: torch.Tensor, qtype: QType) -> QActivationTensor:
        """Quantize a float tensor with `scale` (0-d or broadcasting), kept in x's dtype.

        With autograd on and x requiring grad (QAT), the gradient passes straight through to x.
        """
        scale = scale.detach().to(x.dtype)

        def quantize(tensor: torch.Tensor) -> QActivationTensor:
            codes = torch.ops.quanta.quantize_symmetric(tensor, scale, qtype.dtype)
            kept = scale if qtype.is_floating_point else _nan_where_covered_is(tensor, scale)
            return cls(codes, kept, qtype, tensor.shape)

        return straight_through_quantize(x, quantize)

    @classmethod
    def quantize_per_token(cls, x: torch.Tensor, qtype: QType) -> QActivationTensor:
        """Quantize with one scale per row of the last dimension, max|row| / qmax (dynamic).

        One op (quanta::quantize_dynamic) finds the scales and the codes; with autograd on and x
        requiring grad (QAT), the gradient passes straight through to x.
        """

        def quantize(tensor: torch.Tensor) -> QActivationTensor:
            codes, scale = torch.ops.quanta.quantize_dynamic(tensor, qtype.dtype)
            return cls(codes, scale, qtype, tensor.shape)

        return straight_through_quantize(x, quantize)

    @property
    def is_per_tensor(self) -> bool:
        """True when one scale covers the whole tensor (static activations)."""
        return self.scale.numel() == 1

    def dequantize(self) -> torch.Tensor:
        """codes * scale in the float dtype and the logical shape."""
        return torch.ops.quanta.dequantize_symmetric(self.codes, self.scale, self.dtype)

    def with_codes(self, codes: torch.Tensor) -> QActivationTensor:
        """The same scale and qtype over other codes (a rearrangement of these)."""
        return QActivationTensor(codes, self.scale, self.qtype, codes.shape)


def _nan_where_covered_is(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`scale`, NaN where the elements of x it covers (it broadcasts against x) hold a NaN: int8
    codes have none, so the scale keeps it. One reduction (amax propagates NaN), no host sync."""
    if x.numel() == 0:
        return scale
    offset = x.dim() - scale.dim()
    dims = [d for d in range(x.dim()) if d < offset or scale.shape[d - offset] == 1]
    largest = (x.amax(dim=dims, keepdim=True) if dims else x).reshape(scale.shape)
    return torch.where(largest.isnan(), largest.to(scale.dtype), scale)


def _per_tensor(value: Any) -> bool:
    return isinstance(value, QActivationTensor) and value.is_per_tensor


@QActivationTensor.implements(*_LAYOUT_OPS)
def _layout(func: Any, args: tuple, kwargs: dict) -> Any:
    self = args[0]
    if not self.is_per_tensor:
        return dequantized_call(func, args, kwargs)
    codes = func(self.codes, *args[1:], **kwargs)
    if isinstance(codes, (list, tuple)):
        return type(codes)(self.with_codes(c) for c in codes)
    return self.with_codes(codes)


@QActivationTensor.implements(*_VIEW_OPS)
def _view(func: Any, args: tuple, kwargs: dict) -> Any:
    self = args[0]
    if not self.is_per_tensor:
        return dequantized_call(func, args, kwargs)
    return self.with_codes(self.codes.reshape(*args[1:], **kwargs))


@QActivationTensor.implements(aten.clone.default)
def _clone(func: Any, args: tuple, kwargs: dict) -> QActivationTensor:
    self = args[0]
    kwargs = {k: v for k, v in kwargs.items() if k != "memory_format"}
    return QActivationTensor(func(self.codes, **kwargs), self.scale, self.qtype, self.shape)


def _same_scale(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Whether two 0-d scales are equal; under tracing (fake values) only the same tensor is."""
    if first is second:
        return True
    if is_fake(first) or is_fake(second) or torch.compiler.is_compiling():
        return False
    return bool(torch.equal(first, second))


@QActivationTensor.implements(aten.cat.default)
def _cat(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    tensors = args[0]
    first = tensors[0]
    if all(
        _per_tensor(t) and t.qtype == first.qtype and _same_scale(t.scale, first.scale)
        for t in tensors
    ):
        codes = func([t.codes for t in tensors], *args[1:], **kwargs)
        return first.with_codes(codes)
    return dequantized_call(func, args, kwargs)


def _relu_codes(codes: torch.Tensor) -> torch.Tensor:
    # the sign is the top bit of int8 and of both float8 formats: clear negative codes
    bits = codes.view(torch.int8)
    return torch.where(bits < 0, torch.zeros_like(bits), bits).view(codes.dtype)


@QActivationTensor.implements(aten.relu.default)
def _relu(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """relu is exact on symmetric codes: negative codes become zero, the scale is kept."""
    self = args[0]
    return QActivationTensor(_relu_codes(self.codes), self.scale, self.qtype, self.shape)


@QActivationTensor.implements(aten.relu_.default)
def _relu_(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """In-place relu (nn.ReLU(inplace=True)) clears the negative codes in place."""
    self = args[0]
    self.codes.copy_(_relu_codes(self.codes))
    return self


@QActivationTensor.implements(aten._softmax.default)
def _softmax(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """Softmax of the dequantized input; the probabilities come back quantized at 1/qmax."""
    self, dim, half_to_float = args[0], args[1], args[2]
    probabilities = func(self.dequantize(), dim, half_to_float)
    scale = torch.full((), 1.0 / self.qtype.qmax, dtype=probabilities.dtype, device=self.device)
    return QActivationTensor.quantize(probabilities, scale, self.qtype)


@QActivationTensor.implements(aten.bmm.default, aten.mm.default)
def _matmul(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """Two per-tensor quantized operands: one product of the codes, scaled once (in fp32)."""
    left, right = args[0], args[1]
    if not (_per_tensor(left) and _per_tensor(right)):
        return dequantized_call(func, args, kwargs)
    # int8 products summed in fp32 are exact up to K = 2**24 / 127**2 (1040) terms
    product = func(left.codes.float(), right.codes.float())
    scale = left.scale.float() * right.scale.float()
    return (product * scale).to(torch.promote_types(left.dtype, right.dtype))


# The op that multiplies 8-bit activation codes by weight codes of the same dtype (W8A8).
_CODE_PRODUCTS = {
    torch.int8: torch.ops.quanta.linear_int8,
    torch.float8_e4m3fn: torch.ops.quanta.linear_float8,
    torch.float8_e5m2: torch.ops.quanta.linear_float8,
}


def _code_product(input: QActivationTensor, weight: Any, bias: Any) -> Any:
    """The op that can multiply the codes of this linear (an 8-bit input and a 2-D weight of
    the same code dtype, no gradient wanted: training takes the straight-through path), or None."""
    tensors = [t for t in (input, weight, bias) if t is not None]
    fits = (
        isinstance(weight, QBytesTensor)
        # float8 products have a kernel on CUDA only (_scaled_mm); elsewhere the weight's own
        # kernel on the dequantized input is faster than the reference's fp32 product
        and (input.qtype.dtype == torch.int8 or input.codes.device.type == "cuda")
        and weight.qtype.dtype == input.qtype.dtype
        and weight.dim() == 2
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    )
    return _CODE_PRODUCTS.get(input.qtype.dtype) if fits else None


@QActivationTensor.implements(F.linear, F.conv2d)
def _quantized_input(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """A quantized module input: int8 x int8 weights run quanta::linear_int8 and, on CUDA,
    float8 x float8 weights (same format) quanta::linear_float8 (W8A8); any other is
    dequantized, then the weight's own handler runs (its kernel)."""
    if func is F.linear:
        input, weight, bias = linear_arguments(*args, **kwargs)
        product = _code_product(input, weight, bias)
        if product is not None:
            return product(input.codes, input.scale, weight.codes, weight.scale, bias, input.dtype)
    input, *rest = args
    return func(straight_through_dequantize(input), *rest, **kwargs)
