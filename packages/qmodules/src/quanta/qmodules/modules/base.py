"""QModuleMixin: what turns a float module of a registered class (Linear, Conv1d, Conv2d,
Embedding, ..., or a subclass of one) into a quantized one.

A quantized module keeps its float class's `forward`: the mixin only changes what
`self.weight` returns (a QTensor), and the QTensor routes F.linear / F.conv2d / F.embedding to
its layout.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import nn

from quanta.qmodules.config import ModuleConfig
from quanta.qmodules.optimizers import optimized_weight, to_weight_optimizer
from quanta.qmodules.tensors import QTensor, QWeightTensor, layout_for
from quanta.qmodules.tensors.straight_through import straight_through_quantize

WEIGHT = "weight"
# Set on a float weight Parameter once a module froze it: (weight settings, quantized Parameter),
# so that a module tied to the same Parameter stores the same quantized tensor when it freezes.
FROZEN_AS = "_quanta_frozen_as"


class QModuleMixin:
    """Mixin placed before a float module class: `self.weight` becomes the quantized weight.

    `qconfig` (a ModuleConfig) says how the module is quantized; `apply_module_config` sets it
    and the module keeps it up to date. Before `freeze()` the weight is quantized on the fly from
    the float parameter at every access, with straight-through gradients to the float parameter
    when autograd is on (QAT); after it, the stored quantized tensor (the float weight is gone)
    is returned.
    """

    float_class: ClassVar[type[nn.Module]]
    #: False for quantized classes whose weight stays float (QLayerNorm)
    quantizes_weight: ClassVar[bool] = True
    #: False for quantized classes whose activations stay float (QEmbedding: a lookup)
    quantizes_activations: ClassVar[bool] = True
    #: a module built directly (QLinear(...)) is float until a config is applied
    qconfig: ModuleConfig = ModuleConfig()

    @property
    def weight(self) -> torch.Tensor | None:
        """The quantized weight (a QTensor), or the float one where no qtype is set or it is on
        the meta device (nothing to quantize)."""
        parameters = self.__dict__["_parameters"]
        if WEIGHT not in parameters:
            # lets nn.Module.__init__ register the parameter through __setattr__
            raise AttributeError(WEIGHT)
        weight = parameters[WEIGHT]
        unquantized = weight is None or self.qconfig.weights is None
        # a meta weight has no values to quantize: the parameter itself, which lookups by name
        # (nn.Module.get_parameter, as Transformers' loading does) need to find
        if unquantized or isinstance(weight, QTensor) or weight.is_meta:
            return weight
        try:
            # straight-through when autograd wants a gradient: it reaches the float weight
            matrix = self.weight_matrix(weight)
            return straight_through_quantize(matrix, self._quantize_float_weight)
        except AttributeError as error:
            # an AttributeError escaping a property would silently fall back to the float weight
            raise RuntimeError(f"quantizing the weight failed: {error}") from error

    def _quantize_float_weight(self, weight: torch.Tensor) -> QWeightTensor:
        config = self.qconfig
        return layout_for(config.weights).quantize(weight, config.weights, config.group_size)

    @staticmethod
    def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
        """The float weight as the layouts quantize it, output features along dimension 0 (a
        view; Transformers' Conv1D, which stores [in, out], transposes it)."""
        return weight

    @property
    def quantized_shape(self) -> torch.Size:
        """The shape of the quantized weight (output features first), before or after freeze."""
        weight = self.stored_weight
        return weight.shape if isinstance(weight, QTensor) else self.weight_matrix(weight).shape

    @property
    def stored_weight(self) -> torch.Tensor | None:
        """The weight parameter as stored: float before freeze, quantized after, or None."""
        return self.__dict__["_parameters"].get(WEIGHT)

    @property
    def float_weight(self) -> torch.Tensor | None:
        """The float weight parameter (edit this one: `weight` is a quantized copy), or None
        once frozen."""
        weight = self.stored_weight
        return None if isinstance(weight, QTensor) else weight

    @property
    def is_frozen(self) -> bool:
        """True once the stored weight is quantized (after freeze or a quantized load)."""
        return isinstance(self.stored_weight, QTensor)

    @property
    def in_size(self) -> int:
        """K: the columns of the 2D weight (in_features, or in_channels/groups*kh*kw)."""
        return math.prod(self.quantized_shape[1:])

    def freeze_weight(self) -> None:
        """Replace the float weight with its stored quantized tensor (idempotent); a module
        whose float weight a tied module froze with the same settings stores that one."""
        config = self.qconfig
        if self.is_frozen or config.weights is None or self.stored_weight is None:
            return
        float_weight = self.stored_weight
        settings = (config.weights, config.group_size, config.optimizer_name)
        tied = getattr(float_weight, FROZEN_AS, None)
        if tied is not None and tied[0] == settings:  # tied weights stay one tensor
            self._store_quantized_weight(tied[1])
            return
        optimizer = to_weight_optimizer(config.optimizer)
        weight = self.weight_matrix(float_weight.detach())
        if optimizer is None:
            quantized = self._quantize_float_weight(weight)
        else:
            quantized = optimized_weight(weight, config.weights, config.group_size, optimizer, self)
        self._store_quantized_weight(quantized)
        setattr(float_weight, FROZEN_AS, (settings, self.stored_weight))

    def load_float_weight(self, weight: torch.Tensor) -> None:
        """Quantize-on-load: take the float `weight` of this module and freeze it at once."""
        expected = tuple(self.stored_weight.shape)
        if not weight.is_floating_point() or tuple(weight.shape) != expected:
            raise ValueError(
                f"expected a float weight of shape {expected}, got {weight.dtype} "
                f"{tuple(weight.shape)}: a checkpoint in quanta's frozen layout needs the "
                "per-module config it was saved with"
            )
        self._parameters[WEIGHT] = nn.Parameter(weight, requires_grad=False)
        self.freeze_weight()

    def _store_quantized_weight(self, quantized: QWeightTensor) -> None:
        if not isinstance(quantized, nn.Parameter):
            quantized = nn.Parameter(quantized, requires_grad=False)
        self._parameters[WEIGHT] = quantized
        parts = quantized.inner_tensors()
        float_zero_point = any(parts[n].is_floating_point() for n in quantized.optional_float_names)
        self.qconfig = replace(self.qconfig, float_zero_point=float_zero_point)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        weight = self.stored_weight
        if not isinstance(weight, QTensor):
            super()._save_to_state_dict(destination, prefix, keep_vars)
            return
        local: dict[str, Any] = {}
        super()._save_to_state_dict(local, prefix, keep_vars)
        for key, value in local.items():
            if key != prefix + WEIGHT:
                destination[key] = value
                continue
            for name, tensor in weight.inner_tensors().items():
                destination[f"{prefix}{WEIGHT}.{name}"] = tensor if keep_vars else tensor.detach()

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
        codes_key = f"{prefix}{WEIGHT}.codes"
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        config = self.qconfig
        if codes_key not in state_dict or config.weights is None:
            return
        layout = layout_for(config.weights)
        keys = [f"{prefix}{WEIGHT}.{name}" for name in layout.inner_names]
        unexpected_keys[:] = [key for key in unexpected_keys if key not in keys]
        if prefix + WEIGHT in missing_keys:
            missing_keys.remove(prefix + WEIGHT)
        absent = [key for key in keys if key not in state_dict]
        if absent:
            missing_keys.extend(absent)
            return
        parts = {name: state_dict[key] for name, key in zip(layout.inner_names, keys, strict=True)}
        current, shape = self.stored_weight, self.quantized_shape
        rows = shape[0]
        problem = layout.check_parts(parts, config.weights, rows, self.in_size, config.group_size)
        if problem:
            error_msgs.append(f"While loading the quantized weight of {prefix!r}: {problem}")
            return
        assign = local_metadata.get("assign_to_params_buffers", False) or current.is_meta
        if not assign:
            parts = {
                name: tensor.to(
                    device=current.device,
                    dtype=current.dtype if name in layout.float_inner_names else tensor.dtype,
                    copy=True,
                )
                for name, tensor in parts.items()
            }
        quantized = layout.from_parts(
            parts, config.weights, config.group_size, shape, current.dtype
        )
        self._store_quantized_weight(quantized)

    def __reduce_ex__(self, protocol: int) -> tuple:
        # generated classes cannot be found by name: rebuild them from the float class
        return _new_quantized_module, (type(self).float_class,), self.__dict__

    def extra_repr(self) -> str:
        config = self.qconfig
        settings = f"weights={config.weights}"
        if config.group_size is not None:
            settings += f", group_size={config.group_size}"
        if config.optimizer is not None:
            settings += f", optimizer={config.optimizer_name}"
        return f"{super().extra_repr()}, {settings}"


_BASE_CLASSES: dict[type[nn.Module], type[QModuleMixin]] = {}
_GENERATED: dict[type[nn.Module], type[QModuleMixin]] = {}


def register_quantized_class(float_class: type[nn.Module]):
    """Class decorator: the quantized class used for `float_class` and its subclasses."""

    def register(quantized_class: type[QModuleMixin]) -> type[QModuleMixin]:
        quantized_class.float_class = float_class
        _BASE_CLASSES[float_class] = quantized_class
        _GENERATED[float_class] = quantized_class
        return quantized_class

    return register


def quantized_base_for(float_class: type) -> type[QModuleMixin] | None:
    """The registered quantized class (QLinear, QConv2d, ...) whose float class `float_class`
    is (or derives from), or None."""
    for klass in float_class.__mro__:
        if klass in _BASE_CLASSES:
            return _BASE_CLASSES[klass]
    return None


def quantized_class_for(float_class: type[nn.Module]) -> type[QModuleMixin]:
    """The quantized class for a float class: (its registered base, float class), cached.

    The float class comes after the mixin in the MRO, so its own `forward` and helpers
    (padding, `_conv_forward`, ...) are kept; only `weight` changes.
    """
    quantized = _GENERATED.get(float_class)
    if quantized is None:
        base = quantized_base_for(float_class)
        if base is None:
            raise TypeError(f"no quantized class for {float_class.__qualname__}")
        namespace = {"float_class": float_class, "__module__": float_class.__module__}
        quantized = type(f"Quantized{float_class.__name__}", (base, float_class), namespace)
        _GENERATED[float_class] = quantized
    return quantized


def _new_quantized_module(float_class: type[nn.Module]) -> QModuleMixin:
    quantized_class = quantized_class_for(float_class)
    return quantized_class.__new__(quantized_class)
