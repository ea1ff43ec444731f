"""QConv2d: nn.Conv2d with a quantized weight."""

from __future__ import annotations

from torch import nn

from quanta.qmodules.modules.activations import QActivationMixin
from quanta.qmodules.modules.base import QModuleMixin, register_quantized_class


@register_quantized_class(nn.Conv2d)
class QConv2d(QActivationMixin, QModuleMixin, nn.Conv2d):
    """nn.Conv2d whose `weight` is quantized; F.conv2d runs on the dequantized weight.

    With activations, its input and output are quantized too; dynamic scales are per pixel.
    """

    token_dim = 1  # dynamic activation scales: one per pixel, over the channels
