"""quantize(): swap Linear/Conv2d modules (and their subclasses) for quantized ones in place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from quanta.qmodules.config import ModuleConfig, to_module_config
from quanta.qmodules.modules import QModuleMixin, apply_module_config, quantized_base_for
from quanta.qmodules.optimizers import WeightOptimizer
from quanta.qtypes import QType, qint8


def quantize(
    model: nn.Module,
    weights: QType | str | None = qint8,
    activations: QType | str | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    group_size: int | None = None,
    overrides: dict[str, ModuleConfig | dict[str, Any]] | None = None,
    optimizer: WeightOptimizer | str | None = None,
    activations_mode: str = "static",
) -> nn.Module:
    """Quantize the weights of `model`'s Linear and Conv2d modules in place; returns `model`.

    The arguments make one ModuleConfig (see its fields) applied to every module chosen by fnmatch
    patterns on qualified names (`exclude` wins over `include`). `overrides` maps a pattern to a
    ModuleConfig, which replaces the config of the modules it matches, or to a dict of some of
    its fields ("weights", "group_size", "optimizer", "activations", "activations_mode"), merged
    over it; in dict order (weights=None leaves the module float, activations=None its
    activations). `group_size` applies to 2/4-bit weights; the default is 128, 64 or 32,
    whichever divides K first, else one group per row. `optimizer` (a WeightOptimizer or a name:
    "absmax", "minmax", "hqq", "gptq"; None is the default rule) chooses the stored weights at
    freeze; one that does not support a module's qtype is a ValueError. Every argument is
    validated before the model is touched.

    `activations` (an 8-bit qtype: qint8, qfloat8_e4m3fn, qfloat8_e5m2) also quantizes the inputs
    and outputs of the quantized modules and the outputs of LayerNorms (QLayerNorm).
    `activations_mode="static"` uses per-tensor scales held in the buffers `input_scale` /
    `output_scale` (1.0 until `quanta.qcalib.Calibration` sets them); `"dynamic"` computes one
    scale per token at every call (no calibration, outputs stay float).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    defaults = ModuleConfig(
        weights, group_size, optimizer, activations, activations_mode
    ).resolved()
    include = _check_patterns(include, "include")
    exclude = _check_patterns(exclude, "exclude")
    overrides = _check_overrides(overrides)

    plan = []
    for name, module in model.named_modules():
        base = quantized_base_for(type(module))
        if isinstance(module, QModuleMixin) or base is None:
            continue
        if include is not None and not _matches(name, include):
            continue
        if exclude is not None and _matches(name, exclude):
            continue
        config = _overridden(defaults, name, overrides)
        if not base.quantizes_weight:
            config = replace(config, weights=None)  # QLayerNorm: only its output is quantized
        if (config.weights if base.quantizes_weight else config.activations) is None:
            continue  # a module whose weight stays float stays float as a whole
        config = config.for_module(_in_size(module), name or type(module).__name__)
        plan.append((name, module, config))

    for name, module, config in plan:
        apply_module_config(module, config, name)
    return model


def _check_patterns(patterns: Any, argument: str) -> tuple[str, ...] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return (patterns,)
    if isinstance(patterns, (list, tuple)) and all(isinstance(p, str) for p in patterns):
        return tuple(patterns)
    raise TypeError(
        f"{argument} must be None, a str or a list of str (fnmatch patterns on module names), "
        f"got {patterns!r}"
    )


def _check_overrides(overrides: Any) -> dict[str, ModuleConfig | dict[str, Any]]:
    """Each override checked: a ModuleConfig, or a dict of fields that make a valid one."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise TypeError(
            "overrides must be None or a dict {pattern: ModuleConfig or {'weights': ..., "
            f"'group_size': ...}}}}, got {type(overrides).__name__}"
        )
    checked = {}
    for pattern, override in overrides.items():
        if not isinstance(pattern, str):
            raise TypeError(f"overrides keys must be str patterns, got {pattern!r}")
        config = to_module_config(override, f"overrides[{pattern!r}]").resolved()
        # a dict merges only its own fields, converted (qtype names) and resolved (optimizer)
        checked[pattern] = (
            {key: getattr(config, key) for key in override}
            if isinstance(override, dict)
            else config
        )
    return checked


def _overridden(
    config: ModuleConfig, name: str, overrides: dict[str, ModuleConfig | dict[str, Any]]
) -> ModuleConfig:
    """`config` with every override whose pattern matches `name` applied, in order."""
    for pattern, override in overrides.items():
        if fnmatchcase(name, pattern):
            config = override if isinstance(override, ModuleConfig) else replace(config, **override)
    return config


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def _in_size(module: nn.Module) -> int:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter):  # a LayerNorm without affine weights
        return 0
    return weight.numel() // weight.shape[0] if weight.shape[0] else 0
