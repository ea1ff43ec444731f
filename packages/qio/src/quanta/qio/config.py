"""The quantization config: what `quantize()` did to each module, versioned, as JSON.

It is written into every file `save` writes and read back by `load`, which applies it to the
model before the tensors are assigned. Per module: weight qtype, group size, axis, whether zero
points are floats (HQQ), the optimizer that chose the weights, and the activation qtype, mode and
which activation scales (input, output, smoothing) the module holds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

import quanta.qio
import quanta.qmodules
from quanta.qio.errors import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnsupportedCheckpointError,
)
from quanta.qmodules import QBitsTensor, QModuleMixin
from quanta.qmodules.modules import quantize_module, quantize_module_activations
from quanta.qmodules.modules.activations import (
    ACTIVATION_MODES,
    INPUT_ROTATION,
    INPUT_SMOOTHING,
)
from quanta.qmodules.modules.base import WEIGHT, quantized_base_for
from quanta.qtypes import QType, to_qtype

CONFIG_VERSION = 1  # the shape of this JSON document
LAYOUT_VERSION = 1  # the canonical tensor layout: codes, scale, zero_point as qmodules stores them
WEIGHT_AXIS = 0  # scales run along the output channels (dimension 0) of every weight


@dataclass(frozen=True)
class ModuleConfig:
    """How one module is quantized: enough to rebuild it on the meta device before loading."""

    weights: str | None = None
    group_size: int | None = None
    axis: int | None = None
    float_zero_point: bool = False
    optimizer: str | None = None
    activations: str | None = None
    activations_mode: str | None = None
    output_quantized: bool = False
    input_smoothing: bool = False
    input_rotation: int | None = None  # the Hadamard block size of a rotated input

    @property
    def weight_qtype(self) -> QType | None:
        """The weight qtype, or None for modules whose weight stays float."""
        return None if self.weights is None else to_qtype(self.weights)

    @property
    def activation_qtype(self) -> QType | None:
        """The activation qtype, or None."""
        return None if self.activations is None else to_qtype(self.activations)

    def settings(self) -> tuple:
        """What must match between a module already quantized and this config."""
        return (self.weights, self.group_size, self.activations, self.activations_mode)


@dataclass(frozen=True)
class QuantizationConfig:
    """The config of a whole model: module name -> ModuleConfig, and tied keys stored once."""

    modules: dict[str, ModuleConfig]
    aliases: dict[str, str]

    @classmethod
    def from_json(cls, value: object, source: str = "config") -> QuantizationConfig:
        """Check and read a config written by `to_json` (the object or its JSON text)."""
        return parse_config(value, source)

    def to_json(self) -> dict[str, Any]:
        """The versioned JSON object written into the files."""
        return {
            "config_version": CONFIG_VERSION,
            "layout_version": LAYOUT_VERSION,
            "versions": {
                "quanta-qio": quanta.qio.__version__,
                "quanta-qmodules": quanta.qmodules.__version__,
            },
            "modules": {name: asdict(entry) for name, entry in self.modules.items()},
            "aliases": dict(self.aliases),
        }


def module_config(module: QModuleMixin) -> ModuleConfig:
    """The ModuleConfig of one quantized module (frozen or not)."""
    qtype, optimizer = module.weight_qtype, module.weight_optimizer
    weight = module._parameters.get(WEIGHT)
    if isinstance(weight, QBitsTensor):
        float_zero_point = weight.zero_point.dtype.is_floating_point
    else:
        float_zero_point = optimizer is not None and optimizer.float_zero_point and qtype.is_packed
    activation_qtype = module.activation_qtype
    rotation = module._buffers.get(INPUT_ROTATION)
    return ModuleConfig(
        weights=None if qtype is None else qtype.name,
        group_size=module.weight_group_size,
        axis=None if qtype is None else WEIGHT_AXIS,
        float_zero_point=bool(float_zero_point),
        optimizer=None if optimizer is None else optimizer.name or type(optimizer).__name__,
        activations=None if activation_qtype is None else activation_qtype.name,
        activations_mode=module.activation_mode if activation_qtype is not None else None,
        output_quantized=activation_qtype is not None and module.quantizes_output,
        input_smoothing=module._buffers.get(INPUT_SMOOTHING) is not None,
        input_rotation=None if rotation is None else rotation.shape[1],
    )


def quantization_config(model: nn.Module) -> QuantizationConfig:
    """The QuantizationConfig of `model`'s quantized modules."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = {
        name: module_config(module)
        for name, module in model.named_modules()
        if isinstance(module, QModuleMixin)
        and (module.weight_qtype is not None or module.activation_qtype is not None)
    }
    return QuantizationConfig(modules, {})


def parse_config(value: object, source: str) -> QuantizationConfig:
    """Check a JSON config (object or text) read from `source` and return it."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as error:  # bad JSON, a 5000-digit int
            raise CorruptCheckpointError(
                f"{source}: the config is not valid JSON ({error})"
            ) from None
    if not isinstance(value, dict):
        raise CorruptCheckpointError(f"{source}: the config is not a JSON object")
    for key, supported in (("config_version", CONFIG_VERSION), ("layout_version", LAYOUT_VERSION)):
        if value.get(key) != supported:
            raise UnsupportedCheckpointError(
                f"{source}: {key} {value.get(key)!r} is not supported (this quanta-qio reads "
                f"{supported}); upgrade quanta-qio"
            )
    expected = {"config_version", "layout_version", "versions", "modules", "aliases"}
    if set(value) != expected:
        raise CorruptCheckpointError(f"{source}: the config keys are {sorted(value)}")
    modules, aliases = value["modules"], value["aliases"]
    if not isinstance(modules, dict) or not isinstance(aliases, dict):
        raise CorruptCheckpointError(f"{source}: the config's modules and aliases must be objects")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise CorruptCheckpointError(f"{source}: the config's aliases must map keys to keys")
    entries = {name: _module_entry(name, entry, source) for name, entry in modules.items()}
    return QuantizationConfig(entries, aliases)


_FIELD_TYPES = {
    "weights": (str, type(None)),
    "group_size": (int, type(None)),
    "axis": (int, type(None)),
    "float_zero_point": (bool,),
    "optimizer": (str, type(None)),
    "activations": (str, type(None)),
    "activations_mode": (str, type(None)),
    "output_quantized": (bool,),
    "input_smoothing": (bool,),
    "input_rotation": (int, type(None)),
}


def _module_entry(name: str, entry: object, source: str) -> ModuleConfig:
    where = f"{source}: config of module {name!r}"
    names = {field.name for field in fields(ModuleConfig)}
    if not isinstance(entry, dict) or set(entry) != names:
        raise CorruptCheckpointError(f"{where}: expected the fields {sorted(names)}")
    for key, value in entry.items():
        is_bool_as_int = isinstance(value, bool) and bool not in _FIELD_TYPES[key]
        if is_bool_as_int or not isinstance(value, _FIELD_TYPES[key]):
            raise CorruptCheckpointError(f"{where}: {key}={value!r} has the wrong type")
    config = ModuleConfig(**entry)
    try:
        weight_qtype, activation_qtype = config.weight_qtype, config.activation_qtype
    except (TypeError, ValueError) as error:
        raise CheckpointMismatchError(f"{where}: {error}") from None
    _check_module_entry(config, weight_qtype, activation_qtype, where)
    return config


def _check_module_entry(
    config: ModuleConfig, weight_qtype: QType | None, activation_qtype: QType | None, where: str
) -> None:
    problems = []
    if weight_qtype is None and activation_qtype is None:
        problems.append("neither weights nor activations are quantized")
    if weight_qtype is not None and config.axis != WEIGHT_AXIS:
        problems.append(f"axis {config.axis} (only {WEIGHT_AXIS} is supported)")
    packed = weight_qtype is not None and weight_qtype.is_packed
    if packed != (config.group_size is not None) or (packed and config.group_size <= 0):
        problems.append(f"group_size {config.group_size} for weights {config.weights}")
    if config.float_zero_point and not packed:
        problems.append("float zero points without 2/4-bit weights")
    if activation_qtype is not None and activation_qtype.bits != 8:
        problems.append(f"activations {config.activations} (8-bit qtypes only)")
    if (activation_qtype is None) != (config.activations_mode is None) or (
        config.activations_mode not in (None, *ACTIVATION_MODES)
    ):
        problems.append(f"activations_mode {config.activations_mode!r}")
    if config.output_quantized and config.activations_mode != "static":
        problems.append("a quantized output without static activations")
    if problems:
        raise CheckpointMismatchError(f"{where}: invalid: {'; '.join(problems)}")


def apply_quantization_config(model: nn.Module, config: QuantizationConfig) -> nn.Module:
    """Quantize `model`'s modules in place as `config` says (weights stay as they are: float,
    or on the meta device); modules already quantized must have the same settings."""
    for name, entry in config.modules.items():
        module = _submodule(model, name)
        if isinstance(module, QModuleMixin):
            if module_config(module).settings() != entry.settings():
                raise CheckpointMismatchError(
                    f"module {name!r} is already quantized as {module_config(module).settings()}, "
                    f"the checkpoint has {entry.settings()} (weights, group_size, activations, "
                    "mode)"
                )
            continue
        _quantize(module, name, entry)
    return model


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise CheckpointMismatchError(
            f"the checkpoint quantizes module {name!r}, which the model does not have"
        ) from None


def _quantize(module: nn.Module, name: str, entry: ModuleConfig) -> None:
    base = quantized_base_for(type(module))
    if base is None:
        raise CheckpointMismatchError(
            f"the checkpoint quantizes module {name!r}, but its type {type(module).__name__} "
            "has no quantized class"
        )
    weight_qtype = entry.weight_qtype
    if weight_qtype is not None:
        weight = module._parameters.get(WEIGHT)
        columns = 0 if weight is None else weight[0].numel()
        if weight is None or (weight_qtype.is_packed and columns % entry.group_size):
            raise CheckpointMismatchError(
                f"module {name!r}: group_size {entry.group_size} of the checkpoint does not fit "
                f"its weight {None if weight is None else tuple(weight.shape)}"
            )
        quantize_module(module, weight_qtype, entry.group_size)
    if entry.activation_qtype is None:
        return
    quantize_module_activations(module, entry.activation_qtype, entry.activations_mode, name)
    if entry.activations_mode == "static" and not entry.output_quantized:
        module.disable_output_quantization()
    if entry.input_smoothing:
        weight = module._parameters[WEIGHT]
        ones = torch.ones(weight.shape[1], dtype=weight.dtype, device=weight.device)
        module.register_buffer(INPUT_SMOOTHING, ones)
    if entry.input_rotation is not None:
        weight = module._parameters[WEIGHT]
        block = entry.input_rotation
        if block < 1 or weight.shape[1] % block:
            raise CheckpointMismatchError(
                f"module {name!r}: input_rotation block {block} does not divide its "
                f"{weight.shape[1]} input features"
            )
        shape = (weight.shape[1] // block, block)
        signs = torch.ones(shape, dtype=weight.dtype, device=weight.device)
        module.register_buffer(INPUT_ROTATION, signs)
