"""weight_memory(): what the quantized weights of a model take, against float32."""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from quanta.qmodules.modules.base import QModuleMixin
from quanta.qmodules.tensors import QTensor, layout_for

FLOAT32_BYTES = 4


class WeightMemory(NamedTuple):
    """Bytes of the quantized weights (codes, scales, zero points) and of the same in fp32."""

    quantized_bytes: int
    float_bytes: int


def weight_memory(model: nn.Module) -> WeightMemory:
    """Bytes of every quantized module's weight as stored (or as freeze() will store it)."""
    quantized_bytes = float_bytes = 0
    for module in model.modules():
        stored = quantized_weight_bytes(module)
        if stored is not None:
            quantized_bytes += stored
            float_bytes += module.stored_weight.numel() * FLOAT32_BYTES
    return WeightMemory(quantized_bytes, float_bytes)


def quantized_weight_bytes(module: nn.Module) -> int | None:
    """Bytes of `module`'s quantized weight as stored (or as freeze() will store it), or None
    where the module does not quantize a weight."""
    if not isinstance(module, QModuleMixin) or module.qconfig.weights is None:
        return None
    weight = module.stored_weight
    if weight is None:
        return None
    if isinstance(weight, QTensor):
        return weight.nbytes
    config = module.qconfig
    shape = module.quantized_shape  # Conv1D: the [out, in] matrix it quantizes
    return layout_for(config.weights).stored_bytes(
        config.weights, shape, config.group_size, weight.dtype, config.float_zero_point
    )
