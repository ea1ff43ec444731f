"""QuantaSettings: the quantization settings shared by the Transformers and Diffusers configs.

Plain data and its checks, no library import: each integration pairs it with its library's
config mixin (`transformers.QuantaConfig`, `diffusers.QuantaConfig`).
"""

from __future__ import annotations

import copy
import json
import warnings
from typing import Any, ClassVar

import torch
from torch import nn

from quanta.qio import QuantizationConfig
from quanta.qmodules import (
    USER_FIELDS,
    ModuleConfig,
    QModuleMixin,
    WeightOptimizer,
    quantize,
    to_module_config,
    to_weight_optimizer,
    unmatched_patterns,
)
from quanta.qtypes import QType

QUANT_METHOD = "quanta"
# Optimizers that need statistics gathered before freeze cannot run while the weights load.
LOAD_TIME_UNSUPPORTED_OPTIMIZERS = ("gptq",)
# The module types quanta.quantize swaps (and their subclasses), as the messages name them.
QUANTIZED_MODULE_TYPES = "Linear, Conv1d, Conv2d, Embedding, Conv1D or LayerNorm"
# The arguments of QuantaSettings, in order: what config.json holds besides quant_method.
FIELDS = (
    "weights",
    "activations",
    "activations_mode",
    "group_size",
    "modules_to_not_convert",
    "optimizer",
    "overrides",
    "modules",
)


def check_device_map(device_map: Any) -> None:
    """Refuse a device_map with modules on disk, whose offload from_pretrained cannot serve
    quantized (a CPU offload is served: quanta.qintegrations.offload.serve_quantized_weights)."""
    if isinstance(device_map, dict) and "disk" in {str(d) for d in device_map.values()}:
        raise ValueError(
            f"device_map={device_map!r} offloads modules to ['disk']: from_pretrained cannot "
            "offload quanta's quantized weights to disk (accelerate's offload index points at "
            "the checkpoint's float weight or shape sentinel, not at the quantized parts). Load "
            "onto devices that compute, e.g. device_map={'': 'cpu'}, then offload with "
            "accelerate.dispatch_model(model, device_map, offload_dir=...) and "
            "quanta.qintegrations.offload.serve_quantized_weights(model)."
        )


def module_name_patterns(name: str) -> list[str]:
    """The fnmatch patterns of a `modules_to_not_convert` name, Transformers' convention: the
    modules whose qualified name holds `name` as whole dot-separated parts, and every module
    under them ("gate_proj" matches "model.layers.3.mlp.gate_proj", "model.layers.0" every
    module of that layer); fnmatch wildcards work inside it ("layers.0.*")."""
    return [name, f"*.{name}", f"{name}.*", f"*.{name}.*"]


class QuantaSettings:
    """How `from_pretrained` quantizes a float checkpoint with quanta, and how a saved one was.

    The arguments are those of `quanta.quantize`, as JSON values: a QType becomes its name, an
    optimizer instance the name it is registered under (a TypeError names a field that cannot
    be saved). `modules_to_not_convert` follows Transformers' convention (see
    `module_name_patterns`; None: the library's default); `overrides` keys are fnmatch
    patterns on whole qualified names, as in `quanta.quantize`. `modules` is written by
    `save_pretrained`: the exact per-module config (quanta.qio's JSON, stored compact) that a
    reload rebuilds before the weights are read; leave it None when quantizing.
    """

    # The `quant_method` each library expects (Diffusers wants a str Enum member).
    method: ClassVar[str] = QUANT_METHOD

    def __init__(
        self,
        weights: str | QType | None = "int8",
        activations: str | QType | None = None,
        activations_mode: str = "static",
        group_size: int | None = None,
        modules_to_not_convert: list[str] | None = None,
        optimizer: str | WeightOptimizer | None = None,
        overrides: dict[str, dict[str, Any] | ModuleConfig] | None = None,
        modules: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.quant_method = self.method
        self.weights = _qtype_name(weights)
        self.activations = _qtype_name(activations)
        self.activations_mode = activations_mode
        self.group_size = group_size
        self.modules_to_not_convert = _name_list(modules_to_not_convert)
        self.optimizer = _optimizer_name(optimizer, "optimizer")
        self.overrides = _json_overrides(overrides)
        self.modules = modules
        self._check(kwargs)

    def arguments(self) -> dict[str, Any]:
        """The settings as keyword arguments (what converts one library's config to the other's)."""
        return {field: copy.deepcopy(getattr(self, field)) for field in FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """Every setting as JSON values, the per-module config in its compact form (the most
        common module entry once, then only what differs per module)."""
        settings = copy.deepcopy(vars(self))
        if self.modules is not None:
            settings["modules"] = self.saved_config().to_json(compact=True)
        return settings

    def _check(self, unknown: dict[str, Any]) -> None:
        unknown = {key: value for key, value in unknown.items() if key != "quant_method"}
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown arguments {sorted(unknown)}")
        if self.optimizer in LOAD_TIME_UNSUPPORTED_OPTIMIZERS:
            raise ValueError(
                f"optimizer={self.optimizer!r} needs calibration data before freeze and cannot run "
                "while from_pretrained loads the weights; quantize the loaded float model with "
                "quanta.quantize and quanta.qcalib instead"
            )
        self.default_module_config()
        self._check_overrides()
        if self.modules is not None:
            self.saved_config()  # a saved config must parse: refuse it here, not mid-load
        for field in FIELDS:
            try:
                json.dumps(getattr(self, field))
            except (TypeError, ValueError) as error:  # a value config.json cannot hold
                raise TypeError(
                    f"{type(self).__name__}: {field}={getattr(self, field)!r} cannot be saved in "
                    f"config.json ({error}); use str names, numbers, lists and dicts"
                ) from None

    def default_module_config(self) -> ModuleConfig:
        """The ModuleConfig these settings apply to every module (its optimizer resolved)."""
        return ModuleConfig(
            weights=self.weights,
            group_size=self.group_size,
            optimizer=self.optimizer,
            activations=self.activations,
            activations_mode=self.activations_mode,
        ).resolved()

    def _check_overrides(self) -> None:
        """Each override must make a valid ModuleConfig (as quantize() would build it)."""
        for pattern, override in (self.overrides or {}).items():
            to_module_config(override, f"overrides[{pattern!r}]").resolved()

    def quantize_model(self, model: nn.Module, exclude: list[str]) -> None:
        """`quanta.quantize` of `model` with these settings, except the modules `exclude` names
        (Transformers' convention, see `module_name_patterns`).

        Names and patterns that match no module are dropped, as Transformers does: those the
        user wrote (`modules_to_not_convert`, `overrides`) with a warning, the library's own
        silently. A model left with no quantized module is a warning too.
        """
        overrides = self.overrides or {}
        exclude_patterns = [pattern for name in exclude for pattern in module_name_patterns(name)]
        unmatched = set(unmatched_patterns(model, [*exclude_patterns, *overrides]))
        self._warn_unmatched(
            model,
            [
                name
                for name in self.modules_to_not_convert or ()
                if unmatched.issuperset(module_name_patterns(name))
            ],
            [pattern for pattern in overrides if pattern in unmatched],
        )
        quantize(
            model,
            weights=self.weights,
            activations=self.activations,
            activations_mode=self.activations_mode,
            group_size=self.group_size,
            exclude=[pattern for pattern in exclude_patterns if pattern not in unmatched],
            optimizer=self.optimizer,
            overrides={p: o for p, o in overrides.items() if p not in unmatched},
        )
        if not any(isinstance(module, QModuleMixin) for module in model.modules()):
            _warn_nothing_quantized(model, type(self).__name__)

    def _warn_unmatched(self, model: nn.Module, names: list[str], patterns: list[str]) -> None:
        if names or patterns:
            warnings.warn(
                f"{type(self).__name__}: the patterns {[*names, *patterns]} match no "
                f"{QUANTIZED_MODULE_TYPES} module of {type(model).__name__} and change nothing "
                "(modules_to_not_convert: names of whole dot-separated parts of qualified names, "
                "such as 'mlp' or 'model.layers.0'; overrides: fnmatch patterns on whole "
                "qualified names, such as 'model.layers.0.mlp.*')",
                stacklevel=4,
            )

    def saved_config(self) -> QuantizationConfig:
        """The saved per-module config (raises if this config was never saved)."""
        if self.modules is None:
            raise ValueError(
                f"this {type(self).__name__} holds no per-module config (it was never saved)"
            )
        return QuantizationConfig.from_json(self.modules, source="quantization_config.modules")


def _warn_nothing_quantized(model: nn.Module, config_name: str) -> None:
    """Say that quantization changed nothing, and which module types the model holds."""
    kinds = sorted(
        {
            type(module).__name__
            for module in model.modules()
            if isinstance(getattr(module, "weight", None), torch.Tensor)
        }
    )
    warnings.warn(
        f"{config_name} quantized no module of {type(model).__name__}: quanta quantizes the "
        f"{QUANTIZED_MODULE_TYPES} modules not excluded (LayerNorm only with activations), and "
        f"the model's modules with weights are of types {kinds}; the model stays float",
        stacklevel=4,
    )


def _qtype_name(value: Any) -> Any:
    """A QType as its name (what config.json stores); other values are checked later."""
    return value.name if isinstance(value, QType) else value


def _name_list(names: Any) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, (list, tuple)) and all(isinstance(name, str) for name in names):
        return list(names)
    raise TypeError(f"modules_to_not_convert must be None or a list of str names, got {names!r}")


def _optimizer_name(optimizer: Any, argument: str) -> Any:
    """An optimizer instance as the name it is registered under, when that name builds the
    same optimizer (same type and settings): config.json stores names only."""
    if optimizer is None or isinstance(optimizer, str):
        return optimizer
    if not isinstance(optimizer, WeightOptimizer):
        raise TypeError(f"{argument} must be None, a name or a WeightOptimizer, got {optimizer!r}")
    try:
        registered = to_weight_optimizer(optimizer.name) if optimizer.name else None
    except ValueError:
        registered = None
    # repr shows an optimizer's settings (HQQ's iterations...): a different one is not the name
    if type(registered) is not type(optimizer) or repr(registered) != repr(optimizer):
        raise TypeError(
            f"{argument}={optimizer!r} cannot be saved in config.json: pass the name of a "
            "registered optimizer with its default settings ('hqq', 'absmax', 'minmax'...), or "
            "quantize the loaded float model with quanta.quantize(optimizer=...) and save it "
            "with quanta.save"
        )
    return optimizer.name


def _json_overrides(overrides: Any) -> dict[str, dict[str, Any]] | None:
    """`overrides` with JSON values: each one a dict of user fields, qtypes and optimizers named."""
    if overrides is None:
        return None
    if not isinstance(overrides, dict):
        raise TypeError(f"overrides must be None or a dict of patterns, got {overrides!r}")
    return {pattern: _json_override(pattern, value) for pattern, value in overrides.items()}


def _json_override(pattern: Any, value: Any) -> dict[str, Any]:
    argument = f"overrides[{pattern!r}]"
    if not isinstance(pattern, str):
        raise TypeError(f"overrides keys must be str patterns, got {pattern!r}")
    if isinstance(value, ModuleConfig):
        fields = {field: getattr(value, field) for field in USER_FIELDS}
        if ModuleConfig(**fields) != value:
            raise TypeError(
                f"{argument}={value!r} sets fields config.json cannot hold (only "
                f"{list(USER_FIELDS)}); pass a dict of those"
            )
        value = fields
    if not isinstance(value, dict):
        return value  # to_module_config refuses it with the allowed forms
    return {
        key: _optimizer_name(item, f"{argument}['optimizer']")
        if key == "optimizer"
        else _qtype_name(item)
        for key, item in value.items()
    }
