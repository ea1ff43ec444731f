"""Quantized tensor subclasses: one per storage layout, on the shared QTensor base."""

from quanta.qmodules.tensors.activations import QActivationTensor
from quanta.qmodules.tensors.base import QTensor
from quanta.qmodules.tensors.bits import QBitsTensor
from quanta.qmodules.tensors.bytes import QBytesTensor

__all__ = ["QActivationTensor", "QBitsTensor", "QBytesTensor", "QTensor"]
