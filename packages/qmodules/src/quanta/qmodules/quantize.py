"""quantize(): swap Linear, Conv1d, Conv2d and Embedding modules (and their subclasses, and any
class registered with `register_quantized_class`) for quantized ones in place."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from quanta.qmodules.config import ModuleConfig, to_module_config
from quanta.qmodules.modules import QModuleMixin, apply_module_config, quantized_base_for
from quanta.qmodules.optimizers import WeightOptimizer
from quanta.qmodules.tensors import layout_for
from quanta.qtypes import QType, qint8, to_qtype


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
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> nn.Module:
    """Quantize the weights of `model`'s Linear, Conv1d, Conv2d and Embedding modules in place
    (and Transformers' Conv1D where quanta.qintegrations is installed); returns `model`.

    The arguments make one ModuleConfig (see its fields) applied to every module chosen by fnmatch
    patterns on whole qualified names and by `filter_fn`: a module is quantized when it matches
    `include` (if given), matches no `exclude` pattern and `filter_fn(module, name)` (if given,
    as torchao's `quantize_`) returns True; filter_fn sees only the modules quantize() handles,
    still float. "layers.0.*" selects the
    modules under "layers.0", "fc1" only a top-level "fc1" ("*.fc1" every one). This is not
    Transformers' `modules_to_not_convert` convention (a name matching whole dot-separated parts
    anywhere), which QuantaConfig and the CLI's `--exclude` follow. `overrides` maps a pattern to a
    ModuleConfig, which replaces the config of the modules it matches, or to a dict of some of
    its fields ("weights", "group_size", "optimizer", "activations", "activations_mode"), merged
    over it; in dict order (weights=None leaves the module float, activations=None its
    activations). Every `include`, `exclude` and `overrides` pattern must match at least one
    module quantize() handles (ValueError otherwise: a pattern that matches nothing is a typo).
    A module already quantized is left as it is when the new settings are its own, and is a
    ValueError when they differ (quantize the float model once, with `overrides` for the modules
    that differ). `group_size` applies to 2/4-bit weights (a ValueError for 8-bit ones); the
    default is 128, 64 or 32, whichever divides K first, else one group per row. `optimizer`
    (a WeightOptimizer or a name: "absmax", "minmax", "hqq", "gptq"; None is the default rule)
    chooses the stored weights at freeze; one that does not support a module's qtype is a
    ValueError. Every argument is validated before the model is touched.

    Modules that share one weight Parameter (tied embeddings: `embed_tokens` and `lm_head`) are
    quantized together as one tensor (one quantized weight after freeze, saved once) when all of
    them are chosen with the same weight settings; otherwise all of them stay float, with a
    warning naming them (never one quantized and its twin float).

    `activations` (an 8-bit qtype: qint8, qfloat8_e4m3fn, qfloat8_e5m2) also quantizes the inputs
    and outputs of the quantized modules and the outputs of LayerNorms (QLayerNorm); embeddings
    (QEmbedding) stay weight-only.
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
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(
            f"filter_fn must be None or a callable (module, name) -> bool, got {filter_fn!r}"
        )
    _check_matches(model, {"include": include, "exclude": exclude, "overrides": overrides})

    plan = []
    for name, module in _candidates(model):
        if include is not None and not _matches(name, include):
            continue
        if exclude is not None and _matches(name, exclude):
            continue
        chosen = filter_fn is None or isinstance(module, QModuleMixin) or filter_fn(module, name)
        if not chosen:
            continue
        base = quantized_base_for(type(module))
        config = _overridden(defaults, name, overrides)
        if not base.quantizes_weight:
            config = replace(config, weights=None)  # QLayerNorm: only its output is quantized
        if not base.quantizes_activations:
            config = replace(config, activations=None)  # QEmbedding: a lookup, weight-only
        if (config.weights if base.quantizes_weight else config.activations) is None:
            config = None  # a module whose weight stays float stays float as a whole
        else:
            config = config.for_module(_in_size(module), name or type(module).__name__)
        if isinstance(module, QModuleMixin):
            _check_same_settings(name, module, config)
        elif config is not None:
            plan.append((name, module, config))

    for name, module, config in _keep_tied_weights_together(model, plan):
        apply_module_config(module, config, name)
    return model


def _keep_tied_weights_together(
    model: nn.Module, plan: list[tuple[str, nn.Module, ModuleConfig]]
) -> list[tuple[str, nn.Module, ModuleConfig]]:
    """The plan without the modules whose weight is tied to a module quantized otherwise (or
    not at all): a tied group is quantized whole with one weight setting, or kept float whole."""
    owners = defaultdict(list)  # weight Parameter id -> the candidate modules holding it
    for name, module in _candidates(model):
        weight = _weight_of(module)
        if weight is not None:
            owners[id(weight)].append(name)
    planned = {name: _weight_settings(config) for name, _, config in plan}
    kept_float: list[list[str]] = []
    for names in owners.values():
        settings = {planned.get(name) for name in names}
        if len(names) > 1 and len(settings) > 1:
            kept_float.append(names)
    if not kept_float:
        return plan
    groups = "; ".join(", ".join(map(repr, names)) for names in kept_float)
    warnings.warn(
        f"modules {groups} share one weight (tied) but quantize() would quantize only some "
        "of each group, or with different weight settings: all of them are left float. Choose "
        "all of a group (same weights/group_size/optimizer) to quantize it as one tensor, or "
        "exclude all of it",
        stacklevel=3,
    )
    dropped = {name for names in kept_float for name in names}
    return [entry for entry in plan if entry[0] not in dropped]


def _weight_settings(config: ModuleConfig) -> tuple | None:
    """What tied modules must share to share one quantized weight (None: weight left float)."""
    if config.weights is None:
        return None
    return (config.weights.name, config.group_size, config.optimizer_name)


def _weight_of(module: nn.Module) -> torch.Tensor | None:
    """The module's weight as stored (float, or quantized once frozen), or None."""
    if isinstance(module, QModuleMixin):
        return module.stored_weight
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) else None


def unmatched_patterns(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """The fnmatch patterns that match the qualified name of no module quantize() handles
    (a Linear, Conv1d, Conv2d, Embedding or LayerNorm, or a subclass, float or already
    quantized)."""
    names = [name for name, _ in _candidates(model)]
    return [pattern for pattern in patterns if not any(fnmatchcase(n, pattern) for n in names)]


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules quantize() may quantize, or has quantized, with their qualified names."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, QModuleMixin) or quantized_base_for(type(module)) is not None
    ]


def _check_matches(model: nn.Module, patterns: dict[str, Any]) -> None:
    for argument, given in patterns.items():
        unmatched = unmatched_patterns(model, list(given or ()))
        if unmatched:
            raise ValueError(
                f"{argument} pattern {unmatched[0]!r} matches no Linear, Conv1d, Conv2d, "
                "Embedding or LayerNorm module of the model (fnmatch on qualified names such "
                "as 'layers.0.mlp.fc1'; 'layers.0.*' selects the modules under 'layers.0')"
            )


def _check_same_settings(name: str, module: QModuleMixin, config: ModuleConfig | None) -> None:
    """An already quantized module may only be asked for the settings it has."""
    wanted = None if config is None else config.settings()
    if wanted != module.qconfig.settings():
        raise ValueError(
            f"module {name!r} is already quantized ({module.qconfig.settings()}) and quantize() "
            f"would change it to {wanted}: quantize a float model once, with `overrides` for "
            "the modules that differ, or `exclude` this one"
        )


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
        if not fnmatchcase(name, pattern):
            continue
        if isinstance(override, ModuleConfig):
            config = override
            continue
        weights = override.get("weights", config.weights)
        if "group_size" not in override and weights is not None and _own_group_size(weights):
            override = {**override, "group_size": None}  # 8-bit, or a size the format fixes
        config = replace(config, **override)
    return config


def _own_group_size(weights: QType | str) -> bool:
    """Whether a group size set for other weights means nothing for `weights` (no groups, or
    a size the format fixes)."""
    qtype = to_qtype(weights, "weights")
    return not layout_for(qtype).grouped or qtype.block_size is not None


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def _in_size(module: nn.Module) -> int:
    """K of the module's weight as quantized (0 without one), float or already quantized."""
    weight = _weight_of(module)
    if weight is None or not weight.shape[0]:
        return 0  # a LayerNorm without affine weights
    if not isinstance(module, QModuleMixin):  # Conv1D: rows are its output features
        weight = quantized_base_for(type(module)).weight_matrix(weight)
    return weight.numel() // weight.shape[0]
