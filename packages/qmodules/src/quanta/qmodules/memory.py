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
        if not isinstance(module, QModuleMixin) or module.qconfig.weights is None:
            continue
        weight = module.stored_weight
        if weight is None:
            continue
        float_bytes += weight.numel() * FLOAT32_BYTES
        if isinstance(weight, QTensor):
            quantized_bytes += sum(t.nbytes for t in weight.inner_tensors().values())
        else:
            config = module.qconfig
            quantized_bytes += layout_for(config.weights).stored_bytes(
                config.weights,
                weight.shape,
                config.group_size,
                weight.dtype,
                config.float_zero_point,
            )
    return WeightMemory(quantized_bytes, float_bytes)
