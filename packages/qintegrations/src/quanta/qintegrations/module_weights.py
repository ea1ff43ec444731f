"""Fill one quantized module of a model being loaded: from its float weight, or from what a
frozen quanta module stores (no library import: Transformers and Diffusers loaders share it)."""

from __future__ import annotations

import torch
from torch import nn

from quanta.qmodules import QModuleMixin, freeze
from quanta.qmodules.modules.activations import INPUT_SCALE, OUTPUT_SCALE

WEIGHT = "weight"
# The stored weight parts that are codes: they keep their dtype (int8, uint8, float8).
CODES = f"{WEIGHT}.codes"


def is_weight_quantized(module: nn.Module) -> bool:
    """A quanta module whose weight is quantized (not a LayerNorm quantizing its output only)."""
    return isinstance(module, QModuleMixin) and module.weight_qtype is not None


def quantize_float_weight(module: nn.Module, weight: torch.Tensor) -> None:
    """Quantize-on-load: assign the float `weight`, freeze the module, free the float tensor."""
    expected = tuple(module._parameters[WEIGHT].shape)
    if not weight.is_floating_point() or tuple(weight.shape) != expected:
        raise ValueError(
            f"expected a float weight of shape {expected}, got {weight.dtype} "
            f"{tuple(weight.shape)}: a checkpoint in quanta's frozen layout needs the "
            "per-module config it was saved with"
        )
    module._parameters[WEIGHT] = nn.Parameter(weight, requires_grad=False)
    freeze(module)


def materialize_activation_scales(model: nn.Module, default_device: torch.device) -> None:
    """Static activation scales a float checkpoint lacks start at 1.0 (uncalibrated), on their
    module's device (`default_device` for modules without tensors of their own, like a
    LayerNorm without affine weights)."""
    for module in model.modules():
        own = [t.device for t in module.parameters(recurse=False) if not t.is_meta]
        for name in (INPUT_SCALE, OUTPUT_SCALE):
            buffer = module._buffers.get(name)
            if buffer is not None and buffer.is_meta:
                device = own[0] if own else default_device
                module._buffers[name] = torch.ones((), dtype=buffer.dtype, device=device)


def load_stored_tensors(
    module: nn.Module, stored: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> None:
    """Pre-quantized load: assign a frozen module's stored tensors (names relative to it).

    Codes keep their dtype; scales, float zero points and activation buffers take `dtype`.
    """
    missing = [name for name in (CODES, f"{WEIGHT}.scale") if name not in stored]
    if missing:
        raise ValueError(f"the checkpoint lacks {missing[0]}")
    state = {
        name: tensor.to(
            device=device,
            dtype=None if name == CODES or not tensor.is_floating_point() else dtype,
        )
        for name, tensor in stored.items()
    }
    result = module.load_state_dict(state, strict=False, assign=True)  # checks shapes; freezes
    if result.unexpected_keys:
        raise ValueError(f"the checkpoint holds {sorted(result.unexpected_keys)} it cannot use")
