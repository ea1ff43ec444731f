"""QBytesTensor: 8-bit codes (int8 or float8) with one symmetric scale per output channel."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from quanta.qmodules.tensors.base import (
    QSymmetricTensor,
    QTensor,
    dequantized_call,
    kernel_call,
    linear_arguments,
)
from quanta.qmodules.tensors.straight_through import needs_weight_grad, straight_through_linear
from quanta.qtypes import QType, symmetric_scale


class QBytesTensor(QSymmetricTensor):
    """8-bit codes [out, K] (int8 or float8) and a scale [out, 1] in the float dtype.

    The logical tensor is `(codes * scale).reshape(shape)`; K is the product of the
    logical shape past its first dimension (in_features, or in_channels/groups*kh*kw).
    """

    @classmethod
    def quantize(cls, weight: torch.Tensor, qtype: QType) -> QBytesTensor:
        """Quantize a float tensor [out, ...] with one symmetric scale per output channel."""
        rows = weight.reshape(weight.shape[0], -1)
        scale = symmetric_scale(rows, qtype, axis=0)
        codes = torch.ops.quanta.quantize_symmetric(rows, scale, qtype.dtype)
        return cls(codes, scale, qtype, weight.shape)

    def dequantize(self) -> torch.Tensor:
        """codes * scale in the float dtype and the logical shape."""
        rows = torch.ops.quanta.dequantize_symmetric(self.codes, self.scale, self.dtype)
        return rows.reshape(self.shape)


@QBytesTensor.implements(F.linear)
def _linear(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    input, weight, bias = linear_arguments(*args, **kwargs)
    if needs_weight_grad(weight):  # QAT before freeze: gradients reach the float weight
        return straight_through_linear(input, weight, bias)
    if not isinstance(weight, QBytesTensor) or isinstance(input, QTensor) or weight.dim() != 2:
        return dequantized_call(func, args, kwargs)
    return kernel_call(torch.ops.quanta.linear_symmetric, input, weight.codes, weight.scale, bias)
