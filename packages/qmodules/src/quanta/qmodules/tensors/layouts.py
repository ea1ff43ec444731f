"""The layout registry: one QTensor class per weight storage layout, chosen by `layout_for`.

A layout class owns its stored parts (their names, shapes and dtypes), how a float weight is
quantized on the fly, how it is built from stored parts or from an optimizer's unpacked codes,
its dequantization and its linear kernel. Row lookups (`rows`, F.embedding) are derived here
from `part_specs`: every layout quantizes rows of dimension 0 independently. A qtype names its
layout (`QType.layout`); adding a format is one layout file that registers itself here, plus
its tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from quanta.qmodules.tensors.base import QTensor, dequantized_call, linear_arguments
from quanta.qmodules.tensors.straight_through import needs_weight_grad, straight_through_linear
from quanta.qtypes import QType


@dataclass(frozen=True)
class WeightParts:
    """The parts of a quantized 2D weight [rows, K] as an optimizer returns them.

    codes: unpacked codes [rows, K], `qtype.dtype` for 8-bit qtypes, uint8 for 2/4-bit ones.
    scale: [rows, 1] (8-bit) or [rows, K // group_size] (2/4-bit), in the weight's float dtype.
    zero_point: None (8-bit), or [rows, K // group_size] in uint8 or a float dtype (2/4-bit).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None = None


class PartSpec(NamedTuple):
    """The shape of a stored part and its dtype (None: the weight's float dtype)."""

    shape: tuple[int, ...]
    dtype: torch.dtype | None


# Row counts whose part shapes tell per-row parts (dimension 0 = rows) from per-tensor ones; far
# apart, so that a part over blocks of several rows (scales of scales) differs from both.
ROW_PROBES = (3, 4096)
ROW_PROBE_DIMS = tuple((rows,) for rows in ROW_PROBES)


class QWeightTensor(QTensor):
    """The base of the weight layouts (see the module docstring); subclasses register with
    `register_layout`."""

    #: the `QType.layout` this class stores
    layout: ClassVar[str]
    #: whether the layout takes a group size (scales per group of columns)
    grouped: ClassVar[bool] = False
    #: the group size when none is given and it divides K (None: 128, 64 or 32, see config)
    default_group_size: ClassVar[int | None] = None
    #: the name of the weight optimizer whose rule on-the-fly quantization uses; None for
    #: formats whose own rule is the only one (no optimizer applies)
    default_optimizer: ClassVar[str | None]
    #: parts stored as codes by the default rule, as floats by some optimizers (HQQ)
    optional_float_names: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def scale_part_names(cls) -> tuple[str, ...]:
        """The stored parts that hold scales: one NaN or Inf in them makes outputs NaN."""
        return (*cls.float_inner_names, *cls.optional_float_names)

    @classmethod
    def quantize(cls, weight: torch.Tensor, qtype: QType, group_size: int | None) -> QWeightTensor:
        """Quantize a float weight [out, ...] with the layout's default rule."""
        raise NotImplementedError

    @classmethod
    def from_weight_parts(
        cls, parts: WeightParts, qtype: QType, group_size: int | None, shape: torch.Size
    ) -> QWeightTensor:
        """The tensor of an optimizer's parts (unpacked codes) for a weight of `shape`."""
        raise NotImplementedError

    @classmethod
    def part_specs(
        cls, qtype: QType, rows: int, in_size: int, group_size: int | None
    ) -> dict[str, PartSpec]:
        """The stored parts of a weight [rows, in_size], by name, in `inner_names` order."""
        raise NotImplementedError

    @classmethod
    def from_parts(
        cls,
        parts: dict[str, torch.Tensor],
        qtype: QType,
        group_size: int | None,
        shape: Any,
        dtype: torch.dtype = torch.float32,
    ) -> QWeightTensor:
        """The tensor of stored parts (as `inner_tensors()` gives them) for a weight of `shape`.

        `dtype` is the weight's float dtype, for layouts whose parts hold no float of it
        (microscaled formats); the others take it from their scale.
        """
        settings = {"qtype": qtype, "group_size": group_size, "float_dtype": dtype}
        return cls(**parts, **{name: settings[name] for name in cls.attribute_names}, shape=shape)

    @classmethod
    def check_parts(
        cls, parts: dict[str, torch.Tensor], qtype: QType, rows: int, in_size: int, group_size: int
    ) -> str | None:
        """Why stored parts do not fit a weight [rows, in_size] of `qtype`, or None."""
        for name, (shape, dtype) in cls.part_specs(qtype, rows, in_size, group_size).items():
            tensor = parts[name]
            if tuple(tensor.shape) != shape:
                return f"{name} has shape {tuple(tensor.shape)}, expected {shape} for {qtype}"
            if name in cls.optional_float_names and tensor.is_floating_point():
                continue
            if dtype is not None and tensor.dtype != dtype:
                if name in cls.optional_float_names:
                    wanted = str(dtype).removeprefix("torch.")
                    return f"{name} has dtype {tensor.dtype}, expected {wanted} or a float dtype"
                return f"{name} has dtype {tensor.dtype}, expected {dtype} for {qtype}"
            if dtype is None and not tensor.is_floating_point():
                return f"{name} has dtype {tensor.dtype}, expected a float dtype"
        return None

    @classmethod
    def stored_bytes(
        cls,
        qtype: QType,
        shape: torch.Size,
        group_size: int | None,
        float_dtype: torch.dtype,
        float_zero_point: bool = False,
    ) -> int:
        """The bytes the stored parts of a float weight of `shape` and `float_dtype` take."""
        rows, in_size = shape[0], math.prod(shape[1:])
        total = 0
        for name, (part_shape, dtype) in cls.part_specs(qtype, rows, in_size, group_size).items():
            if dtype is None or (float_zero_point and name in cls.optional_float_names):
                dtype = float_dtype
            total += math.prod(part_shape) * dtype.itemsize
        return total

    def weight_parts(self) -> WeightParts:
        """The parts as an optimizer returns them (codes unpacked)."""
        raise NotImplementedError

    @classmethod
    def row_part_names(
        cls, qtype: QType, in_size: int, group_size: int | None
    ) -> tuple[str, ...] | None:
        """The parts stored one entry per weight row (dimension 0 follows the rows); the others
        must not depend on the rows (a per-tensor scale). None where a part depends on the rows
        otherwise (scales of scales over several rows): rows cannot then be read apart."""
        few, many = (cls.part_specs(qtype, rows, in_size, group_size) for rows in ROW_PROBES)
        per_row = tuple(n for n in few if (few[n].shape[:1], many[n].shape[:1]) == ROW_PROBE_DIMS)
        shared = all(few[n].shape == many[n].shape for n in few if n not in per_row)
        return per_row if shared else None

    def rows(self, indices: torch.Tensor) -> QWeightTensor | None:
        """The weight rows `indices` (1D integers) as a tensor of this layout, built from those
        rows of the per-row parts only; None where the layout cannot read rows apart."""
        attributes = self.attributes()
        per_row = self.row_part_names(self.qtype, self.in_size, attributes.get("group_size"))
        if per_row is None:
            return None
        parts = {
            name: tensor.index_select(0, indices) if name in per_row else tensor
            for name, tensor in self.inner_tensors().items()
        }
        return type(self)(**parts, **attributes, shape=(indices.numel(), *self.shape[1:]))

    @property
    def in_size(self) -> int:
        """K: the number of columns of the 2D code matrix."""
        return math.prod(self.shape[1:])

    def linear(self, input: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """F.linear(input, self, bias) on the layout's kernel (input float, self 2D)."""
        raise NotImplementedError


@QWeightTensor.implements(F.linear)
def _linear(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    input, weight, bias = linear_arguments(*args, **kwargs)
    input, bias = _autocast(input, bias)
    if needs_weight_grad(weight):  # QAT before freeze: gradients reach the float weight
        return straight_through_linear(input, weight, bias)
    if not isinstance(weight, QWeightTensor) or isinstance(input, QTensor) or weight.dim() != 2:
        return dequantized_call(func, args, kwargs)
    return weight.linear(input, bias)


@QWeightTensor.implements(F.embedding)
def _embedding(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """A lookup dequantizes only the rows it reads (the result equals dequantize()[input])."""
    input, weight, max_norm = _embedding_arguments(*args, **kwargs)
    if needs_weight_grad(weight):
        # QAT: autograd records aten.embedding on the QTensor (dequantized below autograd), so
        # the weight gradient reaches the float weight straight through
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)
    # max_norm renormalizes the rows it reads in place: on a dequantized copy
    plain = isinstance(weight, QWeightTensor) and weight.dim() == 2 and max_norm is None
    rows = weight.rows(input.reshape(-1)) if plain else None
    if rows is None:
        return dequantized_call(func, args, kwargs)
    return rows.dequantize().reshape(*input.shape, weight.shape[1])


def _embedding_arguments(
    input: torch.Tensor,
    weight: torch.Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    *args: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """F.embedding's input, weight and max_norm, however they were passed (padding_idx and
    the other arguments only change gradients)."""
    return input, weight, max_norm


def _autocast(
    input: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The input and bias in the autocast dtype where autocast is on, as F.linear would take
    them: quanta's ops have no autocast kernel of their own (their dtype follows the input)."""
    device = input.device.type
    if isinstance(input, QTensor) or not torch.is_autocast_enabled(device):
        return input, bias  # a quantized input is dequantized, then F.linear autocasts
    dtype = torch.get_autocast_dtype(device)
    if not input.is_floating_point() or input.dtype == dtype:
        return input, bias
    return input.to(dtype), None if bias is None else bias.to(dtype)


_LAYOUTS: dict[str, type[QWeightTensor]] = {}


def register_layout(layout: type[QWeightTensor]) -> type[QWeightTensor]:
    """Class decorator: `layout_for` returns this class for qtypes of its `layout` name."""
    _LAYOUTS[layout.layout] = layout
    return layout


def stored_part_names() -> tuple[str, ...]:
    """Every name a registered layout stores a weight part under, in registration order."""
    return tuple(dict.fromkeys(name for layout in _LAYOUTS.values() for name in layout.inner_names))


def layout_for(qtype: QType) -> type[QWeightTensor]:
    """The layout class that stores weights of `qtype`."""
    layout = _LAYOUTS.get(qtype.layout)
    if layout is None:
        raise ValueError(f"no weight layout is registered for {qtype} (layout {qtype.layout!r})")
    return layout
