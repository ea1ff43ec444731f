"""QConv1D: Transformers' Conv1D (GPT-2's layers) with a quantized weight.

Conv1D stores its weight as [in_features, out_features] and computes `x @ W + b`. Its quantized
weight is the matrix F.linear takes, [out, in], quantized per output feature like a Linear's; the
float weight (and a float checkpoint) keeps Conv1D's own [in, out]. Importing this module registers
QConv1D with `quanta.qmodules.quantize`; quanta.qintegrations imports it as soon as
`transformers.pytorch_utils` is imported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from quanta.qmodules import QActivationMixin, QModuleMixin, QTensor, register_quantized_class

__all__ = ["QConv1D"]


class _Conv1DAsLinear(Conv1D):
    """Conv1D computed as F.linear on the quantized [out, in] matrix (quanta's linear kernels)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if isinstance(weight, QTensor):
            return F.linear(input, weight, self.bias)
        return super().forward(input)  # float (not quantized, or on the meta device)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}"

    __repr__ = torch.nn.Module.__repr__  # Conv1D's own repr would hide the quantization settings


@register_quantized_class(Conv1D)
class QConv1D(QActivationMixin, QModuleMixin, _Conv1DAsLinear):
    """transformers.pytorch_utils.Conv1D whose weight is quantized as the [out, in] matrix.

    With activations, its input and output are quantized as a QLinear's.
    """

    @staticmethod
    def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
        return weight.t()  # Conv1D stores [in, out]
