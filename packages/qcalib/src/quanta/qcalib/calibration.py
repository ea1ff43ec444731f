"""Calibration: set the static activation scales of quantized modules from sample batches.

Inside `with Calibration(momentum=0.9):` every forward pass of a model quantized with
`activations=...` (static mode) updates each module's `input_scale` and `output_scale`:

- an uncalibrated scale (exactly 1.0, as quantize() leaves it) becomes max|x| / qmax of the first
  batch; after that it is an exponential moving average,
  `scale = momentum * scale + (1 - momentum) * max|x| / qmax`, for inputs and outputs alike;
- NaN and Inf values are left out of max|x| (a batch with no finite value leaves the scale as it
  is), and one warning at the end of the block names the modules that saw them;
- only the forwards of the thread that entered the block are calibrated (the mode and the
  observer are per thread): other threads' models keep their scales;
- with `streamline=True`, a module whose quantized output is only ever consumed by float ops
  (an add, a rotary embedding, a float module, the caller) stops quantizing it when the block
  ends: quantizing it would only add rounding error. Outputs that reach a quantized consumer
  (a quantized module, matmul/bmm of two quantized activations, possibly through views, relu
  and cat) stay quantized. QLayerNorm outputs are always kept;
- with `debug=True`, the per-module ranges seen are printed when the block ends (and are in
  `calibration.ranges` either way when debug is on).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from quanta.qmodules import QActivationTensor, QLayerNorm, QTensor, observe_activations

SCALE_BUFFERS = {"input": "input_scale", "output": "output_scale"}
# functions whose quantized operands are used as codes (the rest dequantize them)
_MATMUL_NAMES = frozenset({"matmul", "__matmul__", "__rmatmul__", "bmm", "mm"})
_MODULE_INPUT_NAMES = frozenset({"linear", "conv2d"})
_SOFTMAX_NAMES = frozenset({"softmax", "_softmax"})


@dataclass
class ActivationRange:
    """The smallest and largest value seen, and the scale after the last batch."""

    minimum: float
    maximum: float
    scale: float


class Calibration(TorchFunctionMode):
    """Context manager that calibrates static activation scales during forward passes.

    Args:
        momentum: weight of the running scale in the moving average, in [0, 1]; 0 keeps only
            the last batch, 1 keeps the first one.
        streamline: stop quantizing module outputs whose consumers are all float ops.
        debug: record the per-module ranges in `ranges` and print them when the block ends.
    """

    def __init__(self, momentum: float = 0.9, streamline: bool = True, debug: bool = False):
        super().__init__()
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(f"momentum must be a float in [0, 1], got {momentum!r}")
        if not (0.0 <= momentum <= 1.0) or math.isnan(momentum):
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        for name, value in (("streamline", streamline), ("debug", debug)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {value!r}")
        self.momentum = float(momentum)
        self.streamline = streamline
        self.debug = debug
        #: "module name" -> {"input": ActivationRange, "output": ActivationRange} (debug only)
        self.ranges: dict[str, dict[str, ActivationRange]] = {}
        self._sources: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._producers: dict[int, nn.Module] = {}
        self._kept: set[int] = set()
        self._observing: Any = None
        self._non_finite: list[str] = []

    # --- the context ----------------------------------------------------------------------

    def __enter__(self) -> Calibration:
        self._sources = WeakIdKeyDictionary()
        self._producers, self._kept = {}, set()
        self._non_finite = []
        self._observing = observe_activations(self._observe)
        self._observing.__enter__()
        return super().__enter__()

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        try:
            super().__exit__(exc_type, exc_value, traceback)
        finally:
            self._observing.__exit__(exc_type, exc_value, traceback)
        if exc_type is None and self.streamline:
            for key, module in self._producers.items():
                if key not in self._kept and not isinstance(module, QLayerNorm):
                    module.disable_output_quantization()
        self._sources = WeakIdKeyDictionary()
        self._producers = {}
        if self._non_finite:
            warnings.warn(
                f"Calibration ignored NaN/Inf activations of {', '.join(self._non_finite)}: "
                "their scales come from the finite values only (a batch without any left the "
                "scale unchanged)",
                stacklevel=2,
            )
        if exc_type is None and self.debug:
            print(self.report())

    # --- scales -----------------------------------------------------------------------------

    def _observe(self, module: nn.Module, kind: str, tensor: torch.Tensor) -> None:
        if kind == "quantized_output":
            self._producers[id(module)] = module
            self._sources[tensor] = {id(module)}
            return
        with torch.no_grad():
            detached = tensor.detach()
            finite = torch.isfinite(detached)
            if not bool(finite.all()):
                self._note_non_finite(module, kind)
                if not bool(finite.any()):
                    return
                detached = detached[finite]
            absmax = detached.abs().amax().float()
            scale = getattr(module, SCALE_BUFFERS[kind])
            batch_scale = (absmax / module.qconfig.activations.qmax).clamp(
                min=torch.finfo(scale.dtype).tiny
            )
            if bool(scale == 1):  # uncalibrated: take the first batch as it is
                new_scale = batch_scale
            else:
                new_scale = self.momentum * scale.float() + (1 - self.momentum) * batch_scale
            scale.copy_(new_scale)
            if self.debug:
                self._record(module, kind, detached, float(scale))

    def _note_non_finite(self, module: nn.Module, kind: str) -> None:
        name = f"{module.quantized_name or type(module).__name__} ({kind})"
        if name not in self._non_finite:
            self._non_finite.append(name)

    def _record(self, module: nn.Module, kind: str, tensor: torch.Tensor, scale: float) -> None:
        name = module.quantized_name or type(module).__name__
        low, high = (float(v) for v in torch.aminmax(tensor.float()))
        entry = self.ranges.setdefault(name, {})
        seen = entry.get(kind)
        if seen is not None:
            low, high = min(low, seen.minimum), max(high, seen.maximum)
        entry[kind] = ActivationRange(low, high, scale)

    def report(self) -> str:
        """The ranges recorded with debug=True, one line per module."""
        lines = ["Calibration ranges (min, max -> scale):"]
        for name, kinds in self.ranges.items():
            cells = [
                f"{kind} [{r.minimum:.4g}, {r.maximum:.4g}] -> {r.scale:.4g}"
                for kind, r in kinds.items()
            ]
            lines.append(f"  {name}: " + "; ".join(cells))
        return "\n".join(lines)

    # --- streamline: who consumes each quantized output ----------------------------------

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if self.streamline and len(self._sources):
            self._track(func, args, kwargs, output)
        return output

    def _track(self, func: Any, args: tuple, kwargs: dict, output: Any) -> None:
        operands = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        sources: set[int] = set()
        for tensor in operands:
            if isinstance(tensor, QActivationTensor) and tensor in self._sources:
                sources |= self._sources[tensor]
        if not sources:
            return
        results = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]
        if not results:
            return  # a metadata query (size, dim, dtype...)
        name = getattr(func, "__name__", "")
        quantized = [t for t in results if isinstance(t, QActivationTensor)]
        if quantized and name not in _SOFTMAX_NAMES:
            for tensor in quantized:  # a view, relu, cat...: still the same codes
                self._sources[tensor] = self._sources.get(tensor, set()) | sources
        elif _uses_codes(name, args, operands):
            self._kept |= sources


def _uses_codes(name: str, args: tuple, operands: list[torch.Tensor]) -> bool:
    """Whether a function consumes its quantized operands as codes, not as floats."""
    if name in _MATMUL_NAMES:
        return all(isinstance(t, QActivationTensor) and t.is_per_tensor for t in operands)
    if name in _MODULE_INPUT_NAMES:
        return len(args) > 1 and isinstance(args[1], QTensor)
    return False
