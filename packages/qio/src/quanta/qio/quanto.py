"""Reading optimum-quanto checkpoints: `quanto_qmap.json` and its safetensors key names.

optimum-quanto stores, per quantized module `m`: 8-bit weights as `m.weight._data` (int8 or
float8, the weight's shape) and `m.weight._scale`; 2/4-bit weights as `m.weight._data._data`
(codes of the grouped weight [groups, group_size], packed along dimension 0), `m.weight._scale`
and `m.weight._shift` ([groups, 1], dequantized as `scale * code - shift` for float shifts);
and `m.input_scale` / `m.output_scale` always. These become quanta's canonical tensors: codes
packed along K, scales [out, groups per row], zero points `shift / scale` (float zero points).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from quanta.qio.checkpoint import open_files, read_stored
from quanta.qio.config import QuantizationConfig
from quanta.qio.errors import CheckpointMismatchError, CorruptCheckpointError
from quanta.qio.expected import TensorSpec
from quanta.qmodules import ModuleConfig, quantized_base_for
from quanta.qtypes import PACKED_AFFINE, SYMMETRIC, QType, to_qtype

QUANTO_MAP_FILE = "quanto_qmap.json"
NONE = "none"
QUANTO_QTYPES = ("qint2", "qint4", "qint8", "qfloat8_e4m3fn", "qfloat8_e4m3fnuz", "qfloat8_e5m2")


@dataclass(frozen=True)
class Conversion:
    """How one canonical tensor is computed from quanto's stored tensors."""

    spec: TensorSpec
    sources: tuple[str, ...]
    convert: Callable[..., torch.Tensor]


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class QuantoCheckpoint:
    """An optimum-quanto folder seen as a quanta checkpoint: config, specs and converted reads."""

    def __init__(self, path: Path, model: nn.Module) -> None:
        qmap = _read_qmap(path / QUANTO_MAP_FILE)
        self.stored, _ = open_files(path)
        raw = self.stored.specs
        self.plan = {key: Conversion(spec, (key,), _identity) for key, spec in raw.items()}
        modules = {}
        for name, entry in qmap.items():
            config = _module_plan(name, entry, model, raw, self.plan)
            if config is not None:
                modules[name] = config
        self.config = QuantizationConfig(modules, {})
        self.specs = {key: conversion.spec for key, conversion in self.plan.items()}

    def read(
        self, keys: list[str], device: torch.device, progress: bool
    ) -> dict[str, torch.Tensor]:
        """The converted tensors of `keys` on `device` (quanto files carry no checksums)."""
        sources = sorted({source for key in keys for source in self.plan[key].sources})
        raw = dict(read_stored(self.stored, sources, None, progress))
        return {
            key: self.plan[key].convert(*(raw[s] for s in self.plan[key].sources)).to(device)
            for key in keys
        }


def _read_qmap(path: Path) -> dict[str, dict[str, str]]:
    try:
        qmap = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON
        raise CorruptCheckpointError(f"{path}: not valid JSON ({error})") from None
    valid = (None, NONE, *QUANTO_QTYPES)
    if not isinstance(qmap, dict) or not all(
        isinstance(entry, dict)
        and set(entry) == {"weights", "activations"}
        and entry["weights"] in valid
        and entry["activations"] in valid
        for entry in qmap.values()
    ):
        raise CorruptCheckpointError(
            f"{path}: expected {{module: {{'weights': qtype, 'activations': qtype}}}} with qtypes "
            f"among {list(QUANTO_QTYPES)} or 'none'"
        )
    return qmap


def _qtype(name: str | None) -> QType | None:
    return None if name in (None, NONE) else to_qtype(name)


def _module_plan(
    name: str, entry: dict, model: nn.Module, raw: dict, plan: dict[str, Conversion]
) -> ModuleConfig | None:
    """Add the conversions of module `name` to `plan`; its ModuleConfig, or None if float."""
    weights, activations = _qtype(entry["weights"]), _qtype(entry["activations"])
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise CheckpointMismatchError(
            f"{QUANTO_MAP_FILE} quantizes module {name!r}, which the model does not have"
        ) from None
    base = quantized_base_for(type(module))
    quantizes_input = base is not None and base.quantizes_input
    for scale, kept in (("input_scale", quantizes_input), ("output_scale", True)):
        if activations is None or not kept:  # quanto saves both always, 1.0 when unused
            plan.pop(f"{name}.{scale}", None)
    if weights is None and activations is None:
        return None
    config = ModuleConfig(activations=activations, output_quantized=activations is not None)
    if weights is None:
        return config
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise CheckpointMismatchError(
            f"{QUANTO_MAP_FILE} quantizes the weight of module {name!r}, which has none"
        )
    shape = tuple(weight.shape)
    prefix = f"{name}.weight"
    planner = _PLANNERS.get(weights.layout)
    if planner is None:
        raise CheckpointMismatchError(f"{prefix}: optimum-quanto has no {weights} weights")
    group_size, float_zero_point = planner(prefix, weights, shape, raw, plan)
    return replace(
        config,
        weights=weights,
        group_size=group_size,
        float_zero_point=float_zero_point,
        optimizer="optimum-quanto",
    )


def _source(key: str, raw: dict[str, TensorSpec], plan: dict[str, Conversion]) -> TensorSpec:
    """The spec of quanto key `key`, which the canonical state no longer lists as is."""
    if key not in raw:
        raise CheckpointMismatchError(f"the optimum-quanto checkpoint lacks the key {key!r}")
    plan.pop(key, None)
    return raw[key]


def _mismatch(key: str, spec: TensorSpec, wanted: str) -> CheckpointMismatchError:
    return CheckpointMismatchError(
        f"optimum-quanto key {key!r} has shape {list(spec.shape)} {spec.dtype}; expected {wanted}"
    )


def _plan_bytes(
    prefix: str, qtype: QType, shape: tuple, raw: dict, plan: dict[str, Conversion]
) -> tuple[None, bool]:
    """Plan the symmetric layout's tensors; no group size, no float zero points."""
    rows, columns = shape[0], math.prod(shape[1:])
    data, scale = _source(f"{prefix}._data", raw, plan), _source(f"{prefix}._scale", raw, plan)
    if data.shape != shape or data.dtype != qtype.dtype:
        raise _mismatch(f"{prefix}._data", data, f"shape {list(shape)} {qtype.dtype} ({qtype})")
    if math.prod(scale.shape) != rows or not scale.shape or scale.shape[0] != rows:
        raise _mismatch(f"{prefix}._scale", scale, f"one scale per output channel ({rows})")
    plan[f"{prefix}.codes"] = Conversion(
        TensorSpec((rows, columns), data.dtype),
        (f"{prefix}._data",),
        lambda codes: codes.reshape(rows, columns),
    )
    plan[f"{prefix}.scale"] = Conversion(
        TensorSpec((rows, 1), scale.dtype),
        (f"{prefix}._scale",),
        lambda values: values.reshape(rows, 1),
    )
    return None, False


def _plan_bits(
    prefix: str, qtype: QType, shape: tuple, raw: dict, plan: dict[str, Conversion]
) -> tuple[int, bool]:
    rows, columns = shape[0], math.prod(shape[1:])
    data_key, scale_key, shift_key = f"{prefix}._data._data", f"{prefix}._scale", f"{prefix}._shift"
    data, scale, shift = (_source(key, raw, plan) for key in (data_key, scale_key, shift_key))
    groups = scale.shape[0] if len(scale.shape) == 2 and scale.shape[1] == 1 else 0
    if not groups or (rows * columns) % groups or groups % rows:
        raise _mismatch(scale_key, scale, f"[groups, 1] with groups a multiple of {rows}")
    group_size, per_row = rows * columns // groups, groups // rows
    packed_rows = math.ceil(groups / (8 // qtype.bits))
    if data.shape != (packed_rows, group_size) or data.dtype != torch.uint8:
        raise _mismatch(data_key, data, f"shape {[packed_rows, group_size]} torch.uint8")
    if shift.shape != scale.shape:
        raise _mismatch(shift_key, shift, f"the shape of {scale_key} {list(scale.shape)}")
    float_zero_point = shift.dtype.is_floating_point
    if float_zero_point and shift.dtype != scale.dtype:
        raise _mismatch(shift_key, shift, f"the dtype of {scale_key} ({scale.dtype})")

    def codes(packed: torch.Tensor) -> torch.Tensor:
        grouped = _unpack_quanto(packed, qtype.bits, groups)
        return torch.ops.quanta.pack(grouped.reshape(rows, columns).contiguous(), qtype.bits)

    plan[f"{prefix}.codes"] = Conversion(
        TensorSpec((rows, math.ceil(columns * qtype.bits / 8)), torch.uint8), (data_key,), codes
    )
    plan[f"{prefix}.scale"] = Conversion(
        TensorSpec((rows, per_row), scale.dtype),
        (scale_key,),
        lambda values: values.reshape(rows, per_row),
    )
    plan[f"{prefix}.zero_point"] = Conversion(
        TensorSpec((rows, per_row), scale.dtype if float_zero_point else torch.uint8),
        (shift_key, scale_key),
        lambda shifts, scales: _zero_point(shifts, scales, prefix).reshape(rows, per_row),
    )
    return group_size, float_zero_point


# the canonical layout each quanto weight layout is converted to
_PLANNERS = {SYMMETRIC: _plan_bytes, PACKED_AFFINE: _plan_bits}


def _unpack_quanto(packed: torch.Tensor, bits: int, rows: int) -> torch.Tensor:
    """quanto's PackedTensor.unpack: slot i of each byte holds the i-th block of rows."""
    mask = 2**bits - 1
    slots = [(packed >> (bits * slot)) & mask for slot in range(8 // bits)]
    return torch.cat(slots, dim=0)[:rows]


def _zero_point(shift: torch.Tensor, scale: torch.Tensor, prefix: str) -> torch.Tensor:
    """quanto's `scale * code - shift` as quanta's `(code - zero_point) * scale`."""
    if not shift.dtype.is_floating_point:
        if bool((shift < 0).any()) or bool((shift > 255).any()):
            raise CheckpointMismatchError(f"{prefix}._shift: integer shifts must lie in [0, 255]")
        return shift.to(torch.uint8)
    if bool(((scale == 0) & (shift != 0)).any()):
        raise CheckpointMismatchError(
            f"{prefix}: a group with scale 0 and a non-zero shift has no quanta zero point"
        )
    safe_scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (shift.float() / safe_scale.float()).to(scale.dtype)
