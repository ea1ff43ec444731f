"""QBitsTensor: packed 2/4-bit codes with a scale and zero point per group of columns."""

from __future__ import annotations

import math
from typing import Any

import torch

from quanta.qmodules.tensors.base import kernel_call
from quanta.qmodules.tensors.layouts import (
    PartSpec,
    QWeightTensor,
    WeightParts,
    register_layout,
)
from quanta.qtypes import PACKED_AFFINE, QType, minmax_affine_params


@register_layout
class QBitsTensor(QWeightTensor):
    """Packed uint8 codes [out, ceil(K*bits/8)], scale [out, K/group] and uint8 zero_point.

    The logical tensor is `(unpack(codes) - zero_point) * scale` per group of `group_size`
    consecutive columns, reshaped to `shape` (K is the product of shape past dimension 0).
    """

    layout = PACKED_AFFINE
    grouped = True
    default_optimizer = "minmax"
    optional_float_names = ("zero_point",)
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
    def quantize(cls, weight: torch.Tensor, qtype: QType, group_size: int | None) -> QBitsTensor:
        """Quantize a float tensor [out, ...] with min/max affine parameters per group."""
        if group_size is None:
            raise ValueError(f"{qtype} weights need a group_size")
        rows = weight.reshape(weight.shape[0], -1)
        scale, zero_point = minmax_affine_params(rows, qtype, group_size)
        codes = torch.ops.quanta.quantize_affine(rows, scale, zero_point, qtype.bits, group_size)
        packed = torch.ops.quanta.pack(codes, qtype.bits)
        return cls(packed, scale, zero_point, qtype, group_size, weight.shape)

    @classmethod
    def from_weight_parts(
        cls, parts: WeightParts, qtype: QType, group_size: int | None, shape: torch.Size
    ) -> QBitsTensor:
        packed = torch.ops.quanta.pack(parts.codes, qtype.bits)
        return cls(packed, parts.scale, parts.zero_point, qtype, group_size, shape)

    @classmethod
    def part_specs(
        cls, qtype: QType, rows: int, in_size: int, group_size: int | None
    ) -> dict[str, PartSpec]:
        groups = in_size // group_size
        return {
            "codes": PartSpec((rows, math.ceil(in_size * qtype.bits / 8)), torch.uint8),
            "scale": PartSpec((rows, groups), None),
            "zero_point": PartSpec((rows, groups), torch.uint8),  # or a float dtype (HQQ)
        }

    def unpacked_codes(self) -> torch.Tensor:
        """The codes one a byte, [out, K]."""
        return torch.ops.quanta.unpack(self.codes, self.qtype.bits, self.in_size)

    def weight_parts(self) -> WeightParts:
        return WeightParts(self.unpacked_codes(), self.scale, self.zero_point)

    def dequantize(self) -> torch.Tensor:
        """(codes - zero_point) * scale per group, in the float dtype and logical shape."""
        rows = torch.ops.quanta.dequantize_affine(
            self.unpacked_codes(), self.scale, self.zero_point, self.group_size, self.dtype
        )
        return rows.reshape(self.shape)

    def linear(self, input: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return kernel_call(
            torch.ops.quanta.linear_affine,
            input,
            self.codes,
            self.scale,
            self.zero_point,
            self.qtype.bits,
            self.group_size,
            bias,
        )
