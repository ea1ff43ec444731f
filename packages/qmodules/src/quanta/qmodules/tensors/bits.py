"""QBitsTensor: packed 2/4-bit codes with a scale and zero point per group of columns."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from quanta.qmodules.tensors.base import QTensor, dequantized_call, kernel_call, linear_arguments
from quanta.qmodules.tensors.straight_through import needs_weight_grad, straight_through_linear
from quanta.qtypes import QType, minmax_affine_params


class QBitsTensor(QTensor):
    """Packed uint8 codes [out, ceil(K*bits/8)], scale [out, K/group] and uint8 zero_point.

    The logical tensor is `(unpack(codes) - zero_point) * scale` per group of `group_size`
    consecutive columns, reshaped to `shape` (K is the product of shape past dimension 0).
    """

    inner_names = ("codes", "scale", "zero_point")
    attribute_names = ("qtype", "group_size")

    @staticmethod
    def __new__(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        qtype: QType,
        group_size: int,
        shape: Any,
    ):
        return cls._make_wrapper(shape, scale, codes)

    def __init__(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        qtype: QType,
        group_size: int,
        shape: Any,
    ):
        self.codes = codes
        self.scale = scale
        self.zero_point = zero_point
        self.qtype = qtype
        self.group_size = group_size

    @classmethod
    def quantize(cls, weight: torch.Tensor, qtype: QType, group_size: int) -> QBitsTensor:
        """Quantize a float tensor [out, ...] with min/max affine parameters per group."""
        rows = weight.reshape(weight.shape[0], -1)
        scale, zero_point = minmax_affine_params(rows, qtype, group_size)
        codes = torch.ops.quanta.quantize_affine(rows, scale, zero_point, qtype.bits, group_size)
        packed = torch.ops.quanta.pack(codes, qtype.bits)
        return cls(packed, scale, zero_point, qtype, group_size, weight.shape)

    @property
    def in_size(self) -> int:
        """K: the number of columns of the 2D code matrix."""
        return math.prod(self.shape[1:])

    def dequantize(self) -> torch.Tensor:
        """(codes - zero_point) * scale per group, in the float dtype and logical shape."""
        codes = torch.ops.quanta.unpack(self.codes, self.qtype.bits, self.in_size)
        rows = torch.ops.quanta.dequantize_affine(
            codes, self.scale, self.zero_point, self.group_size, self.dtype
        )
        return rows.reshape(self.shape)


@QBitsTensor.implements(F.linear)
def _linear(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    input, weight, bias = linear_arguments(*args, **kwargs)
    if needs_weight_grad(weight):  # QAT before freeze: gradients reach the float weight
        return straight_through_linear(input, weight, bias)
    if not isinstance(weight, QBitsTensor) or isinstance(input, QTensor) or weight.dim() != 2:
        return dequantized_call(func, args, kwargs)
    return kernel_call(
        torch.ops.quanta.linear_affine,
        input,
        weight.codes,
        weight.scale,
        weight.zero_point,
        weight.qtype.bits,
        weight.group_size,
        bias,
    )
