"""What quanta's Transformers and Diffusers quantizers share (no library import)."""

from __future__ import annotations

from typing import Any

from torch import nn

from quanta.qintegrations.settings import QuantaSettings, check_device_map
from quanta.qio import apply_quantization_config, quantization_config


class QuantaQuantizerMixin:
    """Placed before the library's quantizer base: the device_map check, training and compile
    support, and the per-module config kept in step with the model."""

    quantization_config: QuantaSettings
    requires_calibration = False
    is_trainable = True  # QAT and PEFT adapters train through quantized layers
    is_compileable = True

    def validate_environment(self, *args: Any, device_map: Any = None, **kwargs: Any) -> None:
        """Refuse a device_map whose offload cannot be served quantized (see check_device_map);
        called again on the device_map that 'auto' resolves to, once the model is built."""
        check_device_map(device_map)

    def quantize_modules(self, model: nn.Module, exclude: list[str]) -> None:
        """Before the weights load: a saved model's quantized modules rebuilt from its per-module
        config, or a float model's modules quantized (except `exclude` patterns)."""
        config = self.quantization_config
        if config.modules is not None:
            apply_quantization_config(model, config.saved_config())
        else:
            config.quantize_model(model, exclude)

    def record_module_configs(self, model: nn.Module) -> None:
        """Write the per-module config of `model` into the quantization config (saved with it)."""
        self.quantization_config.modules = quantization_config(model).to_json()
