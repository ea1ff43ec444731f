"""The weight operations Transformers runs while it loads: quantize a float weight, or rebuild a
saved quantized one from its stored tensors (quanta's frozen layout)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.core_model_loading import ConversionOps

from quanta.qintegrations.module_weights import (
    WEIGHT,
    is_weight_quantized,
    load_stored_tensors,
    materialize_activation_scales,
)
from quanta.qmodules import stored_part_names

# The sentinel stored under the float name `<module>.weight`: the int64 logical shape of the
# weight. Transformers without the quanta plugin finds a tensor of the wrong shape under a key
# of the float model and refuses the checkpoint instead of initializing the weight at random.
SHAPE_SENTINEL_DTYPE = torch.int64


def serialized_weight_names() -> list[str]:
    """Every checkpoint name a module's weight is read from: the sentinel and the stored parts."""
    return [WEIGHT, *(f"{WEIGHT}.{part}" for part in stored_part_names())]


def _module_of(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    module_name = key.rpartition(".")[0]
    return model.get_submodule(module_name), module_name


def _mark_loaded(
    module: nn.Module, module_name: str, missing_keys: set[str] | None, names: tuple[str, ...]
) -> None:
    """Tell Transformers that the weight and `names` of `module` are loaded, not to initialize."""
    module.stored_weight._is_hf_initialized = True
    if missing_keys is not None:
        for name in names:
            missing_keys.discard(f"{module_name}.{name}")


class QuantizeWeight(ConversionOps):
    """Quantize-on-load: take one float weight, freeze its quantized module, free the float."""

    def __init__(self, hf_quantizer: Any) -> None:
        self.hf_quantizer = hf_quantizer

    def convert(
        self,
        input_dict: dict[str, list[torch.Tensor]],
        model: nn.Module | None = None,
        full_layer_name: str | None = None,
        missing_keys: set[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        (value,) = (v[0] if isinstance(v, list) else v for v in input_dict.values())
        module, module_name = _module_of(model, full_layer_name)
        module.load_float_weight(value)
        materialize_activation_scales(module, value.device)  # static scales start at 1.0
        buffers = (name for name, _ in module.named_buffers(recurse=False))
        _mark_loaded(module, module_name, missing_keys, (WEIGHT, *buffers))
        return {}


class DeserializeWeight(ConversionOps):
    """Pre-quantized load: rebuild a module's quantized weight from its stored parts.

    Every `*.weight` key passes through here (the sentinel shares the float name); weights that
    are not quantized are handed back unchanged.
    """

    def __init__(self, hf_quantizer: Any) -> None:
        self.hf_quantizer = hf_quantizer

    def convert(
        self,
        input_dict: dict[str, list[torch.Tensor]],
        model: nn.Module | None = None,
        full_layer_name: str | None = None,
        missing_keys: set[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        tensors = {k: v[0] if isinstance(v, list) else v for k, v in input_dict.items()}
        module, module_name = _module_of(model, full_layer_name)
        if not is_weight_quantized(module):
            if set(tensors) != {WEIGHT}:
                raise ValueError(
                    f"{full_layer_name}: the checkpoint stores a quantized weight "
                    f"({sorted(tensors)}) for a module its quantization config leaves float"
                )
            return tensors
        _check_shape_sentinel(tensors.pop(WEIGHT, None), module, full_layer_name)
        float_weight = module.stored_weight
        device = next(iter(tensors.values())).device if tensors else torch.device("cpu")
        try:
            load_stored_tensors(module, tensors, device, float_weight.dtype)
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"{module_name}: {error}") from error
        _mark_loaded(module, module_name, missing_keys, (WEIGHT,))
        return {}

    @property
    def reverse_op(self) -> ConversionOps:
        """Saving writes the frozen layout as it is."""
        return KeepAsIs()


def _check_shape_sentinel(sentinel: torch.Tensor | None, module: nn.Module, key: str) -> None:
    if sentinel is None:
        return
    expected = tuple(module.quantized_shape)  # Conv1D: the [out, in] matrix it quantizes
    if sentinel.dtype != SHAPE_SENTINEL_DTYPE or tuple(sentinel.tolist()) != expected:
        raise ValueError(
            f"{key}: the checkpoint's weight has shape {sentinel.tolist()}, the model {expected}"
        )


def shape_sentinel(weight: torch.Tensor) -> torch.Tensor:
    """The tensor saved under a quantized module's float weight name (see SHAPE_SENTINEL_DTYPE)."""
    return torch.tensor(list(weight.shape), dtype=SHAPE_SENTINEL_DTYPE)


class KeepAsIs(ConversionOps):
    """The reverse of DeserializeWeight when saving: tensors go out unchanged."""

    def convert(self, input_dict: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return input_dict
