"""SmoothQuant-style smoothing: move activation outliers into the weights, per input channel.

For a linear y = x Wᵀ, dividing input channel j by s_j and multiplying weight column j by s_j
leaves y unchanged while flattening the channels that make a per-tensor activation scale coarse.
With s_j = max|x_j|^alpha / max|W[:, j]|^(1 - alpha) (SmoothQuant, Xiao et al. 2023), alpha
sets how much of the difficulty moves to the weights (0.5 balances both).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from quanta.qcalib.batches import run_batches
from quanta.qmodules import QLinear, float_activations

# keeps s away from 0 and inf for channels that never fire (or columns of zeros)
MIN_RANGE = 1e-5


@torch.no_grad()
def smooth(
    model: nn.Module, batches: Iterable[Any], alpha: float = 0.5, *, progress: bool = True
) -> nn.Module:
    """Smooth the inputs of every activation-quantized, not yet frozen QLinear of `model`.

    Call after `quantize(..., activations=...)` and before `Calibration` and `freeze`: the
    batches (tensors, or tuples / dicts of model arguments) are run in float to measure max|x|
    per input channel; each module then divides its input by s at run time (buffer
    `input_smoothing`, saved in the state_dict) and its float weight columns are multiplied by s.
    Returns `model`. `progress` shows a bar over the batches when they take over a second.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a float in [0, 1], got {alpha!r}")
    modules = [
        module
        for module in model.modules()
        if isinstance(module, QLinear)
        and module.qconfig.activations is not None
        and module.float_weight is not None
    ]
    if not modules:
        raise ValueError(
            "smooth() found no QLinear with activations and a float weight: call it after "
            "quantize(model, activations=...) and before freeze()"
        )
    ranges: dict[nn.Module, torch.Tensor] = {}

    def record(module: nn.Module, args: tuple) -> None:
        x = args[0]
        x = x.dequantize() if hasattr(x, "dequantize") else x
        channel_max = x.detach().abs().reshape(-1, x.shape[-1]).amax(0).float()
        seen = ranges.get(module)
        ranges[module] = channel_max if seen is None else torch.maximum(seen, channel_max)

    handles = [module.register_forward_pre_hook(record) for module in modules]
    try:
        with float_activations():  # measure float activations: no quantization while running
            count = run_batches(model, batches, progress)
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise ValueError("smooth() needs at least one calibration batch")
    for module in modules:
        if module not in ranges:
            continue
        weight_max = module.float_weight.detach().abs().amax(0).float().clamp(min=MIN_RANGE)
        input_max = ranges[module].clamp(min=MIN_RANGE)
        factors = input_max.pow(alpha) / weight_max.pow(1 - alpha)
        module.smooth_input(factors.clamp(min=MIN_RANGE))
    return model
