"""Quantized tensor subclasses: one per storage layout, on the shared QTensor base."""

from quanta.qmodules.tensors.activations import QActivationTensor
from quanta.qmodules.tensors.base import QTensor
from quanta.qmodules.tensors.bits import QBitsTensor
from quanta.qmodules.tensors.bytes import QBytesTensor
from quanta.qmodules.tensors.layouts import (
    PartSpec,
    QWeightTensor,
    WeightParts,
    layout_for,
    register_layout,
    stored_part_names,
)

__all__ = [
    "PartSpec",
    "QActivationTensor",
    "QBitsTensor",
    "QBytesTensor",
    "QTensor",
    "QWeightTensor",
    "WeightParts",
    "layout_for",
    "register_layout",
    "stored_part_names",
]
