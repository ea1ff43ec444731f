"""QModuleMixin: what turns a float Linear/Conv2d (or a subclass of one) into a quantized one.

A quantized module keeps its float class's `forward`: the mixin only changes what
`self.weight` returns (a QTensor), and the QTensor routes F.linear / F.conv2d to the ops.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from quanta.qmodules.optimizers import WeightOptimizer, optimized_weight
from quanta.qmodules.tensors import QBitsTensor, QBytesTensor, QTensor
from quanta.qmodules.tensors.straight_through import straight_through_quantize
from quanta.qtypes import QType

WEIGHT = "weight"


def quantize_weight(weight: torch.Tensor, qtype: QType, group_size: int | None) -> QTensor:
    """The QTensor for a float weight [out, ...] in the layout of its qtype."""
    if qtype.is_packed:
        if group_size is None:
            raise ValueError(f"{qtype} weights need a group_size")
        return QBitsTensor.quantize(weight, qtype, group_size)
    return QBytesTensor.quantize(weight, qtype)


class QModuleMixin:
    """Mixin placed before a float module class: `self.weight` becomes the quantized weight.

    Before `freeze()` the weight is quantized on the fly from the float parameter at every
    access, with straight-through gradients to the float parameter when autograd is on (QAT);
    after it, the stored QTensor (the float weight is gone) is returned.
    """

    float_class: ClassVar[type[nn.Module]]
    weight_qtype: QType | None = None
    weight_group_size: int | None = None
    # chooses the stored weight at freeze; None: the default rule of on-the-fly quantization
    weight_optimizer: WeightOptimizer | None = None
    activation_qtype: QType | None = None

    @property
    def weight(self) -> torch.Tensor | None:
        """The quantized weight (a QTensor), or the float one where no qtype is set."""
        parameters = self.__dict__["_parameters"]
        if WEIGHT not in parameters:
            # lets nn.Module.__init__ register the parameter through __setattr__
            raise AttributeError(WEIGHT)
        weight = parameters[WEIGHT]
        if weight is None or self.weight_qtype is None or isinstance(weight, QTensor):
            return weight
        try:
            # straight-through when autograd wants a gradient: it reaches the float weight
            return straight_through_quantize(weight, self._quantize_float_weight)
        except AttributeError as error:
            # an AttributeError escaping a property would silently fall back to the float weight
            raise RuntimeError(f"quantizing the weight failed: {error}") from error

    def _quantize_float_weight(self, weight: torch.Tensor) -> QTensor:
        return quantize_weight(weight, self.weight_qtype, self.weight_group_size)

    @property
    def float_weight(self) -> torch.Tensor | None:
        """The float weight parameter (edit this one: `weight` is a quantized copy), or None
        once frozen."""
        weight = self.__dict__["_parameters"].get(WEIGHT)
        return None if isinstance(weight, QTensor) else weight

    @property
    def is_frozen(self) -> bool:
        """True once the stored weight is quantized (after freeze or a quantized load)."""
        return isinstance(self.__dict__["_parameters"].get(WEIGHT), QTensor)

    @property
    def in_size(self) -> int:
        """K: the columns of the 2D weight (in_features, or in_channels/groups*kh*kw)."""
        return math.prod(self.__dict__["_parameters"][WEIGHT].shape[1:])

    def freeze_weight(self) -> None:
        """Replace the float weight with its stored quantized tensor (idempotent)."""
        if self.is_frozen or self.weight_qtype is None:
            return
        if self.weight_optimizer is None:
            quantized = self.weight
        else:
            quantized = optimized_weight(
                self._parameters[WEIGHT].detach(),
                self.weight_qtype,
                self.weight_group_size,
                self.weight_optimizer,
                self,
            )
        self._parameters[WEIGHT] = nn.Parameter(quantized, requires_grad=False)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        weight = self._parameters.get(WEIGHT)
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
        if codes_key not in state_dict or self.weight_qtype is None:
            return
        layout = QBitsTensor if self.weight_qtype.is_packed else QBytesTensor
        names = layout.inner_names
        keys = [f"{prefix}{WEIGHT}.{name}" for name in names]
        unexpected_keys[:] = [key for key in unexpected_keys if key not in keys]
        if prefix + WEIGHT in missing_keys:
            missing_keys.remove(prefix + WEIGHT)
        absent = [key for key in keys if key not in state_dict]
        if absent:
            missing_keys.extend(absent)
            return
        inner = {name: state_dict[key] for name, key in zip(names, keys, strict=True)}
        problem = self._check_quantized_weight(inner)
        if problem:
            error_msgs.append(f"While loading the quantized weight of {prefix!r}: {problem}")
            return
        current = self._parameters[WEIGHT]
        float_names = layout.float_inner_names
        assign = local_metadata.get("assign_to_params_buffers", False) or current.is_meta
        if not assign:
            inner = {
                name: tensor.to(
                    device=current.device,
                    dtype=current.dtype if name in float_names else tensor.dtype,
                    copy=True,
                )
                for name, tensor in inner.items()
            }
        quantized = quantize_weight_from(inner, self.weight_qtype, self.weight_group_size, current)
        self._parameters[WEIGHT] = nn.Parameter(quantized, requires_grad=False)

    def _check_quantized_weight(self, inner: dict[str, torch.Tensor]) -> str | None:
        """Why the stored tensors do not fit this module's settings, or None."""
        qtype, out, size = self.weight_qtype, self._parameters[WEIGHT].shape[0], self.in_size
        if qtype.is_packed:
            groups = size // self.weight_group_size
            expected = {
                "codes": ((out, math.ceil(size * qtype.bits / 8)), torch.uint8),
                "scale": ((out, groups), None),
                "zero_point": ((out, groups), None),  # uint8, or float (HQQ)
            }
        else:
            expected = {"codes": ((out, size), qtype.dtype), "scale": ((out, 1), None)}
        for name, (shape, dtype) in expected.items():
            tensor = inner[name]
            if tuple(tensor.shape) != shape:
                return f"{name} has shape {tuple(tensor.shape)}, expected {shape} for {qtype}"
            if dtype is not None and tensor.dtype != dtype:
                return f"{name} has dtype {tensor.dtype}, expected {dtype} for {qtype}"
            if name == "zero_point" and tensor.dtype == torch.uint8:
                continue
            if dtype is None and not tensor.dtype.is_floating_point:
                wanted = "uint8 or a float dtype" if name == "zero_point" else "a float dtype"
                return f"{name} has dtype {tensor.dtype}, expected {wanted}"
        return None

    def __reduce_ex__(self, protocol: int) -> tuple:
        # generated classes cannot be found by name: rebuild them from the float class
        return _new_quantized_module, (type(self).float_class,), self.__dict__

    def extra_repr(self) -> str:
        settings = f"weights={self.weight_qtype}"
        if self.weight_group_size is not None:
            settings += f", group_size={self.weight_group_size}"
        if self.weight_optimizer is not None:
            settings += f", optimizer={self.weight_optimizer.name or repr(self.weight_optimizer)}"
        return f"{super().extra_repr()}, {settings}"


def quantize_weight_from(
    inner: dict[str, torch.Tensor], qtype: QType, group_size: int | None, like: torch.Tensor
) -> QTensor:
    """A QTensor from stored inner tensors, with the logical shape of `like`."""
    if qtype.is_packed:
        return QBitsTensor(**inner, qtype=qtype, group_size=group_size, shape=like.shape)
    return QBytesTensor(**inner, qtype=qtype, shape=like.shape)


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
    """The registered quantized class (QLinear, QConv2d) whose float class `float_class` is."""
    for klass in float_class.__mro__:
        if klass in _BASE_CLASSES:
            return _BASE_CLASSES[klass]
    return None


def quantized_class_for(float_class: type[nn.Module]) -> type[QModuleMixin]:
    """The quantized class for a float class: (QLinear or QConv2d, float class), cached.

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


def quantize_module(
    module: nn.Module,
    qtype: QType,
    group_size: int | None,
    optimizer: WeightOptimizer | None = None,
) -> QModuleMixin:
    """Turn a float module into its quantized class in place (weights quantized on the fly;
    `optimizer`, if any, chooses the stored weight at freeze)."""
    module.__class__ = quantized_class_for(type(module))
    module.weight_qtype = qtype
    module.weight_group_size = group_size if qtype.is_packed else None
    module.weight_optimizer = optimizer
    return module
