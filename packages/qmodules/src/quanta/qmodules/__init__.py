"""quanta.qmodules: quantized tensors and modules, quantize() and freeze()."""

from quanta.qmodules.freeze import freeze
from quanta.qmodules.memory import WeightMemory, weight_memory
from quanta.qmodules.modules import (
    QActivationMixin,
    QConv2d,
    QLayerNorm,
    QLinear,
    QModuleMixin,
    float_activations,
    observe_activations,
)
from quanta.qmodules.optimizers import (
    AbsmaxOptimizer,
    MinmaxOptimizer,
    WeightOptimizer,
    WeightParts,
    register_weight_optimizer,
)
from quanta.qmodules.quantize import quantize
from quanta.qmodules.tensors import QActivationTensor, QBitsTensor, QBytesTensor, QTensor

__version__ = "0.1.0"

__all__ = [
    "AbsmaxOptimizer",
    "MinmaxOptimizer",
    "QActivationMixin",
    "QActivationTensor",
    "QBitsTensor",
    "QBytesTensor",
    "QConv2d",
    "QLayerNorm",
    "QLinear",
    "QModuleMixin",
    "QTensor",
    "WeightMemory",
    "WeightOptimizer",
    "WeightParts",
    "float_activations",
    "freeze",
    "observe_activations",
    "quantize",
    "register_weight_optimizer",
    "weight_memory",
]
