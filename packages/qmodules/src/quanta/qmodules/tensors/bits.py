"""QBitsTensor: packed 2/4-bit codes with a scale and zero point per group of columns."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch._subclasses.fake_tensor import is_fake

from quanta.qkernels import cuda_dispatch
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

    On a CUDA GPU that runs tinygemm, a 4-bit weight it can hold also keeps tinygemm's layout
    of itself (`int4pack_weight`, `int4pack_scales_and_zeros`: cuda_layouts), derived from the
    canonical parts when the tensor is built there (a move to CUDA, a load), never stored and
    not counted in `nbytes`: tinygemm's own conversion, once per weight, where one per call
    would cost more than the product (docs/ops.md states the memory it takes). It is not built
    on fake tensors or during CUDA graph capture (the op's path runs there); torch.compile
    receives it with the canonical parts, as part of the flattened tensor.
    """

    layout = PACKED_AFFINE
    grouped = True
    default_optimizer = "minmax"
    optional_float_names = ("zero_point",)
    inner_names = ("codes", "scale", "zero_point")
    attribute_names = ("qtype", "group_size")
    #: the derived tinygemm form, flattened after the inner tensors where it exists
    int4pack_names = ("int4pack_weight", "int4pack_scales_and_zeros")

    @staticmethod
    def __new__(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        qtype: QType,
        group_size: int,
        shape: Any,
        int4pack_weight: torch.Tensor | None = None,
        int4pack_scales_and_zeros: torch.Tensor | None = None,
    ):
        return cls._make_wrapper(shape, scale.dtype, codes)

    def __init__(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        qtype: QType,
        group_size: int,
        shape: Any,
        int4pack_weight: torch.Tensor | None = None,
        int4pack_scales_and_zeros: torch.Tensor | None = None,
    ):
        self.codes = codes
        self.scale = scale
        self.zero_point = zero_point
        self.qtype = qtype
        self.group_size = group_size
        if int4pack_weight is None and _may_derive(codes):
            form = cuda_dispatch.int4pack_for(codes, scale, zero_point, qtype.bits, group_size)
            int4pack_weight, int4pack_scales_and_zeros = form or (None, None)
        self.int4pack_weight = int4pack_weight
        self.int4pack_scales_and_zeros = int4pack_scales_and_zeros

    def __tensor_flatten__(self) -> tuple[list[str], dict[str, Any]]:
        names, attributes = super().__tensor_flatten__()
        if self.int4pack_weight is not None:
            names = [*names, *self.int4pack_names]
        return names, attributes

    def _kept_forms(self, inner: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A view of the same parts (detach, alias: a Parameter wrap) keeps the tinygemm form;
        anything else (a copy, a move, a dtype change) builds it again where it applies."""
        traced = torch.compiler.is_compiling() or is_fake(self.codes)  # no data pointers there
        if self.int4pack_weight is None or traced:
            return {}
        if any(inner[name].data_ptr() != getattr(self, name).data_ptr() for name in inner):
            return {}
        return {name: getattr(self, name) for name in self.int4pack_names}

    def _stable_hash_for_caching(self) -> str:
        """The base key, told apart by whether the tinygemm form is flattened too."""
        form = "+int4pack" if self.int4pack_weight is not None else ""
        return super()._stable_hash_for_caching() + form

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
        if self.int4pack_weight is not None and not _wants_grad(input, bias, self):
            return cuda_dispatch.linear_affine_int4pack(
                input,
                self.codes,
                self.scale,
                self.zero_point,
                self.group_size,
                bias,
                self.int4pack_weight,
                self.int4pack_scales_and_zeros,
            )
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


def _may_derive(codes: torch.Tensor) -> bool:
    """Whether a kernel form may be built from these codes now: real CUDA tensors, outside
    CUDA graph capture and tracing."""
    return (
        codes.device.type == "cuda"
        and not is_fake(codes)
        and not torch.compiler.is_compiling()
        and not torch.cuda.is_current_stream_capturing()
    )


def _wants_grad(input: torch.Tensor, bias: torch.Tensor | None, weight: QBitsTensor) -> bool:
    """Whether autograd must see the op (tinygemm has no backward)."""
    tensors = (input, bias, weight.scale, weight.zero_point)
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
