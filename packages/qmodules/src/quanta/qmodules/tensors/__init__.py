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
from quanta.qmodules.tensors.lookup import QDoubleQuantLookupTensor, QLookupTensor
from quanta.qmodules.tensors.microscaled import QMicroscaledTensor
from quanta.qmodules.tensors.nvfp4 import QNVFP4Tensor

__all__ = [
    "PartSpec",
    "QActivationTensor",
    "QBitsTensor",
    "QBytesTensor",
    "QDoubleQuantLookupTensor",
    "QLookupTensor",
    "QMicroscaledTensor",
    "QNVFP4Tensor",
    "QTensor",
    "QWeightTensor",
    "WeightParts",
    "layout_for",
    "register_layout",
    "stored_part_names",
]
