"""Activation quantization of quantized modules: inputs and outputs as QActivationTensors.

`QActivationMixin` sits before `QModuleMixin` in QLinear / QConv2d / QLayerNorm. A module without
an activation qtype runs its float class's forward unchanged. With one:

- "static": the input is quantized with the buffer `input_scale` and the output with the buffer
  `output_scale` (0-d, per tensor, 1.0 until calibrated; `quanta.qcalib.Calibration` sets them);
  an output whose quantization was turned off (streamlined) has no `output_scale`. The first
  forward outside calibration warns if a scale is still the 1.0 quantize() set.
- "dynamic": the input is quantized per token (max|row| / qmax over the last dimension, over the
  channels for a convolution) at every call; no buffers, no calibration, the output stays float.

An input that is already a QActivationTensor (the quantized output of the module before) is used
as it is. Before quantization the input may be divided by `input_smoothing` (SmoothQuant) and
rotated by `input_rotation` (a block Hadamard transform); the float weight carries the inverse.
Observers registered with `observe_activations` see every static activation before it
is quantized (this is how calibration reads ranges without this layer knowing about it). Observers
and `float_activations()` act on the thread that entered them only.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import nn

from quanta.qmodules.config import ModuleConfig
from quanta.qmodules.modules.base import (
    WEIGHT,
    QModuleMixin,
    quantized_class_for,
    register_quantized_class,
)
from quanta.qmodules.modules.rotation import hadamard_transform, random_signs
from quanta.qmodules.tensors.activations import QActivationTensor
from quanta.qmodules.tensors.straight_through import straight_through_dequantize

INPUT_SCALE = "input_scale"
OUTPUT_SCALE = "output_scale"
INPUT_SMOOTHING = "input_smoothing"
INPUT_ROTATION = "input_rotation"

#: observer(module, kind, tensor), kind in "input", "output" (float, before quantization, the
#: observer may update the module's scale in place) and "quantized_output" (what is returned).
ActivationObserver = Callable[[nn.Module, str, torch.Tensor], None]

# Per thread, never process-wide: one thread calibrating (or in float_activations) must not
# change what another thread's model computes. threading.local rather than a ContextVar because
# torch.compile cannot trace ContextVar.get (fullgraph fails) while it guards a plain
# threading.local attribute per thread (its per-class defaults it does not guard: getattr here).
_THREAD = threading.local()


def _observers() -> tuple[ActivationObserver, ...]:
    return getattr(_THREAD, "observers", ())


def _activations_float() -> bool:
    return getattr(_THREAD, "float_depth", 0) > 0


@contextmanager
def observe_activations(observer: ActivationObserver) -> Iterator[None]:
    """Call `observer` on every static activation of every quantized module run by this thread
    while inside (other threads are not observed)."""
    _THREAD.observers = (*_observers(), observer)
    try:
        yield
    finally:
        observers = list(_observers())
        observers.remove(observer)
        _THREAD.observers = tuple(observers)


@contextmanager
def float_activations() -> Iterator[None]:
    """Inside, quantized modules run by this thread leave their activations float; input
    smoothing and rotation still apply, so the model computes its float function (to measure
    float statistics). Other threads keep quantizing."""
    _THREAD.float_depth = getattr(_THREAD, "float_depth", 0) + 1
    try:
        yield
    finally:
        _THREAD.float_depth -= 1


def _notify(
    observers: tuple[ActivationObserver, ...], module: nn.Module, kind: str, tensor: torch.Tensor
) -> None:
    module._check_calibration = False  # an observer sets (or chose not to set) its scales
    for observer in observers:
        observer(module, kind, tensor)


class QActivationMixin:
    """Quantizes a module's input and output around its float class's forward, as its
    `qconfig` says (activations, activations_mode, output_quantized)."""

    #: the module's qualified name in its model, for calibration reports
    quantized_name: str = ""
    #: False for modules whose input is not quantized (QLayerNorm: only its output is)
    quantizes_input: ClassVar[bool] = True
    #: the dimension a dynamic per-token scale reduces over
    token_dim: ClassVar[int] = -1
    #: True from quantize() until the first forward checks that static scales were set
    _check_calibration: bool = False

    def forward(self, input: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.qconfig.activations is None:
            return super().forward(input, *args, **kwargs)
        if not torch.compiler.is_compiling() and self._check_calibration:
            self._warn_if_uncalibrated()
        if self.quantizes_input:
            input = self.quantize_input(input)
        return self.quantize_output(super().forward(input, *args, **kwargs))

    @property
    def quantizes_output(self) -> bool:
        """True when the output is returned quantized (static, not streamlined away)."""
        return self.qconfig.output_quantized

    def quantize_input(self, input: torch.Tensor) -> torch.Tensor:
        """The input as a QActivationTensor (kept as is when it already is one)."""
        smoothing = self._buffers.get(INPUT_SMOOTHING)
        rotation = self._buffers.get(INPUT_ROTATION)
        if (smoothing is not None or rotation is not None) and isinstance(input, QActivationTensor):
            input = straight_through_dequantize(input)
        if smoothing is not None:  # SmoothQuant: outliers divided out, multiplied into W
            input = input / smoothing.to(input.dtype)
        if rotation is not None:  # outliers spread over blocks; W's rows rotated alike
            input = hadamard_transform(input, rotation)
        if _activations_float():
            return input
        observers = _observers()
        if isinstance(input, QActivationTensor):
            if observers and self.qconfig.activations_mode == "static":
                # calibrated anyway: the input scale serves if the producer stops quantizing
                _notify(observers, self, "input", input.dequantize())
            return input
        if not input.is_floating_point():
            return input
        qtype = self.qconfig.activations
        if self.qconfig.activations_mode == "dynamic":
            if self.token_dim != -1:
                moved = input.movedim(self.token_dim, -1)
                scale = QActivationTensor.quantize_per_token(moved, qtype).scale
                scale = scale.movedim(-1, self.token_dim)
                return QActivationTensor.quantize(input, scale, qtype)
            return QActivationTensor.quantize_per_token(input, qtype)
        if observers:
            _notify(observers, self, "input", input)
        return QActivationTensor.quantize(input, self.input_scale, qtype)

    def quantize_output(self, output: torch.Tensor) -> torch.Tensor:
        """The output quantized with `output_scale`, or as it is (dynamic, streamlined)."""
        kept_float = _activations_float() or not self.quantizes_output
        if kept_float or not isinstance(output, torch.Tensor):
            return output
        if isinstance(output, QActivationTensor):
            output = straight_through_dequantize(output)
        observers = _observers()
        if observers:
            _notify(observers, self, "output", output)
        quantized = QActivationTensor.quantize(output, self.output_scale, self.qconfig.activations)
        if observers:
            _notify(observers, self, "quantized_output", quantized)
        return quantized

    def _warn_if_uncalibrated(self) -> None:
        """Warn on the first forward if a static scale is still the 1.0 placeholder that
        quantize() set (never calibrated, observed, loaded nor assigned): int8 activations of
        |x| < 1 then round to a few codes (relative error near 1)."""
        if _observers() or _activations_float():
            return  # being calibrated (or measured in float): the scales are not used yet
        self._check_calibration = False
        unset = [
            name
            for name, scale in self.activation_scales().items()
            if not scale.is_meta and bool(scale == 1)
        ]
        if unset:
            # one text for every module: Python's default filter then shows it once, not once
            # for each of a model's hundreds of modules
            warnings.warn(
                "quantized modules ran with static activation scales that were never calibrated "
                "(still the 1.0 placeholder quantize() sets): their outputs can be far from the "
                "float model's. Run sample batches through the model inside `with "
                'quanta.qcalib.Calibration():` first, or quantize with activations_mode="dynamic"',
                stacklevel=2,
            )

    def smooth_input(self, factors: torch.Tensor) -> None:
        """Divide the input by `factors` [in_features] at run time and multiply the float
        weight's columns by them (SmoothQuant); the product is unchanged. Before freeze only."""
        weight = self.float_weight
        weight = None if weight is None else self.weight_matrix(weight)  # a view: edits it
        if weight is None or weight.dim() != 2 or factors.shape != (weight.shape[1],):
            raise ValueError(
                "smooth_input needs a not yet frozen Linear weight [out, in] and factors [in]"
            )
        if self._buffers.get(INPUT_ROTATION) is not None:
            raise ValueError("smooth the input before rotating it: the weight is already rotated")
        with torch.no_grad():
            weight.mul_(factors.to(weight.dtype))
            previous = self._buffers.get(INPUT_SMOOTHING)
            combined = factors if previous is None else previous.float() * factors
        self.register_buffer(INPUT_SMOOTHING, combined.to(weight.dtype))
        self.qconfig = replace(self.qconfig, input_smoothing=True)

    def rotate_input(self, block_size: int, seed: int = 0) -> None:
        """Rotate the input by a random-sign block Hadamard transform at run time and the float
        weight's rows alike (see modules/rotation.py); the product is unchanged. Before freeze
        only, after any smoothing; `block_size` is a power of two dividing in_features."""
        weight = self.float_weight
        weight = None if weight is None else self.weight_matrix(weight)  # a view: edits it
        if weight is None or weight.dim() != 2:
            raise ValueError("rotate_input needs a not yet frozen Linear weight [out, in]")
        if self._buffers.get(INPUT_ROTATION) is not None:
            raise ValueError(f"the input of {self.quantized_name or self} is already rotated")
        signs = random_signs(weight.shape[1], block_size, seed).to(weight.device)
        with torch.no_grad():
            weight.copy_(hadamard_transform(weight, signs))
        self.register_buffer(INPUT_ROTATION, signs.to(weight.dtype))
        self.qconfig = replace(self.qconfig, input_rotation=block_size)

    def disable_output_quantization(self) -> None:
        """Return the output in float from now on; `output_scale` leaves the state_dict."""
        self._buffers[OUTPUT_SCALE] = None
        self.qconfig = replace(self.qconfig, output_quantized=False)

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        if self.qconfig.activations_mode == "static" and OUTPUT_SCALE in self._buffers:
            has_output = prefix + OUTPUT_SCALE in state_dict
            if self.quantizes_input and prefix + INPUT_SCALE in state_dict and not has_output:
                self.disable_output_quantization()  # saved from a streamlined model
            elif has_output and self._buffers[OUTPUT_SCALE] is None:
                self._buffers[OUTPUT_SCALE] = torch.ones_like(state_dict[prefix + OUTPUT_SCALE])
                self.qconfig = replace(self.qconfig, output_quantized=True)
        # placeholders (ones) that the load then fills
        smoothing = state_dict.get(prefix + INPUT_SMOOTHING)
        if smoothing is not None and self._buffers.get(INPUT_SMOOTHING) is None:
            self._add_input_transforms(replace(self.qconfig, input_smoothing=True), smoothing)
        rotation = state_dict.get(prefix + INPUT_ROTATION)
        if rotation is not None and self._buffers.get(INPUT_ROTATION) is None:
            block = rotation.shape[-1] if rotation.dim() else 1
            self._add_input_transforms(replace(self.qconfig, input_rotation=block), rotation)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.qconfig.activations is not None:
            text += f", activations={self.qconfig.activations} ({self.qconfig.activations_mode})"
        return text

    def _add_activation_buffers(self, like: torch.Tensor | None) -> None:
        """Static scales of 1.0 (uncalibrated), in the dtype and on the device of `like`."""
        config = self.qconfig
        if config.activations is None or config.activations_mode != "static":
            return
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        device = like.device if like is not None else None
        names = (INPUT_SCALE, OUTPUT_SCALE) if self.quantizes_input else (OUTPUT_SCALE,)
        for buffer in names:
            self.register_buffer(buffer, torch.ones((), dtype=dtype, device=device))
        self._check_calibration = True
        if not config.output_quantized:
            self._buffers[OUTPUT_SCALE] = None

    def _add_input_transforms(self, config: ModuleConfig, like: torch.Tensor) -> None:
        """Placeholders (ones) for the smoothing factors and rotation signs `config` names, which
        a load then fills; the config is checked against the weight first."""
        features, block = self.in_size, config.input_rotation
        _check_rotation_block(features, block)
        options = {"dtype": like.dtype, "device": like.device}
        if config.input_smoothing and self._buffers.get(INPUT_SMOOTHING) is None:
            self.register_buffer(INPUT_SMOOTHING, torch.ones(features, **options))
        if block is not None and self._buffers.get(INPUT_ROTATION) is None:
            self.register_buffer(INPUT_ROTATION, torch.ones(features // block, block, **options))
        self.qconfig = config

    def activation_scales(self) -> dict[str, torch.Tensor]:
        """The static activation scales the module holds, by buffer name."""
        names = (INPUT_SCALE, OUTPUT_SCALE)
        return {name: self._buffers[name] for name in names if self._buffers.get(name) is not None}

    def set_activation_scales(
        self, scales: dict[str, torch.Tensor], default_device: torch.device
    ) -> None:
        """Assign static activation scales (some of `activation_scales()`'s names), each in the
        dtype of the buffer it replaces, on the device of the module's own parameters
        (`default_device` for a module without any, like a LayerNorm without affine weights)."""
        held = self.activation_scales()
        unknown = sorted(set(scales) - set(held))
        if unknown:
            raise ValueError(f"the module holds no activation scale {unknown[0]!r}")
        own = [t.device for t in self.parameters(recurse=False) if not t.is_meta]
        device = own[0] if own else default_device
        for name, tensor in scales.items():
            self._buffers[name] = tensor.to(device=device, dtype=held[name].dtype)


@register_quantized_class(nn.LayerNorm)
class QLayerNorm(QActivationMixin, QModuleMixin, nn.LayerNorm):
    """nn.LayerNorm whose output is quantized (static: `output_scale`); its weight stays float.

    `quantize()` swaps LayerNorms in only when `activations` is set.
    """

    quantizes_input = False
    quantizes_weight: ClassVar[bool] = False


def apply_module_config(module: nn.Module, config: ModuleConfig, name: str = "") -> QModuleMixin:
    """Quantize a float module in place as `config` says; returns it (the same object).

    Its weight stays as it is (float, or on the meta device) until freeze() or a load; static
    activation scales start at 1.0, and the smoothing and rotation a config records get
    placeholders that a load fills. `name` (the qualified name) is kept for calibration reports.
    Every check is made before the module changes.
    """
    if isinstance(module, QModuleMixin):
        raise ValueError(f"module {name!r} is already quantized (as {module.qconfig})")
    quantized_class = quantized_class_for(type(module))  # TypeError for a class without one
    weight = getattr(module, WEIGHT, None)
    weight = weight if isinstance(weight, torch.Tensor) else None
    if config.weights is not None:
        if weight is None or not quantized_class.quantizes_weight:
            raise ValueError(f"module {name!r} has no weight that quanta quantizes")
        columns = quantized_class.weight_matrix(weight)[0].numel()
        if config.group_size is not None and columns % config.group_size:
            raise ValueError(
                f"group_size {config.group_size} does not fit its weight {tuple(weight.shape)}"
            )
    if config.activations is not None and not quantized_class.quantizes_activations:
        raise ValueError(
            f"module {name!r} ({type(module).__name__}) quantizes its weight only: apply a "
            "config without activations"
        )
    transforms = config.input_smoothing or config.input_rotation is not None
    weight = None if weight is None else quantized_class.weight_matrix(weight)
    if transforms and (weight is None or weight.dim() != 2):
        raise ValueError(f"module {name!r}: input smoothing and rotation need a Linear weight")
    if transforms:
        _check_rotation_block(weight.shape[1], config.input_rotation)
    module.__class__ = quantized_class
    module.quantized_name = name
    module.qconfig = config
    module._add_activation_buffers(weight)
    if transforms:
        module._add_input_transforms(config, weight)
    return module


def _check_rotation_block(features: int, block: int | None) -> None:
    if block is not None and features % block:
        raise ValueError(
            f"input_rotation block {block} does not divide its {features} input features"
        )
