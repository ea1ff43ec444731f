"""The safetensors file format, read strictly and written in one pass, with raw-byte checksums.

A file is an 8-byte little-endian header length, a JSON header (tensor name -> dtype, shape,
data_offsets; "__metadata__" -> str to str) and the tensor bytes, back to back. The reader checks
every field before it reads a byte of data, so a truncated or altered file is refused with a
CorruptCheckpointError instead of a crash or a silently wrong tensor. Checksums are SHA-256 of
each tensor's name, dtype, shape and stored bytes, and of the rest of the metadata; they are
computed on the bytes read, before any tensor is built.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from quanta.qio.atomic import atomic_write
from quanta.qio.errors import ChecksumMismatchError, CorruptCheckpointError

# The names the reference implementation (safetensors) gives torch dtypes.
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
METADATA = "__metadata__"
CHECKSUMS = "quanta.checksums"  # metadata key: JSON object tensor name -> SHA-256 hex
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
ENTRY_FIELDS = {"dtype", "shape", "data_offsets"}
LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference reader's limit
READ_CHUNK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in a file: dtype, shape and absolute byte range."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """The checked header of one safetensors file."""

    path: Path
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]


def tensor_checksum(name: str, dtype: torch.dtype, shape: tuple, data: memoryview) -> str:
    """SHA-256 of a tensor's name, dtype, shape and stored bytes: a renamed, reshaped, retyped
    or altered tensor fails it."""
    digest = hashlib.sha256(json.dumps([name, DTYPE_NAMES[dtype], list(shape)]).encode() + b"\0")
    digest.update(data)
    return digest.hexdigest()


def metadata_checksum(metadata: dict[str, str]) -> str:
    """SHA-256 of the metadata other than the checksums (the config among it)."""
    others = {key: value for key, value in metadata.items() if key != CHECKSUMS}
    return hashlib.sha256(json.dumps(others, sort_keys=True).encode()).hexdigest()


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of `tensor` as safetensors stores them (C order, little endian), on the CPU."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """Write `tensors` (of dtypes in DTYPE_NAMES) and `metadata`, with checksums, atomically.

    Tensors are laid out by decreasing element size, so each one is aligned to its element size.
    The checksums go to metadata["quanta.checksums"], a JSON object: tensor name -> SHA-256,
    and "__metadata__" -> the SHA-256 of the rest of the metadata.
    """
    names = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    checksums = {
        name: tensor_checksum(name, t.dtype, tuple(t.shape), tensor_bytes(t))
        for name, t in ((name, tensors[name]) for name in names)
    }
    checksums[METADATA] = metadata_checksum(metadata)
    header: dict[str, object] = {METADATA: {**metadata, CHECKSUMS: json.dumps(checksums)}}
    offset = 0
    for name in names:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % LENGTH_BYTES)  # pad: the data starts 8-byte aligned
    with atomic_write(path) as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for name in names:
            file.write(tensor_bytes(tensors[name]))


def read_header(path: Path) -> SafetensorsHeader:
    """The header of the safetensors file at `path`, every field checked against the file."""
    with open(path, "rb") as file:
        file_size = file.seek(0, 2)
        file.seek(0)
        prefix = file.read(LENGTH_BYTES)
        if len(prefix) < LENGTH_BYTES:
            raise CorruptCheckpointError(f"{path}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES or LENGTH_BYTES + length > file_size:
            raise CorruptCheckpointError(
                f"{path}: header length {length} does not fit the file ({file_size} bytes); "
                "the file is truncated or corrupt"
            )
        raw = file.read(length)
    header = _parse_json(raw, path)
    data_start = LENGTH_BYTES + length
    metadata = _metadata(header.pop(METADATA, {}), path)
    entries = {name: _entry(name, value, data_start, path) for name, value in header.items()}
    _check_contiguous(entries, data_start, file_size, path)
    return SafetensorsHeader(path, entries, metadata)


def _parse_json(raw: bytes, path: Path) -> dict:
    def unique(pairs: list[tuple[str, object]]) -> dict:
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            raise CorruptCheckpointError(f"{path}: the header repeats a key")
        return dict(pairs)

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=unique)
    except (ValueError, RecursionError) as error:  # bad UTF-8, bad JSON, a 5000-digit int
        raise CorruptCheckpointError(f"{path}: the header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: the header is not a JSON object")
    return header


def _metadata(value: object, path: Path) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise CorruptCheckpointError(f"{path}: {METADATA} must map strings to strings")
    return value


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(name: str, value: object, data_start: int, path: Path) -> TensorEntry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(value, dict) or set(value) != ENTRY_FIELDS:
        raise CorruptCheckpointError(f"{where}: expected the fields {sorted(ENTRY_FIELDS)}")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CorruptCheckpointError(f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(size) for size in shape):
        raise CorruptCheckpointError(f"{where}: shape {shape!r} is not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise CorruptCheckpointError(f"{where}: data_offsets {offsets!r} are not two offsets")
    begin, end = offsets
    itemsize = DTYPES[dtype].itemsize
    if end - begin != math.prod(shape) * itemsize:
        raise CorruptCheckpointError(
            f"{where}: {end - begin} bytes do not hold a {dtype} tensor of shape {shape}"
        )
    return TensorEntry(DTYPES[dtype], tuple(shape), data_start + begin, data_start + end)


def _check_contiguous(
    entries: dict[str, TensorEntry], data_start: int, file_size: int, path: Path
) -> None:
    position = data_start
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].start, item[1].end)):
        if entry.start != position:
            raise CorruptCheckpointError(
                f"{path}: tensor {name!r} starts at byte {entry.start}, expected {position} "
                "(tensors must follow each other without gaps or overlaps)"
            )
        position = entry.end
    if position != file_size:
        raise CorruptCheckpointError(
            f"{path}: the tensors end at byte {position} but the file has {file_size} bytes; "
            "it is truncated or has trailing data"
        )


def verified_checksums(header: SafetensorsHeader) -> dict[str, str]:
    """The checksum of every tensor of a file written by `write_safetensors`, once the
    metadata (the config among it) is checked against its own checksum."""
    text = header.metadata.get(CHECKSUMS)
    if text is None:
        raise CorruptCheckpointError(f"{header.path}: no {CHECKSUMS} in the metadata")
    checksums = _parse_json(text.encode(), header.path)
    for name, value in checksums.items():
        if not isinstance(value, str) or not SHA256_HEX.fullmatch(value):
            raise CorruptCheckpointError(f"{header.path}: bad checksum for {name!r}")
    if set(checksums) != {*header.entries, METADATA}:
        names = sorted(set(checksums) ^ {*header.entries, METADATA})[:3]
        raise CorruptCheckpointError(
            f"{header.path}: the checksums and the tensors name different keys, e.g. {names}"
        )
    if checksums.pop(METADATA) != metadata_checksum(header.metadata):
        raise ChecksumMismatchError(
            f"{header.path}: the metadata (quantization config) does not match its checksum; "
            "the file is corrupt"
        )
    return checksums


def read_tensor(
    file: BinaryIO, header: SafetensorsHeader, name: str, expected_checksum: str | None
) -> torch.Tensor:
    """Read tensor `name` from the open file on the CPU, checking its bytes when asked."""
    entry = header.entries[name]
    size = entry.end - entry.start
    buffer = bytearray(size)
    file.seek(entry.start)
    view = memoryview(buffer)
    done = 0
    while done < size:
        count = file.readinto(view[done : done + READ_CHUNK_BYTES])
        if not count:
            raise CorruptCheckpointError(f"{header.path}: truncated inside tensor {name!r}")
        done += count
    if expected_checksum is not None and expected_checksum != tensor_checksum(
        name, entry.dtype, entry.shape, view
    ):
        raise ChecksumMismatchError(
            f"{header.path}: the bytes of tensor {name!r} do not match their checksum; "
            "the file is corrupt"
        )
    if size == 0:
        return torch.empty(entry.shape, dtype=entry.dtype)
    return torch.frombuffer(buffer, dtype=torch.uint8).view(entry.dtype).reshape(entry.shape)
