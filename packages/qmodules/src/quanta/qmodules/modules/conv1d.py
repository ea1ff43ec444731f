"""QConv1d: nn.Conv1d with a quantized weight."""

from __future__ import annotations

from torch import nn

from quanta.qmodules.modules.activations import QActivationMixin
from quanta.qmodules.modules.base import QModuleMixin, register_quantized_class


@register_quantized_class(nn.Conv1d)
class QConv1d(QActivationMixin, QModuleMixin, nn.Conv1d):
    """nn.Conv1d whose `weight` is quantized; F.conv1d runs on the dequantized weight.

    With activations, its input and output are quantized too; dynamic scales are per time step.
    """

    token_dim = 1  # dynamic activation scales: one per time step, over the channels
