"""QNVFP4Tensor: NVIDIA's NVFP4, e2m1 codes with an e4m3 scale per block of 16 columns and one
float32 scale for the whole tensor."""

from __future__ import annotations

from typing import Any

import torch

from quanta.qmodules.tensors.base import kernel_call
from quanta.qmodules.tensors.layouts import PartSpec, register_layout
from quanta.qmodules.tensors.lookup import code_table, packed_codes_spec
from quanta.qmodules.tensors.microscaled import QFixedBlockTensor
from quanta.qtypes import NVFP4, QType, nvfp4_scales


@register_layout
class QNVFP4Tensor(QFixedBlockTensor):
    """Packed e2m1 codes [out, ceil(K/2)], e4m3 block scales [out, K/16], float32 tensor_scale
    [1]: the logical tensor is `value(code) * scale * tensor_scale`, in `float_dtype`."""

    layout = NVFP4
    inner_names = ("codes", "scale", "tensor_scale")
    attribute_names = ("qtype", "float_dtype")

    @staticmethod
    def __new__(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        tensor_scale: torch.Tensor,
        qtype: QType,
        float_dtype: torch.dtype,
        shape: Any,
    ):
        return cls._make_wrapper(shape, float_dtype, codes)

    def __init__(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor,
        tensor_scale: torch.Tensor,
        qtype: QType,
        float_dtype: torch.dtype,
        shape: Any,
    ):
        self.codes = codes
        self.scale = scale
        self.tensor_scale = tensor_scale
        self.qtype = qtype
        self.float_dtype = float_dtype

    @classmethod
    def quantize(
        cls, weight: torch.Tensor, qtype: QType, group_size: int | None = None
    ) -> QNVFP4Tensor:
        """Quantize a float tensor [out, ...] with NVFP4's two-level scale."""
        rows = weight.reshape(weight.shape[0], -1)
        scale, tensor_scale = nvfp4_scales(rows, qtype)
        scaled = rows.float() / tensor_scale
        table = code_table(qtype, weight.device)
        codes = torch.ops.quanta.quantize_lut4(scaled, table, scale, qtype.block_size)
        packed = torch.ops.quanta.pack(codes, 4)
        return cls(packed, scale, tensor_scale, qtype, weight.dtype, weight.shape)

    @classmethod
    def part_specs(
        cls, qtype: QType, rows: int, in_size: int, group_size: int | None
    ) -> dict[str, PartSpec]:
        return {
            "codes": packed_codes_spec(rows, in_size),
            "scale": PartSpec((rows, in_size // qtype.block_size), qtype.scale_dtype),
            "tensor_scale": PartSpec((1,), torch.float32),
        }

    def dequantize(self) -> torch.Tensor:
        """value(code) * scale * tensor_scale, in the float dtype and logical shape."""
        codes = torch.ops.quanta.unpack(self.codes, 4, self.in_size)
        table = code_table(self.qtype, self.device)
        rows = torch.ops.quanta.dequantize_lut4(
            codes, table, self.scale, self.qtype.block_size, torch.float32
        )
        return (rows * self.tensor_scale).to(self.dtype).reshape(self.shape)

    def linear(self, input: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # the per-tensor scale goes into the table (the lut4 kernel takes one scale level): on
        # the output it would come too late for fp16, whose sums overflow without it
        table = code_table(self.qtype, input.device) * self.tensor_scale.to(input.device)
        return kernel_call(
            torch.ops.quanta.linear_lut4,
            input,
            self.codes,
            table,
            self.scale,
            self.qtype.block_size,
            bias,
        )
