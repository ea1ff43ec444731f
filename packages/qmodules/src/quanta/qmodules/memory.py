"""weight_memory(): what the quantized weights of a model take, against float32."""

from __future__ import annotations

import math
from typing import NamedTuple

from torch import nn

from quanta.qmodules.modules.base import WEIGHT, QModuleMixin
from quanta.qmodules.tensors import QTensor

FLOAT32_BYTES = 4


class WeightMemory(NamedTuple):
    """Bytes of the quantized weights (codes, scales, zero points) and of the same in fp32."""

    quantized_bytes: int
    float_bytes: int


def weight_memory(model: nn.Module) -> WeightMemory:
    """Bytes of every quantized module's weight as stored (or as freeze() will store it)."""
    quantized_bytes = float_bytes = 0
    for module in model.modules():
        if not isinstance(module, QModuleMixin) or module.weight_qtype is None:
            continue
        weight = module._parameters.get(WEIGHT)
        if weight is None:
            continue
        float_bytes += weight.numel() * FLOAT32_BYTES
        if isinstance(weight, QTensor):
            quantized_bytes += sum(t.nbytes for t in weight.inner_tensors().values())
        else:
            quantized_bytes += _planned_bytes(module, weight.shape[0], weight.element_size())
    return WeightMemory(quantized_bytes, float_bytes)


def _planned_bytes(module: QModuleMixin, rows: int, scale_bytes: int) -> int:
    qtype, in_size = module.weight_qtype, module.in_size
    if not qtype.is_packed:
        return rows * in_size * qtype.dtype.itemsize + rows * scale_bytes
    groups = in_size // module.weight_group_size
    optimizer = module.weight_optimizer
    zero_point_bytes = scale_bytes if optimizer is not None and optimizer.float_zero_point else 1
    return rows * (math.ceil(in_size * qtype.bits / 8) + groups * (scale_bytes + zero_point_bytes))
