"""quanta.qio: safetensors save and load of quantized models."""

from quanta.qio.checkpoint import CONFIG_KEY
from quanta.qio.config import (
    CONFIG_VERSION,
    LAYOUT_VERSION,
    QuantizationConfig,
    apply_quantization_config,
    quantization_config,
)
from quanta.qio.errors import (
    CheckpointError,
    CheckpointMismatchError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    UnsupportedCheckpointError,
)
from quanta.qio.expected import meta_skeleton
from quanta.qio.load import load
from quanta.qio.save import save

__version__ = "0.2.0"

__all__ = [
    "CONFIG_KEY",
    "CONFIG_VERSION",
    "LAYOUT_VERSION",
    "CheckpointError",
    "CheckpointMismatchError",
    "ChecksumMismatchError",
    "CorruptCheckpointError",
    "QuantizationConfig",
    "UnsupportedCheckpointError",
    "apply_quantization_config",
    "load",
    "meta_skeleton",
    "quantization_config",
    "save",
]
