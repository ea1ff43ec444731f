"""QLookupTensor: bitsandbytes' nf4 and fp4, 4-bit indices into a table and an absmax scale
per block of columns."""

from __future__ import annotations

import math
from typing import Any

import torch

from quanta.qmodules.tensors.base import kernel_call
from quanta.qmodules.tensors.layouts import PartSpec, QWeightTensor, register_layout
from quanta.qtypes import (
    DOUBLE_QUANT_BLOCK,
    LOOKUP_TABLE,
    LOOKUP_TABLE_DOUBLE,
    QType,
    double_dequantize_scale,
    double_quantize_scale,
    table_absmax_scale,
)

BITSANDBYTES_BLOCK_SIZE = 64  # bitsandbytes' default blocksize for 4-bit weights


def code_table(qtype: QType, device: torch.device) -> torch.Tensor:
    """The float32 values of `qtype`'s 16 codes on `device` (the lut4 ops' `table`)."""
    return torch.tensor(qtype.table, dtype=torch.float32, device=device)


def packed_codes_spec(rows: int, in_size: int) -> PartSpec:
    """Two 4-bit codes a byte along K (quanta.pack's layout)."""
    return PartSpec((rows, math.ceil(in_size / 2)), torch.uint8)


@register_layout
class QLookupTensor(QWeightTensor):
    """Packed 4-bit codes [out, ceil(K/2)] into `qtype.table` and a scale [out, K/group].

    The logical tensor is `table[code] * scale` per group of `group_size` consecutive columns
    (bitsandbytes' blocks, 64 by default), reshaped to `shape`. The scale is each block's
    absmax in the weight's dtype, as bitsandbytes' (there float32; the absmax of a float16 or
    bfloat16 weight is exact in either). Codes are the table entry nearest to x / scale.
    """

    layout = LOOKUP_TABLE
    grouped = True
    default_group_size = BITSANDBYTES_BLOCK_SIZE
    default_optimizer = None
    inner_names = ("codes", "scale")
    attribute_names = ("qtype", "group_size")

    @staticmethod
    def __new__(
        cls, codes: torch.Tensor, scale: torch.Tensor, qtype: QType, group_size: int, shape: Any
    ):
        return cls._make_wrapper(shape, scale.dtype, codes)

    def __init__(
        self, codes: torch.Tensor, scale: torch.Tensor, qtype: QType, group_size: int, shape: Any
    ):
        self.codes = codes
        self.scale = scale
        self.qtype = qtype
        self.group_size = group_size

    @classmethod
    def quantize(cls, weight: torch.Tensor, qtype: QType, group_size: int | None) -> QLookupTensor:
        """Quantize a float tensor [out, ...] with an absmax scale per block of `group_size`."""
        group_size = group_size or BITSANDBYTES_BLOCK_SIZE
        rows = weight.reshape(weight.shape[0], -1)
        scale = table_absmax_scale(rows, qtype, group_size)
        table = code_table(qtype, weight.device)
        codes = torch.ops.quanta.quantize_lut4(rows, table, scale, group_size)
        return cls(torch.ops.quanta.pack(codes, 4), scale, qtype, group_size, weight.shape)

    @classmethod
    def part_specs(
        cls, qtype: QType, rows: int, in_size: int, group_size: int | None
    ) -> dict[str, PartSpec]:
        return {
            "codes": packed_codes_spec(rows, in_size),
            "scale": PartSpec((rows, in_size // group_size), None),
        }

    def unpacked_codes(self) -> torch.Tensor:
        """The codes one a byte, [out, K]."""
        return torch.ops.quanta.unpack(self.codes, 4, self.in_size)

    def dequantize(self) -> torch.Tensor:
        """table[code] * scale per block, in the float dtype and logical shape."""
        rows = torch.ops.quanta.dequantize_lut4(
            self.unpacked_codes(),
            code_table(self.qtype, self.device),
            self.scale,
            self.group_size,
            self.dtype,
        )
        return rows.reshape(self.shape)

    def linear(self, input: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return kernel_call(
            torch.ops.quanta.linear_lut4,
            input,
            self.codes,
            code_table(self.qtype, input.device),
            self.scale,
            self.group_size,
            bias,
        )


@register_layout
class QDoubleQuantLookupTensor(QLookupTensor):
    """nf4/fp4 with double-quantized scales (QLoRA): packed codes [out, ceil(K/2)], int8
    scale_codes [out, K/group], float32 scale_scale [ceil(out * K/group / 256)] and float32
    scale_offset [1] (see quanta.qtypes.double_quantize_scale: int8 codes, not bitsandbytes'
    8-bit dynamic map). The weight's float dtype is the `float_dtype` attribute.
    """

    layout = LOOKUP_TABLE_DOUBLE
    inner_names = ("codes", "scale_codes", "scale_scale", "scale_offset")
    float_inner_names = ()
    attribute_names = ("qtype", "group_size", "float_dtype")

    @staticmethod
    def __new__(
        cls,
        codes: torch.Tensor,
        scale_codes: torch.Tensor,
        scale_scale: torch.Tensor,
        scale_offset: torch.Tensor,
        qtype: QType,
        group_size: int,
        float_dtype: torch.dtype,
        shape: Any,
    ):
        return cls._make_wrapper(shape, float_dtype, codes)

    def __init__(
        self,
        codes: torch.Tensor,
        scale_codes: torch.Tensor,
        scale_scale: torch.Tensor,
        scale_offset: torch.Tensor,
        qtype: QType,
        group_size: int,
        float_dtype: torch.dtype,
        shape: Any,
    ):
        self.codes = codes
        self.scale_codes = scale_codes
        self.scale_scale = scale_scale
        self.scale_offset = scale_offset
        self.qtype = qtype
        self.group_size = group_size
        self.float_dtype = float_dtype

    @classmethod
    def quantize(
        cls, weight: torch.Tensor, qtype: QType, group_size: int | None
    ) -> QDoubleQuantLookupTensor:
        """Quantize with the double-quantized absmax scales (the codes use those, as stored)."""
        group_size = group_size or BITSANDBYTES_BLOCK_SIZE
        rows = weight.reshape(weight.shape[0], -1)
        scale_parts = double_quantize_scale(table_absmax_scale(rows, qtype, group_size))
        scale = double_dequantize_scale(*scale_parts)
        table = code_table(qtype, weight.device)
        codes = torch.ops.quanta.pack(
            torch.ops.quanta.quantize_lut4(rows, table, scale, group_size), 4
        )
        return cls(codes, *scale_parts, qtype, group_size, weight.dtype, weight.shape)

    @classmethod
    def part_specs(
        cls, qtype: QType, rows: int, in_size: int, group_size: int | None
    ) -> dict[str, PartSpec]:
        groups = in_size // group_size
        second_level = math.ceil(rows * groups / DOUBLE_QUANT_BLOCK)
        return {
            "codes": packed_codes_spec(rows, in_size),
            "scale_codes": PartSpec((rows, groups), torch.int8),
            "scale_scale": PartSpec((second_level,), torch.float32),
            "scale_offset": PartSpec((1,), torch.float32),
        }

    @classmethod
    def scale_part_names(cls) -> tuple[str, ...]:
        return ("scale_scale", "scale_offset")

    @property
    def scale(self) -> torch.Tensor:
        """The float32 block scales the stored parts stand for."""
        return double_dequantize_scale(self.scale_codes, self.scale_scale, self.scale_offset)
