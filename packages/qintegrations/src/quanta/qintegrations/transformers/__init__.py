"""Transformers integration: `QuantaConfig` and its quantizer, registered as quant_method "quanta".

Importing this module registers them with Transformers (it happens on its own as soon as both
quanta.qintegrations and transformers.quantizers are imported, in either order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    AutoHfQuantizer,
    register_quantization_config,
    register_quantizer,
)

from quanta.qintegrations.transformers.config import QUANT_METHOD, QuantaConfig
from quanta.qintegrations.transformers.quantizer import QuantaHfQuantizer, refuse_requantizing

__all__ = ["QuantaConfig", "QuantaHfQuantizer", "register"]


def register() -> None:
    """Register QuantaConfig and QuantaHfQuantizer with Transformers (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(QuantaConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(QuantaHfQuantizer)
    merge = AutoHfQuantizer.merge_quantization_configs
    if not getattr(merge, "refuses_requantizing", False):
        AutoHfQuantizer.merge_quantization_configs = _refusing_requantizing(merge.__func__)


def _refusing_requantizing(merge: Callable[..., Any]) -> classmethod:
    """Transformers' merge of a folder's quantization_config with the one passed to
    from_pretrained keeps the saved one and only warns: refuse a different QuantaConfig first
    (no quantizer hook sees both configs)."""

    def merge_quantization_configs(cls: type, saved: Any, passed: Any) -> Any:
        refuse_requantizing(saved, passed)
        return merge(cls, saved, passed)

    merge_quantization_configs.refuses_requantizing = True
    return classmethod(merge_quantization_configs)


register()
