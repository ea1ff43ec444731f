"""Weight optimizers: how a float weight becomes the codes, scales and zero points stored at freeze.

A `WeightOptimizer` says which qtypes it supports and returns the parts of a quantized weight
(unpacked codes, scale, zero point). `quantize(..., optimizer=...)` attaches one to each module;
`freeze()` calls it when the weight is stored. Before freeze the weight is quantized on the fly
with the cheap default rule (absmax for 8-bit, min-max for 2/4-bit), whatever the optimizer:
optimizers such as HQQ or GPTQ are too slow (or need statistics) to run at every access.

Built in: "absmax" (8-bit) and "minmax" (2/4-bit), the default rules. Others (quanta.qcalib's
"hqq", "gptq") register themselves by name with `register_weight_optimizer`, or through the
`quanta.weight_optimizers` entry-point group, so that qmodules never imports a layer above it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, ClassVar

import torch
from torch import nn

from quanta.qmodules.tensors import QWeightTensor, WeightParts, layout_for
from quanta.qtypes import PACKED_AFFINE, SYMMETRIC, QType

ENTRY_POINT_GROUP = "quanta.weight_optimizers"


class WeightOptimizer:
    """Chooses the quantized parts of a module's weight when the weight is stored (freeze).

    Subclasses set `name` and the qtype `layouts` they produce, implement `optimize`, and may
    override `check_ready` (for optimizers that need statistics, such as GPTQ).
    `float_zero_point` says whether the zero points it returns are floats (in the weight's
    dtype) rather than uint8.
    """

    name: ClassVar[str] = ""
    layouts: ClassVar[tuple[str, ...]] = ()
    float_zero_point: ClassVar[bool] = False

    def supports(self, qtype: QType) -> bool:
        """Whether this optimizer can produce weights of `qtype`."""
        return qtype.layout in self.layouts

    def optimize(
        self,
        weight: torch.Tensor,
        qtype: QType,
        group_size: int | None,
        module: nn.Module | None = None,
    ) -> WeightParts:
        """The quantized parts of the float weight [rows, K] (`module` is the weight's owner)."""
        raise NotImplementedError

    def check_ready(self, module: nn.Module, name: str) -> None:
        """Raise (naming `name`) if `module`'s weight cannot be optimized now; freeze() asks."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __deepcopy__(self, memo: dict) -> WeightOptimizer:
        # settings shared by the modules of a model (and of its copies), never copied
        return self


class OnTheFlyRule(WeightOptimizer):
    """The layout's own quantization rule, the one weights are quantized with before freeze."""

    def optimize(
        self,
        weight: torch.Tensor,
        qtype: QType,
        group_size: int | None,
        module: nn.Module | None = None,
    ) -> WeightParts:
        return layout_for(qtype).quantize(weight, qtype, group_size).weight_parts()


class AbsmaxOptimizer(OnTheFlyRule):
    """8-bit weights: one symmetric scale per output channel (int8: absmax / 127; float8: the
    best of 16 scales from absmax up, by squared error). The default for 8-bit qtypes."""

    name = "absmax"
    layouts = (SYMMETRIC,)


class MinmaxOptimizer(OnTheFlyRule):
    """2/4-bit weights: affine scale and uint8 zero point from each group's min and max (the
    range always holds 0). The default for 2/4-bit qtypes."""

    name = "minmax"
    layouts = (PACKED_AFFINE,)


def optimized_weight(
    weight: torch.Tensor,
    qtype: QType,
    group_size: int | None,
    optimizer: WeightOptimizer,
    module: nn.Module | None = None,
) -> QWeightTensor:
    """The quantized tensor of a float weight [out, ...] with the parts `optimizer` chooses."""
    rows = weight.reshape(weight.shape[0], -1)
    parts = optimizer.optimize(rows, qtype, group_size, module)
    return layout_for(qtype).from_weight_parts(parts, qtype, group_size, weight.shape)


_REGISTRY: dict[str, Callable[[], WeightOptimizer]] = {
    AbsmaxOptimizer.name: AbsmaxOptimizer,
    MinmaxOptimizer.name: MinmaxOptimizer,
}


def register_weight_optimizer(name: str, factory: Callable[[], WeightOptimizer]) -> None:
    """Make `quantize(..., optimizer=name)` build its optimizer with `factory()`."""
    _REGISTRY[name] = factory


def _registered(name: str) -> Callable[[], WeightOptimizer] | None:
    if name not in _REGISTRY:
        # layers above (quanta.qcalib) declare their optimizers as entry points
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            if entry.name == name:
                _REGISTRY[name] = entry.load()
    return _REGISTRY.get(name)


def to_weight_optimizer(value: Any, argument: str = "optimizer") -> WeightOptimizer | None:
    """None, a WeightOptimizer, or the name of a registered one ("absmax", "minmax", "hqq"...)."""
    if value is None or isinstance(value, WeightOptimizer):
        return value
    if isinstance(value, str):
        factory = _registered(value)
        if factory is None:
            known = sorted(_REGISTRY)
            raise ValueError(
                f"{argument}={value!r} is not a known weight optimizer; known: {known} "
                "('hqq' and 'gptq' come with quanta.qcalib: install it, or import it first)"
            )
        return factory()
    raise TypeError(
        f"{argument} must be None, a WeightOptimizer or an optimizer name, got {value!r}"
    )


def check_supports(optimizer: WeightOptimizer | None, qtype: QType, module_name: str) -> None:
    """ValueError naming optimizer, module and qtype when `optimizer` cannot produce `qtype`."""
    if optimizer is not None and layout_for(qtype).default_optimizer is None:
        raise ValueError(
            f"optimizer {optimizer.name or optimizer!r} does not apply to {qtype} weights "
            f"(module {module_name!r}): the format fixes how they are quantized; leave "
            "optimizer None"
        )
    if optimizer is not None and not optimizer.supports(qtype):
        raise ValueError(
            f"optimizer {optimizer.name or optimizer!r} does not support {qtype} weights "
            f"(module {module_name!r}); use 'absmax' for 8-bit and 'minmax', 'hqq' or 'gptq' "
            "for 2/4-bit weights, or an override per module"
        )
