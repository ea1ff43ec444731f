"""QuantaConfig for Diffusers: the shared quanta settings on Diffusers' config mixin."""

from __future__ import annotations

import json
import os
from enum import Enum

from diffusers.quantizers.quantization_config import QuantizationConfigMixin
from safetensors import safe_open

from quanta.qintegrations.settings import QUANT_METHOD, QuantaSettings
from quanta.qio import CONFIG_KEY as QIO_CONFIG_KEY

# The safetensors metadata entry where save_pretrained writes the whole QuantaConfig (JSON).
METADATA_KEY = "quanta.quantization_config"


class QuantaMethod(str, Enum):
    """Diffusers reads `quant_method.value`: the method is a str Enum member there."""

    QUANTA = QUANT_METHOD


class QuantaConfig(QuantaSettings, QuantizationConfigMixin):
    """How a Diffusers `from_pretrained` quantizes a float checkpoint with quanta, and how a saved
    one was; arguments and checks are those of `QuantaSettings` (shared with Transformers).

    `modules_to_not_convert` names modules as Transformers and Diffusers do: a name matches the
    modules whose qualified name holds it as whole dot-separated parts, and those under them
    (None: every Linear and Conv2d is quantized).
    """

    method = QuantaMethod.QUANTA

    @classmethod
    def from_single_file(cls, path: str | os.PathLike) -> QuantaConfig:
        """The config stored in a quanta safetensors file's metadata: the whole config that
        `save_pretrained` writes, or the per-module config of `quanta.save` (quanta.qio)."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        with safe_open(os.fspath(path), framework="pt") as file:
            metadata = file.metadata() or {}
        if METADATA_KEY in metadata:
            return cls.from_dict(json.loads(metadata[METADATA_KEY]))
        if QIO_CONFIG_KEY in metadata:
            return cls(weights=None, modules=json.loads(metadata[QIO_CONFIG_KEY]))
        raise ValueError(
            f"{os.fspath(path)} has no '{METADATA_KEY}' nor '{QIO_CONFIG_KEY}' metadata: it was "
            "not written by save_pretrained of a Diffusers model quantized with quanta, nor by "
            "quanta.save"
        )

    def to_diff_dict(self) -> dict:
        """Every setting (what `repr` and `to_json_string` print)."""
        return self.to_dict()


def diffusers_config(config: object, argument: str) -> QuantaConfig:
    """`config` as the Diffusers QuantaConfig: the Transformers one (`quanta.QuantaConfig`)
    converts with the same settings."""
    if isinstance(config, QuantaConfig):
        return config
    if isinstance(config, QuantaSettings):
        return QuantaConfig(**config.arguments())
    raise TypeError(
        f"{argument} must be a quanta.qintegrations.diffusers.QuantaConfig (or quanta.QuantaConfig,"
        f" converted), got {type(config).__name__}"
    )
