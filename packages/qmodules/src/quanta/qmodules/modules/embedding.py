"""QEmbedding: nn.Embedding with a quantized weight, read row by row."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from quanta.qmodules.modules.activations import QActivationMixin
from quanta.qmodules.modules.base import QModuleMixin, register_quantized_class


@register_quantized_class(nn.Embedding)
class QEmbedding(QActivationMixin, QModuleMixin, nn.Embedding):
    """nn.Embedding whose `weight` is quantized (each row, one embedding, scaled on its own);
    a lookup dequantizes only the rows it reads.

    Weight-only: `quantize(..., activations=...)` leaves its activations float (a lookup has no
    float input to quantize), and a config with activations applied to it directly is a
    ValueError.
    """

    quantizes_activations: ClassVar[bool] = False
