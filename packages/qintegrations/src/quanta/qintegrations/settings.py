"""QuantaSettings: the quantization settings shared by the Transformers and Diffusers configs.

Plain data and its checks, no library import: each integration pairs it with its library's
config mixin (`transformers.QuantaConfig`, `diffusers.QuantaConfig`).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

from torch import nn

from quanta.qio import QuantizationConfig
from quanta.qmodules import ModuleConfig, quantize, to_module_config, unmatched_patterns

QUANT_METHOD = "quanta"
# Optimizers that need statistics gathered before freeze cannot run while the weights load.
LOAD_TIME_UNSUPPORTED_OPTIMIZERS = ("gptq",)


def check_device_map(device_map: Any) -> None:
    """Refuse a device_map with modules on disk, whose offload from_pretrained cannot serve
    quantized (a CPU offload is served: quanta.qintegrations.offload.serve_quantized_weights)."""
    if isinstance(device_map, dict) and "disk" in {str(d) for d in device_map.values()}:
        raise ValueError(
            f"device_map={device_map!r} offloads modules to ['disk']: from_pretrained cannot "
            "offload quanta's quantized weights to disk (accelerate's offload index points at "
            "the checkpoint's float weight or shape sentinel, not at the quantized parts). Load "
            "onto devices that compute, e.g. device_map={'': 'cpu'}, then offload with "
            "accelerate.dispatch_model(model, device_map, offload_dir=...) and "
            "quanta.qintegrations.offload.serve_quantized_weights(model)."
        )


class QuantaSettings:
    """How `from_pretrained` quantizes a float checkpoint with quanta, and how a saved one was.

    The arguments are those of `quanta.quantize`; `modules_to_not_convert` are fnmatch patterns
    on module names (None: the library's default). `modules` is written by `save_pretrained`:
    the exact per-module config (quanta.qio's JSON) that a reload rebuilds before the weights
    are read; leave it None when quantizing.
    """

    # The `quant_method` each library expects (Diffusers wants a str Enum member).
    method: ClassVar[str] = QUANT_METHOD

    def __init__(
        self,
        weights: str | None = "int8",
        activations: str | None = None,
        activations_mode: str = "static",
        group_size: int | None = None,
        modules_to_not_convert: list[str] | None = None,
        optimizer: str | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        modules: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.quant_method = self.method
        self.weights = weights
        self.activations = activations
        self.activations_mode = activations_mode
        self.group_size = group_size
        self.modules_to_not_convert = modules_to_not_convert
        self.optimizer = optimizer
        self.overrides = overrides
        self.modules = modules
        self._check(kwargs)

    def _check(self, unknown: dict[str, Any]) -> None:
        unknown = {key: value for key, value in unknown.items() if key != "quant_method"}
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown arguments {sorted(unknown)}")
        patterns = self.modules_to_not_convert
        if patterns is not None and not (
            isinstance(patterns, (list, tuple)) and all(isinstance(p, str) for p in patterns)
        ):
            raise TypeError(
                f"modules_to_not_convert must be None or a list of str patterns, got {patterns!r}"
            )
        if not (self.optimizer is None or isinstance(self.optimizer, str)):
            raise TypeError(f"optimizer must be None or a name, got {self.optimizer!r}")
        if self.optimizer in LOAD_TIME_UNSUPPORTED_OPTIMIZERS:
            raise ValueError(
                f"optimizer={self.optimizer!r} needs calibration data before freeze and cannot run "
                "while from_pretrained loads the weights; quantize the loaded float model with "
                "quanta.quantize and quanta.qcalib instead"
            )
        self.default_module_config()
        self._check_overrides()
        if self.modules is not None:
            self.saved_config()  # a saved config must parse: refuse it here, not mid-load

    def default_module_config(self) -> ModuleConfig:
        """The ModuleConfig these settings apply to every module (its optimizer resolved)."""
        return ModuleConfig(
            weights=self.weights,
            group_size=self.group_size,
            optimizer=self.optimizer,
            activations=self.activations,
            activations_mode=self.activations_mode,
        ).resolved()

    def _check_overrides(self) -> None:
        """Each override must make a valid ModuleConfig (as quantize() would build it)."""
        if self.overrides is None:
            return
        if not isinstance(self.overrides, dict):
            raise TypeError(f"overrides must be None or a dict of patterns, got {self.overrides!r}")
        for pattern, override in self.overrides.items():
            if not isinstance(pattern, str):
                raise TypeError(f"overrides keys must be str patterns, got {pattern!r}")
            to_module_config(override, f"overrides[{pattern!r}]").resolved()

    def quantize_model(self, model: nn.Module, exclude: list[str]) -> None:
        """`quanta.quantize` of `model` with these settings and the `exclude` patterns.

        Patterns that match no module are dropped, as Transformers does: those the user wrote
        (`modules_to_not_convert`, `overrides`) with a warning, the library's own silently.
        """
        overrides = self.overrides or {}
        unmatched = set(unmatched_patterns(model, [*exclude, *overrides]))
        written = [*(self.modules_to_not_convert or ()), *overrides]
        ignored = [pattern for pattern in written if pattern in unmatched]
        if ignored:
            warnings.warn(
                f"{type(self).__name__}: the patterns {ignored} match no Linear, Conv2d or "
                f"LayerNorm module of {type(model).__name__} and change nothing (fnmatch on "
                "qualified names such as 'model.layers.0.mlp.up_proj')",
                stacklevel=3,
            )
        quantize(
            model,
            weights=self.weights,
            activations=self.activations,
            activations_mode=self.activations_mode,
            group_size=self.group_size,
            exclude=[pattern for pattern in exclude if pattern not in unmatched],
            optimizer=self.optimizer,
            overrides={p: o for p, o in overrides.items() if p not in unmatched},
        )

    def saved_config(self) -> QuantizationConfig:
        """The saved per-module config (raises if this config was never saved)."""
        if self.modules is None:
            raise ValueError(
                f"this {type(self).__name__} holds no per-module config (it was never saved)"
            )
        return QuantizationConfig.from_json(self.modules, source="quantization_config.modules")
