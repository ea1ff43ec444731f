"""QuantaConfig: the `quantization_config` of a Transformers model quantized by quanta."""

from __future__ import annotations

from transformers.utils.quantization_config import QuantizationConfigMixin

from quanta.qintegrations.settings import (
    LOAD_TIME_UNSUPPORTED_OPTIMIZERS,
    QUANT_METHOD,
    QuantaSettings,
)

__all__ = ["LOAD_TIME_UNSUPPORTED_OPTIMIZERS", "QUANT_METHOD", "QuantaConfig"]


class QuantaConfig(QuantaSettings, QuantizationConfigMixin):
    """How `from_pretrained` quantizes a float checkpoint with quanta, and how a saved one was.

    The arguments and checks are those of `QuantaSettings` (shared with Diffusers);
    `modules_to_not_convert=None` means Transformers' default, the output embeddings and tied
    weights.
    """
