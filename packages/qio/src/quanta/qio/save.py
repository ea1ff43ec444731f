"""save(): a frozen model as safetensors shards with its quantization config and checksums."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from huggingface_hub import StateDictSplit, split_state_dict_into_shards_factory
from torch import nn

from quanta.qio.atomic import atomic_write
from quanta.qio.checkpoint import CONFIG_KEY
from quanta.qio.config import QuantizationConfig, quantization_config
from quanta.qio.files import INDEX_FILE, SHARD_NAME, SHARD_PATTERN, SINGLE_FILE
from quanta.qio.safetensors_format import DTYPE_NAMES, write_safetensors
from quanta.qmodules import QModuleMixin

DEFAULT_MAX_SHARD_SIZE = "5GB"
# Sizes parsed by hand: huggingface_hub's parser is private and reads neither GiB nor bare bytes.
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def save(
    model: nn.Module,
    path: str | os.PathLike,
    max_shard_size: int | str | None = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Write `model` (frozen) into the folder `path`; returns the folder.

    One `model.safetensors`, or shards `model-0000i-of-0000n.safetensors` of at most
    `max_shard_size` (bytes, or "500MB", "2GiB"; None: never split) with
    `model.safetensors.index.json`. Every file carries the versioned quantization config and a
    SHA-256 per tensor in its metadata, and is written to a temporary file renamed at the end.
    Tensors tied to each other (same storage, same view) are stored once.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike folder, got {type(path).__name__}")
    max_bytes = parse_size(max_shard_size)
    _check_frozen(model)
    state, aliases = _deduplicated(model.state_dict())
    config = QuantizationConfig(quantization_config(model).modules, aliases)
    metadata = {"format": "pt", CONFIG_KEY: json.dumps(config.to_json(), sort_keys=True)}
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"path must be a folder, {directory} is a file")
    directory.mkdir(parents=True, exist_ok=True)
    written = _write_shards(directory, state, _plan_shards(state, max_bytes), metadata)
    _remove_stale(directory, written)
    return directory


def parse_size(size: int | str | None) -> int | None:
    """A byte count from an int or a string such as "500MB" or "2GiB" (None: no limit)."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(f"max_shard_size must be None, an int or a str like '5GB', got {size!r}")
    if isinstance(size, str):
        match = _SIZE.fullmatch(size)
        if match is None:
            raise ValueError(f"max_shard_size={size!r} is not a size like '500MB' or '2GiB'")
        size = int(float(match[1]) * _UNITS[(match[2] or "B").upper()])
    if size <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size}")
    return size


def _check_frozen(model: nn.Module) -> None:
    for name, module in model.named_modules():
        quantized = isinstance(module, QModuleMixin) and module.qconfig.weights is not None
        if quantized and not module.is_frozen and module.stored_weight is not None:
            raise ValueError(
                f"module {name!r} is quantized but not frozen; call quanta.freeze(model) "
                "before saving (only the stored quantized weights are saved)"
            )


def _deduplicated(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state without tensors that repeat an earlier one (tied weights), and alias -> key."""
    first: dict[tuple, str] = {}
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for key, tensor in state.items():
        if tensor.is_meta:
            raise ValueError(f"{key!r} is on the meta device: there is nothing to save")
        if tensor.dtype not in DTYPE_NAMES:  # checked before any file is written
            raise TypeError(f"{key!r} has dtype {tensor.dtype}, which safetensors cannot hold")
        identity = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
            tensor.device,
        )
        if tensor.numel() and identity in first:
            aliases[key] = first[identity]
            continue
        first.setdefault(identity, key)
        unique[key] = tensor
    return unique, aliases


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _plan_shards(state: dict[str, torch.Tensor], max_bytes: int | None) -> StateDictSplit:
    """The files and their keys: shards filled in key order, as Transformers splits them."""
    if not state:  # huggingface_hub plans no file at all for an empty state
        return StateDictSplit(
            metadata={"total_size": 0}, filename_to_tensors={SINGLE_FILE: []}, tensor_to_filename={}
        )
    # no limit (None): one shard as large as the whole state
    limit = sum(map(_nbytes, state.values())) if max_bytes is None else max_bytes
    return split_state_dict_into_shards_factory(
        state,
        get_storage_size=_nbytes,  # the tensor's bytes, not its whole storage's (a view's)
        filename_pattern=SHARD_PATTERN,
        max_shard_size=limit,
    )


def _write_shards(
    directory: Path, state: dict[str, torch.Tensor], split: StateDictSplit, metadata: dict
) -> set[str]:
    for name, keys in split.filename_to_tensors.items():
        write_safetensors(directory / name, {key: state[key] for key in keys}, metadata)
    if not split.is_sharded:
        return set(split.filename_to_tensors)
    index = {
        "metadata": {**split.metadata, CONFIG_KEY: metadata[CONFIG_KEY]},
        "weight_map": split.tensor_to_filename,
    }
    with atomic_write(directory / INDEX_FILE) as temporary:
        temporary.write_text(json.dumps(index, indent=2, sort_keys=True), encoding="utf-8")
    return {*split.filename_to_tensors, INDEX_FILE}


def _remove_stale(directory: Path, written: set[str]) -> None:
    """Remove the files of an earlier save into the same folder that this one replaced."""
    for file in directory.iterdir():
        ours = file.name in (SINGLE_FILE, INDEX_FILE) or SHARD_NAME.fullmatch(file.name)
        if ours and file.name not in written:
            file.unlink()
