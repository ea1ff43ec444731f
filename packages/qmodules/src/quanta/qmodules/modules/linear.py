"""QLinear: nn.Linear with a quantized weight."""

from __future__ import annotations

from torch import nn

from quanta.qmodules.modules.activations import QActivationMixin
from quanta.qmodules.modules.base import QModuleMixin, register_quantized_class


@register_quantized_class(nn.Linear)
class QLinear(QActivationMixin, QModuleMixin, nn.Linear):
    """nn.Linear whose `weight` is quantized; F.linear on it runs torch.ops.quanta.linear_*.

    With activations, its input and output are quantized too (QActivationMixin).
    """
