"""QuantaDiffusersQuantizer: quantize while a Diffusers model loads, save and reload it frozen.

A float checkpoint: the Linear and Conv2d modules are swapped for quanta's on the meta device,
and each float weight is quantized and frozen as soon as it is read. A saved one: the
per-module config (`quantization_config.modules`) rebuilds the quantized modules on the meta
device first, then each module is filled from its stored tensors (see held_back.py).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

import torch
from diffusers.quantizers.base import DiffusersQuantizer
from torch import nn

from quanta.qintegrations.diffusers.config import METADATA_KEY, QuantaConfig, diffusers_config
from quanta.qintegrations.diffusers.held_back import HeldBackTensors
from quanta.qintegrations.module_weights import (
    WEIGHT,
    is_weight_quantized,
    load_stored_tensors,
    materialize_activation_scales,
)
from quanta.qintegrations.offload import serve_quantized_weights
from quanta.qintegrations.quantizer_base import QuantaQuantizerMixin
from quanta.qmodules import QModuleMixin


class QuantaDiffusersQuantizer(QuantaQuantizerMixin, DiffusersQuantizer):
    """The Diffusers quantizer of quanta (quant_method "quanta")."""

    quantization_config: QuantaConfig
    # Diffusers hands the model class's `_keep_in_fp32_modules` to quantizers that declare this.
    use_keep_in_fp32_modules = True

    def __init__(self, quantization_config: QuantaConfig, **kwargs: Any) -> None:
        # A copy: loading records the per-module config in it, the caller's may serve again.
        quantization_config = diffusers_config(quantization_config, "quantization_config")
        super().__init__(copy.deepcopy(quantization_config), **kwargs)
        self.held_back = HeldBackTensors(*_saved_module_names(quantization_config))

    def update_torch_dtype(self, torch_dtype: torch.dtype | None) -> torch.dtype:
        """float32 unless asked: Diffusers would otherwise cast stored tensors to the model's."""
        return torch.float32 if torch_dtype is None else torch_dtype

    def maybe_update_loaded_keys(self, loaded_keys: list[str], checkpoint_files: Any) -> list[str]:
        return self.held_back.expect(loaded_keys)

    def maybe_update_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        return self.held_back.take(state_dict)

    def update_missing_keys(self, model: nn.Module, missing_keys: list[str], prefix: str) -> list:
        """A quantized module's other tensors come with its weight, or start at 1.0."""
        return [key for key in missing_keys if not _extra_tensor_of_quanta_module(model, key)]

    def check_if_quantized_param(
        self, model: nn.Module, param_value: Any, param_name: str, state_dict: Any, **kwargs: Any
    ) -> bool:
        """The weight of a quantized module not filled yet (float, or the held-back placeholder)."""
        module_name, _, tensor_name = param_name.rpartition(".")
        module = model.get_submodule(module_name)
        return tensor_name == WEIGHT and is_weight_quantized(module) and not module.is_frozen

    def create_quantized_param(
        self,
        model: nn.Module,
        param_value: torch.Tensor,
        param_name: str,
        target_device: torch.device | str,
        *args: Any,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        module_name = param_name.rpartition(".")[0]
        module = model.get_submodule(module_name)
        try:
            held = self.held_back.pop(module_name)
            if held is None:
                module.load_float_weight(param_value.to(target_device))
            else:
                load_stored_tensors(module, held, torch.device(target_device), dtype)
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"{module_name}: {error}") from error

    def _process_model_before_weight_loading(
        self,
        model: nn.Module,
        keep_in_fp32_modules: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        config = self.quantization_config
        self.quantize_modules(model, exclude=excluded_names(config, keep_in_fp32_modules or []))
        model.register_to_config(quantization_config=config)

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        serve_quantized_weights(model)  # Diffusers dispatched the model just before
        loaded = (t.device for t in model.parameters() if not t.is_meta)
        device = next(loaded, torch.device("cpu"))
        for module_name, held in self.held_back.pop_all().items():
            _assign_activation_scales(model, module_name, held, device)
        materialize_activation_scales(model, device)
        self.record_module_configs(model)
        return model

    def get_state_dict_and_metadata(
        self, state_dict: dict[str, Any], safe_serialization: bool = False
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The frozen layout as it is, and the whole config in the safetensors metadata."""
        return state_dict, {METADATA_KEY: json.dumps(self.quantization_config.to_dict())}

    @property
    def supports_parallel_loading(self) -> bool:
        """Shards are read in order: a module's stored tensors may span two of them."""
        return False

    @property
    def is_serializable(self) -> bool:
        return True


def excluded_names(config: QuantaConfig, keep_in_fp32_modules: Iterable[str]) -> list[str]:
    """`modules_to_not_convert` and the modules a model class keeps in float32: names that
    `QuantaSettings.quantize_model` matches against whole dot-separated parts, as Diffusers
    and Transformers do."""
    return [*(config.modules_to_not_convert or []), *keep_in_fp32_modules]


def _saved_module_names(config: QuantaConfig) -> tuple[list[str], list[str]]:
    """The quanta modules of a saved config, and those among them whose weight is quantized."""
    if config.modules is None:
        return [], []
    modules = config.saved_config().modules
    return list(modules), [name for name, entry in modules.items() if entry.weights is not None]


def _assign_activation_scales(
    model: nn.Module,
    module_name: str,
    scales: dict[str, torch.Tensor],
    default_device: torch.device,
) -> None:
    """Assign the saved scales of a module quantizing activations only (a QLayerNorm), on its
    own tensors' device, in the dtype it was rebuilt with."""
    try:
        model.get_submodule(module_name).set_activation_scales(scales, default_device)
    except ValueError as error:
        raise ValueError(
            f"{module_name}: the checkpoint holds scales it cannot use: {error}"
        ) from None


def _extra_tensor_of_quanta_module(model: nn.Module, key: str) -> bool:
    module_name, _, tensor_name = key.rpartition(".")
    if tensor_name in (WEIGHT, "bias"):
        return False
    return isinstance(model.get_submodule(module_name), QModuleMixin)
