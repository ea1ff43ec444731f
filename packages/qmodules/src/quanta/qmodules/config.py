"""ModuleConfig: how one module is quantized, the one place that says it.

`quantize()` applies one to each module it swaps, a quantized module returns its own
(`module.qconfig`), quanta.qio stores exactly it (`to_dict` / `from_dict`), and the Transformers
and Diffusers configs and the CLI build it. Every field's allowed values are checked here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from quanta.qmodules.optimizers import WeightOptimizer, check_supports, to_weight_optimizer
from quanta.qmodules.tensors import layout_for
from quanta.qtypes import SYMMETRIC, QType, to_qtype

ACTIVATION_MODES = ("static", "dynamic")
DEFAULT_GROUP_SIZES = (128, 64, 32)
WEIGHT_AXIS = 0  # scales run along the output channels (dimension 0) of every weight
# What a user may set per module (quantize's overrides); the other fields record what the layers
# did to a module (smoothing, rotation, streamlining, the zero points an optimizer chose).
USER_FIELDS = ("weights", "group_size", "optimizer", "activations", "activations_mode")


@dataclass(frozen=True)
class ModuleConfig:
    """How one module is quantized: its weights and activations, and what was applied to it.

    weights: the weight qtype (a QType or its name), None to leave the weight float.
    group_size: columns per scale for grouped layouts (2/4-bit); None: 128, 64 or 32, whichever
        divides K, at quantize() (nf4/fp4: 64, bitsandbytes' block, where it divides K).
        Refused for weights without groups (8-bit: one scale per output channel); the
        microscaled formats fix it (mxfp4, mxfp8: 32; nvfp4: 16): None or that value.
    optimizer: chooses the stored weights at freeze: a WeightOptimizer or a registered name
        ("hqq", "gptq"...); None is the layout's default rule. A config read from a checkpoint
        holds the name that was saved.
    activations: an 8-bit qtype for the module's inputs and outputs, or None.
    activations_mode: "static" (calibrated per-tensor scales) or "dynamic" (per token).
    output_quantized: static activations only; False once the output is left float.
    float_zero_point: the stored zero points are floats (HQQ), not uint8.
    input_smoothing: the input is divided by smoothing factors (SmoothQuant).
    input_rotation: the Hadamard block size of a rotated input, or None.
    """

    weights: QType | None = None
    group_size: int | None = None
    optimizer: WeightOptimizer | str | None = None
    activations: QType | None = None
    activations_mode: str = "static"
    output_quantized: bool = True
    float_zero_point: bool = False
    input_smoothing: bool = False
    input_rotation: int | None = None

    version: ClassVar[int] = 1  # the shape of `to_dict`

    def __post_init__(self) -> None:
        weights = None if self.weights is None else to_qtype(self.weights, "weights")
        activations = _activation_qtype(self.activations)
        _check_positive(self.group_size, "group_size")
        _check_positive(self.input_rotation, "input_rotation")
        if not isinstance(self.activations_mode, str) or (
            self.activations_mode not in ACTIVATION_MODES
        ):
            raise ValueError(
                f"activations_mode must be one of {list(ACTIVATION_MODES)}, "
                f"got {self.activations_mode!r}"
            )
        optimizer = self.optimizer
        if not (optimizer is None or isinstance(optimizer, (WeightOptimizer, str))):
            raise TypeError(
                f"optimizer must be None, a WeightOptimizer or an optimizer name, got {optimizer!r}"
            )
        if self.group_size is not None and weights is not None and not layout_for(weights).grouped:
            raise ValueError(
                f"group_size={self.group_size} applies to 2/4-bit weights only; {weights} weights "
                "have one scale per output channel: leave group_size None"
            )
        fixed = None if weights is None else weights.block_size
        if fixed is not None and self.group_size not in (None, fixed):
            raise ValueError(
                f"group_size={self.group_size} does not apply to {weights} weights: the format "
                f"fixes group_size={fixed}; leave it None or set {fixed}"
            )
        for name in ("output_quantized", "float_zero_point", "input_smoothing"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "activations", activations)

    @property
    def optimizer_name(self) -> str | None:
        """The optimizer's name as a checkpoint stores it."""
        if self.optimizer is None or isinstance(self.optimizer, str):
            return self.optimizer
        return self.optimizer.name or type(self.optimizer).__name__

    def resolved(self) -> ModuleConfig:
        """This config with its optimizer name resolved to an instance (ValueError for an
        unknown name): one instance then serves every module the config is applied to."""
        return replace(self, optimizer=to_weight_optimizer(self.optimizer))

    def settings(self) -> tuple:
        """What must match between a module already quantized and a config applied to it."""
        mode = None if self.activations is None else self.activations_mode
        return (_name(self.weights), self.group_size, _name(self.activations), mode)

    def for_module(self, in_size: int, module_name: str) -> ModuleConfig:
        """This config as a module of K = `in_size` weight columns holds it: the default group
        size chosen (or the given one checked), the optimizer resolved and checked against the
        qtype, and the settings that mean nothing for the module cleared, so that the config
        reads back from `to_dict` as it was."""
        optimizer = to_weight_optimizer(self.optimizer) if self.weights is not None else None
        check_supports(optimizer, self.weights, module_name)
        grouped = self.weights is not None and layout_for(self.weights).grouped
        group_size = _module_group_size(self, in_size, module_name) if grouped else None
        float_zero_point = optimizer is not None and optimizer.float_zero_point
        static = self.activations is not None and self.activations_mode == "static"
        return replace(
            self,
            optimizer=optimizer,
            group_size=group_size,
            activations_mode=self.activations_mode if self.activations is not None else "static",
            output_quantized=self.output_quantized and static,
            float_zero_point=grouped and (self.float_zero_point or float_zero_point),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object quanta.qio stores for the module (format `version`)."""
        mode = None if self.activations is None else self.activations_mode
        return {
            "weights": _name(self.weights),
            "group_size": self.group_size,
            "axis": None if self.weights is None else WEIGHT_AXIS,
            "float_zero_point": self.float_zero_point,
            "optimizer": self.optimizer_name,
            "activations": _name(self.activations),
            "activations_mode": mode,
            "output_quantized": self.output_quantized,
            "input_smoothing": self.input_smoothing,
            "input_rotation": self.input_rotation,
        }

    @classmethod
    def from_dict(cls, value: Any) -> ModuleConfig:
        """The config `to_dict` wrote. A missing or unknown field, or a value of the wrong JSON
        type, is a TypeError; values that do not make a valid config are a ValueError."""
        _check_stored_types(value)
        weights = None if value["weights"] is None else to_qtype(value["weights"])
        activations = None if value["activations"] is None else to_qtype(value["activations"])
        problems = _stored_problems(value, weights, activations)
        if problems:
            raise ValueError(f"invalid: {'; '.join(problems)}")
        mode = value["activations_mode"] or "static"
        entry = {
            key: value[key] for key in _STORED_TYPES if key not in ("axis", "activations_mode")
        }
        return cls(**entry, activations_mode=mode)


def default_group_size(in_size: int, preferred: int | None = None) -> int:
    """`preferred` when given and it divides K, else 128 when it divides K, else the largest of
    64/32 that does, else K (one group a row)."""
    for size in (preferred, *DEFAULT_GROUP_SIZES) if preferred else DEFAULT_GROUP_SIZES:
        if in_size % size == 0:
            return size
    return in_size


def _module_group_size(config: ModuleConfig, in_size: int, module_name: str) -> int:
    """The group size of grouped weights for a module of K = `in_size`: the given one checked,
    the format's fixed block, or the layout's default."""
    qtype = config.weights
    group_size = config.group_size or qtype.block_size
    if group_size is None:
        return default_group_size(in_size, layout_for(qtype).default_group_size)
    if in_size % group_size and qtype.block_size:
        raise ValueError(
            f"{qtype} weights need K divisible by {group_size}, the format's block; module "
            f"{module_name!r} has K={in_size}: exclude it or give it other weights"
        )
    if in_size % group_size:
        raise ValueError(
            f"group_size={group_size} does not divide K={in_size} of module "
            f"{module_name!r}; use a divisor of {in_size} or None"
        )
    return group_size


def to_module_config(value: ModuleConfig | dict[str, Any], argument: str) -> ModuleConfig:
    """A ModuleConfig, or one built from a dict of its user fields (`USER_FIELDS`)."""
    if isinstance(value, ModuleConfig):
        return value
    if not isinstance(value, dict):
        raise TypeError(
            f"{argument} must be a ModuleConfig or a dict with keys among {list(USER_FIELDS)}, "
            f"got {value!r}"
        )
    unknown = sorted(set(value) - set(USER_FIELDS), key=str)
    if unknown:
        raise ValueError(
            f"{argument} has unknown keys {unknown}; allowed keys: {list(USER_FIELDS)}"
        )
    try:
        return ModuleConfig(**value)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{argument}: {error}") from None


def _name(qtype: QType | None) -> str | None:
    return None if qtype is None else qtype.name


def _activation_qtype(value: Any) -> QType | None:
    if value is None:
        return None
    qtype = to_qtype(value, "activations")
    if qtype.layout != SYMMETRIC:
        raise ValueError(
            f"activations must be None or an 8-bit qtype (qint8, qfloat8...), got {qtype}"
        )
    return qtype


def _check_positive(value: Any, argument: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be None or a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{argument} must be None or a positive int, got {value}")


_STORED_TYPES = {
    "weights": (str, type(None)),
    "group_size": (int, type(None)),
    "axis": (int, type(None)),
    "float_zero_point": (bool,),
    "optimizer": (str, type(None)),
    "activations": (str, type(None)),
    "activations_mode": (str, type(None)),
    "output_quantized": (bool,),
    "input_smoothing": (bool,),
    "input_rotation": (int, type(None)),
}


def _check_stored_types(value: Any) -> None:
    if not isinstance(value, dict) or set(value) != set(_STORED_TYPES):
        raise TypeError(f"expected the fields {sorted(_STORED_TYPES)}")
    for key, item in value.items():
        is_bool_as_int = isinstance(item, bool) and bool not in _STORED_TYPES[key]
        if is_bool_as_int or not isinstance(item, _STORED_TYPES[key]):
            raise TypeError(f"{key}={item!r} has the wrong type")


def _stored_problems(
    value: dict[str, Any], weights: QType | None, activations: QType | None
) -> list[str]:
    """What makes a stored config inconsistent (checked before it is built)."""
    problems = []
    if weights is None and activations is None:
        problems.append("neither weights nor activations are quantized")
    if weights is not None and value["axis"] != WEIGHT_AXIS:
        problems.append(f"axis {value['axis']} (only {WEIGHT_AXIS} is supported)")
    grouped = weights is not None and layout_for(weights).grouped
    group_size = value["group_size"]
    if grouped != (group_size is not None) or (grouped and group_size <= 0):
        problems.append(f"group_size {group_size} for weights {value['weights']}")
    if value["float_zero_point"] and not grouped:
        problems.append("float zero points without 2/4-bit weights")
    if activations is not None and activations.layout != SYMMETRIC:
        problems.append(f"activations {value['activations']} (8-bit qtypes only)")
    mode = value["activations_mode"]
    if (activations is None) != (mode is None) or mode not in (None, *ACTIVATION_MODES):
        problems.append(f"activations_mode {mode!r}")
    if value["output_quantized"] and mode != "static":
        problems.append("a quantized output without static activations")
    rotation = value["input_rotation"]
    if rotation is not None and rotation <= 0:
        problems.append(f"input_rotation {rotation}")
    return problems
