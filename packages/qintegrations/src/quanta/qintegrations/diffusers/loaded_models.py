"""Quantize a Diffusers model already in memory so that `save_pretrained` writes it and a plain
`from_pretrained` rebuilds it, as if it had been quantized while loading."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quanta.qintegrations.diffusers.config import QuantaConfig, diffusers_config
from quanta.qintegrations.diffusers.quantizer import QuantaDiffusersQuantizer, excluded_names
from quanta.qintegrations.module_weights import is_weight_quantized
from quanta.qmodules import freeze

if TYPE_CHECKING:
    from diffusers import ModelMixin


def quantize_model(model: ModelMixin, config: QuantaConfig) -> ModelMixin:
    """Quantize a float Diffusers model in place with `config` (the model class's
    `_keep_in_fp32_modules` stay float), freeze it and attach the quantizer (see
    `attach_quantizer`); returns `model`."""
    _check_model(model)
    config = diffusers_config(config, "config")
    if config.modules is not None:
        raise ValueError("config holds a saved per-module config; pass quantization settings")
    exclude = excluded_names(config, _keep_in_fp32_modules(model))
    config.quantize_model(model, exclude)
    freeze(model)
    return attach_quantizer(model, config)


def attach_quantizer(model: ModelMixin, config: QuantaConfig | None = None) -> ModelMixin:
    """Make a Diffusers model quantized and frozen with quanta (for instance after a
    calibration) saveable by `save_pretrained`; `config` records its settings (default: none
    beyond the per-module config read from the model). Returns `model`."""
    _check_model(model)
    modules = [m for m in model.modules() if is_weight_quantized(m)]
    if not modules or not all(m.is_frozen for m in modules):
        raise ValueError("the model must be quantized with quanta and frozen (quanta.freeze)")
    quantizer = QuantaDiffusersQuantizer(config or QuantaConfig(), pre_quantized=False)
    model.is_quantized = True
    model.quantization_method = quantizer.quantization_config.quant_method
    model.register_to_config(quantization_config=quantizer.quantization_config)
    quantizer.postprocess_model(model)  # records the per-module config
    model.hf_quantizer = quantizer
    return model


def _keep_in_fp32_modules(model: ModelMixin) -> list[str]:
    """The model class's `_keep_in_fp32_modules` as a list (Diffusers allows one str)."""
    names = type(model)._keep_in_fp32_modules or []
    return [names] if isinstance(names, str) else list(names)


def _check_model(model: object) -> None:
    # Imported here: this package is imported while diffusers.models.modeling_utils loads.
    from diffusers import ModelMixin

    if not isinstance(model, ModelMixin):
        raise TypeError(f"model must be a Diffusers ModelMixin, got {type(model).__name__}")
