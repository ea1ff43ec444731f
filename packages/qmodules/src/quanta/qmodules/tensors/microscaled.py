"""QMicroscaledTensor: the OCP Microscaling formats mxfp4 and mxfp8, float codes with one
power-of-two (e8m0) scale per block of 32 columns."""

from __future__ import annotations

from typing import Any

import torch

from quanta.qmodules.tensors.base import kernel_call
from quanta.qmodules.tensors.layouts import PartSpec, QWeightTensor, register_layout
from quanta.qmodules.tensors.lookup import code_table, packed_codes_spec
from quanta.qtypes import MICROSCALED, QType, mx_scale


class QFixedBlockTensor(QWeightTensor):
    """The base of the formats that fix their block size and store no float of the weight's
    dtype: that dtype is the `float_dtype` attribute, the block size `qtype.block_size`."""

    grouped = True
    default_optimizer = None
    float_inner_names = ()

    @classmethod
    def scale_part_names(cls) -> tuple[str, ...]:
        return tuple(name for name in cls.inner_names if name != "codes")

    @property
    def group_size(self) -> int:
        return self.qtype.block_size


@register_layout
class QMicroscaledTensor(QFixedBlockTensor):
    """MX codes and an e8m0 scale [out, K/32] (OCP Microscaling v1.0).

    mxfp4: e2m1 codes packed two a byte [out, ceil(K/2)]; mxfp8: float8_e4m3fn codes [out, K].
    The logical tensor is `value(code) * 2**(scale exponent)` per block, in `float_dtype`.
    """

    layout = MICROSCALED
    inner_names = ("codes", "scale")
    attribute_names = ("qtype", "float_dtype")

    @staticmethod
    def __new__(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        qtype: QType,
        float_dtype: torch.dtype,
        shape: Any,
    ):
        return cls._make_wrapper(shape, float_dtype, codes)

    def __init__(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor,
        qtype: QType,
        float_dtype: torch.dtype,
        shape: Any,
    ):
        self.codes = codes
        self.scale = scale
        self.qtype = qtype
        self.float_dtype = float_dtype

    @classmethod
    def quantize(
        cls, weight: torch.Tensor, qtype: QType, group_size: int | None = None
    ) -> QMicroscaledTensor:
        """Quantize a float tensor [out, ...]: shared exponents, then saturating codes."""
        rows = weight.reshape(weight.shape[0], -1)
        scale = mx_scale(rows, qtype)
        if qtype.bits == 4:
            table = code_table(qtype, weight.device)
            codes = torch.ops.quanta.quantize_lut4(rows, table, scale, qtype.block_size)
            codes = torch.ops.quanta.pack(codes, 4)
        else:
            scaled = rows.float() / scale.float().repeat_interleave(qtype.block_size, dim=1)
            # saturating, as the spec asks: a plain float8 cast turns values past 448 into NaN
            codes = scaled.clamp(qtype.qmin, qtype.qmax).to(qtype.dtype)
        return cls(codes, scale, qtype, weight.dtype, weight.shape)

    @classmethod
    def part_specs(
        cls, qtype: QType, rows: int, in_size: int, group_size: int | None
    ) -> dict[str, PartSpec]:
        codes = (
            packed_codes_spec(rows, in_size)
            if qtype.bits == 4
            else PartSpec((rows, in_size), qtype.dtype)
        )
        scale = PartSpec((rows, in_size // qtype.block_size), qtype.scale_dtype)
        return {"codes": codes, "scale": scale}

    def dequantize(self) -> torch.Tensor:
        """value(code) * scale per block, in the float dtype and logical shape."""
        block = self.qtype.block_size
        if self.qtype.bits == 4:
            codes = torch.ops.quanta.unpack(self.codes, 4, self.in_size)
            table = code_table(self.qtype, self.device)
            rows = torch.ops.quanta.dequantize_lut4(codes, table, self.scale, block, self.dtype)
        else:
            rows = torch.ops.quanta.dequantize_grouped(self.codes, self.scale, block, self.dtype)
        return rows.reshape(self.shape)

    def linear(self, input: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        block = self.qtype.block_size
        if self.qtype.bits == 8:
            op = torch.ops.quanta.linear_grouped
            return kernel_call(op, input, self.codes, self.scale, block, bias)
        table = code_table(self.qtype, input.device)
        op = torch.ops.quanta.linear_lut4
        return kernel_call(op, input, self.codes, table, self.scale, block, bias)
