"""Transformers integration: `QuantaConfig` and its quantizer, registered as quant_method "quanta".

Importing this module registers them with Transformers (it happens on its own as soon as both
quanta.qintegrations and transformers.quantizers are imported, in either order).
"""

from __future__ import annotations

from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)

from quanta.qintegrations.transformers.config import QUANT_METHOD, QuantaConfig
from quanta.qintegrations.transformers.quantizer import QuantaHfQuantizer

__all__ = ["QuantaConfig", "QuantaHfQuantizer", "register"]


def register() -> None:
    """Register QuantaConfig and QuantaHfQuantizer with Transformers (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(QuantaConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(QuantaHfQuantizer)


register()
