"""Offload quanta's quantized weights with accelerate's hooks: served whole, still quantized.

accelerate's `AlignDevicesHook` reloads an offloaded module's tensors by parameter name
("weight") from a weights map built from `state_dict()` (kept in memory, or written to an
offload folder), where a frozen quanta module stores its weight as parts (`weight.codes`,
`weight.scale`...). `serve_quantized_weights` wraps each offloading hook's map so that "weight"
is the QTensor assembled from those parts: the offloaded tensors themselves, no float copy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from quanta.qintegrations.module_weights import WEIGHT, is_weight_quantized
from quanta.qmodules import QTensor, freeze

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
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"the offloaded quantized weight {key!r} cannot be reloaded inside "
                "torch.inference_mode(): there accelerate's hooks would dequantize it (a QTensor's "
                ".to() falls back to the float tensor); run the model under torch.no_grad()"
            )
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


def offload_unsupported_weights(model: nn.Module) -> list[str]:
    """The weight qtypes of `model`'s quantized modules that accelerate's hooks cannot offload.

    Offloading moves each parameter to the meta device and back through
    `set_module_tensor_to_device`, which rebuilds it as `type(param)(tensor, requires_grad=...)`
    for tensor types it does not know: tried on a frozen copy of one module per qtype.
    """
    one_per_qtype = {
        module.weight_qtype: module for module in model.modules() if is_weight_quantized(module)
    }
    return sorted(
        f"{qtype.name} ({type(probe.weight).__name__})"
        for qtype, module in one_per_qtype.items()
        if not _moves_to_meta(probe := _frozen_copy(module))
    )


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


def _frozen_copy(module: nn.Module) -> nn.Module:
    probe = copy.deepcopy(module)
    probe.weight_optimizer = None  # the stored weight's type does not depend on it (HQQ, GPTQ)
    return freeze(probe)


def _moves_to_meta(module: nn.Module) -> bool:
    from accelerate.utils import set_module_tensor_to_device

    try:  # with a value, as a hook reloads it: a tensor already on meta would not be rebuilt
        set_module_tensor_to_device(module, WEIGHT, "meta", value=module.weight)
    except TypeError:
        return False
    return True
