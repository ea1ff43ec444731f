"""QBytesTensor: 8-bit codes (int8 or float8) with one symmetric scale per output channel."""

from __future__ import annotations

import torch

from quanta.qmodules.tensors.base import QSymmetricTensor, kernel_call
from quanta.qmodules.tensors.layouts import (
    PartSpec,
    QWeightTensor,
    WeightParts,
    register_layout,
)
from quanta.qtypes import SYMMETRIC, QType, symmetric_scale


@register_layout
class QBytesTensor(QWeightTensor, QSymmetricTensor):
    """8-bit codes [out, K] (int8 or float8) and a scale [out, 1] in the float dtype.

    The logical tensor is `(codes * scale).reshape(shape)`; K is the product of the
    logical shape past its first dimension (in_features, or in_channels/groups*kh*kw).
    """

    layout = SYMMETRIC
    default_optimizer = "absmax"

    @classmethod
    def quantize(
        cls, weight: torch.Tensor, qtype: QType, group_size: int | None = None
    ) -> QBytesTensor:
        """Quantize a float tensor [out, ...] with one symmetric scale per output channel."""
        rows = weight.reshape(weight.shape[0], -1)
        scale = symmetric_scale(rows, qtype, axis=0)
        codes = torch.ops.quanta.quantize_symmetric(rows, scale, qtype.dtype)
        return cls(codes, scale, qtype, weight.shape)

    @classmethod
    def from_weight_parts(
        cls, parts: WeightParts, qtype: QType, group_size: int | None, shape: torch.Size
    ) -> QBytesTensor:
        return cls(parts.codes, parts.scale, qtype, shape)

    @classmethod
    def part_specs(
        cls, qtype: QType, rows: int, in_size: int, group_size: int | None
    ) -> dict[str, PartSpec]:
        return {"codes": PartSpec((rows, in_size), qtype.dtype), "scale": PartSpec((rows, 1), None)}

    def weight_parts(self) -> WeightParts:
        return WeightParts(self.codes, self.scale)

    def dequantize(self) -> torch.Tensor:
        """codes * scale in the float dtype and the logical shape."""
        rows = torch.ops.quanta.dequantize_symmetric(self.codes, self.scale, self.dtype)
        return rows.reshape(self.shape)

    def linear(self, input: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return kernel_call(torch.ops.quanta.linear_symmetric, input, self.codes, self.scale, bias)
