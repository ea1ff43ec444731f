"""freeze(): store the quantized weights and free the float ones."""

from __future__ import annotations

import torch
from torch import nn

from quanta.qmodules.modules.activations import QActivationMixin
from quanta.qmodules.modules.base import QModuleMixin
from quanta.qmodules.optimizers import to_weight_optimizer
from quanta.qmodules.progress import progress_bar


def freeze(model: nn.Module, *, progress: bool = True) -> nn.Module:
    """Replace the float weights of `model`'s quantized modules with stored QTensors.

    Accepts any module (a whole model or a single quantized module) and returns it. Every
    weight and static activation scale is checked for NaN/Inf, and every module's weight
    optimizer for readiness (GPTQ needs its statistics), before any module is changed; the
    optimizers act here. `progress` shows a bar over the modules when freezing takes over a
    second (a weight optimizer such as HQQ or GPTQ on a large model).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    pending = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, QModuleMixin)
        and not module.is_frozen
        and module.qconfig.weights is not None
        and module.stored_weight is not None
    ]
    _check_activation_scales(model)
    for name, module in pending:
        weight = module.stored_weight
        if not weight.is_meta and not bool(torch.isfinite(weight).all()):
            raise ValueError(
                f"the weight of module {name or type(module).__name__!r} holds NaN or Inf; "
                "it cannot be quantized"
            )
        optimizer = to_weight_optimizer(module.qconfig.optimizer)
        if optimizer is not None:
            optimizer.check_ready(module, name or type(module).__name__)
    for _, module in progress_bar(pending, desc="freeze", unit="module", progress=progress):
        module.freeze_weight()
    return model


def _check_activation_scales(model: nn.Module) -> None:
    """Refuse a static activation scale that is NaN or Inf: every output would be NaN."""
    for name, module in model.named_modules():
        if not isinstance(module, QActivationMixin):
            continue
        for buffer, scale in module.activation_scales().items():
            if not scale.is_meta and not bool(torch.isfinite(scale).all()):
                raise ValueError(
                    f"the {buffer} of module {name or type(module).__name__!r} holds NaN or "
                    "Inf: calibrate it again on finite batches (or load finite scales)"
                )
