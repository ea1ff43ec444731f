"""Which files make up a checkpoint folder: one safetensors file, or shards and their index."""

from __future__ import annotations

import json
import re
from pathlib import Path

from quanta.qio.errors import CorruptCheckpointError, UnsupportedCheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# huggingface_hub's file names: model.safetensors, or model-00001-of-00002.safetensors and on
SHARD_PATTERN = "model{suffix}.safetensors"


def read_index(path: Path) -> tuple[dict, dict[str, str]]:
    """The metadata and weight map (key -> file name in the same folder) of an index file."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON
        raise CorruptCheckpointError(f"{path}: not a valid JSON index ({error})") from None
    if not isinstance(index, dict):
        raise CorruptCheckpointError(f"{path}: the index is not a JSON object")
    metadata, weight_map = index.get("metadata", {}), index.get("weight_map")
    if not isinstance(metadata, dict) or not isinstance(weight_map, dict):
        raise CorruptCheckpointError(f"{path}: the index needs a 'weight_map' object")
    for key, name in weight_map.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CorruptCheckpointError(f"{path}: key {key!r} maps to {name!r}, not a file name")
    return metadata, weight_map


def find_files(path: Path) -> tuple[list[Path], Path | None]:
    """The safetensors files of a checkpoint (a folder or one file) and its index, if any."""
    if path.is_file():
        return [path], None
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if (path / INDEX_FILE).is_file():
        _, weight_map = read_index(path / INDEX_FILE)
        return [path / name for name in sorted(set(weight_map.values()))], path / INDEX_FILE
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE], None
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return found, None
    raise UnsupportedCheckpointError(
        f"{path}: expected {SINGLE_FILE} or {INDEX_FILE}, found {[p.name for p in found]}"
    )
