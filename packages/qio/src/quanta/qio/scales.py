"""The stored scales of quantized modules, which must be finite: one NaN or Inf scale makes
every later output of its module NaN, so save and load refuse it."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from quanta.qmodules import QActivationMixin, QModuleMixin, QWeightTensor


def scale_keys(model: nn.Module) -> dict[str, str]:
    """The state_dict keys of `model`'s stored scales (weight scales, float zero points, static
    activation scales), each with the name of its module. Zero points are listed whatever their
    dtype; `non_finite_scale` checks only floating-point tensors."""
    keys: dict[str, str] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = module.stored_weight if isinstance(module, QModuleMixin) else None
        if isinstance(weight, QWeightTensor):
            for part in weight.scale_part_names():
                keys[f"{prefix}weight.{part}"] = name
        if isinstance(module, QActivationMixin):
            for buffer in module.activation_scales():
                keys[f"{prefix}{buffer}"] = name
    return keys


def non_finite_scale(
    state: Mapping[str, torch.Tensor], keys: Mapping[str, str]
) -> tuple[str, str] | None:
    """The first (key, module name) of `keys` whose floating-point tensor in `state` holds a
    NaN or an Inf, or None."""
    for key, module in keys.items():
        tensor = state.get(key)
        if tensor is None or not tensor.is_floating_point():
            continue
        # float32 first: torch.isfinite calls every float8_e8m0fnu finite, even its NaN
        if not tensor.float().isfinite().all():
            return key, module
    return None
