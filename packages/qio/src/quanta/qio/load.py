"""load(): a checkpoint into a model built on the meta device, straight onto the target device."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from quanta.qio.checkpoint import QuantaCheckpoint
from quanta.qio.config import QuantizationConfig, apply_quantization_config
from quanta.qio.errors import CorruptCheckpointError
from quanta.qio.expected import (
    check_no_meta_leftovers,
    check_specs,
    expected_state,
    persistent_buffers,
    quantized_shadow,
)
from quanta.qio.quanto import QUANTO_MAP_FILE, QuantoCheckpoint
from quanta.qio.scales import non_finite_scale, scale_keys


def load(
    path: str | os.PathLike,
    model: nn.Module,
    device: str | torch.device = "cpu",
    *,
    strict: bool = True,
    verify_checksums: bool = True,
    progress: bool = True,
) -> nn.Module:
    """Load the checkpoint at `path` (a folder or one .safetensors file) into `model`; returns it.

    `model` is the float architecture, best built on the meta device: it is quantized in place as
    the checkpoint's config says and its tensors are replaced by the stored ones, read shard by
    shard onto `device`; float weights are never allocated. Folders of optimum-quanto (with a
    `quanto_qmap.json`) are read too. Every file, key, shape and dtype is checked before the model
    is changed: a mismatch, a corrupt or non-regular file, a missing shard, a NaN or Inf scale or
    an unknown version raises a CheckpointError (a ValueError) and leaves the model as it was.
    `strict=False` skips unexpected keys and keeps the model's own (non-meta) tensors for
    missing ones; `verify_checksums=False` skips hashing the bytes read; `progress` shows a
    tqdm bar over the bytes read when loading takes over a second.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    device = _target_device(device)
    path = Path(path)
    if path.is_dir() and (path / QUANTO_MAP_FILE).is_file():
        checkpoint = QuantoCheckpoint(path, model)
    else:
        checkpoint = QuantaCheckpoint(path, verify_checksums)
    config = checkpoint.config if strict else _modules_present(checkpoint.config, model)
    shadow = quantized_shadow(model, config)
    expected = expected_state(shadow, config)
    check_no_meta_leftovers(model)
    keys = check_specs(checkpoint.specs, expected, config, strict, model)
    staged = checkpoint.read(keys, device, progress)
    bad = non_finite_scale(staged, scale_keys(shadow))
    if bad is not None:
        raise CorruptCheckpointError(
            f"{path}: scale {bad[0]!r} of module {bad[1]!r} holds NaN or Inf; a model loaded "
            "from it would output NaN"
        )
    for alias, target in config.aliases.items():
        if alias in expected and alias not in staged:
            staged[alias] = staged[target]
    for key in set(staged) - set(expected):  # non-strict: the unexpected ones are skipped
        del staged[key]
    apply_quantization_config(model, config)
    _assign(model, staged, device, strict)
    return model


def _modules_present(config: QuantizationConfig, model: nn.Module) -> QuantizationConfig:
    """Non-strict loading: the config of the modules the model has."""
    names = {name for name, _ in model.named_modules()}
    modules = {name: entry for name, entry in config.modules.items() if name in names}
    return QuantizationConfig(modules, config.aliases)


def _target_device(device: str | torch.device) -> torch.device:
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device={device!r} is not a device: {error}") from None
    if device.type == "meta":
        raise ValueError("device='meta' would load nothing; pass 'cpu', 'cuda', ...")
    return device


def _assign(
    model: nn.Module, staged: dict[str, torch.Tensor], device: torch.device, strict: bool
) -> None:
    """Assign the staged tensors (keeping tied parameters tied) and move what the checkpoint
    does not hold (non-persistent buffers) to `device`."""
    tied = defaultdict(list)
    for name, parameter in model.named_parameters(remove_duplicate=False):
        tied[id(parameter)].append((name, parameter.requires_grad))
    for names in tied.values():
        present = [name for name, _ in names if name in staged]
        if len(names) > 1 and present:
            shared = nn.Parameter(staged[present[0]], requires_grad=names[0][1])
            staged.update(dict.fromkeys((name for name, _ in names), shared))
    model.load_state_dict(staged, strict=strict, assign=True)
    stateful = {id(buffer) for buffer in persistent_buffers(model)}
    for name, buffer in list(model.named_buffers()):
        if id(buffer) not in stateful and buffer.device != device:
            owner, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(owner), attribute, buffer.to(device))
