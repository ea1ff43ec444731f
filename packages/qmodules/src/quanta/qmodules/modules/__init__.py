"""Quantized modules: the float module classes with a quantized `weight`."""

from quanta.qmodules.modules.base import QModuleMixin, quantize_module, quantized_class_for
from quanta.qmodules.modules.conv2d import QConv2d
from quanta.qmodules.modules.linear import QLinear

__all__ = ["QConv2d", "QLinear", "QModuleMixin", "quantize_module", "quantized_class_for"]
