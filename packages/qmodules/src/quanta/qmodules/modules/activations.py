"""Activation quantization of quantized modules: inputs and outputs as QActivationTensors.

`QActivationMixin` sits before `QModuleMixin` in QLinear / QConv2d / QLayerNorm. A module without
an activation qtype runs its float class's forward unchanged. With one:

- "static": the input is quantized with the buffer `input_scale` and the output with the buffer
  `output_scale` (0-d, per tensor, 1.0 until calibrated; `quanta.qcalib.Calibration` sets them);
  an output whose quantization was turned off (streamlined) has no `output_scale`.
- "dynamic": the input is quantized per token (max|row| / qmax over the last dimension, over the
  channels for a convolution) at every call; no buffers, no calibration, the output stays float.

An input that is already a QActivationTensor (the quantized output of the module before) is used
as it is. Before quantization the input may be divided by `input_smoothing` (SmoothQuant) and
rotated by `input_rotation` (a block Hadamard transform); the float weight carries the inverse.
Observers registered with `observe_activations` see every static activation before it
is quantized (this is how calibration reads ranges without this layer knowing about it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

from quanta.qmodules.modules.base import (
    QModuleMixin,
    quantized_class_for,
    register_quantized_class,
)
from quanta.qmodules.modules.rotation import hadamard_transform, random_signs
from quanta.qmodules.tensors.activations import QActivationTensor
from quanta.qmodules.tensors.straight_through import straight_through_dequantize
from quanta.qtypes import QType

INPUT_SCALE = "input_scale"
OUTPUT_SCALE = "output_scale"
INPUT_SMOOTHING = "input_smoothing"
INPUT_ROTATION = "input_rotation"
ACTIVATION_MODES = ("static", "dynamic")

#: observer(module, kind, tensor), kind in "input", "output" (float, before quantization, the
#: observer may update the module's scale in place) and "quantized_output" (what is returned).
ActivationObserver = Callable[[nn.Module, str, torch.Tensor], None]
_OBSERVERS: list[ActivationObserver] = []


@contextmanager
def observe_activations(observer: ActivationObserver) -> Iterator[None]:
    """Call `observer` on every static activation of every quantized module while inside."""
    _OBSERVERS.append(observer)
    try:
        yield
    finally:
        _OBSERVERS.remove(observer)


_FLOAT_ACTIVATIONS: list[bool] = []


@contextmanager
def float_activations() -> Iterator[None]:
    """Inside, quantized modules leave their activations float; input smoothing and rotation
    still apply, so the model computes its float function (to measure float statistics)."""
    _FLOAT_ACTIVATIONS.append(True)
    try:
        yield
    finally:
        _FLOAT_ACTIVATIONS.pop()


def _notify(module: nn.Module, kind: str, tensor: torch.Tensor) -> None:
    for observer in tuple(_OBSERVERS):
        observer(module, kind, tensor)


class QActivationMixin:
    """Quantizes a module's input and output around its float class's forward."""

    activation_qtype: QType | None = None
    activation_mode: str | None = None
    quantized_name: str = ""
    #: False for modules whose input is not quantized (QLayerNorm: only its output is)
    quantizes_input: ClassVar[bool] = True
    #: the dimension a dynamic per-token scale reduces over
    token_dim: ClassVar[int] = -1

    def forward(self, input: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.activation_qtype is None:
            return super().forward(input, *args, **kwargs)
        if self.quantizes_input:
            input = self.quantize_input(input)
        return self.quantize_output(super().forward(input, *args, **kwargs))

    @property
    def quantizes_output(self) -> bool:
        """True when the output is returned quantized (static, not streamlined away)."""
        return self.activation_mode == "static" and self._buffers.get(OUTPUT_SCALE) is not None

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
        if _FLOAT_ACTIVATIONS:
            return input
        if isinstance(input, QActivationTensor):
            if _OBSERVERS and self.activation_mode == "static":
                # calibrated anyway: the input scale serves if the producer stops quantizing
                _notify(self, "input", input.dequantize())
            return input
        if not input.is_floating_point():
            return input
        if self.activation_mode == "dynamic":
            if self.token_dim != -1:
                moved = input.movedim(self.token_dim, -1)
                scale = QActivationTensor.quantize_per_token(moved, self.activation_qtype).scale
                scale = scale.movedim(-1, self.token_dim)
                return QActivationTensor.quantize(input, scale, self.activation_qtype)
            return QActivationTensor.quantize_per_token(input, self.activation_qtype)
        if _OBSERVERS:
            _notify(self, "input", input)
        return QActivationTensor.quantize(input, self.input_scale, self.activation_qtype)

    def quantize_output(self, output: torch.Tensor) -> torch.Tensor:
        """The output quantized with `output_scale`, or as it is (dynamic, streamlined)."""
        if _FLOAT_ACTIVATIONS or not self.quantizes_output or not isinstance(output, torch.Tensor):
            return output
        if isinstance(output, QActivationTensor):
            output = straight_through_dequantize(output)
        if _OBSERVERS:
            _notify(self, "output", output)
        quantized = QActivationTensor.quantize(output, self.output_scale, self.activation_qtype)
        if _OBSERVERS:
            _notify(self, "quantized_output", quantized)
        return quantized

    def smooth_input(self, factors: torch.Tensor) -> None:
        """Divide the input by `factors` [in_features] at run time and multiply the float
        weight's columns by them (SmoothQuant); the product is unchanged. Before freeze only."""
        weight = self.float_weight
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

    def rotate_input(self, block_size: int, seed: int = 0) -> None:
        """Rotate the input by a random-sign block Hadamard transform at run time and the float
        weight's rows alike (see modules/rotation.py); the product is unchanged. Before freeze
        only, after any smoothing; `block_size` is a power of two dividing in_features."""
        weight = self.float_weight
        if weight is None or weight.dim() != 2:
            raise ValueError("rotate_input needs a not yet frozen Linear weight [out, in]")
        if self._buffers.get(INPUT_ROTATION) is not None:
            raise ValueError(f"the input of {self.quantized_name or self} is already rotated")
        signs = random_signs(weight.shape[1], block_size, seed).to(weight.device)
        with torch.no_grad():
            weight.copy_(hadamard_transform(weight, signs))
        self.register_buffer(INPUT_ROTATION, signs.to(weight.dtype))

    def disable_output_quantization(self) -> None:
        """Return the output in float from now on; `output_scale` leaves the state_dict."""
        self._buffers[OUTPUT_SCALE] = None

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
        if self.activation_mode == "static" and OUTPUT_SCALE in self._buffers:
            has_output = prefix + OUTPUT_SCALE in state_dict
            if self.quantizes_input and prefix + INPUT_SCALE in state_dict and not has_output:
                self.disable_output_quantization()  # saved from a streamlined model
            elif has_output and self._buffers[OUTPUT_SCALE] is None:
                self._buffers[OUTPUT_SCALE] = torch.ones_like(state_dict[prefix + OUTPUT_SCALE])
        for name in (INPUT_SMOOTHING, INPUT_ROTATION):  # placeholders the load then fills
            saved = state_dict.get(prefix + name)
            if saved is not None and self._buffers.get(name) is None:
                self.register_buffer(name, torch.ones_like(saved))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.activation_qtype is not None:
            text += f", activations={self.activation_qtype} ({self.activation_mode})"
        return text


@register_quantized_class(nn.LayerNorm)
class QLayerNorm(QActivationMixin, QModuleMixin, nn.LayerNorm):
    """nn.LayerNorm whose output is quantized (static: `output_scale`); its weight stays float.

    `quantize()` swaps LayerNorms in only when `activations` is set.
    """

    quantizes_input = False
    quantizes_weight: ClassVar[bool] = False


def quantize_module_activations(
    module: nn.Module, qtype: QType, mode: str, name: str = ""
) -> QActivationMixin:
    """Quantize a module's activations in place (a float LayerNorm becomes a QLayerNorm).

    Static modules get 0-d scale buffers of 1.0; `name` (the qualified name) is kept for
    calibration reports.
    """
    if mode not in ACTIVATION_MODES:
        raise ValueError(f"activations_mode must be one of {list(ACTIVATION_MODES)}, got {mode!r}")
    if not isinstance(module, QModuleMixin):
        module.__class__ = quantized_class_for(type(module))
    module.quantized_name = name
    module.activation_qtype = qtype
    module.activation_mode = mode
    if mode != "static":
        return
    reference = module._parameters.get("weight")
    dtype = reference.dtype if reference is not None else torch.get_default_dtype()
    device = reference.device if reference is not None else None
    names = (INPUT_SCALE, OUTPUT_SCALE) if module.quantizes_input else (OUTPUT_SCALE,)
    for buffer in names:
        module.register_buffer(buffer, torch.ones((), dtype=dtype, device=device))
    return module


def quantizes_weight(quantized_class: type) -> bool:
    """False for quantized classes whose weight stays float (QLayerNorm)."""
    return getattr(quantized_class, "quantizes_weight", True)
