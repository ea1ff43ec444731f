"""QConv2d: nn.Conv2d with a quantized weight."""

from __future__ import annotations

from torch import nn

from quanta.qmodules.modules.base import QModuleMixin, register_quantized_class


@register_quantized_class(nn.Conv2d)
class QConv2d(QModuleMixin, nn.Conv2d):
    """nn.Conv2d whose `weight` is quantized; F.conv2d runs on the dequantized weight."""
