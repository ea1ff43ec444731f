"""Quantized modules: the float module classes with a quantized `weight`."""

from quanta.qmodules.modules.activations import (
    QActivationMixin,
    QLayerNorm,
    float_activations,
    observe_activations,
    quantize_module_activations,
)
from quanta.qmodules.modules.base import QModuleMixin, quantize_module, quantized_class_for
from quanta.qmodules.modules.conv2d import QConv2d
from quanta.qmodules.modules.linear import QLinear

__all__ = [
    "QActivationMixin",
    "QConv2d",
    "QLayerNorm",
    "QLinear",
    "QModuleMixin",
    "float_activations",
    "observe_activations",
    "quantize_module",
    "quantize_module_activations",
    "quantized_class_for",
]
