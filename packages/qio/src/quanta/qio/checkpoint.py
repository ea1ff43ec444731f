"""Reading a checkpoint written by `save`: headers, config and checksums first, tensors after."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from quanta.qio.config import QuantizationConfig, parse_config
from quanta.qio.errors import CorruptCheckpointError, UnsupportedCheckpointError
from quanta.qio.expected import TensorSpec
from quanta.qio.files import find_files, read_index
from quanta.qio.safetensors_format import (
    SafetensorsHeader,
    file_digest,
    open_safetensors,
    read_header,
    read_tensor,
    verified_checksums,
)
from quanta.qmodules import progress_bar

CONFIG_KEY = "quanta.config"  # safetensors metadata (and index metadata) key of the config
SAVE_ID_KEY = "quanta.save_id"  # the id of the save that wrote a file (and an index)
FILE_DIGESTS_KEY = "quanta.file_digests"  # index metadata: file name -> its `file_digest`


@dataclass(frozen=True)
class StoredTensors:
    """The checked headers of a checkpoint's files and which file holds each key."""

    headers: list[SafetensorsHeader]
    location: dict[str, SafetensorsHeader]

    @property
    def specs(self) -> dict[str, TensorSpec]:
        """Shape and dtype of every stored tensor."""
        return {
            key: TensorSpec(header.entries[key].shape, header.entries[key].dtype)
            for key, header in self.location.items()
        }


def open_files(path: Path) -> tuple[StoredTensors, dict]:
    """Read and cross-check the headers of every file of the checkpoint at `path`.

    Returns them with the index metadata ({} without an index). Each key must live in exactly
    one file, the one the index names; the files of an index that records its save must all
    be that save's.
    """
    files, index_path = find_files(path)
    headers = [read_header(file) for file in files]
    location: dict[str, SafetensorsHeader] = {}
    for header in headers:
        for key in header.entries:
            if key in location:
                raise CorruptCheckpointError(
                    f"key {key!r} is in {location[key].path} and {header.path}"
                )
            location[key] = header
    if index_path is None:
        return StoredTensors(headers, location), {}
    metadata, weight_map = read_index(index_path)
    placed = {key: header.path.name for key, header in location.items()}
    if placed != weight_map:
        wrong = sorted(set(placed.items()) ^ set(weight_map.items()))[:3]
        raise CorruptCheckpointError(
            f"{index_path}: the index and the files disagree on where keys are, e.g. {wrong}"
        )
    if SAVE_ID_KEY in metadata:  # indexes of older quanta saves, or of others, record none
        _check_one_save(headers, metadata, index_path)
    return StoredTensors(headers, location), metadata


def _check_one_save(headers: list[SafetensorsHeader], metadata: dict, index_path: Path) -> None:
    """Refuse a file written by another save than the index's, or changed since."""
    save_id, digests = metadata[SAVE_ID_KEY], metadata.get(FILE_DIGESTS_KEY)
    if not isinstance(digests, dict) or set(digests) != {header.path.name for header in headers}:
        raise CorruptCheckpointError(
            f"{index_path}: {FILE_DIGESTS_KEY} must hold a digest for each file of the index"
        )
    for header in headers:
        if header.metadata.get(SAVE_ID_KEY) != save_id:
            raise CorruptCheckpointError(
                f"{header.path}: written by save {header.metadata.get(SAVE_ID_KEY)!r}, not by "
                f"save {save_id!r} that wrote {index_path.name}: the folder mixes checkpoints"
            )
        if file_digest(header.metadata) != digests[header.path.name]:
            raise CorruptCheckpointError(
                f"{header.path}: its checksums do not match the digest {index_path.name} "
                "records for it; the file was changed after the save"
            )


def read_stored(
    stored: StoredTensors,
    keys: list[str],
    checksums: dict[str, str] | None,
    progress: bool,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, CPU tensor) for `keys`, file by file in storage order, checked if asked."""
    wanted = set(keys)
    total = sum(stored.location[key].entries[key].nbytes for key in wanted)
    with progress_bar(
        desc="load", total=total, unit="B", unit_scale=True, progress=progress
    ) as bar:
        for header in stored.headers:
            names = [name for name in header.entries if name in wanted]
            if not names:
                continue
            bar.set_description(f"load {header.path.name}", refresh=False)  # shown after the delay
            with open_safetensors(header.path) as file:
                for name in names:
                    expected = None if checksums is None else checksums[name]
                    tensor = read_tensor(file, header.path, name, expected)
                    bar.update(header.entries[name].nbytes)
                    yield name, tensor


class QuantaCheckpoint:
    """A checkpoint written by `save`: its config, tensor specs and (when verifying) checksums."""

    def __init__(self, path: Path, verify: bool) -> None:
        self.stored, index_metadata = open_files(path)
        texts = self._config_texts()
        self.checksums: dict[str, str] | None = None
        if verify:  # before the config is parsed: a corrupt config fails as corrupt
            self.checksums = {}
            for header in self.stored.headers:
                self.checksums.update(verified_checksums(header))
        self.config = self._config(texts, index_metadata)
        self.specs = self.stored.specs

    def _config_texts(self) -> dict[Path, str]:
        texts = {header.path: header.metadata.get(CONFIG_KEY) for header in self.stored.headers}
        absent = [str(path) for path, text in texts.items() if text is None]
        if absent:
            raise UnsupportedCheckpointError(
                f"{absent[0]}: no quanta config ({CONFIG_KEY}) in the metadata; not a checkpoint "
                "written by quanta.save (optimum-quanto folders need their quanto_qmap.json)"
            )
        return texts

    def _config(self, texts: dict[Path, str], index_metadata: dict) -> QuantizationConfig:
        configs = [parse_config(text, str(path)) for path, text in texts.items()]
        if CONFIG_KEY in index_metadata:
            configs.append(parse_config(index_metadata[CONFIG_KEY], "the index"))
        if any(config != configs[0] for config in configs[1:]):
            raise CorruptCheckpointError("the files of the checkpoint carry different configs")
        return configs[0]

    def read(
        self, keys: list[str], device: torch.device, progress: bool
    ) -> dict[str, torch.Tensor]:
        """The tensors of `keys` on `device`, their checksums verified if asked at opening."""
        return {
            key: tensor.to(device)
            for key, tensor in read_stored(self.stored, keys, self.checksums, progress)
        }
