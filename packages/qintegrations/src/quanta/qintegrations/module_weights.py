"""Fill one quantized module of a model being loaded: from its float weight, or from what a
frozen quanta module stores (no library import: Transformers and Diffusers loaders share it)."""

from __future__ import annotations

import torch
from torch import nn

from quanta.qmodules import QModuleMixin, layout_for

WEIGHT = "weight"
CODES = f"{WEIGHT}.codes"


def is_weight_quantized(module: nn.Module) -> bool:
    """A quanta module whose weight is quantized (not a LayerNorm quantizing its output only)."""
    return isinstance(module, QModuleMixin) and module.qconfig.weights is not None


def materialize_activation_scales(model: nn.Module, default_device: torch.device) -> None:
    """Static activation scales a float checkpoint lacks start at 1.0 (uncalibrated), on their
    module's device (`default_device` for modules without tensors of their own, like a
    LayerNorm without affine weights)."""
    for module in model.modules():
        if not isinstance(module, QModuleMixin):
            continue
        meta = {name: s for name, s in module.activation_scales().items() if s.is_meta}
        if meta:
            ones = {name: torch.ones((), dtype=scale.dtype) for name, scale in meta.items()}
            module.set_activation_scales(ones, default_device)


def load_stored_tensors(
    module: nn.Module, stored: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> None:
    """Pre-quantized load: assign a frozen module's stored tensors (names relative to it).

    Codes, and scales in a format of their own (e8m0, e4m3, float32 tensor scales), keep their
    dtype; the layout's float scales, float zero points and activation buffers take `dtype`.
    """
    layout = layout_for(module.qconfig.weights)
    keys = [f"{WEIGHT}.{name}" for name in layout.inner_names]
    missing = [key for key in keys if key not in stored]
    if missing:
        raise ValueError(f"the checkpoint lacks {missing[0]}")
    converted = (*layout.float_inner_names, *layout.optional_float_names)
    kept = {f"{WEIGHT}.{name}" for name in layout.inner_names if name not in converted}
    state = {
        name: tensor.to(
            device=device,
            dtype=None if name in kept or not tensor.is_floating_point() else dtype,
        )
        for name, tensor in stored.items()
    }
    result = module.load_state_dict(state, strict=False, assign=True)  # checks shapes; freezes
    if result.unexpected_keys:
        raise ValueError(f"the checkpoint holds {sorted(result.unexpected_keys)} it cannot use")
