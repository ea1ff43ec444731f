"""quanta.qmodules: quantized tensors and modules, quantize() and freeze()."""

from quanta.qmodules.freeze import freeze
from quanta.qmodules.memory import WeightMemory, weight_memory
from quanta.qmodules.modules import QConv2d, QLinear, QModuleMixin
from quanta.qmodules.quantize import quantize
from quanta.qmodules.tensors import QBitsTensor, QBytesTensor, QTensor

__version__ = "0.1.0"

__all__ = [
    "QBitsTensor",
    "QBytesTensor",
    "QConv2d",
    "QLinear",
    "QModuleMixin",
    "QTensor",
    "WeightMemory",
    "freeze",
    "quantize",
    "weight_memory",
]
