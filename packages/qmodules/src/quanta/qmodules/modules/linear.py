"""QLinear: nn.Linear with a quantized weight."""

from __future__ import annotations

from torch import nn

from quanta.qmodules.modules.base import QModuleMixin, register_quantized_class


@register_quantized_class(nn.Linear)
class QLinear(QModuleMixin, nn.Linear):
    """nn.Linear whose `weight` is quantized; F.linear on it runs torch.ops.quanta.linear_*."""
