"""Which files make up a checkpoint folder: one safetensors file, or shards and their index."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from quanta.qio.errors import CorruptCheckpointError, UnsupportedCheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# huggingface_hub's shard names (model-00001-of-00002.safetensors), as older quanta saves wrote
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# quanta's shard names: huggingface_hub's with the id of the save that wrote them
SAVE_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}-(?P<save_id>[0-9a-f]{8})\.safetensors")


def check_regular(path: Path, named_by: str | None = None) -> None:
    """Refuse a missing file or one that is not a regular file (a FIFO would block a read),
    without opening it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if named_by is None:
            raise
        raise CorruptCheckpointError(f"{path}: named by {named_by} but missing") from None
    if not stat.S_ISREG(mode):
        raise CorruptCheckpointError(f"{path}: not a regular file")


def read_index(path: Path) -> tuple[dict, dict[str, str]]:
    """The metadata and weight map (key -> file name in the same folder) of an index file."""
    check_regular(path)
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON
        raise CorruptCheckpointError(f"{path}: not a valid JSON index ({error})") from None
    if not isinstance(index, dict):
        raise CorruptCheckpointError(f"{path}: the index is not a JSON object")
    metadata, weight_map = index.get("metadata", {}), index.get("weight_map")
    if not isinstance(metadata, dict) or not isinstance(weight_map, dict):
        raise CorruptCheckpointError(f"{path}: the index needs a 'weight_map' object")
    if not weight_map:
        raise CorruptCheckpointError(f"{path}: the index's weight_map is empty")
    for key, name in weight_map.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CorruptCheckpointError(f"{path}: key {key!r} maps to {name!r}, not a file name")
    return metadata, weight_map


def _present(path: Path) -> bool:
    """Whether anything (a file, a FIFO, a dangling link) has this name."""
    return os.path.lexists(path)


def find_files(path: Path) -> tuple[list[Path], Path | None]:
    """The safetensors files of a checkpoint (a folder or one file) and its index, if any."""
    if not path.is_dir():
        if not _present(path):
            raise FileNotFoundError(f"no checkpoint at {path}")
        check_regular(path)
        return [path], None
    if _present(path / INDEX_FILE):
        _, weight_map = read_index(path / INDEX_FILE)
        files = [path / name for name in sorted(set(weight_map.values()))]
        for file in files:
            check_regular(file, named_by=str(path / INDEX_FILE))
        return files, path / INDEX_FILE
    if _present(path / SINGLE_FILE):
        check_regular(path / SINGLE_FILE)
        return [path / SINGLE_FILE], None
    found = sorted(path.glob("*.safetensors"))
    uncommitted = [file.name for file in found if SAVE_SHARD_NAME.fullmatch(file.name)]
    if uncommitted:
        raise CorruptCheckpointError(
            f"{path}: shards {uncommitted[:3]} without their {INDEX_FILE}: an interrupted save"
        )
    if len(found) == 1:
        check_regular(found[0])
        return found, None
    raise UnsupportedCheckpointError(
        f"{path}: expected {SINGLE_FILE} or {INDEX_FILE}, found {[p.name for p in found]}"
    )
