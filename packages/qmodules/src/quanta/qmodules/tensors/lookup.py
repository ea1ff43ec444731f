"""QLookupTensor: bitsandbytes' nf4 and fp4, 4-bit indices into a table and an absmax scale
per block of columns."""

from __future__ import annotations

import math
from typing import Any

import torch

from quanta.qmodules.tensors.base import kernel_call
from quanta.qmodules.tensors.layouts import PartSpec, QWeightTensor, register_layout
from quanta.qtypes import LOOKUP_TABLE, QType, table_absmax_scale

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
        return cls._make_wrapper(shape, scale, codes)

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
