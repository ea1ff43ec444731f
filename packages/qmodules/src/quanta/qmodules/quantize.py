"""quantize(): swap Linear/Conv2d modules (and their subclasses) for quantized ones in place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from quanta.qmodules.modules.activations import (
    ACTIVATION_MODES,
    quantize_module_activations,
    quantizes_weight,
)
from quanta.qmodules.modules.base import QModuleMixin, quantize_module, quantized_base_for
from quanta.qmodules.optimizers import WeightOptimizer, check_supports, to_weight_optimizer
from quanta.qtypes import QType, qint8, to_qtype

OVERRIDE_KEYS = ("weights", "group_size", "optimizer", "activations")
DEFAULT_GROUP_SIZES = (128, 64, 32)


@dataclass(frozen=True)
class _ModuleConfig:
    weights: QType | None
    group_size: int | None
    optimizer: WeightOptimizer | None = None
    activations: QType | None = None

    def overridden(self, name: str, overrides: dict[str, dict[str, Any]]) -> _ModuleConfig:
        """This config with every override whose pattern matches `name` merged in, in order."""
        config = self
        for pattern, override in overrides.items():
            if fnmatchcase(name, pattern):
                config = replace(config, **override)
        return config


def quantize(
    model: nn.Module,
    weights: QType | str | None = qint8,
    activations: QType | str | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    group_size: int | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    optimizer: WeightOptimizer | str | None = None,
    activations_mode: str = "static",
) -> nn.Module:
    """Quantize the weights of `model`'s Linear and Conv2d modules in place; returns `model`.

    Modules are chosen by fnmatch patterns on qualified names (`exclude` wins over `include`);
    `overrides` maps a pattern to {"weights", "group_size", "optimizer", "activations"} values
    merged over the defaults in dict order (weights=None leaves the module float, activations=None
    its activations). `group_size` applies to 2/4-bit
    weights; the default is 128, 64 or 32, whichever divides K first, else one group per row.
    `optimizer` (a WeightOptimizer or a name: "absmax", "minmax", "hqq", "gptq"; None is the
    default rule) chooses the stored weights at freeze; one that does not support a module's
    qtype is a ValueError. Every argument is validated before the model is touched.

    `activations` (an 8-bit qtype: qint8, qfloat8_e4m3fn, qfloat8_e5m2) also quantizes the inputs
    and outputs of the quantized modules and the outputs of LayerNorms (QLayerNorm).
    `activations_mode="static"` uses per-tensor scales held in the buffers `input_scale` /
    `output_scale` (1.0 until `quanta.qcalib.Calibration` sets them); `"dynamic"` computes one
    scale per token at every call (no calibration, outputs stay float).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    weights = None if weights is None else to_qtype(weights, "weights")
    activation_qtype = _check_activations(activations)
    activations_mode = _check_activations_mode(activations_mode)
    include = _check_patterns(include, "include")
    exclude = _check_patterns(exclude, "exclude")
    group_size = _check_group_size(group_size, "group_size")
    overrides = _check_overrides(overrides)
    optimizer = to_weight_optimizer(optimizer)

    defaults = _ModuleConfig(weights, group_size, optimizer, activation_qtype)
    plan = []
    activation_only = []
    for name, module in model.named_modules():
        if isinstance(module, QModuleMixin) or quantized_base_for(type(module)) is None:
            continue
        if include is not None and not _matches(name, include):
            continue
        if exclude is not None and _matches(name, exclude):
            continue
        config = defaults.overridden(name, overrides)
        if not quantizes_weight(quantized_base_for(type(module))):
            if config.activations is not None:  # QLayerNorm: only its output is quantized
                activation_only.append((name, module, config.activations))
            continue
        if config.weights is None:
            continue
        check_supports(config.optimizer, config.weights, name or type(module).__name__)
        group = _module_group_size(name, module, config)
        plan.append((name, module, config, group))

    for _, module, config, group in plan:
        quantize_module(module, config.weights, group, config.optimizer)
    for name, module, config, _ in plan:
        if config.activations is not None:
            quantize_module_activations(module, config.activations, activations_mode, name)
    for name, module, qtype in activation_only:
        quantize_module_activations(module, qtype, activations_mode, name)
    return model


def _check_activations(activations: Any, argument: str = "activations") -> QType | None:
    if activations is None:
        return None
    qtype = to_qtype(activations, argument)
    if qtype.bits != 8:
        raise ValueError(
            f"{argument} must be None or an 8-bit qtype (qint8, qfloat8...), got {qtype}"
        )
    return qtype


def _check_activations_mode(mode: Any) -> str:
    if not isinstance(mode, str) or mode not in ACTIVATION_MODES:
        raise ValueError(f"activations_mode must be one of {list(ACTIVATION_MODES)}, got {mode!r}")
    return mode


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


def _check_group_size(group_size: Any, argument: str) -> int | None:
    if group_size is None:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"{argument} must be None or a positive int, got {group_size!r}")
    if group_size <= 0:
        raise ValueError(f"{argument} must be None or a positive int, got {group_size}")
    return group_size


def _check_overrides(overrides: Any) -> dict[str, dict[str, Any]]:
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise TypeError(
            "overrides must be None or a dict {pattern: {'weights': ..., 'group_size': ...}}, "
            f"got {type(overrides).__name__}"
        )
    checked = {}
    for pattern, override in overrides.items():
        where = f"overrides[{pattern!r}]"
        if not isinstance(pattern, str):
            raise TypeError(f"overrides keys must be str patterns, got {pattern!r}")
        if not isinstance(override, dict):
            raise TypeError(
                f"{where} must be a dict with keys among {list(OVERRIDE_KEYS)}, got {override!r}"
            )
        unknown = sorted(set(override) - set(OVERRIDE_KEYS), key=str)
        if unknown:
            raise ValueError(
                f"{where} has unknown keys {unknown}; allowed keys: {list(OVERRIDE_KEYS)}"
            )
        entry: dict[str, Any] = {}
        if "weights" in override:
            value = override["weights"]
            entry["weights"] = None if value is None else to_qtype(value, f"{where}['weights']")
        if "group_size" in override:
            entry["group_size"] = _check_group_size(
                override["group_size"], f"{where}['group_size']"
            )
        if "optimizer" in override:
            entry["optimizer"] = to_weight_optimizer(override["optimizer"], f"{where}['optimizer']")
        if "activations" in override:
            entry["activations"] = _check_activations(
                override["activations"], f"{where}['activations']"
            )
        checked[pattern] = entry
    return checked


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def _in_size(module: nn.Module) -> int:
    weight = module.weight
    return weight.numel() // weight.shape[0] if weight.shape[0] else 0


def _module_group_size(name: str, module: nn.Module, config: _ModuleConfig) -> int | None:
    """The group size a 2/4-bit module gets: the user's (checked) or the default."""
    if not config.weights.is_packed:
        return None
    in_size = _in_size(module)
    if config.group_size is None:
        return default_group_size(in_size)
    if in_size % config.group_size != 0:
        raise ValueError(
            f"group_size={config.group_size} does not divide K={in_size} of module "
            f"{name or type(module).__name__!r}; use a divisor of {in_size} or None"
        )
    return config.group_size


def default_group_size(in_size: int) -> int:
    """128 when it divides K, else the largest of 64/32 that does, else K (one group a row)."""
    for size in DEFAULT_GROUP_SIZES:
        if in_size % size == 0:
            return size
    return in_size
