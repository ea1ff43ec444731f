"""What a checkpoint must hold for a model: keys, shapes and dtypes, computed on a meta copy.

The model itself is not touched: a copy whose stored tensors live on the meta device (no memory)
is quantized with the checkpoint's config and frozen, and its state_dict names every expected
key with its shape and dtype. Loading compares the files against it before reading any data.
"""

from __future__ import annotations

import copy
from itertools import chain
from typing import NamedTuple

import torch
from torch import nn

from quanta.qio.config import QuantizationConfig, apply_quantization_config, stored_layout
from quanta.qio.errors import CheckpointMismatchError
from quanta.qmodules import QTensor, freeze

ZERO_POINT_SUFFIX = ".weight.zero_point"
SCALE_SUFFIX = ".weight.scale"


class TensorSpec(NamedTuple):
    """The shape and dtype of one stored tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose parameters and persistent buffers are on the meta device,
    ready for `load`; non-persistent buffers (rotary frequencies...), which no checkpoint
    holds, are copied."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    memo: dict[int, torch.Tensor] = {}
    for parameter in model.parameters():
        meta = parameter.detach().to("meta")
        memo[id(parameter)] = nn.Parameter(meta, requires_grad=parameter.requires_grad)
    for buffer in persistent_buffers(model):
        memo[id(buffer)] = buffer.detach().to("meta")
    return copy.deepcopy(model, memo)


def persistent_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The buffers the state_dict holds (the persistent ones)."""
    stateful = {id(tensor) for tensor in model.state_dict(keep_vars=True).values()}
    return [buffer for buffer in model.buffers() if id(buffer) in stateful]


def quantized_shadow(model: nn.Module, config: QuantizationConfig) -> nn.Module:
    """A meta copy of `model` quantized by `config` and frozen: the modules a checkpoint fills."""
    shadow = apply_quantization_config(meta_skeleton(model), stored_layout(config))
    return freeze(shadow, progress=False)  # part of loading: its bar is load's


def expected_state(shadow: nn.Module, config: QuantizationConfig) -> dict[str, TensorSpec]:
    """Every key the checkpoint of the `quantized_shadow` of a model holds, with shape and
    dtype."""
    specs = {key: TensorSpec(tuple(t.shape), t.dtype) for key, t in shadow.state_dict().items()}
    for name, entry in config.modules.items():
        if entry.float_zero_point:  # HQQ-style zero points are floats, in the scale's dtype
            zero_point = specs[name + ZERO_POINT_SUFFIX]
            specs[name + ZERO_POINT_SUFFIX] = zero_point._replace(
                dtype=specs[name + SCALE_SUFFIX].dtype
            )
    return specs


def check_no_meta_leftovers(model: nn.Module) -> None:
    """Refuse a model whose tensors outside the state_dict (non-persistent buffers) are meta:
    nothing in a checkpoint would ever materialize them."""
    stateful = {id(tensor) for tensor in model.state_dict(keep_vars=True).values()}
    for name, tensor in chain(model.named_parameters(), model.named_buffers()):
        if tensor.is_meta and id(tensor) not in stateful and not isinstance(tensor, QTensor):
            raise CheckpointMismatchError(
                f"{name!r} is on the meta device but is not saved in checkpoints (a "
                "non-persistent buffer); build the model with its buffers on a real device, "
                "e.g. accelerate.init_empty_weights(include_buffers=False)"
            )


def check_specs(
    stored: dict[str, TensorSpec],
    expected: dict[str, TensorSpec],
    config: QuantizationConfig,
    strict: bool,
    model: nn.Module,
) -> list[str]:
    """Compare the checkpoint's tensors with the expected ones; return the keys to read.

    Strict: any missing or unexpected key is an error. Otherwise unexpected keys are skipped
    and a missing key is allowed only where the model holds a real (non-meta) tensor for it.
    """
    available = set(stored) | {
        alias for alias, target in config.aliases.items() if target in stored
    }
    missing = sorted(set(expected) - available)
    unexpected = sorted(available - set(expected))
    if strict and (missing or unexpected):
        raise CheckpointMismatchError(_key_report(missing, unexpected))
    if missing:
        _check_missing_is_real(missing, model)
    for key in sorted(set(expected) & available):
        found = stored[config.aliases.get(key, key) if key not in stored else key]
        if found != expected[key]:
            raise CheckpointMismatchError(
                f"key {key!r}: the checkpoint holds shape {list(found.shape)} {found.dtype}, the "
                f"model expects shape {list(expected[key].shape)} {expected[key].dtype}"
                f"{_qtype_hint(key, config)}"
            )
    targets = {config.aliases[key] for key in set(expected) & available if key not in stored}
    return sorted((set(stored) & set(expected)) | targets)


def _key_report(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
    return "the checkpoint does not match the model: " + "; ".join(parts)


def _check_missing_is_real(missing: list[str], model: nn.Module) -> None:
    state = model.state_dict(keep_vars=True)
    meta = [key for key in missing if key not in state or state[key].is_meta]
    if meta:
        raise CheckpointMismatchError(
            f"missing key(s) {meta[:5]}: the model has no values for them (meta device or "
            "quantized differently)"
        )


def _qtype_hint(key: str, config: QuantizationConfig) -> str:
    module = key.rsplit(".weight.", 1)[0] if ".weight." in key else None
    entry = config.modules.get(module) if module is not None else None
    if entry is None or entry.weights is None:
        return ""
    return f" (weights {entry.weights}, group_size {entry.group_size})"
