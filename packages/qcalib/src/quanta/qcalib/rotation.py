"""rotate(): Hadamard-rotate the inputs of activation-quantized linears (QuaRot-style).

Per-tensor static activation scales are set by the largest value of any token. In LLM MLPs the
input of the down projection has a few channels that are tens to thousands of times larger than
the rest; smoothing moves part of them into the weights, and a random-sign block Hadamard rotation
spreads what is left over whole blocks of channels. The rotation needs no data: it is exact in
float, and only the quantization error changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

from quanta.qmodules import QLinear, hadamard_block_size, progress_bar


def rotate(
    model: nn.Module,
    include: str | Sequence[str] = "*",
    block_size: int | None = None,
    seed: int = 0,
    *,
    progress: bool = True,
) -> nn.Module:
    """Rotate the inputs of the activation-quantized, not yet frozen QLinears whose qualified
    names match `include` (fnmatch patterns); returns `model`.

    Call after `quantize(..., activations=...)` and `smooth()`, before `Calibration` and
    `freeze`. `block_size` (a power of two dividing in_features) defaults to the largest such
    power up to 512. Each module gets the buffer `input_rotation` (its random signs, from `seed`
    and the module's position), saved in the state_dict. `progress` shows a bar over the
    modules when rotating takes over a second.
    """
    patterns = (include,) if isinstance(include, str) else include
    if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"include must be a str or a list of str, got {include!r}")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)):
        raise TypeError(f"block_size must be None or an int, got {block_size!r}")
    modules = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, QLinear)
        and module.qconfig.activations is not None
        and module.float_weight is not None
        and any(fnmatchcase(name, pattern) for pattern in patterns)
    ]
    if not modules:
        raise ValueError(
            f"rotate() found no QLinear with activations and a float weight matching {include!r}: "
            "call it after quantize(model, activations=...) and before freeze()"
        )
    # every block checked before any module changes
    blocks = [hadamard_block_size(module.in_features, block_size) for _, module in modules]
    pairs = zip(modules, blocks, strict=True)
    bar = progress_bar(pairs, desc="rotate", total=len(modules), unit="module", progress=progress)
    for index, ((_, module), block) in enumerate(bar):
        module.rotate_input(block, seed=seed + index)
    return model
