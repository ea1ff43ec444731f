"""Diffusers integration: `QuantaConfig` and its quantizer, registered as quant_method "quanta".

Diffusers has no registration API: importing this module inserts them into its quantizer
mappings (it happens on its own as soon as both quanta.qintegrations and
diffusers.quantizers are imported, in either order).
"""

from __future__ import annotations

from diffusers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

from quanta.qintegrations.diffusers.config import QuantaConfig, QuantaMethod
from quanta.qintegrations.diffusers.loaded_models import attach_quantizer, quantize_model
from quanta.qintegrations.diffusers.quantizer import QuantaDiffusersQuantizer

__all__ = [
    "QuantaConfig",
    "QuantaDiffusersQuantizer",
    "QuantaMethod",
    "attach_quantizer",
    "quantize_model",
    "register",
]


def register() -> None:
    """Insert QuantaConfig and QuantaDiffusersQuantizer into Diffusers' mappings (idempotent)."""
    AUTO_QUANTIZATION_CONFIG_MAPPING.setdefault(QuantaMethod.QUANTA.value, QuantaConfig)
    AUTO_QUANTIZER_MAPPING.setdefault(QuantaMethod.QUANTA.value, QuantaDiffusersQuantizer)


register()
