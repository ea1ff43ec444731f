"""QuantaHfQuantizer: quantize while `from_pretrained` loads, save and reload the frozen layout.

Quantizing a float checkpoint: the modules are swapped for quanta's on the meta device, and each
float weight is quantized and frozen as soon as it is read (one float weight in memory at a
time). Reloading a saved one: the per-module config in `quantization_config.modules` rebuilds
the quantized modules on the meta device, then each weight is assembled from its stored parts.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch import nn
from transformers.core_model_loading import ConversionOps
from transformers.quantizers.base import HfQuantizer

from quanta.qintegrations.module_weights import WEIGHT, is_weight_quantized
from quanta.qintegrations.offload import read_offloaded_tensors, serve_quantized_weights
from quanta.qintegrations.quantizer_base import QuantaQuantizerMixin
from quanta.qintegrations.transformers.config import QUANT_METHOD, QuantaConfig
from quanta.qintegrations.transformers.operations import (
    DeserializeWeight,
    QuantizeWeight,
    serialized_weight_names,
    shape_sentinel,
)
from quanta.qmodules import QModuleMixin, quantized_weight_bytes

# Checkpoint dtypes (safetensors names) cast to the model's dtype while loading; codes
# (int8, uint8, float8) and the shape sentinels keep theirs.
CAST_DTYPES = {"F16", "BF16", "F32", "F64"}
CAST_TORCH_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64}


class QuantaHfQuantizer(QuantaQuantizerMixin, HfQuantizer):
    """The Transformers quantizer of quanta (quant_method "quanta")."""

    quantization_config: QuantaConfig

    def __init__(self, quantization_config: QuantaConfig, **kwargs: Any) -> None:
        # A copy: loading records the per-module config in it, the caller's may serve again.
        super().__init__(copy.deepcopy(quantization_config), **kwargs)
        self.scales_to_fill: list[str] = []
        if self.pre_quantized and quantization_config.modules is None:
            raise ValueError(
                "this checkpoint's quantization_config (quant_method 'quanta') has no per-module "
                "config ('modules'); it was not written by save_pretrained of a quanta model"
            )

    @property
    def serialized_names(self) -> dict[str, list[str]]:
        """A saved weight is read from the shape sentinel and its stored parts."""
        return {WEIGHT: serialized_weight_names()} if self.pre_quantized else {}

    def get_load_operations(self) -> dict[str, type[ConversionOps]]:
        return {"deserialize": DeserializeWeight}

    def get_quantize_ops(self) -> ConversionOps:
        return QuantizeWeight(self)

    def get_new_dtype(self, converter: Any, param: Any, dtype: torch.dtype | None) -> Any:
        """Float tensors follow the model's dtype; codes and sentinels keep their own."""
        if hasattr(param, "get_dtype"):
            is_float = param.get_dtype() in CAST_DTYPES
        else:
            is_float = param.dtype in CAST_TORCH_DTYPES
        return dtype if is_float else None

    def param_element_size(self, model: nn.Module, param_name: str, param: torch.Tensor) -> float:
        """Bytes per element of a weight as quanta stores it (codes, scales, zero points), with
        which Transformers sizes its allocator warmup and device_map="auto"."""
        module_name, _, tensor_name = param_name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        stored = quantized_weight_bytes(module) if tensor_name == WEIGHT else None
        return param.element_size() if stored is None else stored / max(param.numel(), 1)

    def param_needs_quantization(self, model: nn.Module, param_name: str, **kwargs: Any) -> bool:
        """A float weight of a quantized module, read from a float checkpoint."""
        if self.pre_quantized:
            return False
        module_name, _, tensor_name = param_name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        return tensor_name == WEIGHT and is_weight_quantized(module) and not module.is_frozen

    def _process_model_before_weight_loading(self, model: nn.Module, **kwargs: Any) -> None:
        self.quantize_modules(model, exclude=[] if self.pre_quantized else self._exclusions(model))
        if not self.pre_quantized:
            self._defer_activation_only_scales(model)

    def _exclusions(self, model: nn.Module) -> list[str]:
        """The user's patterns (or Transformers' default), fp32 modules and tied weights."""
        exclude = self.get_modules_to_not_convert(
            model, self.quantization_config.modules_to_not_convert, model._keep_in_fp32_modules
        )
        return sorted({*exclude, *_tied_modules(model)})

    def _defer_activation_only_scales(self, model: nn.Module) -> None:
        """Modules quantizing activations only (QLayerNorm) get no weight operation: their static
        scales, created on the meta device, are filled after loading, not reported missing."""
        self.scales_to_fill = [
            key for key in _scales_without_weight_operation(model) if model.get_buffer(key).is_meta
        ]
        model._keys_to_ignore_on_load_missing = [
            *(model._keys_to_ignore_on_load_missing or []),
            *(re.escape(key) + "$" for key in self.scales_to_fill),
        ]

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        serve_quantized_weights(model)  # Transformers dispatched the model just before
        for key in self.scales_to_fill:
            model.get_buffer(key).fill_(1.0)  # uncalibrated, like every static scale
        self.record_module_configs(model)
        return model

    def get_state_dict_and_metadata(self, model: nn.Module) -> tuple[dict, dict]:
        """The frozen layout (offloaded tensors read back), a shape sentinel per quantized weight,
        and the current config."""
        self.record_module_configs(model)
        state_dict = read_offloaded_tensors(model, model.state_dict())
        for name, module in model.named_modules():
            if isinstance(module, QModuleMixin) and module.is_frozen:
                state_dict[f"{name}.{WEIGHT}"] = shape_sentinel(module.stored_weight)
        return state_dict, {}

    def is_serializable(self) -> bool:
        return True


def _scales_without_weight_operation(model: nn.Module) -> list[str]:
    """The static activation scales of quantized modules whose weight stays float."""
    return [
        f"{name}.{buffer}"
        for name, module in model.named_modules()
        if isinstance(module, QModuleMixin) and not is_weight_quantized(module)
        for buffer in module.activation_scales()
    ]


def _tied_modules(model: nn.Module) -> list[str]:
    """Modules whose weight is tied to another: quantizing one would untie them."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    names = set(tied) | set(tied.values())
    return [name.removesuffix(f".{WEIGHT}") for name in names]


def refuse_requantizing(saved: Any, requested: Any) -> None:
    """Refuse a QuantaConfig passed to from_pretrained for a folder quanta already quantized
    with other settings: Transformers would keep the saved ones and only warn.

    `saved` is the folder's quantization_config (a dict or a config), `requested` the one passed.
    """
    if not isinstance(requested, QuantaConfig):
        return  # no config passed, or another library's: Transformers' own check
    saved = saved if isinstance(saved, dict) else saved.to_dict()
    if saved.get("quant_method") != QUANT_METHOD:
        return
    saved_settings = QuantaConfig.from_dict(saved).to_dict()
    wanted = requested.to_dict()
    different = [
        f"{name}={saved_settings.get(name)!r} saved, {value!r} requested"
        for name, value in wanted.items()
        if name not in ("modules", "quant_method") and saved_settings.get(name) != value
    ]
    if different:
        raise ValueError(
            f"this folder is already quantized by quanta ({'; '.join(different)}): quanta does not "
            "quantize a quantized checkpoint again (its float weights are gone). Load it without "
            "quantization_config, or quantize the original float model."
        )
