"""save(): a frozen model as safetensors files with its quantization config and checksums.

A save replaces the checkpoint in its folder as a whole or not at all (the commit protocol):

1. Before anything is written, every checkpoint file in the folder that the save would replace
   or remove (`model.safetensors`, `model.safetensors.index.json`, `model-0000i-of-0000n*`
   shards) must have been written by quanta, or `overwrite=True` be given.
2. The save draws an id (8 hex digits) found in no name in the folder and writes its files in a
   staging folder `.quanta-save-<id>` there. Every file's metadata carries the id.
3. Shards are named `model-0000i-of-0000n-<id>.safetensors`: they are moved into the folder
   first, where no index names them yet. The index, which records the id and a digest of each
   shard's checksums, is renamed into place last: that rename is the commit. A single file is
   renamed to `model.safetensors`, then any old index is removed: since loading prefers the
   index, that removal is the commit when there was one.
4. After the commit, the files of the earlier checkpoint are removed.

So at every instant the folder loads as the old checkpoint or as the new one. A killed save
leaves its staging folder and uncommitted shards (named in no committed index); the next save
into the folder removes them, and the temporary files older quanta versions left
(`.model.safetensors.*.tmp`). One save at a time per folder.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path

import torch
from huggingface_hub import StateDictSplit, split_state_dict_into_shards_factory
from torch import nn
from tqdm.auto import tqdm

from quanta.qio.atomic import STAGING_NAME, publish, staging_folder, sync_folder
from quanta.qio.checkpoint import CONFIG_KEY, FILE_DIGESTS_KEY, SAVE_ID_KEY
from quanta.qio.config import QuantizationConfig, quantization_config
from quanta.qio.errors import CheckpointError
from quanta.qio.files import (
    INDEX_FILE,
    SAVE_SHARD_NAME,
    SHARD_NAME,
    SINGLE_FILE,
    read_index,
)
from quanta.qio.safetensors_format import DTYPE_NAMES, read_header, write_safetensors
from quanta.qio.scales import non_finite_scale, scale_keys
from quanta.qmodules import QModuleMixin, progress_bar

DEFAULT_MAX_SHARD_SIZE = "5GB"
# huggingface_hub's file names: model.safetensors, or model-00001-of-00002.safetensors and on
SHARD_PATTERN = "model{suffix}.safetensors"
# The temporary files of older quanta saves: `.<file name>.<random>.tmp`
OLD_TEMPORARY_NAME = re.compile(
    r"\.(model\.safetensors(\.index\.json)?|model-\d{5}-of-\d{5}\.safetensors)\.\w+\.tmp"
)
# Sizes parsed by hand: huggingface_hub's parser is private and reads neither GiB nor bare bytes.
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def save(
    model: nn.Module,
    path: str | os.PathLike,
    max_shard_size: int | str | None = DEFAULT_MAX_SHARD_SIZE,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write `model` (frozen) into the folder `path`, replacing the checkpoint there as a whole
    (see the module docstring); returns the folder.

    One `model.safetensors`, or shards `model-0000i-of-0000n-<save id>.safetensors` of at most
    `max_shard_size` (bytes, or "500MB", "2GiB"; None: never split) with
    `model.safetensors.index.json`. Every file carries the versioned quantization config and a
    SHA-256 per tensor in its metadata. Tensors tied to each other (same storage, same view)
    are stored once. A checkpoint in the folder that quanta did not write (Transformers'
    `model.safetensors`, say) is refused with a ValueError, unless `overwrite=True`: then its
    checkpoint files are replaced or removed (other files, such as config.json, never are).
    `progress` shows a bar over the bytes written, file by file, when saving takes over a second.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike folder, got {type(path).__name__}")
    for name, flag in (("overwrite", overwrite), ("progress", progress)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    max_bytes = parse_size(max_shard_size)
    _check_frozen(model)
    full_state = model.state_dict()
    _check_finite_scales(model, full_state)
    state, aliases = _deduplicated(full_state)
    config = QuantizationConfig(quantization_config(model).modules, aliases)
    directory = _folder(Path(path))
    _check_owned(directory, overwrite)
    save_id = _new_save_id(directory)
    metadata = {
        "format": "pt",
        CONFIG_KEY: json.dumps(config.to_json(), sort_keys=True),
        SAVE_ID_KEY: save_id,
    }
    split = _plan_shards(state, max_bytes)
    total = sum(map(_nbytes, state.values()))
    with (
        progress_bar(desc="save", total=total, unit="B", unit_scale=True, progress=progress) as bar,
        staging_folder(directory, save_id) as staging,
    ):
        _remove_leftovers(directory, staging)
        kept = _write_and_commit(directory, staging, state, split, metadata, bar)
    _remove_replaced(directory, kept)
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


def _check_finite_scales(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    bad = non_finite_scale(state, scale_keys(model))
    if bad is not None:
        raise ValueError(
            f"module {bad[1]!r}: its scale {bad[0]!r} holds NaN or Inf, so every output of the "
            "module would be NaN; nothing was saved (calibrate or quantize it again)"
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


def _folder(directory: Path) -> Path:
    """`directory`, created if needed; a file or a dangling link there is refused."""
    if directory.is_symlink() and not directory.exists():
        raise ValueError(
            f"path {directory} is a symbolic link to {os.readlink(directory)}, which does not "
            "exist; create that folder or save elsewhere"
        )
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"path must be a folder, {directory} is a file")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _is_checkpoint_file(name: str) -> bool:
    """Whether a save may replace or remove a file of this name (once it is known to be
    quanta's, or `overwrite=True`)."""
    return (
        name in (SINGLE_FILE, INDEX_FILE)
        or SHARD_NAME.fullmatch(name) is not None
        or SAVE_SHARD_NAME.fullmatch(name) is not None
    )


def _written_by_quanta(path: Path) -> bool:
    """Whether `path` holds quanta's config (is a checkpoint file quanta wrote)."""
    if SAVE_SHARD_NAME.fullmatch(path.name):  # only quanta names files so
        return True
    try:
        metadata = read_index(path)[0] if path.name == INDEX_FILE else read_header(path).metadata
    except (CheckpointError, OSError):
        return False
    return CONFIG_KEY in metadata


def _check_owned(directory: Path, overwrite: bool) -> None:
    """Refuse, before writing anything, a folder whose checkpoint files quanta did not write
    (unless `overwrite`) or that are not regular files."""
    for name in sorted(os.listdir(directory)):
        path = directory / name
        if not _is_checkpoint_file(name):
            continue
        if not path.is_file():
            raise ValueError(f"{path} is not a regular file; saving would replace it")
        if not overwrite and not _written_by_quanta(path):
            raise ValueError(
                f"{path} was not written by quanta.save (it holds no quanta config); saving "
                "into this folder would replace or remove it. Save into another folder, or "
                "pass overwrite=True to replace the checkpoint files (files such as "
                "config.json or tokenizer.json are never touched)"
            )


def _new_save_id(directory: Path) -> str:
    """8 random hex digits that no name in the folder holds yet."""
    names = os.listdir(directory)
    while True:
        save_id = secrets.token_hex(4)
        if not any(save_id in name for name in names):
            return save_id


def _committed(directory: Path) -> set[str]:
    """The names of the checkpoint files the folder loads now: the index and its shards, or
    model.safetensors."""
    if not (directory / INDEX_FILE).is_file():
        return {SINGLE_FILE}
    try:
        return {INDEX_FILE, *read_index(directory / INDEX_FILE)[1].values()}
    except CheckpointError:  # an index that loads nothing (overwrite=True) commits no shard
        return {INDEX_FILE}


def _remove_leftovers(directory: Path, staging: Path) -> None:
    """Remove what killed saves left: staging folders, uncommitted shards, old temporaries."""
    committed = _committed(directory)
    for path in directory.iterdir():
        if path != staging and STAGING_NAME.fullmatch(path.name) and path.is_dir():
            shutil.rmtree(path)
            continue
        uncommitted = SAVE_SHARD_NAME.fullmatch(path.name) and path.name not in committed
        if uncommitted or (OLD_TEMPORARY_NAME.fullmatch(path.name) and path.is_file()):
            path.unlink()


def _write_and_commit(
    directory: Path,
    staging: Path,
    state: dict[str, torch.Tensor],
    split: StateDictSplit,
    metadata: dict[str, str],
    bar: tqdm,
) -> set[str]:
    """Write the files in `staging`, then move them into `directory`, the commit last (see the
    module docstring); returns the names of the new checkpoint's files."""

    def write(name: str, keys: list[str]) -> str:
        tensors = {key: state[key] for key in keys}
        digest = write_safetensors(staging / name, tensors, metadata)
        bar.update(sum(map(_nbytes, tensors.values())))
        return digest

    if not split.is_sharded:
        (keys,) = split.filename_to_tensors.values()
        write(SINGLE_FILE, keys)
        publish(staging / SINGLE_FILE, directory / SINGLE_FILE)
        (directory / INDEX_FILE).unlink(missing_ok=True)  # the commit where an index was
        sync_folder(directory)
        return {SINGLE_FILE}
    suffix = f"-{metadata[SAVE_ID_KEY]}.safetensors"
    names = {name: name.removesuffix(".safetensors") + suffix for name in split.filename_to_tensors}
    digests = {
        names[name]: write(names[name], keys) for name, keys in split.filename_to_tensors.items()
    }
    for name in digests:  # named by no index yet: loading ignores them
        publish(staging / name, directory / name)
    index = {
        "metadata": {
            **split.metadata,
            CONFIG_KEY: metadata[CONFIG_KEY],
            SAVE_ID_KEY: metadata[SAVE_ID_KEY],
            FILE_DIGESTS_KEY: digests,
        },
        "weight_map": {key: names[name] for key, name in split.tensor_to_filename.items()},
    }
    (staging / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True), "utf-8")
    publish(staging / INDEX_FILE, directory / INDEX_FILE)  # the commit
    sync_folder(directory)
    return {INDEX_FILE, *digests}


def _remove_replaced(directory: Path, kept: set[str]) -> None:
    """Remove the checkpoint files of the earlier save that the committed one replaced."""
    for path in directory.iterdir():
        if _is_checkpoint_file(path.name) and path.name not in kept:
            path.unlink()
    sync_folder(directory)
