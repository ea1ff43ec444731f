"""Offload quanta's quantized weights with accelerate's hooks: served whole, still quantized.

accelerate's `AlignDevicesHook` reloads an offloaded module's tensors by parameter name
("weight") from a weights map built from `state_dict()` (kept in memory, or written to an
offload folder), where a frozen quanta module stores its weight as parts (`weight.codes`,
`weight.scale`...). `serve_quantized_weights` wraps each offloading hook's map so that "weight"
is the QTensor assembled from those parts: the offloaded tensors themselves, no float copy.
The hooks then move it with `.to()` and rebuild it as `type(param)(tensor, requires_grad=...)`,
which every QTensor type supports, under torch.no_grad() and torch.inference_mode() alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from quanta.qmodules import QTensor

if TYPE_CHECKING:
    from accelerate.hooks import AlignDevicesHook

# accelerate is imported where it is needed: only a model it hooked, or a device_map, needs it
# (the Transformers and Diffusers integrations work without it).


class QuantizedWeightsMap(Mapping):
    """A hook's weights map that serves each quantized weight assembled from its stored parts."""

    def __init__(self, parts: Mapping[str, torch.Tensor], templates: dict[str, QTensor]) -> None:
        self.parts = parts
        # The module's own (meta) QTensors: the type, attributes and shape to rebuild.
        self.templates = templates

    def __getitem__(self, key: str) -> torch.Tensor:
        template = self.templates.get(key)
        if template is None:
            return self.parts[key]
        names, attributes = template.__tensor_flatten__()
        inner = {name: self.parts[f"{key}.{name}"] for name in names}
        return type(template).__tensor_unflatten__(inner, attributes, template.shape, None)

    def __iter__(self) -> Iterator[str]:
        yield from self.parts
        yield from (key for key in self.templates if key not in self.parts)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def serve_quantized_weights(model: nn.Module) -> nn.Module:
    """Make `model`'s offloading accelerate hooks serve its quantized weights whole.

    Call it after `accelerate.cpu_offload`, `dispatch_model` or `disk_offload` of a quantized
    model (`from_pretrained` calls it itself); calling it again changes nothing.
    """
    for module in model.modules():
        for hook in _align_devices_hooks(module):
            if hook.offload and hook.weights_map is not None:
                _wrap_weights_map(module, hook)
    return model


def read_offloaded_tensors(
    model: nn.Module, state_dict: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`state_dict` with its offloaded entries (on the meta device) read from the hooks' weights
    maps: Transformers would look each up as a parameter, which a weight's parts are not."""
    weights_maps = {
        name: hook.weights_map
        for name, module in model.named_modules()
        for hook in _align_devices_hooks(module)
        if hook.offload and hook.weights_map is not None
    }
    for key, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_meta:
            state_dict[key] = _read_offloaded(weights_maps, key)
    return state_dict


def _read_offloaded(weights_maps: dict[str, Mapping], key: str) -> torch.Tensor:
    """Read `key` from the weights map of the closest hooked module above it."""
    parts = key.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        module_name = ".".join(parts[:depth])
        if module_name in weights_maps:
            return weights_maps[module_name][".".join(parts[depth:])]
    raise KeyError(f"{key} is on the meta device, and no offload hook of the model holds it")


def _align_devices_hooks(module: nn.Module) -> list[AlignDevicesHook]:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    from accelerate.hooks import AlignDevicesHook

    hooks = getattr(hook, "hooks", [hook])  # a SequentialHook holds several
    return [hook for hook in hooks if isinstance(hook, AlignDevicesHook)]


def _wrap_weights_map(module: nn.Module, hook: AlignDevicesHook) -> None:
    """Serve the module's QTensors the map holds as parts only (not when it holds them whole)."""
    if isinstance(hook.weights_map, QuantizedWeightsMap):
        return
    templates = {
        name: tensor
        for name, tensor in module.named_parameters(recurse=hook.place_submodules)
        if isinstance(tensor, QTensor) and name not in hook.weights_map
    }
    if templates:
        hook.weights_map = QuantizedWeightsMap(hook.weights_map, templates)
