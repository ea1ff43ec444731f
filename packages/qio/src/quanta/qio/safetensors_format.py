"""quanta's safetensors files: the `safetensors` library reads and writes them; this module adds
the checksums and refuses a file the library cannot read with a CorruptCheckpointError naming it.

Checksums are SHA-256 of each tensor's name, dtype, shape and stored bytes, and of the rest of the
metadata. They are written to the metadata and checked on the bytes read, before any tensor is
used, so an altered file is refused instead of loading a silently wrong tensor.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from quanta.qio.errors import ChecksumMismatchError, CorruptCheckpointError
from quanta.qio.files import check_regular

# The dtypes a checkpoint holds, by the safetensors names the checksums hash (the library has no
# public table of these names).
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
    "F8_E8M0": torch.float8_e8m0fnu,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
METADATA = "__metadata__"
CHECKSUMS = "quanta.checksums"  # metadata key: JSON object tensor name -> SHA-256 hex
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A header may take this many bytes, plus as many as the file's tensor data: quanta's hold about
# 200 bytes per tensor and the config (about 300 bytes per module), so real files stay far below,
# while a header of a million empty entries is refused before it is parsed (the library's own
# limit, 100 MB, takes half a minute and gigabytes of memory to parse).
HEADER_FLOOR_BYTES = 8 * 2**20


@dataclass(frozen=True)
class TensorEntry:
    """One stored tensor's dtype and shape."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """The size of its stored bytes."""
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class SafetensorsHeader:
    """The checked header of one safetensors file; its entries in storage order."""

    path: Path
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of `tensor` as safetensors stores them (C order, little endian), on the CPU."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def tensor_checksum(name: str, tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's name, dtype, shape and stored bytes: a renamed, reshaped, retyped
    or altered tensor fails it."""
    identity = [name, DTYPE_NAMES[tensor.dtype], list(tensor.shape)]
    digest = hashlib.sha256(json.dumps(identity).encode() + b"\0")
    digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def metadata_checksum(metadata: dict[str, str]) -> str:
    """SHA-256 of the metadata other than the checksums (the config among it)."""
    others = {key: value for key, value in metadata.items() if key != CHECKSUMS}
    return hashlib.sha256(json.dumps(others, sort_keys=True).encode()).hexdigest()


def file_digest(metadata: dict[str, str]) -> str:
    """SHA-256 of a file's checksums (of every tensor and of the rest of the metadata): what
    an index records to bind the file to it."""
    return hashlib.sha256(metadata.get(CHECKSUMS, "").encode()).hexdigest()


def write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> str:
    """Write `tensors` (of dtypes in DTYPE_NAMES) and `metadata`, with checksums, to `path`
    (not atomically: see quanta.qio.save); returns the file's digest (`file_digest`).

    The checksums go to metadata["quanta.checksums"], a JSON object: tensor name -> SHA-256,
    and "__metadata__" -> the SHA-256 of the rest of the metadata.
    """
    on_cpu = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    checksums = {name: tensor_checksum(name, tensor) for name, tensor in on_cpu.items()}
    checksums[METADATA] = metadata_checksum(metadata)
    written = {**metadata, CHECKSUMS: json.dumps(checksums)}
    save_file(on_cpu, path, written)
    return file_digest(written)


@contextmanager
def open_safetensors(path: Path) -> Iterator[safe_open]:
    """The file at `path` opened by safetensors, tensors read with pread into memory of their own
    (no mapping of the file); a file it refuses raises a CorruptCheckpointError naming it."""
    try:
        with safe_open(path, framework="pt", backend="pread") as file:
            yield file
    except SafetensorError as error:  # the library's message does not name the file
        raise CorruptCheckpointError(
            f"{path}: not a valid safetensors file ({error}); it is truncated or corrupt"
        ) from None


def check_header_size(path: Path) -> None:
    """Refuse a file that is not regular, or whose header is large for its data
    (`HEADER_FLOOR_BYTES`), before the library parses the header."""
    check_regular(path)
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        prefix = file.read(8)
    if len(prefix) < 8:
        raise CorruptCheckpointError(f"{path}: {size} bytes, too short for a safetensors file")
    (header,) = struct.unpack("<Q", prefix)
    data = size - 8 - header
    if data < 0 or header > HEADER_FLOOR_BYTES + data:
        raise CorruptCheckpointError(
            f"{path}: a header of {header} bytes for {max(data, 0)} bytes of tensor data is more "
            f"than quanta reads ({HEADER_FLOOR_BYTES} bytes plus the data's size); the file is "
            "truncated or corrupt"
        )


def read_header(path: Path) -> SafetensorsHeader:
    """The header of the safetensors file at `path`, checked against the file by the library."""
    check_header_size(path)
    with open_safetensors(path) as file:
        entries = {name: _entry(file, name, path) for name in file.offset_keys()}
        return SafetensorsHeader(path, entries, file.metadata() or {})


def _entry(file: safe_open, name: str, path: Path) -> TensorEntry:
    stored = file.get_slice(name)
    dtype = stored.get_dtype()
    if dtype not in DTYPES:
        raise CorruptCheckpointError(f"{path}: tensor {name!r}: unknown dtype {dtype!r}")
    return TensorEntry(DTYPES[dtype], tuple(stored.get_shape()))


def _parse_json(raw: bytes, path: Path) -> dict:
    def unique(pairs: list[tuple[str, object]]) -> dict:
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            raise CorruptCheckpointError(f"{path}: the checksums repeat a key")
        return dict(pairs)

    try:
        parsed = json.loads(raw.decode("utf-8"), object_pairs_hook=unique)
    except (ValueError, RecursionError) as error:  # bad UTF-8, bad JSON, a 5000-digit int
        raise CorruptCheckpointError(
            f"{path}: the checksums are not valid JSON ({error})"
        ) from None
    if not isinstance(parsed, dict):
        raise CorruptCheckpointError(f"{path}: the checksums are not a JSON object")
    return parsed


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
    file: safe_open, path: Path, name: str, expected_checksum: str | None
) -> torch.Tensor:
    """Read tensor `name` from the open file on the CPU, checking its bytes when asked."""
    tensor = file.get_tensor(name)
    if expected_checksum is not None and expected_checksum != tensor_checksum(name, tensor):
        raise ChecksumMismatchError(
            f"{path}: the bytes of tensor {name!r} do not match their checksum; the file is corrupt"
        )
    return tensor
