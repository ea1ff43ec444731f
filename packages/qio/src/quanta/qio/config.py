"""The quantization config of a model: each module's ModuleConfig, versioned, as JSON.

It is written into every file `save` writes and read back by `load`, which applies it to the
model before the tensors are assigned. Each module's entry is exactly its
`quanta.qmodules.ModuleConfig` (`to_dict` / `from_dict`). The compact form (`to_json(compact=True)`,
what a Transformers or Diffusers config.json holds) writes the most common entry once, as
"default", and for each module only the fields that differ from it (often none).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

import quanta.qio
import quanta.qmodules
from quanta.qio.errors import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnsupportedCheckpointError,
)
from quanta.qmodules import ModuleConfig, QModuleMixin, apply_module_config

CONFIG_VERSION = ModuleConfig.version  # the shape of this JSON document and of its entries
LAYOUT_VERSION = 1  # the canonical tensor layout: codes, scale, zero_point as qmodules stores them


@dataclass(frozen=True)
class QuantizationConfig:
    """The config of a whole model: module name -> ModuleConfig, and tied keys stored once."""

    modules: dict[str, ModuleConfig]
    aliases: dict[str, str]

    @classmethod
    def from_json(cls, value: object, source: str = "config") -> QuantizationConfig:
        """Check and read a config written by `to_json` (the object or its JSON text)."""
        return parse_config(value, source)

    def to_json(self, compact: bool = False) -> dict[str, Any]:
        """The versioned JSON object written into the files; `compact`: the most common module
        entry once ("default"), and per module only the fields that differ from it."""
        entries = {name: entry.to_dict() for name, entry in self.modules.items()}
        document = {
            "config_version": CONFIG_VERSION,
            "layout_version": LAYOUT_VERSION,
            "versions": {
                "quanta-qio": quanta.qio.__version__,
                "quanta-qmodules": quanta.qmodules.__version__,
            },
            "modules": entries,
            "aliases": dict(self.aliases),
        }
        if compact and entries:
            texts = Counter(json.dumps(entry, sort_keys=True) for entry in entries.values())
            default = json.loads(texts.most_common(1)[0][0])
            document["default"] = default
            document["modules"] = {
                name: {key: value for key, value in entry.items() if value != default[key]}
                for name, entry in entries.items()
            }
        return document


def quantization_config(model: nn.Module) -> QuantizationConfig:
    """The QuantizationConfig of `model`'s quantized modules."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = {
        name: module.qconfig
        for name, module in model.named_modules()
        if isinstance(module, QModuleMixin)
        and (module.qconfig.weights is not None or module.qconfig.activations is not None)
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
    if set(value) - {"default"} != expected:  # "default": the compact form
        raise CorruptCheckpointError(f"{source}: the config keys are {sorted(value)}")
    modules, aliases = value["modules"], value["aliases"]
    default = value.get("default", {})
    if not all(isinstance(item, dict) for item in (modules, aliases, default)):
        raise CorruptCheckpointError(
            f"{source}: the config's modules, aliases and default must be objects"
        )
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise CorruptCheckpointError(f"{source}: the config's aliases must map keys to keys")
    entries = {
        name: _module_entry(name, _with_default(entry, default), source)
        for name, entry in modules.items()
    }
    return QuantizationConfig(entries, aliases)


def _with_default(entry: object, default: dict) -> object:
    """A module's entry of the compact form completed by the default (the full form: as is)."""
    return {**default, **entry} if isinstance(entry, dict) else entry


def _module_entry(name: str, entry: object, source: str) -> ModuleConfig:
    where = f"{source}: config of module {name!r}"
    try:
        return ModuleConfig.from_dict(entry)
    except TypeError as error:  # not the stored shape: a damaged file
        raise CorruptCheckpointError(f"{where}: {error}") from None
    except ValueError as error:  # a valid document this quanta cannot apply
        raise CheckpointMismatchError(f"{where}: {error}") from None


def apply_quantization_config(model: nn.Module, config: QuantizationConfig) -> nn.Module:
    """Quantize `model`'s modules in place as `config` says (weights stay as they are: float,
    or on the meta device); modules already quantized must have the same settings."""
    for name, entry in config.modules.items():
        module = _submodule(model, name)
        if isinstance(module, QModuleMixin):
            if module.qconfig.settings() != entry.settings():
                raise CheckpointMismatchError(
                    f"module {name!r} is already quantized as {module.qconfig.settings()}, "
                    f"the checkpoint has {entry.settings()} (weights, group_size, activations, "
                    "mode)"
                )
            continue
        try:
            apply_module_config(module, entry, name)
        except (TypeError, ValueError) as error:
            raise CheckpointMismatchError(
                f"the checkpoint quantizes module {name!r} ({type(module).__name__}): {error}"
            ) from None
    return model


def stored_layout(config: QuantizationConfig) -> QuantizationConfig:
    """`config` without its optimizers: applied to a float model, freeze() stores the layout
    the checkpoint holds without running an optimizer."""
    modules = {name: replace(entry, optimizer=None) for name, entry in config.modules.items()}
    return QuantizationConfig(modules, config.aliases)


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise CheckpointMismatchError(
            f"the checkpoint quantizes module {name!r}, which the model does not have"
        ) from None
