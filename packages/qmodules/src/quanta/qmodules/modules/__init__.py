"""Quantized modules: the float module classes with a quantized `weight`."""

from quanta.qmodules.modules.activations import (
    QActivationMixin,
    QLayerNorm,
    apply_module_config,
    float_activations,
    observe_activations,
)
from quanta.qmodules.modules.base import (
    QModuleMixin,
    quantized_base_for,
    quantized_class_for,
    register_quantized_class,
)
from quanta.qmodules.modules.conv1d import QConv1d
from quanta.qmodules.modules.conv2d import QConv2d
from quanta.qmodules.modules.embedding import QEmbedding
from quanta.qmodules.modules.linear import QLinear
from quanta.qmodules.modules.rotation import hadamard_block_size

__all__ = [
    "QActivationMixin",
    "QConv1d",
    "QConv2d",
    "QEmbedding",
    "QLayerNorm",
    "QLinear",
    "QModuleMixin",
    "apply_module_config",
    "float_activations",
    "hadamard_block_size",
    "observe_activations",
    "quantized_base_for",
    "quantized_class_for",
    "register_quantized_class",
]
